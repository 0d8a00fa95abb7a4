//! Importers on small fixtures written by the tests: malformed rows, Venus round trips, errors.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use afterburner_benchmarks::{
    Checker, DatasetSpec, Entry, Format, LoadError, Problem, RecordedPerformance, VenusRow,
    VenusSolution, load, write_venus_jsonl, write_venus_parquet,
};
use afterburner_sandbox::Language;
use tempfile::TempDir;

fn spec(format: Format, path: &Path) -> DatasetSpec {
    DatasetSpec::new(format, path)
}

fn leetcode_row(task_id: &str, entry_point: &str) -> String {
    serde_json::json!({
        "task_id": task_id,
        "question_id": 1,
        "difficulty": "Easy",
        "tags": ["Array"],
        "problem_description": "Add two numbers.",
        "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
        "prompt": "from typing import *\n",
        "completion": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n",
        "entry_point": entry_point,
        "test": "def check(candidate):\n    assert candidate(a = 1, b = 2) == 3\n",
        "input_output": [
            {"input": "a = 1, b = 2", "output": "3"},
            {"input": "a = [1] * 10", "output": "Error: unsupported operand"},
        ],
    })
    .to_string()
}

#[test]
fn a_malformed_jsonl_row_is_reported_with_file_row_and_reason_while_the_rest_loads() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("lc.jsonl");
    let lines = [
        leetcode_row("add-two", "Solution().add"),
        "{not json".to_string(),
        String::new(), // blank lines are not rows
        leetcode_row("bad-entry", "add"),
        leetcode_row("add-three", "Solution().add"),
        leetcode_row("add-two", "Solution().add"),
    ];
    fs::write(&path, lines.join("\n")).unwrap();

    let d = load(&spec(Format::LeetCode, &path)).unwrap();

    let ids: Vec<_> = d.problems.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["add-two", "add-three"]);
    assert_eq!(d.report.loaded, 2);
    let skipped: Vec<_> = d
        .report
        .skipped
        .iter()
        .map(|i| (i.file.as_path(), i.row))
        .collect();
    assert_eq!(
        skipped,
        [
            (path.as_path(), 2),
            (path.as_path(), 4),
            (path.as_path(), 6)
        ]
    );
    assert!(
        d.report.skipped[0]
            .reason
            .contains("not a LeetCodeDataset row")
    );
    assert!(d.report.skipped[1].reason.contains("entry_point"));
    assert!(
        d.report.skipped[2]
            .reason
            .contains("duplicate problem id `add-two`")
    );
    // The `Error: ...` test of every loaded row is dropped with a warning.
    assert_eq!(d.report.warnings.len(), 2);
    assert!(d.report.warnings[0].reason.contains("dropped 1 of 2 tests"));
    assert_eq!(d.problems[0].tests.len(), 1);
}

const ENAMEL_HEADER: &str =
    "task_id,prompt,input_generator,input_levels,reference_solution,checker,entry_point\n";

fn enamel_record(task: &str, levels: &str) -> String {
    let prompt = "def inc(x):\n    \"\"\"x + 1\"\"\"\n";
    let generator = "def generate_input(size, lid, cid):\n    return (size,)\n";
    let checker = "def __check(input, answer, output):\n    return output == answer\n";
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    [
        task.to_string(),
        quote(prompt),
        quote(generator),
        levels.to_string(),
        quote("    return x + 1\n"),
        quote(checker),
        "inc".to_string(),
    ]
    .join(",")
        + "\n"
}

