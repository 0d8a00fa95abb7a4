//! Every endpoint against a real server on loopback: what it answers for good input.

mod support;

use std::time::{Duration, Instant};

use afterburner_benchmarks::{Problem, load};
use afterburner_server::ServerHandle;
use serde_json::{Value, json};
use support::*;

#[test]
fn execute_runs_a_program_and_answers_in_monolith_fields() {
    let server = start(config());
    let r = post(
        server.addr(),
        "/execute",
        &json!({
            "code": "print(input()[::-1])",
            "language": "python",
            "stdin": "hello\n",
            "timeout": 5,
            "run_profiling": true,
        }),
    );
    let v = json_with(&r, 200);
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["error"], Value::Null);
    let out = &v["output_dict"];
    assert_eq!(out["stdout"], "olleh\n");
    assert!(out["peak_memory"].as_u64().unwrap() > 1000, "{out}");
    assert!(out["duration"].as_f64().unwrap() > 0.0, "{out}");
    assert!(out["integral"].as_f64().unwrap() > 0.0, "{out}");
    let log = out["log"].as_array().unwrap();
    assert!(!log.is_empty(), "profiling asked for the memory trace");
    assert_eq!(log[0].as_array().map(Vec::len), Some(2), "[ns, kB] pairs");

    // Monolith clients submit, then poll by task id: the result is there too.
    let id = v["task_id"].as_str().unwrap();
    let again = json_with(&get(server.addr(), &format!("/results/{id}")), 200);
    assert_eq!(again, v);
}

