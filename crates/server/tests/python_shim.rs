//! The verl shim (`python/afterburner_verl.py`) run by python3 against a real server: scores,
//! ground truths in each accepted form, and waiting out a full queue.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;

const SHIM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python");

/// Runs `compute_score` on the samples with python3; returns its result.
fn compute_score(url: &str, samples: &Value) -> Value {
    let script = "import json, sys\n\
                  sys.path.insert(0, sys.argv[1])\n\
                  import afterburner_verl\n\
                  s = json.loads(sys.argv[3])\n\
                  out = afterburner_verl.compute_score(s['data_sources'], s['solution_strs'], \
                  s['ground_truths'], s['extra_infos'], url=sys.argv[2])\n\
                  print(json.dumps(out))\n";
    let out = Command::new("python3")
        .args(["-c", script, SHIM_DIR, url, &samples.to_string()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the shim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the shim prints JSON")
}

fn squares() -> Value {
    json!([{"input": "3\n", "expected": "9\n"}, {"input": "12\n", "expected": "144\n"}])
}

#[test]
fn the_verl_shim_scores_a_batch_through_v1_reward() {
    let server = start(config());
    let baseline = json!({"passed": true, "time_ms": 50000.0, "memory_kb": 1e6, "integral": 1e11});
    let samples = json!({
        "data_sources": ["afterburner", "afterburner", "afterburner"],
        "solution_strs": [
            well_formed("n = int(input())\nprint(n * n)"),
            well_formed("print(0)"),
            "Here it is:\n```python\nn = int(input())\nprint(n ** 2)\n```",
        ],
        "ground_truths": [
            // A JSON string, as verl Parquet files usually carry it.
            json!({"tests": squares(), "instruction": "time", "baseline": baseline}).to_string(),
            // A dict.
            {"tests": squares(), "instruction": "memory", "baseline": baseline},
            // The instruction only; the rest from extra_info.
            {"instruction": "integral"},
        ],
        "extra_infos": [null, null, {"afterburner": {"tests": squares(), "baseline": baseline}}],
    });
    let scores = compute_score(&server.url(), &samples);
    let scores = scores.as_array().expect("a list");
    assert_eq!(scores.len(), 3);
    for s in scores {
        for key in ["score", "format", "correctness", "efficiency", "passed"] {
            assert!(s[key].is_f64(), "`{key}` is a float in {s}");
        }
    }
    assert_eq!(scores[0]["passed"], 1.0);
    assert_eq!(scores[0]["correctness"], 0.5);
    assert!(
        scores[0]["efficiency"].as_f64().unwrap() > 0.0,
        "{}",
        scores[0]
    );
    assert_eq!(scores[1]["passed"], 0.0);
    assert!((scores[1]["score"].as_f64().unwrap() - (0.2 - 0.5)).abs() < 1e-9);
    assert_eq!(
        scores[2]["passed"], 1.0,
        "code outside <solution> still runs"
    );
    assert_eq!(scores[2]["format"], -1.0);
}

#[test]
fn the_verl_shim_waits_out_a_full_queue() {
    let server = start(afterburner_server::ServerConfig {
        queue: 1,
        ..config()
    });
    let addr = server.addr();
    let sleeper = json!({"code": "import time\ntime.sleep(1)\nprint(1)", "language": "python"});
    let samples = json!({
        "data_sources": ["a"],
        "solution_strs": [well_formed("n = int(input())\nprint(n * n)")],
        "ground_truths": [{"tests": squares(), "instruction": "time"}],
        "extra_infos": [null],
    });
    std::thread::scope(|s| {
        let mut busy = vec![s.spawn(|| post(addr, "/execute", &sleeper).status)];
        wait_for_queue(addr, 1, 0);
        busy.push(s.spawn(|| post(addr, "/execute", &sleeper).status));
        wait_for_queue(addr, 1, 1);
        let scores = compute_score(&server.url(), &samples);
        assert_eq!(scores[0]["passed"], 1.0, "{scores}");
        for b in busy {
            assert_eq!(b.join().unwrap(), 200);
        }
    });
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("afterburner_jobs_refused_total{reason=\"queue_full\"}"),
        "the shim was refused at least once and retried:\n{metrics}"
    );
}
