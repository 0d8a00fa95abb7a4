//! COFFE (FSE'25) stdin/stdout folders, e.g. `datasets/deepmind_code_contests`.
//!
//! Files, all keyed by the full problem prompt:
//! - `solutions.json`: `{"prompt2groundtruth": {prompt: [[code, verified], ...]}, "prompt2io": {prompt: bool}}`
//! - `testcases.json`: `{prompt: [{"input": [stdin], "output": [stdout]}, ...]}`
//! - `stressful_testcases.json` (optional): `{prompt: [generator source, ...]}`, each defining `generate_input()`
//!
//! Problems come in the order of `prompt2groundtruth`. The id is `cc-` followed by the first
//! 10 hex digits of the SHA-256 of the prompt; the description is the prompt without COFFE's
//! instruction wrapper. `best_solutions.json` is not read: its solution is one of the ground truths.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use afterburner_sandbox::Language;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Collector, OrderedMap, parse_json, read_text, title_from_text};
use crate::dataset::LoadError;
use crate::problem::{Checker, Entry, Problem, ReferenceSolution, StressSource, TestCase};

const PROMPT_PREFIX: &str = "You are an expert Python programmer, and here is your task:\n";
const PROMPT_SUFFIX: &str =
    "Do not give explanations, only give the Python code.\nPython Solution:\n```python";

/// The stable COFFE id of a prompt: `cc-` and the first 10 hex digits of its SHA-256.
pub fn coffe_id(prompt: &str) -> String {
    let digest = Sha256::digest(prompt.as_bytes());
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("cc-{hex}")
}

#[derive(Deserialize)]
struct SolutionsFile {
    prompt2groundtruth: OrderedMap<Value>,
    #[serde(default)]
    prompt2io: HashMap<String, Value>,
}

/// Loads a COFFE folder.
pub(crate) fn load(dir: &Path, collector: &mut Collector) -> Result<(), LoadError> {
    let solutions_path = dir.join("solutions.json");
    let tests_path = dir.join("testcases.json");
    let stress_path = dir.join("stressful_testcases.json");

    let solutions: SolutionsFile = read_json(&solutions_path)?;
    let tests: OrderedMap<Value> = read_json(&tests_path)?;
    let stress: OrderedMap<Value> = if stress_path.exists() {
        read_json(&stress_path)?
    } else {
        OrderedMap(Vec::new())
    };
    let tests: HashMap<String, (usize, Value)> = index(tests);
    let stress: HashMap<String, (usize, Value)> = index(stress);

    let known: HashSet<&str> = solutions
        .prompt2groundtruth
        .0
        .iter()
        .map(|(prompt, _)| prompt.as_str())
        .collect();
    for (file, map) in [(&tests_path, &tests), (&stress_path, &stress)] {
        let mut orphans: Vec<_> = map
            .iter()
            .filter(|(prompt, _)| !known.contains(prompt.as_str()))
            .collect();
        orphans.sort_by_key(|(_, (row, _))| *row);
        for (prompt, (row, _)) in orphans {
            collector.skip(
                file,
                *row,
                format!(
                    "{}: prompt is missing from solutions.json `prompt2groundtruth`",
                    coffe_id(prompt)
                ),
            );
        }
    }

    let files = Files {
        solutions: &solutions_path,
        tests: &tests_path,
        stress: &stress_path,
    };
    for (i, (prompt, groundtruth)) in solutions.prompt2groundtruth.0.iter().enumerate() {
        let row = i + 1;
        let parts = Parts {
            groundtruth,
            io: solutions.prompt2io.get(prompt),
            tests: tests.get(prompt),
            stress: stress.get(prompt),
        };
        match problem(prompt, row, parts, &files, collector) {
            Ok(p) => collector.push(p, &solutions_path, row),
            Err((file, row, reason)) => collector.skip(&file, row, reason),
        }
    }
    Ok(())
}

/// The files of a COFFE folder.
struct Files<'a> {
    solutions: &'a Path,
    tests: &'a Path,
    stress: &'a Path,
}

/// What each file holds for one prompt (tests and stress with their 1-based row).
struct Parts<'a> {
    groundtruth: &'a Value,
    io: Option<&'a Value>,
    tests: Option<&'a (usize, Value)>,
    stress: Option<&'a (usize, Value)>,
}

type Issue = (PathBuf, usize, String);

