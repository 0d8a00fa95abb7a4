//! The paper's Venus dataset (Hugging Face `Elfsong/Venus`): Parquet, or JSONL with the same fields.
//!
//! Row fields: `problem_id, title, question_content, difficulty, tags, code_prompt,
//! test_case_generator, test_case_evaluator, test_case_runners, test_cases` (a JSON string of a
//! list of `{input, output}`) and `solutions` (a list of `{code, status, passed, time, memory,
//! integral}`: human submissions re-run upstream, time in ms, memory in kB, integral in kB·ms).
//! The rows do not name their language (Venus has one config per language), so the
//! [`Format::Venus`](crate::Format::Venus) spec does.
//!
//! A problem's entry is its runner, its checker the `evaluate(expected, actual)` evaluator
//! (exact comparison when there is none). `test_case_generator` is kept in [`VenusRow`] but not
//! imported: it makes moderate-size random tests and needs a solution to compute their outputs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use afterburner_sandbox::Language;
use arrow_array::builder::{ListBuilder, OffsetBufferBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_schema::{DataType, Field, Fields};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Deserializer, Serialize};

use super::{Collector, for_each_line, parse_json};
use crate::dataset::LoadError;
use crate::problem::{
    Checker, Entry, Problem, RecordedPerformance, ReferenceSolution, TestCase, VENUS_PLACEHOLDER,
};

/// One row of a Venus file, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VenusRow {
    /// LeetCode question id.
    pub problem_id: i64,
    /// Problem title.
    #[serde(default)]
    pub title: String,
    /// Problem statement.
    pub question_content: String,
    /// `Easy`, `Medium` or `Hard`.
    #[serde(default)]
    pub difficulty: String,
    /// Topic tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Starter code in the row's language.
    #[serde(default)]
    pub code_prompt: String,
    /// Python `TestCaseGenerator` class used upstream to make `test_cases`.
    #[serde(default)]
    pub test_case_generator: String,
    /// Python source defining `evaluate(expected, actual) -> bool`.
    #[serde(default)]
    pub test_case_evaluator: String,
    /// Runner source with the `==Code Submission==` placeholder.
    pub test_case_runners: String,
    /// JSON string: a list of `{"input": ..., "output": ...}`.
    pub test_cases: String,
    /// Human solutions with their upstream measurements.
    #[serde(default)]
    pub solutions: Vec<VenusSolution>,
}

/// One human solution of a Venus row, with what the upstream sandbox measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VenusSolution {
    /// Source code.
    pub code: String,
    /// Upstream run status (`success`, `error`...).
    #[serde(default)]
    pub status: String,
    /// Whether it passed all tests upstream.
    pub passed: bool,
    /// Run time in ms (infinite when not measured; `null` in JSON).
    #[serde(default = "infinity", deserialize_with = "null_as_infinity")]
    pub time: f64,
    /// Peak memory in kB (infinite when not measured).
    #[serde(default = "infinity", deserialize_with = "null_as_infinity")]
    pub memory: f64,
    /// Memory-time integral in kB·ms (infinite when not measured).
    #[serde(default = "infinity", deserialize_with = "null_as_infinity")]
    pub integral: f64,
}

fn infinity() -> f64 {
    f64::INFINITY
}

fn null_as_infinity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::INFINITY))
}

/// Imports Python rows need: the reference harness ran runners after these imports.
const PYTHON_PRELUDE: &str = "\
import bisect, collections, copy, functools, heapq, io, itertools, math, re, string, sys
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict, defaultdict, deque
from functools import cache, lru_cache, reduce
from heapq import heapify, heappop, heappush
from itertools import accumulate, combinations, permutations, product, zip_longest
from math import ceil, factorial, floor, gcd, inf, sqrt
from typing import Dict, List, Optional, Set, Tuple
";

impl VenusRow {
    /// The problem this row describes, for solutions in `language`; the error says why not.
    pub fn to_problem(&self, language: Language) -> Result<Problem, String> {
        self.convert(language).map(|(problem, _)| problem)
    }