#[test]
fn a_malformed_csv_record_is_reported_with_file_row_and_reason_while_the_rest_loads() {
    let dir = TempDir::new().unwrap();
    let csv = dir.path().join("enamel.csv");
    let content = [
        ENAMEL_HEADER.to_string(),
        enamel_record("HumanEval/0", "1 10 100"),
        "HumanEval/1,too,few,fields\n".to_string(),
        enamel_record("HumanEval/2", "ten 100"),
        enamel_record("HumanEval/3", "5"),
    ]
    .concat();
    fs::write(&csv, content).unwrap();
    let solution = "def inc(x):\n    return x + 1\n";
    let list = serde_json::json!([[solution], [solution], [solution], [solution]]).to_string();
    fs::write(dir.path().join("enamel-references.json"), &list).unwrap();
    fs::write(dir.path().join("humaneval-canonical.json"), &list).unwrap();

    let d = load(&spec(Format::Enamel, dir.path())).unwrap();

    let ids: Vec<_> = d.problems.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["HumanEval/0", "HumanEval/3"]);
    let skipped: Vec<_> = d
        .report
        .skipped
        .iter()
        .map(|i| (i.file.as_path(), i.row))
        .collect();
    assert_eq!(skipped, [(csv.as_path(), 2), (csv.as_path(), 3)]);
    assert!(
        d.report.skipped[0].reason.contains("not a CSV record"),
        "{}",
        d.report
    );
    assert!(
        d.report.skipped[1].reason.contains("input_levels"),
        "{}",
        d.report
    );
    assert_eq!(d.problems[0].references.len(), 2);
    assert_eq!(d.problems[0].references[0].code, solution);
}

#[test]
fn enamel_without_the_json_lists_uses_the_csv_expert_body() {
    let dir = TempDir::new().unwrap();
    let content = [
        ENAMEL_HEADER.to_string(),
        enamel_record("HumanEval/0", "1 2"),
    ]
    .concat();
    fs::write(dir.path().join("enamel.csv"), content).unwrap();

    let d = load(&spec(Format::Enamel, dir.path())).unwrap();

    let p = &d.problems[0];
    assert_eq!(p.references.len(), 1);
    assert_eq!(p.references[0].id, "HumanEval/0/expert");
    assert_eq!(
        p.references[0].code,
        "def inc(x):\n    \"\"\"x + 1\"\"\"\n    return x + 1\n"
    );
}

fn apps_row(id: serde_json::Value, input_output: serde_json::Value, starter: &str) -> String {
    serde_json::json!({
        "problem_id": id,
        "question": "Echo the input.\nMore text.",
        "solutions": serde_json::json!(["print(input())"]).to_string(),
        "input_output": if input_output.is_null() { String::new() } else { input_output.to_string() },
        "difficulty": "introductory",
        "url": "https://example.com",
        "starter_code": starter,
    })
    .to_string()
}

#[test]
fn apps_rows_become_stdin_or_call_based_problems() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("apps.jsonl");
    let lines = [
        apps_row(
            serde_json::json!(10),
            serde_json::json!({"inputs": ["1\n", ["2", "3"]], "outputs": ["1\n", ["2", "3"]]}),
            "",
        ),
        apps_row(
            serde_json::json!(11),
            serde_json::json!({"fn_name": "add", "inputs": [[1, 2], [[1], true]], "outputs": [[3], [null]]}),
            "def add(a, b):\n",
        ),
        apps_row(
            serde_json::json!(12),
            serde_json::json!({"fn_name": "twoSum", "inputs": [[[2, 7], 9]], "outputs": [[0, 1]]}),
            "class Solution:\n    def twoSum(self, nums, target):\n",
        ),
        apps_row(serde_json::json!(13), serde_json::Value::Null, ""),
    ];
    fs::write(&path, lines.join("\n")).unwrap();

    let d = load(&spec(Format::Apps, &path)).unwrap();

    assert_eq!(d.report.loaded, 3, "{}", d.report);
    assert_eq!(d.report.skipped.len(), 1);
    assert_eq!(d.report.skipped[0].row, 4);
    assert!(d.report.skipped[0].reason.contains("no tests"));

    let stdin = &d.problems[0];
    assert_eq!(stdin.id, "10");
    assert_eq!(stdin.title, "Echo the input.");
    assert_eq!(stdin.entry, Entry::StdinStdout);
    assert_eq!(stdin.checker, Checker::Exact);
    assert_eq!(stdin.tests[1].input, "2\n3");
    assert_eq!(stdin.references[0].id, "10/ref-0");
    assert!(!stdin.references[0].verified);

    let function = &d.problems[1];
    assert_eq!(function.entry, Entry::Function { name: "add".into() });
    assert_eq!(function.checker, Checker::LeetCodeStructural);
    // Every output is wrapped in a one-element list, so the wrapper is removed.
    assert_eq!(function.tests[0].input, "1, 2");
    assert_eq!(function.tests[0].expected, "3");
    assert_eq!(function.tests[1].input, "[1], True");
    assert_eq!(function.tests[1].expected, "None");

    let method = &d.problems[2];
    assert_eq!(
        method.entry,
        Entry::LeetCodeMethod {
            class_name: "Solution".into(),
            method_name: "twoSum".into()
        }
    );
    // `[0, 1]` has two elements: it is the value, not a wrapper.
    assert_eq!(method.tests[0].expected, "[0, 1]");
    assert_eq!(method.tests[0].input, "[2, 7], 9");
}