#[test]
fn execute_async_answers_at_once_and_the_result_can_be_polled() {
    let server = start(config());
    let r = post(
        server.addr(),
        "/execute",
        &json!({"code": "import time\ntime.sleep(0.3)\nprint(42)", "language": "python", "async": true}),
    );
    let v = json_with(&r, 202);
    assert_eq!(v["status"], "pending");
    let id = v["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + TIMEOUT;
    let done = loop {
        let v = json_with(&get(server.addr(), &format!("/results/{id}")), 200);
        if v["status"] != "pending" {
            break v;
        }
        assert!(Instant::now() < deadline, "the task never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["output_dict"]["stdout"], "42\n");
    let e = error_with(&get(server.addr(), "/results/no-such-task"), 404);
    assert!(e.contains("no-such-task"), "{e}");
}

#[test]
fn execute_reports_timeouts_and_errors_as_monolith_does() {
    let server = start(config());
    let slow = json_with(
        &post(
            server.addr(),
            "/execute",
            &json!({"code": "import time\ntime.sleep(5)", "language": "python", "timeout": 0.5}),
        ),
        200,
    );
    assert_eq!(slow["status"], "timeout", "{slow}");
    let failing = json_with(
        &post(
            server.addr(),
            "/execute",
            &json!({"code": "raise ValueError('boom')", "language": "python"}),
        ),
        200,
    );
    assert_eq!(failing["status"], "error");
    assert_eq!(failing["run_status"], "runtime_error");
    assert!(
        failing["error"].as_str().unwrap().contains("boom"),
        "{failing}"
    );
}

#[test]
fn run_code_answers_what_verls_sandbox_fusion_client_reads() {
    let server = start(config());
    let cpp = "#include <cstdio>\nint main(){int a,b;if(scanf(\"%d %d\",&a,&b)!=2)return 3;printf(\"%d\\n\",a+b);}";
    let ask = |code: &str, language: &str, stdin: &str| {
        json_with(
            &post(
                server.addr(),
                "/run_code",
                &json!({
                    "code": code, "language": language, "stdin": stdin,
                    "compile_timeout": 30, "run_timeout": 5, "memory_limit_MB": -1,
                    "files": {}, "fetch_files": [],
                }),
            ),
            200,
        )
    };
    let ok = ask(cpp, "cpp", "2 3");
    assert_eq!(ok["status"], "Success", "{ok}");
    assert_eq!(ok["compile_result"]["status"], "Finished");
    assert_eq!(ok["compile_result"]["return_code"], 0);
    assert_eq!(ok["run_result"]["status"], "Finished");
    assert_eq!(ok["run_result"]["return_code"], 0);
    assert_eq!(ok["run_result"]["stdout"], "5\n");
    assert!(ok["run_result"]["execution_time"].as_f64().unwrap() >= 0.0);
    assert_eq!(ok["afterburner"]["cached_build"], false);

    // verl sends the same code once per test case: it is compiled once.
    let again = ask(cpp, "cpp", "40 2");
    assert_eq!(again["run_result"]["stdout"], "42\n");
    assert_eq!(again["afterburner"]["cached_build"], true);

    let exit3 = ask(cpp, "cpp", "not numbers");
    assert_eq!(exit3["status"], "Failed");
    assert_eq!(exit3["run_result"]["status"], "Finished");
    assert_eq!(exit3["run_result"]["return_code"], 3);

    let broken = ask("int main( {", "cpp", "");
    assert_eq!(broken["status"], "Failed");
    assert_eq!(broken["compile_result"]["status"], "Finished");
    assert_ne!(broken["compile_result"]["return_code"], 0);
    assert_eq!(broken["run_result"], Value::Null);

    // As in SandboxFusion, Python has no compile step: a syntax error is a failed run.
    let syntax = ask("def f(:\n", "python", "");
    assert_eq!(syntax["status"], "Failed");
    assert_eq!(syntax["compile_result"], Value::Null);
    assert_eq!(syntax["run_result"]["return_code"], 1);
    assert!(
        syntax["run_result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("SyntaxError"),
        "{syntax}"
    );

    let slow = json_with(
        &post(
            server.addr(),
            "/run_code",
            &json!({"code": "while True: pass", "language": "python", "run_timeout": 0.5}),
        ),
        200,
    );
    assert_eq!(slow["status"], "Failed");
    assert_eq!(slow["run_result"]["status"], "TimeLimitExceeded");

    let js = ask(
        "console.log(require('fs').readFileSync(0, 'utf8').trim().length)",
        "nodejs",
        "abcd",
    );
    assert_eq!(js["status"], "Success", "{js}");
    assert_eq!(js["run_result"]["stdout"], "4\n");
}

/// Template recursion with 2^40 distinct instantiations: g++ works on it for hours.
const LOOPING_COMPILE: &str = "\
template <int N, long K> struct Tree {
    static constexpr long value = Tree<N - 1, 2 * K>::value + Tree<N - 1, 2 * K + 1>::value;
};
template <long K> struct Tree<0, K> { static constexpr long value = K; };
int main() { return static_cast<int>(Tree<40, 1>::value & 1); }
";

#[test]
fn a_compiler_that_loops_is_killed_at_the_compile_limit() {
    let server = start(afterburner_server::ServerConfig {
        limits: afterburner_server::LimitPolicy {
            default_compile_s: 2.0,
            max_compile_s: 2.0,
            ..afterburner_server::LimitPolicy::default()
        },
        ..config()
    });
    let status = json_with(&get(server.addr(), "/status"), 200);
    assert_eq!(status["limits"]["default_compile_s"], 2.0, "{status}");
    assert_eq!(status["limits"]["max_compile_s"], 2.0, "{status}");

    // SandboxFusion's compile_timeout is enforced while g++ runs.
    let fusion = |compile_timeout: f64| {
        let start = Instant::now();
        let v = json_with(
            &post(
                server.addr(),
                "/run_code",
                &json!({"code": LOOPING_COMPILE, "language": "cpp",
                        "compile_timeout": compile_timeout}),
            ),
            200,
        );
        (v, start.elapsed())
    };
    let (v, took) = fusion(1.0);
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert_eq!(v["status"], "Failed", "{v}");
    assert_eq!(v["compile_result"]["status"], "TimeLimitExceeded", "{v}");
    assert_eq!(v["run_result"], Value::Null, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.starts_with("compilation exceeded its time limit of 1 s"),
        "{message}"
    );
    assert!(v["compile_result"]["execution_time"].as_f64().unwrap() >= 0.9);
    // The same code and limit again: the timed-out build is reused, not compiled again.
    let (again, took) = fusion(1.0);
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(again["afterburner"]["cached_build"], true, "{again}");
    assert_eq!(again["compile_result"]["status"], "TimeLimitExceeded");
    // A larger ask is capped to the server's maximum (2 s), and built anew under it.
    let (capped, took) = fusion(100.0);
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(capped["afterburner"]["cached_build"], false, "{capped}");
    let message = capped["message"].as_str().unwrap();
    assert!(
        message.starts_with("compilation exceeded its time limit of 2 s"),
        "{message}"
    );

    // Endpoints without a compile limit of their own get the server's default.
    let start = Instant::now();
    let v = json_with(
        &post(
            server.addr(),
            "/execute",
            &json!({"code": format!("{LOOPING_COMPILE}// another build\n"), "language": "cpp"}),
        ),
        200,
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["run_status"], "compile_error", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("compilation exceeded its time limit of 2 s"),
        "{error}"
    );
}

#[test]
fn evaluate_judges_a_whole_inline_suite_in_one_run() {
    let server = start(config());
    let v = json_with(
        &post(
            server.addr(),
            "/v1/evaluate",
            &json!({
                "language": "python",
                "code": "a, b = map(int, input().split())\nprint(a + b)",
                "tests": [
                    {"input": "1 2\n", "expected": "3\n"},
                    {"input": "5 5\n", "expected": "10"},
                    {"input": "2 2\n", "expected": "5"},
                ],
            }),
        ),
        200,
    );
    assert_eq!(v["status"], "wrong_answer", "{v}");
    assert_eq!(v["passed"], false);
    assert_eq!(v["tests"], 3);
    assert_eq!(v["passed_tests"], 2);
    let verdicts: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["accepted", "accepted", "wrong_answer"]);
    assert!(v["measurement"]["peak_rss_kb"].as_u64().unwrap() > 0);
    assert_eq!(
        v["performance"],
        Value::Null,
        "no figures for a failing solution"
    );

    // A compiled language: built once, every test run, figures summed.
    let c = json_with(
        &post(
            server.addr(),
            "/v1/evaluate",
            &json!({
                "language": "c",
                "code": "#include <stdio.h>\nint main(){long a,b;scanf(\"%ld %ld\",&a,&b);printf(\"%ld\\n\",a+b);return 0;}",
                "tests": [{"input": "1 2", "expected": "3"}, {"input": "-4 4", "expected": "0"}],
                "repeats": 2,
            }),
        ),
        200,
    );
    assert_eq!(c["status"], "accepted", "{c}");
    assert_eq!(c["repeats"], 2);
    assert!(c["compile_ms"].as_f64().unwrap() > 0.0);
    let perf = &c["performance"];
    assert!(perf["time_ms"].as_f64().unwrap() > 0.0, "{perf}");
    assert!(perf["memory_kb"].as_f64().unwrap() > 0.0, "{perf}");
}

/// A server that loaded the LeetCode fixture, and one of its problems with tests and a
/// reference.
fn serving_leetcode() -> (ServerHandle, Problem) {
    let spec = leetcode_spec();
    let dataset = load(&spec).unwrap();
    let problem = dataset
        .problems
        .into_iter()
        .find(|p| !p.tests.is_empty() && !p.references.is_empty())
        .expect("a LeetCode problem with tests and a reference");
    let server = start(afterburner_server::ServerConfig {
        datasets: vec![spec],
        ..config()
    });
    (server, problem)
}

#[test]
fn evaluate_judges_a_problem_of_a_loaded_dataset_by_id() {
    let (server, problem) = serving_leetcode();
    let v = json_with(
        &post(
            server.addr(),
            "/v1/evaluate",
            &json!({
                "language": "python",
                "code": problem.references[0].code,
                "problem_id": problem.id,
            }),
        ),
        200,
    );
    assert_eq!(v["problem_id"], problem.id.as_str());
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(v["tests"], problem.tests.len());
    assert_eq!(v["passed_tests"], problem.tests.len());
}

#[test]
fn reward_scores_a_batch_with_its_components() {
    let (server, problem) = serving_leetcode();
    let reference = &problem.references[0].code;
    // The original took 60 s: any passing candidate is faster.
    let slow_original =
        json!({"passed": true, "time_ms": 60000.0, "memory_kb": 1.0, "integral": 1.0});
    let v = json_with(
        &post(
            server.addr(),
            "/v1/reward",
            &json!({"items": [
                {"response": well_formed(reference), "problem_id": problem.id,
                 "instruction": "time", "baseline": slow_original},
                {"response": format!("Here you go:\n```python\n{reference}\n```"),
                 "problem_id": problem.id, "instruction": "memory", "baseline": slow_original},
                {"response": "I cannot solve this.", "problem_id": problem.id,
                 "instruction": "integral", "baseline": {"passed": true, "time_ms": 5.0}},
                {"response": well_formed("class Solution:\n    pass"), "problem_id": problem.id,
                 "instruction": "time"},
            ]}),
        ),
        200,
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let total = |r: &Value| r["reward"].as_f64().unwrap();
    let comp = |r: &Value, k: &str| r["components"][k].as_f64().unwrap_or(f64::NAN);
    for r in results {
        let expected =
            0.2 * comp(r, "format") + 0.5 * comp(r, "correctness") + 0.3 * comp(r, "efficiency");
        assert!(
            (total(r) - expected).abs() < 1e-9,
            "total = weighted components: {r}"
        );
    }

    let fast = &results[0];
    assert_eq!(fast["status"], "accepted", "{fast}");
    assert_eq!(fast["well_formed"], true);
    assert_eq!(comp(fast, "format"), 1.0);
    assert_eq!(comp(fast, "correctness"), 0.5, "pass -> pass");
    let gain = comp(fast, "gain");
    assert!(gain > 0.0 && gain <= 1.0, "faster than 60 s: {fast}");
    assert!((comp(fast, "efficiency") - gain.tanh()).abs() < 1e-12);

    let unformatted = &results[1];
    assert_eq!(
        unformatted["status"], "accepted",
        "code found outside <solution>"
    );
    assert_eq!(comp(unformatted, "format"), -1.0);
    assert_eq!(
        comp(unformatted, "efficiency"),
        -(1.0f64.tanh()),
        "any real program uses more than 1 KiB: clipped to -1"
    );

    let no_code = &results[2];
    assert_eq!(no_code["status"], "no_code");
    assert!((total(no_code) - (-0.2 - 0.5)).abs() < 1e-12, "{no_code}");

    let wrong = &results[3];
    assert_eq!(wrong["passed"], false);
    assert_eq!(
        comp(wrong, "correctness"),
        -0.5,
        "no baseline: fail -> fail"
    );
    assert_eq!(comp(wrong, "efficiency"), 0.0);
}

#[test]
fn get_reward_speaks_openrlhfs_remote_reward_shape() {
    let server = start(config());
    let tests = json!([{"input": "3\n", "expected": "9\n"}, {"input": "4\n", "expected": "16\n"}]);
    let label = |instruction: &str| {
        json!({"tests": tests, "instruction": instruction,
               "baseline": {"passed": true, "time_ms": 50000.0, "memory_kb": 1e6, "integral": 1e10}})
        .to_string()
    };
    let prompt = "<|user|>Square a number.<|assistant|>";
    let good = well_formed("n = int(input())\nprint(n * n)");
    let bad = well_formed("print(0)");
    let v = json_with(
        &post(
            server.addr(),
            "/get_reward",
            &json!({
                "query": [format!("{prompt}{good}"), format!("{prompt}{bad}")],
                "prompts": [prompt, prompt],
                "labels": [label("time"), label("memory")],
            }),
        ),
        200,
    );
    let rewards: Vec<f64> = v["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(rewards.len(), 2);
    assert!(rewards[0] > 0.45, "well formed, pass -> pass, faster: {v}");
    assert!(
        (rewards[1] - (0.2 - 0.5)).abs() < 1e-12,
        "pass -> fail: {v}"
    );
    assert_eq!(v["scores"], json!([1.0, 0.0]));
    for key in ["format", "correctness", "efficiency", "passed"] {
        assert_eq!(
            v["extra_logs"][key].as_array().map(Vec::len),
            Some(2),
            "extra_logs.{key}: {v}"
        );
    }
}

#[test]
fn health_status_and_metrics_describe_the_service() {
    let server = start(config());
    assert_eq!(
        json_with(&get(server.addr(), "/healthz"), 200)["status"],
        "ok"
    );
    json_with(
        &post(
            server.addr(),
            "/execute",
            &json!({"code": "print(1)", "language": "python"}),
        ),
        200,
    );
    let status = json_with(&get(server.addr(), "/status"), 200);
    assert_eq!(status["workers"], 1);
    assert_eq!(status["queue"]["capacity"], 16);
    assert_eq!(status["queue"]["depth"], 0);
    assert!(
        status["memory"]["server_rss_kb"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(status["memory"]["machine_available_kb"].as_u64().unwrap() > 0);

    let r = get(server.addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    for needle in [
        "afterburner_http_requests_total{endpoint=\"/execute\",code=\"200\"} 1",
        "afterburner_runs_total{outcome=\"accepted\"} 1",
        "afterburner_queue_capacity 16",
        "afterburner_workers 1",
        "afterburner_http_request_duration_seconds_count{endpoint=\"/execute\"} 1",
        "afterburner_job_duration_seconds_count 1",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn a_token_guards_every_endpoint_but_healthz() {
    let server = start(afterburner_server::ServerConfig {
        token: Some("s3cret".into()),
        ..config()
    });
    let body = json!({"code": "print(1)", "language": "python"}).to_string();
    let call = |headers: &[(&str, &str)], path: &str| {
        afterburner_testkit::client::request(
            server.addr(),
            "POST",
            path,
            headers,
            Some(body.as_bytes()),
            TIMEOUT,
        )
        .unwrap()
    };
    let e = error_with(&call(&[], "/execute"), 401);
    assert!(e.contains("bearer token"), "{e}");
    assert_eq!(
        call(&[], "/execute").header("www-authenticate"),
        Some("Bearer")
    );
    error_with(&call(&[("Authorization", "Bearer wrong")], "/execute"), 401);
    json_with(
        &call(&[("Authorization", "Bearer s3cret")], "/execute"),
        200,
    );
    json_with(&call(&[], "/execute?access_token=s3cret"), 200);
    error_with(&get(server.addr(), "/metrics"), 401);
    json_with(&get(server.addr(), "/healthz"), 200);
}

#[test]
fn asked_limits_are_capped_by_the_servers_maxima() {
    let server = start(afterburner_server::ServerConfig {
        limits: afterburner_server::LimitPolicy {
            default_time_s: 1.0,
            max_time_s: 1.0,
            default_memory_mib: 256,
            max_memory_mib: 256,
            ..afterburner_server::LimitPolicy::default()
        },
        ..config()
    });
    let start = Instant::now();
    let v = json_with(
        &post(
            server.addr(),
            "/execute",
            &json!({"code": "import time\ntime.sleep(8)", "language": "python", "timeout": 3600, "memory_limit": 65536}),
        ),
        200,
    );
    assert_eq!(v["status"], "timeout", "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "stopped at the 1 s cap, not after 8 s: {:?}",
        start.elapsed()
    );
    let e = json_with(
        &post(
            server.addr(),
            "/v1/evaluate",
            &json!({"language": "python", "code": "print(1)", "tests": [{"input": "", "expected": "1"}],
                    "time_limit": 100, "memory_limit_mib": 100000}),
        ),
        200,
    );
    assert_eq!(e["limits"], json!({"time_s": 1.0, "memory_mib": 256}));
}
