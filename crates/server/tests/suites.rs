//! A loaded problem is judged on the suite `calibrate` and `eval` measure on: its tests and its
//! stress inputs, prepared on first use, cached on disk under calibrate's key and reused; ENAMEL
//! problems (generated inputs only) are judged too.

mod support;

use afterburner_benchmarks::{DatasetSpec, Format, load};
use serde_json::json;
use support::*;

#[test]
fn a_coffe_problem_is_judged_on_its_tests_and_stress_inputs_prepared_once_and_cached() {
    let spec = DatasetSpec::new(Format::Coffe, format!("{DATA}/coffe-code-contests"));
    let dataset = load(&spec).unwrap();
    let problem = dataset.problem("cc-4a4036eefa").unwrap();
    assert!(!problem.stress.is_empty());
    let cache = tempfile::tempdir().unwrap();
    let server = start(afterburner_server::ServerConfig {
        datasets: vec![spec],
        cache_dir: Some(cache.path().to_path_buf()),
        ..config()
    });
    let ask = json!({
        "problem_id": problem.id,
        "language": "python",
        "code": problem.references[0].code,
    });
    let first = post(server.addr(), "/v1/evaluate", &ask);
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json().unwrap();
    assert_eq!(first["passed"], true, "{first}");
    let tests = first["tests"].as_u64().unwrap() as usize;
    assert!(
        tests > problem.tests.len(),
        "{tests} cases: the stress inputs are missing (the problem has {} tests)",
        problem.tests.len()
    );
    let stress_files: Vec<_> = std::fs::read_dir(cache.path().join("stress"))
        .expect("the stress suite is cached in the cache folder")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cc-4a4036eefa-")
        })
        .collect();
    assert_eq!(stress_files.len(), 1);
    let second = post(server.addr(), "/v1/evaluate", &ask).json().unwrap();
    assert_eq!(second["tests"].as_u64().unwrap() as usize, tests);
    // A wrong program fails on the same suite.
    let wrong = post(
        server.addr(),
        "/v1/evaluate",
        &json!({"problem_id": problem.id, "language": "python", "code": "print('NO')"}),
    )
    .json()
    .unwrap();
    assert_eq!(wrong["passed"], false, "{wrong}");
    server.shutdown().unwrap();
}

#[test]
fn an_enamel_problem_is_judged_on_its_generated_inputs() {
    let spec = DatasetSpec::new(Format::Enamel, format!("{DATA}/enamel"));
    let dataset = load(&spec).unwrap();
    let problem = dataset
        .problems
        .iter()
        .find(|p| p.tests.is_empty() && !p.references.is_empty())
        .expect("an ENAMEL problem without fixed tests");
    let cache = tempfile::tempdir().unwrap();
    let server = start(afterburner_server::ServerConfig {
        datasets: vec![spec],
        cache_dir: Some(cache.path().to_path_buf()),
        ..config()
    });
    let answer = post(
        server.addr(),
        "/v1/evaluate",
        &json!({
            "problem_id": problem.id,
            "language": "python",
            "code": problem.references[0].code,
        }),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json().unwrap();
    assert_eq!(answer["passed"], true, "{answer}");
    assert!(answer["tests"].as_u64().unwrap() > 0, "{answer}");
    server.shutdown().unwrap();
}
