//! The Python scripts a harness runs in the sandbox (the driver of a solution, the dataset's
//! evaluator, the stress-input generator, and the helpers they share) and the framing of what
//! goes to them on stdin and comes back on stdout.

use afterburner_sandbox::{RunResult, clip};
use serde_json::Value;

/// Helpers every script starts with (framing, literal conversion).
pub(super) const COMMON_PY: &str = include_str!("common.py");
/// Runs a solution over every test input in one process.
pub(super) const DRIVER_PY: &str = include_str!("driver.py");
/// Runs a dataset's evaluator code on (input, expected, actual) triples.
pub(super) const EVALUATOR_PY: &str = include_str!("evaluator.py");
/// Runs a dataset's stress-input generator.
pub(super) const GENERATOR_PY: &str = include_str!("generator.py");

/// Why a helper process left an item without a record: its status, message and stderr.
pub(super) fn stopped_before(who: &str, what: &str, result: &RunResult) -> String {
    format!(
        "{who} stopped before {what} ({}{}; stderr: {})",
        result.measurement.status,
        result
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default(),
        clip(&result.stderr_text(), 500)
    )
}

/// Frames a header and inputs for the harness scripts' stdin: the header's JSON on one line,
/// then each input as its length in bytes on a line and its bytes.
pub(super) fn frame(header: &Value, frames: &[&[u8]]) -> Vec<u8> {
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    for f in frames {
        out.extend_from_slice(f.len().to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(f);
    }
    out
}

/// The JSON records of a script's stdout; lines that are not JSON objects are ignored.
pub(super) fn records(stdout: &[u8]) -> Vec<serde_json::Map<String, Value>> {
    stdout
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The string field `key` of a record, if it is one.
pub(super) fn str_field(m: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The index of a per-test record, if it is one for a test below `n`.
pub(super) fn index_field(m: &serde_json::Map<String, Value>, n: usize) -> Option<usize> {
    let i = m.get("i")?.as_u64()? as usize;
    (i < n).then_some(i)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn frames_carry_lengths_so_inputs_may_hold_anything() {
        let header = json!({"count": 2});
        let out = frame(&header, &[b"a\nb", b""]);
        assert_eq!(out, b"{\"count\":2}\n3\na\nb0\n");
    }

    #[test]
    fn only_json_object_lines_are_records() {
        let recs = records(b"{\"i\": 0}\nSuccess\n[1]\n{\"i\": 1, \"st\": \"ok\"}\n{broken\n");
        assert_eq!(recs.len(), 2);
        assert_eq!(index_field(&recs[1], 2), Some(1));
        assert_eq!(index_field(&recs[1], 1), None);
    }
}