    /// The problem and the number of tests dropped as malformed.
    fn convert(&self, language: Language) -> Result<(Problem, usize), String> {
        let id = self.problem_id.to_string();
        if self.test_case_runners.trim().is_empty() {
            return Err(format!("{id}: empty `test_case_runners`"));
        }
        if !self.test_case_runners.contains(VENUS_PLACEHOLDER) {
            return Err(format!(
                "{id}: `test_case_runners` has no `{VENUS_PLACEHOLDER}` placeholder"
            ));
        }
        let raw: Vec<serde_json::Value> = parse_json(&self.test_cases)
            .map_err(|e| format!("{id}: `test_cases` is not a JSON list: {e}"))?;
        let total = raw.len();
        let tests: Vec<TestCase> = raw
            .iter()
            .filter_map(|case| {
                Some(TestCase {
                    input: case.get("input")?.as_str()?.to_string(),
                    expected: case.get("output")?.as_str()?.to_string(),
                })
            })
            .collect();
        if tests.is_empty() {
            return Err(format!("{id}: no usable tests ({total} in `test_cases`)"));
        }
        let dropped = total - tests.len();
        let checker = if self.test_case_evaluator.trim().is_empty() {
            Checker::Exact
        } else {
            Checker::PythonEvaluator {
                source: self.test_case_evaluator.clone(),
            }
        };
        let references = self
            .solutions
            .iter()
            .enumerate()
            .map(|(k, s)| ReferenceSolution {
                id: format!("{id}/ref-{k}"),
                language,
                code: s.code.clone(),
                verified: s.passed,
                recorded: [s.time, s.memory, s.integral]
                    .iter()
                    .all(|v| v.is_finite())
                    .then_some(RecordedPerformance::new(s.time, s.memory, s.integral)),
            })
            .collect();
        let mut starter_code = BTreeMap::new();
        if !self.code_prompt.trim().is_empty() {
            starter_code.insert(language, self.code_prompt.clone());
        }
        let problem = Problem {
            title: if self.title.trim().is_empty() {
                id.clone()
            } else {
                self.title.clone()
            },
            id,
            description: self.question_content.clone(),
            difficulty: Some(self.difficulty.clone()).filter(|d| !d.trim().is_empty()),
            tags: self.tags.clone(),
            starter_code,
            entry: Entry::VenusRunner {
                runner: self.test_case_runners.clone(),
            },
            prelude: (language == Language::Python).then(|| PYTHON_PRELUDE.to_string()),
            tests,
            checker,
            stress: Vec::new(),
            references,
        };
        Ok((problem, dropped))
    }
}

/// Loads a Venus `.parquet` or `.jsonl[.gz]` file, or every such file in a folder (sorted by name).
pub(crate) fn load(
    path: &Path,
    language: Language,
    collector: &mut Collector,
) -> Result<(), LoadError> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| LoadError::io("list", path, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| is_parquet(p) || is_jsonl(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LoadError::malformed(
                path,
                "Venus folder",
                "it holds no .parquet or .jsonl files",
            ));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    for file in &files {
        let mut each = |row: usize, parsed: Result<VenusRow, String>, c: &mut Collector| {
            match parsed.and_then(|r| r.convert(language)) {
                Ok((problem, dropped)) => {
                    if dropped > 0 {
                        c.warn(
                            file,
                            row,
                            format!(
                                "{}: dropped {dropped} tests that are not {{\"input\": text, \"output\": text}}",
                                problem.id
                            ),
                        );
                    }
                    c.push(problem, file, row);
                }
                Err(reason) => c.skip(file, row, reason),
            }
        };
        if is_parquet(file) {
            read_parquet(file, collector, &mut each)?;
        } else {
            for_each_line(file, collector, |row, line, c| {
                let parsed =
                    parse_json::<VenusRow>(line).map_err(|e| format!("not a Venus row: {e}"));
                each(row, parsed, c);
            })?;
        }
    }
    Ok(())
}

fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
}

fn is_jsonl(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".jsonl", ".jsonl.gz", ".json", ".ndjson"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Reads every row of a Venus Parquet file, 1-based across record batches.
fn read_parquet(
    path: &Path,
    collector: &mut Collector,
    each: &mut impl FnMut(usize, Result<VenusRow, String>, &mut Collector),
) -> Result<(), LoadError> {
    let malformed =
        |e: &dyn std::fmt::Display| LoadError::malformed(path, "Venus Parquet", e.to_string());
    let file = File::open(path).map_err(|e| LoadError::io("open", path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| malformed(&e))?;
    let mut row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| malformed(&e))?;
        let columns = Columns::new(&batch).map_err(|e| malformed(&e))?;
        for i in 0..batch.num_rows() {
            row += 1;
            each(row, columns.row(i), collector);
        }
    }
    Ok(())
}

/// The columns of one record batch, looked up by name.
struct Columns<'a> {
    problem_id: &'a ArrayRef,
    title: Option<&'a ArrayRef>,
    question_content: &'a ArrayRef,
    difficulty: Option<&'a ArrayRef>,
    tags: Option<&'a ArrayRef>,
    code_prompt: Option<&'a ArrayRef>,
    test_case_generator: Option<&'a ArrayRef>,
    test_case_evaluator: Option<&'a ArrayRef>,
    test_case_runners: &'a ArrayRef,
    test_cases: &'a ArrayRef,
    solutions: Option<&'a ArrayRef>,
}

impl<'a> Columns<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, String> {
        let required = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("it has no `{name}` column"))
        };
        Ok(Columns {
            problem_id: required("problem_id")?,
            title: batch.column_by_name("title"),
            question_content: required("question_content")?,
            difficulty: batch.column_by_name("difficulty"),
            tags: batch.column_by_name("tags"),
            code_prompt: batch.column_by_name("code_prompt"),
            test_case_generator: batch.column_by_name("test_case_generator"),
            test_case_evaluator: batch.column_by_name("test_case_evaluator"),
            test_case_runners: required("test_case_runners")?,
            test_cases: required("test_cases")?,
            solutions: batch.column_by_name("solutions"),
        })
    }

    fn row(&self, i: usize) -> Result<VenusRow, String> {
        let optional = |column: Option<&ArrayRef>, name: &str| -> Result<String, String> {
            match column {
                Some(c) => Ok(string_at(c, i, name)?.unwrap_or_default()),
                None => Ok(String::new()),
            }
        };
        let required = |column: &ArrayRef, name: &str| -> Result<String, String> {
            string_at(column, i, name)?.ok_or_else(|| format!("`{name}` is null"))
        };
        let tags = match self.tags {
            Some(column) => string_list_at(column, i, "tags")?,
            None => Vec::new(),
        };
        let solutions = match self.solutions {
            Some(column) => solutions_at(column, i)?,
            None => Vec::new(),
        };
        Ok(VenusRow {
            problem_id: int_at(self.problem_id, i, "problem_id")?,
            title: optional(self.title, "title")?,
            question_content: required(self.question_content, "question_content")?,
            difficulty: optional(self.difficulty, "difficulty")?,
            tags,
            code_prompt: optional(self.code_prompt, "code_prompt")?,
            test_case_generator: optional(self.test_case_generator, "test_case_generator")?,
            test_case_evaluator: optional(self.test_case_evaluator, "test_case_evaluator")?,
            test_case_runners: required(self.test_case_runners, "test_case_runners")?,
            test_cases: required(self.test_cases, "test_cases")?,
            solutions,
        })
    }
}

/// The string at row `i`, `None` when null.
fn string_at(column: &dyn Array, i: usize, name: &str) -> Result<Option<String>, String> {
    if column.is_null(i) {
        return Ok(None);
    }
    let value = if let Some(a) = column.as_string_opt::<i32>() {
        a.value(i)
    } else if let Some(a) = column.as_string_opt::<i64>() {
        a.value(i)
    } else if let Some(a) = column.as_string_view_opt() {
        a.value(i)
    } else {
        return Err(format!(
            "`{name}` is {} where a string was expected",
            column.data_type()
        ));
    };
    Ok(Some(value.to_string()))
}