#[test]
fn coffe_reports_prompts_missing_from_either_file() {
    let dir = TempDir::new().unwrap();
    let wrap = |s: &str| {
        format!(
            "You are an expert Python programmer, and here is your task:\n{s}\nDo not give explanations, only give the Python code.\nPython Solution:\n```python"
        )
    };
    let (a, b, c) = (wrap("Problem A."), wrap("Problem B."), wrap("Problem C."));
    let solutions = serde_json::json!({
        "prompt2groundtruth": {
            &a: [["print(1)", true], ["print(2)", false], "junk"],
            &b: [["print(3)", true]],
        },
        "prompt2io": {&a: true, &b: true},
    });
    let tests = serde_json::json!({
        &a: [{"input": ["x\n"], "output": ["1\n"]}, {"input": "x", "output": "1"}],
        &c: [{"input": ["y\n"], "output": ["2\n"]}],
    });
    let stress = serde_json::json!({&a: ["def generate_input():\n    return '1\\n'\n"]});
    fs::write(dir.path().join("solutions.json"), solutions.to_string()).unwrap();
    fs::write(dir.path().join("testcases.json"), tests.to_string()).unwrap();
    fs::write(
        dir.path().join("stressful_testcases.json"),
        stress.to_string(),
    )
    .unwrap();

    let d = load(&spec(Format::Coffe, dir.path())).unwrap();

    assert_eq!(d.problems.len(), 1, "{}", d.report);
    let p = &d.problems[0];
    assert_eq!(p.description, "Problem A.");
    assert_eq!(p.title, "Problem A.");
    assert_eq!(p.references.len(), 2);
    assert!(!p.references[1].verified);
    assert_eq!(p.tests.len(), 1);
    assert_eq!(p.stress.len(), 1);
    let reasons: Vec<_> = d.report.skipped.iter().map(|i| i.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{}", d.report);
    assert!(reasons[0].contains("missing from solutions.json"));
    assert!(reasons[1].contains("no tests for this prompt"));
    assert_eq!(d.report.warnings.len(), 2, "{}", d.report);
}

fn venus_rows() -> Vec<VenusRow> {
    let runner = "==Code Submission==\n\nimport sys\nprint(Solution().add(*map(int, sys.stdin.read().split())))\n";
    let solution = |code: &str, passed: bool, time: f64| VenusSolution {
        code: code.to_string(),
        status: if passed { "success" } else { "error" }.to_string(),
        passed,
        time,
        memory: if passed { 1024.5 } else { f64::INFINITY },
        integral: if passed { time * 1024.5 } else { f64::INFINITY },
    };
    vec![
        VenusRow {
            problem_id: 1,
            title: "Add".to_string(),
            question_content: "Add two integers.".to_string(),
            difficulty: "Easy".to_string(),
            tags: vec!["Math".to_string(), "Array".to_string()],
            code_prompt: "class Solution:\n    def add(self, a: int, b: int) -> int:\n".to_string(),
            test_case_generator: "class TestCaseGenerator:\n    pass\n".to_string(),
            test_case_evaluator:
                "def evaluate(expected, actual):\n    return expected.strip() == actual.strip()\n"
                    .to_string(),
            test_case_runners: runner.to_string(),
            test_cases: r#"[{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}]"#
                .to_string(),
            solutions: vec![
                solution(
                    "class Solution:\n    def add(self, a, b): return a + b\n",
                    true,
                    12.5,
                ),
                solution(
                    "class Solution:\n    def add(self, a, b): return a - b\n",
                    false,
                    f64::INFINITY,
                ),
                solution(
                    "class Solution:\n    def add(self, a, b): return sum([a, b])\n",
                    true,
                    15.0,
                ),
            ],
        },
        VenusRow {
            problem_id: 2,
            title: String::new(),
            question_content: "No evaluator, no solutions.".to_string(),
            difficulty: String::new(),
            tags: Vec::new(),
            code_prompt: String::new(),
            test_case_generator: String::new(),
            test_case_evaluator: String::new(),
            test_case_runners: runner.to_string(),
            test_cases: r#"[{"input": "0 0", "output": "0"}]"#.to_string(),
            solutions: Vec::new(),
        },
    ]
}

fn expected_problems(language: Language) -> Vec<Problem> {
    venus_rows()
        .iter()
        .map(|r| r.to_problem(language).unwrap())
        .collect()
}

#[test]
fn venus_parquet_written_then_read_gives_back_the_same_problems() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("venus.parquet");
    write_venus_parquet(&path, &venus_rows()).unwrap();

    let d = load(&spec(Format::Venus(Language::Python), &path)).unwrap();

    assert!(d.report.skipped.is_empty(), "{}", d.report);
    assert_eq!(d.problems, expected_problems(Language::Python));
    let p = &d.problems[0];
    assert_eq!(p.id, "1");
    assert_eq!(p.tags, ["Math", "Array"]);
    assert!(
        matches!(&p.entry, Entry::VenusRunner { runner } if runner.contains("==Code Submission=="))
    );
    assert!(
        matches!(&p.checker, Checker::PythonEvaluator { source } if source.contains("def evaluate"))
    );
    assert_eq!(p.references.len(), 3);
    assert_eq!(
        p.references[0].recorded,
        Some(RecordedPerformance::new(12.5, 1024.5, 12.5 * 1024.5))
    );
    assert!(!p.references[1].verified);
    assert_eq!(p.references[1].recorded, None);
    assert_eq!(p.references[2].id, "1/ref-2");
    let q = &d.problems[1];
    assert_eq!(q.title, "2");
    assert_eq!(q.checker, Checker::Exact);
    assert!(q.starter_code.is_empty());
}

