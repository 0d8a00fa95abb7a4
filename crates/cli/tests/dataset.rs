//! The `afterburner dataset ls` contract.

mod support;

use serde_json::Value;
use support::*;

#[test]
fn ls_json_lists_every_problem_with_its_counts() {
    let spec = format!("coffe:{DATA}/coffe-code-contests");
    let out = afterburner(&["dataset", "ls", "--dataset", &spec, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 43);
    for row in rows {
        for key in ["id", "title", "tests", "stress_tests", "solutions"] {
            assert!(row.get(key).is_some(), "missing {key}: {row}");
        }
    }
    let first = &rows[0];
    assert_eq!(first["id"], "cc-1827c92676");
    assert_eq!(first["tests"], 201);
    assert_eq!(first["stress_tests"], 5);
    assert_eq!(first["solutions"], 117);
    // The load report goes to stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("43 loaded, 0 skipped"), "{stderr}");

    let spec = format!("enamel:{DATA}/enamel");
    let out = afterburner(&["dataset", "ls", "--dataset", &spec, "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["stress_tests"], 20, "8 + 4 + 4 + 4 ENAMEL inputs");
}

#[test]
fn ls_prints_a_table_and_the_load_warnings() {
    let spec = format!("leetcode:{DATA}/leetcode/LeetCodeDataset-v0.3.1-test.jsonl.gz");
    let out = afterburner(&["dataset", "ls", "--dataset", &spec]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("id"), "{stdout}");
    assert!(
        stdout.contains("number-of-subsequences-with-odd-sum"),
        "{stdout}"
    );
    assert!(stdout.contains("146 problems"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("146 loaded") && stderr.contains("warning"),
        "{stderr}"
    );
}

#[test]
fn bad_specs_fail_with_a_reason() {
    let out = afterburner(&["dataset", "ls", "--dataset", "nope:/x"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown dataset format `nope`"), "{stderr}");
    let out = afterburner(&["dataset", "ls", "--dataset", "coffe:/does/not/exist"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/does/not/exist"), "{stderr}");
}
