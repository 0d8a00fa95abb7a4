//! Importers, one per upstream format, the helpers they share, and [`load`], which picks the
//! importer a [`DatasetSpec`] names.
//!
//! Each importer reads its files, turns every row into a [`Problem`] or a
//! [`RowIssue`](crate::RowIssue) saying why not, and hands the problems to a
//! [`Collector`], which also rejects duplicate ids.

pub mod apps;
pub mod coffe;
pub mod enamel;
pub mod leetcode;
pub mod venus;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::dataset::{Dataset, DatasetSpec, Format, LoadError, LoadReport};
use crate::problem::Problem;

/// Loads a dataset. Malformed rows are reported in [`Dataset::report`] and the rest still
/// loads; a missing or unreadable file, or a file that is not the format at all, is an error.
pub fn load(spec: &DatasetSpec) -> Result<Dataset, LoadError> {
    let mut collector = Collector::default();
    let path = spec.path.as_path();
    match spec.format {
        Format::Venus(language) => venus::load(path, language, &mut collector)?,
        Format::Apps => apps::load(path, &mut collector)?,
        Format::Coffe => coffe::load(path, &mut collector)?,
        Format::LeetCode => leetcode::load(path, &mut collector)?,
        Format::Enamel => enamel::load(path, &mut collector)?,
    }
    let (problems, report) = collector.finish();
    Ok(Dataset {
        spec: spec.clone(),
        problems,
        report,
    })
}

impl DatasetSpec {
    /// Loads the dataset: see [`load`].
    pub fn load(&self) -> Result<Dataset, LoadError> {
        load(self)
    }
}

/// Gathers the problems of one load and its report, rejecting duplicate ids.
///
/// Warnings about a row wait until the row is pushed: a row that ends up skipped reports
/// only why it was skipped.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    problems: Vec<Problem>,
    seen: HashSet<String>,
    pending: Vec<(PathBuf, usize, String)>,
    report: LoadReport,
}

impl Collector {
    /// Adds a problem read from `row` of `file`, unless its id was already taken.
    pub(crate) fn push(&mut self, problem: Problem, file: &Path, row: usize) {
        if self.seen.contains(&problem.id) {
            let reason = format!(
                "duplicate problem id `{}` (the first one is kept)",
                problem.id
            );
            self.skip(file, row, reason);
        } else {
            self.seen.insert(problem.id.clone());
            self.problems.push(problem);
            for (file, row, reason) in self.pending.drain(..) {
                self.report.warn(&file, row, reason);
            }
        }
    }

    /// Records a row that was not loaded, dropping the warnings about it.
    pub(crate) fn skip(&mut self, file: &Path, row: usize, reason: impl Into<String>) {
        self.pending.clear();
        self.report.skip(file, row, reason);
    }

    /// Records a loss in the row about to be pushed or skipped.
    pub(crate) fn warn(&mut self, file: &Path, row: usize, reason: impl Into<String>) {
        self.pending.push((file.to_path_buf(), row, reason.into()));
    }

    /// The problems and the finished report.
    pub(crate) fn finish(mut self) -> (Vec<Problem>, LoadReport) {
        self.report.loaded = self.problems.len();
        (self.problems, self.report)
    }
}

