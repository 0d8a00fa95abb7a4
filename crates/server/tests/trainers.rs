//! The trainer integrations against a real server: verl's reward loop shim
//! (`compute_score_async`), its batch shim, TRL's reward function and OpenRLHF's
//! `/get_reward` give the reward `/v1/reward` gives for the same completions (a COFFE problem
//! by id, a wrong answer, a timeout, no code, text around the code); all of them wait out a
//! full queue; and the Python client's own behaviours pass their unit tests.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use afterburner_benchmarks::{DatasetSpec, Format, Problem};
use afterburner_server::{LimitPolicy, ServerConfig};
use serde_json::{Value, json};
use support::*;

const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python");

/// The COFFE problem with the fewest tests (9, plus its stress inputs), so each run is short.
const COFFE_ID: &str = "cc-0613857324";

/// Runs each trainer's entry point on the samples read from stdin; prints their rewards.
const DRIVER: &str = r#"
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import afterburner_client, afterburner_trl, afterburner_verl
spec = json.load(sys.stdin)
url, samples, mode = spec["url"], spec["samples"], spec["mode"]
if mode == "verl_async":
    async def run():
        calls = [afterburner_verl.compute_score_async(
                     data_source="afterburner/coffe", solution_str=s["response"],
                     ground_truth=s["ground_truth"], extra_info={"index": i}, urls=url)
                 for i, s in enumerate(samples)]
        return await asyncio.gather(*calls)
    out = [x["score"] for x in asyncio.run(run())]
elif mode == "verl_batch":
    out = [x["score"] for x in afterburner_verl.compute_score(
        ["afterburner/coffe"] * len(samples), [s["response"] for s in samples],
        [s["ground_truth"] for s in samples], None, url=url)]
elif mode == "trl":
    reward = afterburner_trl.make_reward_function(urls=url)
    out = reward(
        prompts=[[{"role": "user", "content": "Solve it."}] for _ in samples],
        completions=[[{"role": "assistant", "content": s["response"]}] for s in samples],
        completion_ids=None,
        ground_truth=[s["ground_truth"] for s in samples],
        split=["train"] * len(samples),
        trainer_state=None, log_metric=lambda name, value: None)
else:
    raise SystemExit(f"unknown mode {mode}")
afterburner_client.close_all()
print(json.dumps(out))
"#;

