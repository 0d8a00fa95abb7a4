//! ENAMEL (ICLR'25, github.com/q-rz/enamel) folders.
//!
//! `enamel.csv` has one HumanEval problem per record: `task_id, prompt, input_generator`
//! (`generate_input(size, lid, cid)`), `input_levels` (sizes, e.g. `100 10000 15000 30000`),
//! `reference_solution` (the expert's function body), `checker` (`__check(input, answer, output)`)
//! and `entry_point`. `enamel-references.json` and `humaneval-canonical.json` are JSON lists
//! aligned with the CSV records, each entry a list whose first element is a full solution source.
//!
//! Each problem gets the references `<id>/expert` (from `enamel-references.json`, or the CSV
//! body appended to the prompt when that file is absent), verified, and `<id>/canonical`, not
//! verified: ENAMEL's answers are the expert's outputs, and the canonical HumanEval solution was
//! only checked against HumanEval's tests (some are wrong on ENAMEL's inputs). Its tests are
//! empty: ENAMEL defines them through the generator and the expert reference (see
//! [`crate::problem`]). The prompt is the prelude, as ENAMEL runs generator, solution and
//! checker after it.

use std::collections::BTreeMap;
use std::path::Path;

use afterburner_sandbox::Language;
use serde::Deserialize;
use serde_json::Value;

use super::{Collector, parse_json, read_text};
use crate::dataset::LoadError;
use crate::problem::{Checker, Entry, Problem, ReferenceSolution, StressSource};

#[derive(Deserialize)]
struct Row {
    task_id: String,
    prompt: String,
    input_generator: String,
    input_levels: String,
    reference_solution: String,
    checker: String,
    entry_point: String,
}

/// Loads an ENAMEL folder.
pub(crate) fn load(dir: &Path, collector: &mut Collector) -> Result<(), LoadError> {
    let csv_path = dir.join("enamel.csv");
    let experts_path = dir.join("enamel-references.json");
    let canonical_path = dir.join("humaneval-canonical.json");
    let experts = read_solution_list(&experts_path)?;
    let canonical = read_solution_list(&canonical_path)?;

    let file = std::fs::File::open(&csv_path).map_err(|e| LoadError::io("open", &csv_path, e))?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
    let headers = reader
        .headers()
        .map_err(|e| LoadError::malformed(&csv_path, "ENAMEL CSV", e.to_string()))?
        .clone();
    let mut records = 0;
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        records = row;
        let record = match record {
            Ok(record) => record,
            Err(e) if e.is_io_error() => {
                return Err(LoadError::malformed(&csv_path, "ENAMEL CSV", e.to_string()));
            }
            Err(e) => {
                collector.skip(&csv_path, row, format!("not a CSV record: {e}"));
                continue;
            }
        };
        let parsed: Row = match record.deserialize(Some(&headers)) {
            Ok(parsed) => parsed,
            Err(e) => {
                collector.skip(&csv_path, row, format!("not an ENAMEL record: {e}"));
                continue;
            }
        };
        let sources = Sources {
            expert: pick(&experts, i, &experts_path, row, collector),
            canonical: pick(&canonical, i, &canonical_path, row, collector),
        };
        match problem(parsed, sources) {
            Ok(p) => collector.push(p, &csv_path, row),
            Err(reason) => collector.skip(&csv_path, row, reason),
        }
    }
    for (list, path) in [(&experts, &experts_path), (&canonical, &canonical_path)] {
        if let Some(list) = list {
            for row in records + 1..=list.len() {
                collector.skip(
                    path,
                    row,
                    format!("no record {row} in enamel.csv to align with"),
                );
            }
        }
    }
    Ok(())
}

struct Sources {
    expert: Option<String>,
    canonical: Option<String>,
}

/// Reads a JSON list of solution lists; `None` when the file does not exist.
fn read_solution_list(path: &Path) -> Result<Option<Vec<Value>>, LoadError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    parse_json(&text)
        .map(Some)
        .map_err(|reason| LoadError::malformed(path, "ENAMEL JSON list", reason))
}

/// The first source of entry `index` of an aligned list, warning when it is not there.
fn pick(
    list: &Option<Vec<Value>>,
    index: usize,
    path: &Path,
    row: usize,
    collector: &mut Collector,
) -> Option<String> {
    let list = list.as_ref()?;
    let source = match list.get(index) {
        Some(Value::Array(sources)) => sources.first().and_then(Value::as_str),
        Some(Value::String(source)) => Some(source.as_str()),
        _ => None,
    };
    if source.is_none() {
        collector.warn(path, row, "no solution source for this record");
    }
    source.map(str::to_string)
}

fn problem(row: Row, sources: Sources) -> Result<Problem, String> {
    let id = row.task_id.trim().to_string();
    if id.is_empty() {
        return Err("empty `task_id`".to_string());
    }
    let name = row.entry_point.trim().to_string();
    if name.is_empty() {
        return Err(format!("{id}: empty `entry_point`"));
    }
    let levels = row
        .input_levels
        .split_whitespace()
        .map(|l| l.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{id}: `input_levels` {:?}: {e}", row.input_levels))?;
    if levels.is_empty() {
        return Err(format!("{id}: empty `input_levels`"));
    }
    if row.input_generator.trim().is_empty() {
        return Err(format!("{id}: empty `input_generator`"));
    }

    let expert = sources
        .expert
        .unwrap_or_else(|| format!("{}{}", row.prompt, row.reference_solution));
    let reference = |suffix: &str, code: String, verified: bool| ReferenceSolution {
        id: format!("{id}/{suffix}"),
        language: Language::Python,
        code,
        verified,
        recorded: None,
    };
    // ENAMEL's answers are the expert's outputs; the canonical HumanEval solution was only
    // checked against HumanEval's own tests, and some are wrong on ENAMEL's inputs (e.g.
    // HumanEval/122 on negative numbers), so it is not marked verified.
    let mut references = vec![reference("expert", expert, true)];
    if let Some(code) = sources.canonical {
        references.push(reference("canonical", code, false));
    }
    let checker = if row.checker.trim().is_empty() {
        return Err(format!("{id}: empty `checker`"));
    } else {
        Checker::PythonCheck {
            source: row.checker,
        }
    };

    Ok(Problem {
        id,
        title: name.clone(),
        description: row.prompt.clone(),
        difficulty: None,
        tags: Vec::new(),
        starter_code: BTreeMap::from([(Language::Python, row.prompt.clone())]),
        entry: Entry::Function { name },
        prelude: Some(row.prompt),
        tests: Vec::new(),
        checker,
        stress: vec![StressSource::Generator {
            source: row.input_generator,
            levels,
        }],
        references,
    })
}
