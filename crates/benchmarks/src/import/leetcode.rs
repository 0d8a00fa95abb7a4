//! LeetCodeDataset (github.com/newfacade/LeetCodeDataset) JSONL, plain or gzipped.
//!
//! Fields used: `task_id` (the id), `question_id`, `difficulty`, `tags`, `problem_description`,
//! `starter_code`, `prompt` (imports and helpers: the prelude), `completion` (the reference
//! solution), `entry_point` (`Solution().twoSum`) and `input_output` (the tests).
//!
//! Tests whose upstream output is an error message (`Error: ...`) or `Execution timed out`
//! record a failure of the upstream generation run, not an expected value: they are dropped
//! with a warning. The `test` field (`check(candidate)`, asserts that embed the expected
//! values) is not imported: running it would put expected outputs inside the candidate's
//! process, and its asserts are covered by `input_output`.

use std::collections::BTreeMap;
use std::path::Path;

use afterburner_sandbox::Language;
use serde::Deserialize;

use super::{Collector, RowNotes, load_rows, title_from_slug};
use crate::dataset::LoadError;
use crate::problem::{Checker, Entry, Problem, ReferenceSolution, TestCase};

#[derive(Deserialize)]
struct Row {
    task_id: String,
    #[serde(default)]
    difficulty: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    problem_description: String,
    #[serde(default)]
    starter_code: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    completion: Option<String>,
    entry_point: String,
    input_output: Vec<IoPair>,
}

#[derive(Deserialize)]
struct IoPair {
    input: String,
    output: String,
}

/// Loads a LeetCodeDataset JSONL file.
pub(crate) fn load(path: &Path, collector: &mut Collector) -> Result<(), LoadError> {
    load_rows(path, collector, "a LeetCodeDataset row", problem)
}

/// Splits `Solution().twoSum` into the class and method names.
fn parse_entry_point(entry_point: &str) -> Option<(String, String)> {
    let (class, method) = entry_point.trim().split_once("().")?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    (ident(class) && ident(method)).then(|| (class.to_string(), method.to_string()))
}

/// Whether an upstream output records a failed generation run rather than a value.
fn is_upstream_failure(output: &str) -> bool {
    output.starts_with("Error:") || output == "Execution timed out"
}

fn problem(row: Row, notes: &mut RowNotes<'_>) -> Result<Problem, String> {
    let id = row.task_id.trim().to_string();
    if id.is_empty() {
        return Err("empty `task_id`".to_string());
    }
    let (class_name, method_name) = parse_entry_point(&row.entry_point).ok_or_else(|| {
        format!(
            "{id}: `entry_point` {:?} is not of the form `Class().method`",
            row.entry_point
        )
    })?;

    let total = row.input_output.len();
    let tests: Vec<TestCase> = row
        .input_output
        .into_iter()
        .filter(|t| !is_upstream_failure(&t.output))
        .map(|t| TestCase {
            input: t.input,
            expected: t.output,
        })
        .collect();
    let dropped = total - tests.len();
    if tests.is_empty() {
        return Err(format!(
            "{id}: no usable tests ({total} in `input_output`, all upstream failures)"
        ));
    }
    if dropped > 0 {
        notes.warn(format!(
            "{id}: dropped {dropped} of {total} tests whose output is an upstream error or timeout"
        ));
    }

    let mut starter_code = BTreeMap::new();
    if let Some(code) = row.starter_code.filter(|c| !c.trim().is_empty()) {
        starter_code.insert(Language::Python, code);
    }
    let references = row
        .completion
        .filter(|c| !c.trim().is_empty())
        .map(|code| ReferenceSolution {
            id: format!("{id}/ref-0"),
            language: Language::Python,
            code,
            verified: true,
            recorded: None,
        })
        .into_iter()
        .collect();
    Ok(Problem {
        title: title_from_slug(&id),
        id,
        description: row.problem_description,
        difficulty: row.difficulty,
        tags: row.tags,
        starter_code,
        entry: Entry::LeetCodeMethod {
            class_name,
            method_name,
        },
        prelude: row.prompt.filter(|p| !p.trim().is_empty()),
        tests,
        checker: Checker::LeetCodeStructural,
        stress: Vec::new(),
        references,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_split_into_class_and_method() {
        assert_eq!(
            parse_entry_point("Solution().twoSum"),
            Some(("Solution".to_string(), "twoSum".to_string()))
        );
        assert_eq!(parse_entry_point("twoSum"), None);
        assert_eq!(parse_entry_point("Solution().two sum"), None);
    }

    #[test]
    fn upstream_failures_are_recognised() {
        assert!(is_upstream_failure("Error: list index out of range"));
        assert!(is_upstream_failure("Execution timed out"));
        assert!(!is_upstream_failure("[2, 2, 2]"));
        assert!(!is_upstream_failure(""));
    }
}
