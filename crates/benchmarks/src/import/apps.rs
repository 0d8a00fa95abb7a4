//! APPS (Hendrycks et al.) JSONL, plain or gzipped, as on Hugging Face `codeparrot/apps`.
//!
//! Fields: `problem_id`, `question`, `solutions` (a JSON string holding a list of Python
//! sources), `input_output` (a JSON string `{"inputs": [...], "outputs": [...], "fn_name"?: ...}`),
//! `difficulty`, and optionally `starter_code`.
//!
//! Without `fn_name` a problem is stdin/stdout: each input and output is a string, or a list
//! of lines joined with `\n`. With `fn_name` it is call-based: each input is a JSON list of
//! positional arguments, stored as a Python argument list; each output is stored as a Python
//! literal, with APPS's one-element wrapper list removed when every output of the problem has
//! one. A `class Solution` starter makes the entry a LeetCode method, otherwise a function.
//! APPS solutions were not re-run upstream, so references are not marked verified.

use std::collections::BTreeMap;
use std::path::Path;

use afterburner_sandbox::Language;
use serde::Deserialize;
use serde_json::Value;

use super::{Collector, RowNotes, json_to_python, load_rows, parse_json, title_from_text};
use crate::dataset::LoadError;
use crate::problem::{Checker, Entry, Problem, ReferenceSolution, TestCase};

#[derive(Deserialize)]
struct Row {
    problem_id: Value,
    question: String,
    #[serde(default)]
    solutions: Option<String>,
    #[serde(default)]
    input_output: Option<String>,
    #[serde(default)]
    difficulty: Option<String>,
    #[serde(default)]
    starter_code: Option<String>,
}

#[derive(Deserialize)]
struct InputOutput {
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    #[serde(default)]
    fn_name: Option<String>,
}

/// Loads an APPS JSONL file.
pub(crate) fn load(path: &Path, collector: &mut Collector) -> Result<(), LoadError> {
    load_rows(path, collector, "an APPS row", problem)
}

fn problem(row: Row, notes: &mut RowNotes<'_>) -> Result<Problem, String> {
    let id = match &row.problem_id {
        Value::Number(n) => n.to_string(),
        Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
        other => return Err(format!("`problem_id` {other} is not a number or string")),
    };
    let io_text = row.input_output.unwrap_or_default();
    if io_text.trim().is_empty() {
        return Err(format!("{id}: no tests (`input_output` is empty)"));
    }
    let io: InputOutput =
        parse_json(&io_text).map_err(|e| format!("{id}: `input_output` is not valid: {e}"))?;
    if io.inputs.len() != io.outputs.len() {
        return Err(format!(
            "{id}: `input_output` has {} inputs but {} outputs",
            io.inputs.len(),
            io.outputs.len()
        ));
    }
    let starter = row.starter_code.filter(|c| !c.trim().is_empty());

    let (entry, checker, tests, dropped) = match io.fn_name.filter(|f| !f.trim().is_empty()) {
        None => {
            let mut tests = Vec::new();
            let mut dropped = 0;
            for (input, output) in io.inputs.iter().zip(&io.outputs) {
                match (stdio_text(input), stdio_text(output)) {
                    (Some(input), Some(expected)) => tests.push(TestCase { input, expected }),
                    _ => dropped += 1,
                }
            }
            (Entry::StdinStdout, Checker::Exact, tests, dropped)
        }
        Some(name) => {
            let name = name.trim().to_string();
            let entry = if starter
                .as_deref()
                .is_some_and(|s| s.contains("class Solution"))
            {
                Entry::LeetCodeMethod {
                    class_name: "Solution".to_string(),
                    method_name: name,
                }
            } else {
                Entry::Function { name }
            };
            let unwrap = io
                .outputs
                .iter()
                .all(|o| o.as_array().is_some_and(|a| a.len() == 1));
            let tests = io
                .inputs
                .iter()
                .zip(&io.outputs)
                .map(|(input, output)| TestCase {
                    input: python_arguments(input),
                    expected: json_to_python(match output.as_array().map(Vec::as_slice) {
                        Some([only]) if unwrap => only,
                        _ => output,
                    }),
                })
                .collect();
            (entry, Checker::LeetCodeStructural, tests, 0)
        }
    };
    if tests.is_empty() {
        return Err(format!("{id}: no usable tests"));
    }
    if dropped > 0 {
        notes.warn(format!(
            "{id}: dropped {dropped} tests whose input or output is not text or a list of lines"
        ));
    }

    let sources: Vec<String> = match row.solutions.filter(|s| !s.trim().is_empty()) {
        None => Vec::new(),
        Some(text) => match parse_json(&text) {
            Ok(sources) => sources,
            Err(e) => {
                notes.warn(format!(
                    "{id}: `solutions` is not a JSON list of strings ({e}); no references"
                ));
                Vec::new()
            }
        },
    };
    let references = sources
        .into_iter()
        .enumerate()
        .map(|(k, code)| ReferenceSolution {
            id: format!("{id}/ref-{k}"),
            language: Language::Python,
            code,
            verified: false,
            recorded: None,
        })
        .collect();

    let starter_code = starter
        .map(|code| BTreeMap::from([(Language::Python, code)]))
        .unwrap_or_default();
    Ok(Problem {
        title: title_from_text(&row.question),
        id,
        description: row.question,
        difficulty: row.difficulty,
        tags: Vec::new(),
        starter_code,
        entry,
        prelude: None,
        tests,
        checker,
        stress: Vec::new(),
        references,
    })
}

/// Stdin or stdout text: a string, or a list of lines joined with newlines.
fn stdio_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(lines) => lines
            .iter()
            .map(|l| l.as_str())
            .collect::<Option<Vec<_>>>()
            .map(|lines| lines.join("\n")),
        _ => None,
    }
}

/// A JSON list of positional arguments as a Python argument list (`[1, [2]]` -> `1, [2]`).
fn python_arguments(value: &Value) -> String {
    match value {
        Value::Array(args) => args
            .iter()
            .map(json_to_python)
            .collect::<Vec<_>>()
            .join(", "),
        single => json_to_python(single),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_arguments_become_a_python_argument_list() {
        let args: Value = serde_json::from_str(r#"[[1, 2], "x", true, null]"#).unwrap();
        assert_eq!(python_arguments(&args), r#"[1, 2], "x", True, None"#);
    }

    #[test]
    fn stdio_lines_are_joined() {
        let lines: Value = serde_json::from_str(r#"["1 2", "3"]"#).unwrap();
        assert_eq!(stdio_text(&lines).as_deref(), Some("1 2\n3"));
        assert_eq!(stdio_text(&Value::from(3)), None);
    }
}