#[test]
fn venus_jsonl_written_then_read_gives_back_the_same_problems() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("venus.jsonl");
    write_venus_jsonl(&path, &venus_rows()).unwrap();

    let d = load(&spec(Format::Venus(Language::Cpp), &path)).unwrap();

    assert!(d.report.skipped.is_empty(), "{}", d.report);
    assert_eq!(d.problems, expected_problems(Language::Cpp));
    assert_eq!(d.problems[0].references[0].language, Language::Cpp);
    assert!(d.problems[0].starter_code.contains_key(&Language::Cpp));
    assert_eq!(d.problems[0].prelude, None);
}

#[test]
fn a_venus_folder_loads_every_file_and_reports_bad_rows() {
    let dir = TempDir::new().unwrap();
    let mut rows = venus_rows();
    write_venus_parquet(&dir.path().join("a.parquet"), &rows[..1]).unwrap();
    rows[1].test_case_runners = "print('no placeholder')".to_string();
    write_venus_parquet(&dir.path().join("b.parquet"), &rows[1..]).unwrap();
    // Python's json.dumps writes Infinity for unmeasured solutions.
    let line = r#"{"problem_id": 3, "title": "T", "question_content": "Q", "difficulty": "Hard", "tags": [], "code_prompt": "", "test_case_generator": "", "test_case_evaluator": "", "test_case_runners": "==Code Submission==", "test_cases": "[{\"input\": \"1\", \"output\": \"1\"}, {\"input\": 1}]", "solutions": [{"code": "x", "status": "error", "passed": false, "time": Infinity, "memory": Infinity, "integral": NaN}]}"#;
    fs::write(dir.path().join("c.jsonl"), format!("{line}\nnot json\n")).unwrap();

    let d = load(&spec(Format::Venus(Language::Python), dir.path())).unwrap();

    let ids: Vec<_> = d.problems.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["1", "3"]);
    assert_eq!(d.report.skipped.len(), 2, "{}", d.report);
    assert!(d.report.skipped[0].file.ends_with("b.parquet"));
    assert_eq!(d.report.skipped[0].row, 1);
    assert!(d.report.skipped[0].reason.contains("placeholder"));
    assert!(d.report.skipped[1].file.ends_with("c.jsonl"));
    assert_eq!(d.report.skipped[1].row, 2);
    assert_eq!(d.report.warnings.len(), 1, "{}", d.report);
    assert!(d.report.warnings[0].reason.contains("dropped 1 tests"));
    assert_eq!(d.problems[1].references[0].recorded, None);
}