/// Opens a file for reading, transparently gunzipping names ending in `.gz`.
fn open(path: &Path) -> Result<Box<dyn BufRead>, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::io("open", path, e))?;
    let gz = path.extension().is_some_and(|ext| ext == "gz");
    Ok(if gz {
        Box::new(BufReader::new(MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Reads a whole (possibly gzipped) file as UTF-8 text.
pub(crate) fn read_text(path: &Path) -> Result<String, LoadError> {
    let mut text = String::new();
    open(path)?
        .read_to_string(&mut text)
        .map_err(|e| LoadError::io("read", path, e))?;
    Ok(text)
}

/// Loads a JSONL file of one row `R` per line: each row becomes a problem through `problem`
/// (given the row and where to note what it loses) or is skipped with the reason it returns; a
/// line that is not an `R` at all is skipped as `not {what}: ...`.
pub(crate) fn load_rows<R: serde::de::DeserializeOwned>(
    path: &Path,
    collector: &mut Collector,
    what: &str,
    problem: impl Fn(R, &mut RowNotes<'_>) -> Result<Problem, String>,
) -> Result<(), LoadError> {
    for_each_line(path, collector, |row, line, collector| {
        match parse_json::<R>(line) {
            Ok(r) => {
                let mut notes = RowNotes {
                    collector: &mut *collector,
                    path,
                    row,
                };
                match problem(r, &mut notes) {
                    Ok(p) => collector.push(p, path, row),
                    Err(reason) => collector.skip(path, row, reason),
                }
            }
            Err(e) => collector.skip(path, row, format!("not {what}: {e}")),
        }
    })
}

/// Where the losses of one row being imported are noted (its file and row are known).
pub(crate) struct RowNotes<'a> {
    collector: &'a mut Collector,
    path: &'a Path,
    row: usize,
}

impl RowNotes<'_> {
    /// Records a loss in this row (reported if the row ends up loaded).
    pub(crate) fn warn(&mut self, reason: impl Into<String>) {
        self.collector.warn(self.path, self.row, reason);
    }
}

/// Calls `each(row, line)` for every non-blank line of a (possibly gzipped) JSONL file.
///
/// Rows are 1-based line numbers. A line that is not UTF-8 is reported and skipped.
pub(crate) fn for_each_line(
    path: &Path,
    collector: &mut Collector,
    mut each: impl FnMut(usize, &str, &mut Collector),
) -> Result<(), LoadError> {
    let mut reader = open(path)?;
    let mut buf = Vec::new();
    let mut row = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| LoadError::io("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        row += 1;
        match std::str::from_utf8(&buf) {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => each(row, line, collector),
            Err(e) => collector.skip(path, row, format!("not UTF-8 text: {e}")),
        }
    }
}

/// Parses one JSON document, accepting the `NaN`, `Infinity` and `-Infinity` that
/// Python's `json.dumps` writes (they become `null`).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(&python_json_to_json(text)).map_err(|e| e.to_string())
}

/// Replaces Python's non-standard JSON number tokens outside strings by `null`.
fn python_json_to_json(text: &str) -> Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(token) = token {
                out.push_str("null");
                rest = &rest[token.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// A JSON object read with its keys in file order (serde_json's own map sorts them).
pub(crate) struct OrderedMap<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A short title from free text: its first non-empty line, cut at about 80 characters.
pub(crate) fn title_from_text(text: &str) -> String {
    const MAX: usize = 80;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.chars().count() <= MAX {
        return line.to_string();
    }
    let cut: String = line.chars().take(MAX).collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space > MAX / 2 => &cut[..space],
        _ => cut.as_str(),
    };
    format!("{}...", cut.trim_end())
}

/// A title from a slug: `two-sum` -> `Two Sum`.
pub(crate) fn title_from_slug(slug: &str) -> String {
    slug.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes a JSON value as the Python literal that denotes the same value.
///
/// JSON string escapes are all valid Python string escapes, so strings keep JSON quoting.
pub(crate) fn json_to_python(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_python(value, &mut out);
    out
}

fn write_python(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(_) => out.push_str(&value.to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_python(item, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_tokens_outside_strings_become_null() {
        let text = r#"{"a": Infinity, "b": -Infinity, "c": NaN, "s": "NaN \" Infinity"}"#;
        assert_eq!(
            python_json_to_json(text),
            r#"{"a": null, "b": null, "c": null, "s": "NaN \" Infinity"}"#
        );
    }

    #[test]
    fn ordered_map_keeps_file_order() {
        let map: OrderedMap<u32> = serde_json::from_str(r#"{"b": 1, "a": 2, "c": 3}"#).unwrap();
        let keys: Vec<_> = map.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
    }

    #[test]
    fn titles_are_short_and_readable() {
        assert_eq!(title_from_slug("two-sum"), "Two Sum");
        assert_eq!(title_from_text("\n  Hello world.\nMore"), "Hello world.");
        let long = "word ".repeat(40);
        let title = title_from_text(&long);
        assert!(
            title.ends_with("...") && title.chars().count() <= 83,
            "{title}"
        );
    }

    #[test]
    fn json_values_become_python_literals() {
        let value: serde_json::Value =
            serde_json::from_str(r#"[null, true, false, 1.5, "a\"b", {"k": [1]}]"#).unwrap();
        assert_eq!(
            json_to_python(&value),
            r#"[None, True, False, 1.5, "a\"b", {"k": [1]}]"#
        );
    }
}