/// Runs the driver in `mode` against `url` (a comma-separated list is fine); its output.
fn trainer_rewards(mode: &str, url: &str, samples: &[Sample]) -> Vec<Option<f64>> {
    let spec = json!({
        "mode": mode,
        "url": url,
        "samples": samples.iter().map(|s| json!({"response": s.response, "ground_truth": s.label})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", DRIVER, PYTHON_DIR])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("wait for python3");
    assert!(
        out.status.success(),
        "{mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{mode} printed no JSON list ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A completion and its label (a JSON string, as `afterburner data grpo` writes it).
struct Sample {
    what: &'static str,
    response: String,
    label: String,
}

fn coffe_spec() -> DatasetSpec {
    DatasetSpec::new(Format::Coffe, format!("{DATA}/coffe-code-contests"))
}

fn coffe_problem() -> Problem {
    let dataset = coffe_spec().load().expect("load the COFFE data");
    dataset
        .problems
        .into_iter()
        .find(|p| p.id == COFFE_ID)
        .unwrap_or_else(|| panic!("{COFFE_ID} is not in the COFFE data"))
}

fn server_config() -> ServerConfig {
    ServerConfig {
        datasets: vec![coffe_spec()],
        limits: LimitPolicy {
            default_time_s: 2.0,
            ..LimitPolicy::default()
        },
        ..config()
    }
}

/// The cases every trainer path must score as `/v1/reward` does.
fn samples() -> Vec<Sample> {
    let problem = coffe_problem();
    let reference = &problem.references[0].code;
    // A baseline far slower than anything here: the efficiency term is near its ceiling and
    // steady from run to run.
    let baseline = json!({"passed": true, "time_ms": 80000.0, "memory_kb": 1e6, "integral": 1e12});
    let coffe = |instruction: &str| {
        json!({"problem_id": COFFE_ID, "language": "python", "instruction": instruction, "baseline": baseline})
            .to_string()
    };
    let squares =
        json!([{"input": "3\n", "expected": "9\n"}, {"input": "12\n", "expected": "144\n"}]);
    let inline = |instruction: &str| {
        json!({"tests": squares, "instruction": instruction, "baseline": baseline}).to_string()
    };
    vec![
        Sample {
            what: "a COFFE reference, by problem id",
            response: well_formed(reference),
            label: coffe("time"),
        },
        Sample {
            what: "a wrong answer",
            response: well_formed("print(0)"),
            label: coffe("integral"),
        },
        Sample {
            what: "a timeout",
            response: well_formed("while True:\n    pass"),
            label: inline("time"),
        },
        Sample {
            what: "no code",
            response: "I would square the number.".into(),
            label: inline("memory"),
        },
        Sample {
            what: "code with text around it",
            response: "Here:\n```python\nn = int(input())\nprint(n * n)\n```\nDone.".into(),
            label: inline("memory"),
        },
    ]
}

/// `/v1/reward`'s rewards for the samples: the reference every path must match.
fn v1_rewards(server: &afterburner_server::ServerHandle, samples: &[Sample]) -> Vec<Value> {
    let items: Vec<Value> = samples
        .iter()
        .map(|s| {
            let mut item: Value = serde_json::from_str(&s.label).unwrap();
            item["response"] = json!(s.response);
            item
        })
        .collect();
    let v = json_with(
        &post(server.addr(), "/v1/reward", &json!({"items": items})),
        200,
    );
    v["results"].as_array().expect("results").clone()
}

/// Rewards agree within the run-to-run noise of the efficiency term (its time and memory
/// figures are measured anew by each path; the baseline keeps it near its ceiling).
fn assert_same_rewards(path: &str, samples: &[Sample], expected: &[Value], got: &[Option<f64>]) {
    assert_eq!(got.len(), samples.len(), "{path}: one reward per sample");
    for ((s, e), g) in samples.iter().zip(expected).zip(got) {
        let want = e["reward"]
            .as_f64()
            .unwrap_or_else(|| panic!("/v1/reward: no reward for {}: {e}", s.what));
        let g = g.unwrap_or_else(|| panic!("{path}: no reward for {}", s.what));
        assert!(
            (g - want).abs() < 2e-3,
            "{path} gives {g} for {}, /v1/reward {want}: {e}",
            s.what
        );
    }
}

#[test]
fn every_trainer_path_gives_the_reward_v1_reward_gives() {
    let server = start(server_config());
    let samples = samples();
    let expected = v1_rewards(&server, &samples);
    let statuses: Vec<&str> = expected
        .iter()
        .map(|r| r["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses,
        [
            "accepted",
            "wrong_answer",
            "time_limit",
            "no_code",
            "accepted"
        ],
        "the cases are what they claim to be"
    );
    assert_eq!(
        expected[2]["reward"],
        json!(0.2 - 0.5),
        "a timeout is pass -> fail"
    );

    for mode in ["verl_async", "verl_batch", "trl"] {
        let got = trainer_rewards(mode, &server.url(), &samples);
        assert_same_rewards(mode, &samples, &expected, &got);
    }

    // OpenRLHF posts each sample alone: the prompt and the response decoded together, with the
    // chat template's end-of-turn token after the response.
    let prompt = "<|im_start|>user\nSolve it.<|im_end|>\n<|im_start|>assistant\n";
    let mut openrlhf = Vec::new();
    let mut formats = Vec::new();
    for s in &samples {
        let v = json_with(
            &post(
                server.addr(),
                "/get_reward",
                &json!({
                    "query": [format!("{prompt}{}<|im_end|>", s.response)],
                    "prompts": [prompt],
                    "labels": [s.label],
                }),
            ),
            200,
        );
        for key in ["format", "correctness", "efficiency", "passed"] {
            assert!(
                v["extra_logs"][key][0].is_f64(),
                "extra_logs.{key} holds numbers: {v}"
            );
        }
        assert_eq!(
            v["scores"][0],
            json!(if v["extra_logs"]["passed"][0] == 1.0 {
                1.0
            } else {
                0.0
            })
        );
        openrlhf.push(v["rewards"][0].as_f64());
        formats.push(v["extra_logs"]["format"][0].as_f64());
    }
    assert_same_rewards("/get_reward", &samples, &expected, &openrlhf);
    assert_eq!(
        formats[0],
        Some(1.0),
        "the end-of-turn token after the response does not spoil its format"
    );
}

#[test]
fn get_reward_answers_another_servers_empty_share_with_empty_lists() {
    // With several --reward.remote_url, OpenRLHF shards each one-sample request over them: all
    // but the first get `{"query": [], "prompts": [], "labels": []}` and must answer 200.
    let server = start(config());
    let v = json_with(
        &post(
            server.addr(),
            "/get_reward",
            &json!({"query": [], "prompts": [], "labels": []}),
        ),
        200,
    );
    assert_eq!(
        v,
        json!({"rewards": [], "scores": [],
               "extra_logs": {"format": [], "correctness": [], "efficiency": [], "passed": []}})
    );
}

#[test]
fn get_reward_refuses_a_query_that_does_not_hold_its_prompt() {
    let server = start(config());
    let label =
        json!({"tests": [{"input": "1\n", "expected": "1\n"}], "instruction": "time"}).to_string();
    let message = error_with(
        &post(
            server.addr(),
            "/get_reward",
            &json!({"query": ["an unrelated text"], "prompts": ["<|im_start|>user\nSolve it.<|im_end|>\n<|im_start|>assistant\n"], "labels": [label]}),
        ),
        400,
    );
    assert!(message.contains("`query[0]`"), "{message}");
}

/// Fills a one-slot queue with two sleepers (one running, one waiting) while `f` runs.
fn while_full<T: Send>(
    server: &afterburner_server::ServerHandle,
    f: impl FnOnce() -> T + Send,
) -> T {
    let addr = server.addr();
    let sleeper = json!({"code": "import time\ntime.sleep(1.5)\nprint(1)", "language": "python"});
    std::thread::scope(|s| {
        let mut busy = vec![s.spawn(|| post(addr, "/execute", &sleeper).status)];
        wait_for_queue(addr, 1, 0);
        busy.push(s.spawn(|| post(addr, "/execute", &sleeper).status));
        wait_for_queue(addr, 1, 1);
        let out = f();
        for b in busy {
            assert_eq!(b.join().unwrap(), 200);
        }
        out
    })
}

fn refusals(server: &afterburner_server::ServerHandle) -> u64 {
    let metrics = get(server.addr(), "/metrics").text();
    metrics
        .lines()
        .find(|l| l.starts_with("afterburner_jobs_refused_total{reason=\"queue_full\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

#[test]
fn the_python_paths_wait_out_a_full_queue_and_skip_an_unreachable_host() {
    let server = start(ServerConfig {
        queue: 1,
        ..server_config()
    });
    let samples: Vec<Sample> = samples().into_iter().skip(3).collect(); // no code; text around code
    // Nothing listens on the first URL: the client fails over to the live one.
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let urls = format!("{unreachable},{}", server.url());
    for mode in ["verl_async", "trl"] {
        let before = refusals(&server);
        let got = while_full(&server, || trainer_rewards(mode, &urls, &samples));
        assert_eq!(got[0], Some(-0.7), "{mode}: no code, not well formed");
        assert_eq!(got[1].map(|r| r > 0.0), Some(true), "{mode}: {got:?}");
        assert!(
            refusals(&server) > before,
            "{mode} was refused at least once and waited"
        );
    }
}

#[test]
fn get_reward_at_capacity_is_refused_with_retry_after_then_answered() {
    let server = start(ServerConfig {
        queue: 1,
        ..config()
    });
    let body = json!({
        "query": [well_formed("n = int(input())\nprint(n * n)")],
        "labels": [json!({"tests": [{"input": "3\n", "expected": "9\n"}], "instruction": "time"}).to_string()],
    });
    let refused = while_full(&server, || post(server.addr(), "/get_reward", &body));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.header("retry-after").is_some(),
        "a refusal says when to come back"
    );
    std::thread::sleep(Duration::from_millis(100));
    let v = json_with(&post(server.addr(), "/get_reward", &body), 200);
    assert_eq!(v["scores"], json!([1.0]), "{v}");
}

#[test]
fn the_python_clients_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(PYTHON_DIR)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python/tests failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