#[test]
fn a_parquet_file_without_a_required_column_is_a_clear_error() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("thin.parquet");
    let batch = RecordBatch::try_from_iter(vec![(
        "problem_id",
        Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let err = load(&spec(Format::Venus(Language::Python), &path)).unwrap_err();

    assert!(matches!(err, LoadError::Malformed { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("thin.parquet"), "{message}");
    assert!(message.contains("question_content"), "{message}");
}

#[test]
fn missing_files_and_unknown_formats_are_clear_errors() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope.jsonl.gz");
    let err = load(&spec(Format::LeetCode, &missing)).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.jsonl.gz"), "{err}");

    let err = load(&spec(Format::Coffe, dir.path())).unwrap_err();
    assert!(err.to_string().contains("solutions.json"), "{err}");

    let err = "parquet:/x".parse::<DatasetSpec>().unwrap_err();
    assert!(matches!(err, LoadError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("`parquet`"), "{err}");
    let err = "no-colon".parse::<DatasetSpec>().unwrap_err();
    assert!(matches!(err, LoadError::BadSpec { .. }), "{err}");

    fs::write(dir.path().join("solutions.json"), "{").unwrap();
    let err = load(&spec(Format::Coffe, dir.path())).unwrap_err();
    assert!(matches!(err, LoadError::Malformed { .. }), "{err}");
}

#[test]
fn specs_parse_and_print_as_format_colon_path() {
    let s: DatasetSpec = "venus-cpp:/data/venus.parquet".parse().unwrap();
    assert_eq!(s.format, Format::Venus(Language::Cpp));
    assert_eq!(s.path, Path::new("/data/venus.parquet"));
    assert_eq!(s.to_string(), "venus-cpp:/data/venus.parquet");
    let s: DatasetSpec = "venus:v.jsonl".parse().unwrap();
    assert_eq!(s.format, Format::Venus(Language::Python));
    assert_eq!(s.to_string(), "venus:v.jsonl");
    for (text, format) in [
        ("apps", Format::Apps),
        ("coffe", Format::Coffe),
        ("leetcode", Format::LeetCode),
        ("ENAMEL", Format::Enamel),
    ] {
        let s: DatasetSpec = format!("{text}:p").parse().unwrap();
        assert_eq!(s.format, format);
    }
}