fn problem(
    prompt: &str,
    row: usize,
    parts: Parts<'_>,
    files: &Files<'_>,
    collector: &mut Collector,
) -> Result<Problem, Issue> {
    let Parts {
        groundtruth,
        io,
        tests,
        stress,
    } = parts;
    let id = coffe_id(prompt);
    let issue = |file: &Path, row: usize, reason: String| (file.to_path_buf(), row, reason);
    if io.is_some_and(|v| v != &Value::Bool(true)) {
        return Err(issue(
            files.solutions,
            row,
            format!(
                "{id}: `prompt2io` is not true; only stdin/stdout COFFE problems are supported"
            ),
        ));
    }

    // Reference solutions: [[code, verified], ...].
    let list = groundtruth.as_array().ok_or_else(|| {
        issue(
            files.solutions,
            row,
            format!("{id}: ground truth is not a list of [code, verified] pairs"),
        )
    })?;
    let mut references = Vec::with_capacity(list.len());
    for (k, entry) in list.iter().enumerate() {
        match entry.as_array().map(Vec::as_slice) {
            Some([Value::String(code), Value::Bool(verified)]) => {
                references.push(ReferenceSolution {
                    id: format!("{id}/ref-{k}"),
                    language: Language::Python,
                    code: code.clone(),
                    verified: *verified,
                    recorded: None,
                })
            }
            _ => collector.warn(
                files.solutions,
                row,
                format!("{id}: solution {k} is not a [code, verified] pair; dropped"),
            ),
        }
    }

    // Tests: [{"input": [stdin], "output": [stdout]}, ...].
    let (test_row, test_list) =
        tests.ok_or_else(|| issue(files.tests, row, format!("{id}: no tests for this prompt")))?;
    let test_list = test_list.as_array().ok_or_else(|| {
        issue(
            files.tests,
            *test_row,
            format!("{id}: tests are not a list"),
        )
    })?;
    let mut cases = Vec::with_capacity(test_list.len());
    for (k, case) in test_list.iter().enumerate() {
        match (
            single_string(&case["input"]),
            single_string(&case["output"]),
        ) {
            (Some(input), Some(expected)) => cases.push(TestCase { input, expected }),
            _ => collector.warn(
                files.tests,
                *test_row,
                format!("{id}: test {k} is not {{\"input\": [text], \"output\": [text]}}; dropped"),
            ),
        }
    }
    if cases.is_empty() {
        return Err(issue(
            files.tests,
            *test_row,
            format!("{id}: no usable tests"),
        ));
    }

    // Stress generators: [source, ...].
    let mut generators = Vec::new();
    if let Some((stress_row, sources)) = stress {
        match sources.as_array() {
            Some(sources) => {
                for (k, source) in sources.iter().enumerate() {
                    match source.as_str() {
                        Some(source) => generators.push(StressSource::Generator {
                            source: source.to_string(),
                            levels: Vec::new(),
                        }),
                        None => collector.warn(
                            files.stress,
                            *stress_row,
                            format!("{id}: stress generator {k} is not a string; dropped"),
                        ),
                    }
                }
            }
            None => collector.warn(
                files.stress,
                *stress_row,
                format!("{id}: stress generators are not a list; dropped"),
            ),
        }
    }

    let body = prompt
        .strip_prefix(PROMPT_PREFIX)
        .unwrap_or(prompt)
        .trim_end();
    let description = body
        .strip_suffix(PROMPT_SUFFIX)
        .unwrap_or(body)
        .trim()
        .to_string();
    Ok(Problem {
        title: title_from_text(&description),
        id,
        description,
        difficulty: None,
        tags: Vec::new(),
        starter_code: BTreeMap::new(),
        entry: Entry::StdinStdout,
        prelude: None,
        tests: cases,
        checker: Checker::Exact,
        stress: generators,
        references,
    })
}

/// The text of a one-element list of strings (COFFE wraps each stdin and stdout in a list).
fn single_string(value: &Value) -> Option<String> {
    match value.as_array().map(Vec::as_slice) {
        Some([Value::String(text)]) => Some(text.clone()),
        _ => None,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = read_text(path)?;
    parse_json(&text).map_err(|reason| LoadError::malformed(path, "COFFE JSON", reason))
}

/// Maps each key to its 1-based position and value.
fn index(map: OrderedMap<Value>) -> HashMap<String, (usize, Value)> {
    map.0
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (k, (i + 1, v)))
        .collect()
}