/// The integer at row `i` of an integer (or numeric string) column.
fn int_at(column: &dyn Array, i: usize, name: &str) -> Result<i64, String> {
    if column.is_null(i) {
        return Err(format!("`{name}` is null"));
    }
    macro_rules! try_int {
        ($($t:ty),*) => {$(
            if let Some(a) = column.as_primitive_opt::<$t>() {
                return i64::try_from(a.value(i)).map_err(|_| format!("`{name}` is out of range"));
            }
        )*};
    }
    try_int!(
        Int64Type, Int32Type, Int16Type, Int8Type, UInt64Type, UInt32Type, UInt16Type, UInt8Type
    );
    match string_at(column, i, name) {
        Ok(Some(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{name}` {s:?} is not an integer")),
        _ => Err(format!(
            "`{name}` is {} where an integer was expected",
            column.data_type()
        )),
    }
}

/// The number at row `i` of a numeric column; null reads as infinity (not measured).
fn float_at(column: &dyn Array, i: usize, name: &str) -> Result<f64, String> {
    if column.is_null(i) {
        return Ok(f64::INFINITY);
    }
    if let Some(a) = column.as_primitive_opt::<Float64Type>() {
        return Ok(a.value(i));
    }
    if let Some(a) = column.as_primitive_opt::<Float32Type>() {
        return Ok(f64::from(a.value(i)));
    }
    if let Some(a) = column.as_primitive_opt::<Int64Type>() {
        return Ok(a.value(i) as f64);
    }
    if let Some(a) = column.as_primitive_opt::<Int32Type>() {
        return Ok(f64::from(a.value(i)));
    }
    Err(format!(
        "`{name}` is {} where a number was expected",
        column.data_type()
    ))
}

/// The list value at row `i` of a list or large-list column; `None` when null.
fn list_at(column: &dyn Array, i: usize, name: &str) -> Result<Option<ArrayRef>, String> {
    if column.is_null(i) {
        return Ok(None);
    }
    if let Some(a) = column.as_list_opt::<i32>() {
        Ok(Some(a.value(i)))
    } else if let Some(a) = column.as_list_opt::<i64>() {
        Ok(Some(a.value(i)))
    } else {
        Err(format!(
            "`{name}` is {} where a list was expected",
            column.data_type()
        ))
    }
}

fn string_list_at(column: &dyn Array, i: usize, name: &str) -> Result<Vec<String>, String> {
    let Some(values) = list_at(column, i, name)? else {
        return Ok(Vec::new());
    };
    (0..values.len())
        .filter_map(|k| string_at(&values, k, name).transpose())
        .collect()
}

fn solutions_at(column: &dyn Array, i: usize) -> Result<Vec<VenusSolution>, String> {
    let Some(values) = list_at(column, i, "solutions")? else {
        return Ok(Vec::new());
    };
    let items = values.as_struct_opt().ok_or_else(|| {
        format!(
            "`solutions` items are {} where a struct was expected",
            values.data_type()
        )
    })?;
    let field = |name: &str| {
        items
            .column_by_name(name)
            .ok_or_else(|| format!("`solutions` items have no `{name}` field"))
    };
    let (code, status, passed) = (
        field("code")?,
        items.column_by_name("status"),
        field("passed")?,
    );
    let (time, memory, integral) = (field("time")?, field("memory")?, field("integral")?);
    let passed = passed.as_boolean_opt().ok_or_else(|| {
        format!(
            "`solutions.passed` is {} where a boolean was expected",
            passed.data_type()
        )
    })?;
    (0..items.len())
        .map(|k| {
            Ok(VenusSolution {
                code: string_at(code, k, "solutions.code")?
                    .ok_or_else(|| format!("solution {k}: `code` is null"))?,
                status: match status {
                    Some(s) => string_at(s, k, "solutions.status")?.unwrap_or_default(),
                    None => String::new(),
                },
                passed: passed.is_valid(k) && passed.value(k),
                time: float_at(time, k, "solutions.time")?,
                memory: float_at(memory, k, "solutions.memory")?,
                integral: float_at(integral, k, "solutions.integral")?,
            })
        })
        .collect()
}

/// Writes rows as a Venus Parquet file (Snappy-compressed, `solutions` as a list of structs).
pub fn write_venus_parquet(path: &Path, rows: &[VenusRow]) -> Result<(), LoadError> {
    let fail = |e: &dyn std::fmt::Display| LoadError::Io {
        action: "write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let batch = record_batch(rows).map_err(|e| fail(&e))?;
    let file = File::create(path).map_err(|e| LoadError::io("create", path, e))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(|e| fail(&e))?;
    writer.write(&batch).map_err(|e| fail(&e))?;
    writer.close().map_err(|e| fail(&e))?;
    Ok(())
}

fn record_batch(rows: &[VenusRow]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let strings = |get: fn(&VenusRow) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(get(r))).collect::<StringArray>())
    };
    let mut tags = ListBuilder::new(StringBuilder::new());
    for row in rows {
        for tag in &row.tags {
            tags.values().append_value(tag);
        }
        tags.append(true);
    }

    let solutions: Vec<&VenusSolution> = rows.iter().flat_map(|r| &r.solutions).collect();
    let fields = Fields::from(vec![
        Field::new("code", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("passed", DataType::Boolean, true),
        Field::new("time", DataType::Float64, true),
        Field::new("memory", DataType::Float64, true),
        Field::new("integral", DataType::Float64, true),
    ]);
    let items = StructArray::try_new(
        fields.clone(),
        vec![
            Arc::new(
                solutions
                    .iter()
                    .map(|s| Some(s.code.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                solutions
                    .iter()
                    .map(|s| Some(s.status.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                solutions
                    .iter()
                    .map(|s| Some(s.passed))
                    .collect::<BooleanArray>(),
            ),
            Arc::new(
                solutions
                    .iter()
                    .map(|s| Some(s.time))
                    .collect::<Float64Array>(),
            ),
            Arc::new(
                solutions
                    .iter()
                    .map(|s| Some(s.memory))
                    .collect::<Float64Array>(),
            ),
            Arc::new(
                solutions
                    .iter()
                    .map(|s| Some(s.integral))
                    .collect::<Float64Array>(),
            ),
        ],
        None,
    )?;
    let mut offsets = OffsetBufferBuilder::<i32>::new(rows.len());
    for row in rows {
        offsets.push_length(row.solutions.len());
    }
    let solutions = ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
        offsets.finish(),
        Arc::new(items),
        None,
    )?;

    RecordBatch::try_from_iter(vec![
        (
            "problem_id",
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.problem_id))
                    .collect::<Int64Array>(),
            ) as ArrayRef,
        ),
        ("title", strings(|r| &r.title)),
        ("question_content", strings(|r| &r.question_content)),
        ("difficulty", strings(|r| &r.difficulty)),
        ("tags", Arc::new(tags.finish())),
        ("code_prompt", strings(|r| &r.code_prompt)),
        ("test_case_generator", strings(|r| &r.test_case_generator)),
        ("test_case_evaluator", strings(|r| &r.test_case_evaluator)),
        ("test_case_runners", strings(|r| &r.test_case_runners)),
        ("test_cases", strings(|r| &r.test_cases)),
        ("solutions", Arc::new(solutions)),
    ])
}

/// Writes rows as Venus JSONL, one row per line (non-finite measurements become `null`).
pub fn write_venus_jsonl(path: &Path, rows: &[VenusRow]) -> Result<(), LoadError> {
    let io = |e: std::io::Error| LoadError::io("write", path, e);
    let file = File::create(path).map_err(|e| LoadError::io("create", path, e))?;
    let mut out = BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut out, row).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)
}
