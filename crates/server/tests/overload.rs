//! Overload: many concurrent long requests against a small queue are either answered right or
//! refused fast with `Retry-After`; batches are admitted whole or not at all; the server is
//! healthy afterwards.

mod support;

use std::time::{Duration, Instant};

use afterburner_testkit::client;
use serde_json::json;
use support::*;

fn sleeper(id: usize) -> serde_json::Value {
    json!({
        "code": format!("import time\ntime.sleep(0.8)\nprint('answer-{id}')"),
        "language": "python",
    })
}

#[test]
fn concurrent_long_requests_are_answered_right_or_refused_fast() {
    let server = start(afterburner_server::ServerConfig {
        queue: 2,
        ..config()
    });
    let addr = server.addr();
    let outcomes: Vec<(usize, u16, Option<String>, Duration, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|id| {
                s.spawn(move || {
                    let start = Instant::now();
                    let r = post(addr, "/execute", &sleeper(id));
                    (
                        id,
                        r.status,
                        r.header("retry-after").map(str::to_string),
                        start.elapsed(),
                        r.text(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut answered = 0;
    let mut refused = 0;
    for (id, status, retry_after, elapsed, body) in &outcomes {
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(
                    v["output_dict"]["stdout"],
                    format!("answer-{id}\n"),
                    "request {id} got its own answer"
                );
                answered += 1;
            }
            503 => {
                let secs: u64 = retry_after
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("503 without a numeric Retry-After: {body}"));
                assert!((1..=60).contains(&secs));
                assert!(
                    *elapsed < Duration::from_millis(1500),
                    "a refusal is immediate, not after waiting for a worker: {elapsed:?}"
                );
                assert!(body.contains("over capacity"), "{body}");
                refused += 1;
            }
            other => panic!("request {id}: unexpected status {other}: {body}"),
        }
    }
    assert_eq!(
        answered + refused,
        12,
        "every request got exactly one answer"
    );
    assert!(
        answered >= 3,
        "one running and two queued are admitted: {answered}"
    );
    assert!(refused >= 1, "a queue of 2 cannot hold 12 requests");

    assert_eq!(json_with(&get(addr, "/healthz"), 200)["status"], "ok");
    let after = json_with(&post(addr, "/execute", &sleeper(99)), 200);
    assert_eq!(after["output_dict"]["stdout"], "answer-99\n");
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains(&format!(
            "afterburner_jobs_refused_total{{reason=\"queue_full\"}} {refused}"
        )),
        "{metrics}"
    );
}

#[test]
fn a_batch_is_admitted_whole_or_refused_whole() {
    let server = start(afterburner_server::ServerConfig {
        queue: 2,
        ..config()
    });
    let addr = server.addr();
    let item = |i: usize| {
        json!({"response": well_formed(&format!("print({i})")),
               "tests": [{"input": "", "expected": format!("{i}")}], "instruction": "time"})
    };
    let too_big = post(
        addr,
        "/v1/reward",
        &json!({"items": [item(1), item(2), item(3)]}),
    );
    let e = error_with(&too_big, 413);
    assert!(
        e.contains("3 programs") && e.contains("smaller batches"),
        "{e}"
    );

    // Fill the worker and the queue, then ask for two more at once.
    std::thread::scope(|s| {
        let mut busy = vec![s.spawn(move || post(addr, "/execute", &sleeper(0)).status)];
        wait_for_queue(addr, 1, 0);
        for id in 1..3 {
            busy.push(s.spawn(move || post(addr, "/execute", &sleeper(id)).status));
            wait_for_queue(addr, 1, id as u64);
        }
        let refused = post(addr, "/v1/reward", &json!({"items": [item(1), item(2)]}));
        error_with(&refused, 503);
        let st = json_with(&get(addr, "/status"), 200);
        assert_eq!(
            st["queue"]["depth"], 2,
            "no part of the refused batch was queued"
        );
        for h in busy {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    let ok = json_with(
        &post(addr, "/v1/reward", &json!({"items": [item(1), item(2)]})),
        200,
    );
    for r in ok["results"].as_array().unwrap() {
        assert_eq!(r["status"], "accepted", "{r}");
    }
}

#[test]
fn a_queued_request_whose_client_left_is_not_run() {
    let server = start(config());
    let addr = server.addr();
    std::thread::scope(|s| {
        let first = s.spawn(move || post(addr, "/execute", &sleeper(1)).status);
        std::thread::sleep(Duration::from_millis(300));
        let gave_up = client::post_json(addr, "/execute", &sleeper(2), Duration::from_millis(200));
        assert!(gave_up.is_err(), "the client timed out and left");
        assert_eq!(first.join().unwrap(), 200);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get(addr, "/metrics").text();
        if m.contains("afterburner_jobs_cancelled_total 1") {
            assert!(
                m.contains("afterburner_runs_total{outcome=\"accepted\"} 1"),
                "only the first program ran:\n{m}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned job was run:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
