//! `/metrics` covers what an operator needs under RL load (queue depth, worker busy ratio,
//! per-language run and compile latency, refusals by reason), with the right values after real
//! requests; the example Grafana dashboard only queries metrics the server exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use afterburner_server::ServerConfig;
use serde_json::{Value, json};
use support::*;

/// The exposition's samples by their full series text (`name{labels}`), and each family's type.
struct Exposition {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses Prometheus text, failing on any line that is not a comment or `series value`.
    fn parse(text: &str) -> Exposition {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("`# TYPE name kind`");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type of {name}: {kind}"
                );
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                name.starts_with("afterburner_")
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "bad metric name in {line:?}"
            );
            samples.insert(series.to_string(), value);
        }
        Exposition { samples, types }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample `{series}` among {:#?}", self.samples.keys()))
    }

    /// Whether `name` is a metric the server exports: a family, or a histogram's series.
    fn exports(&self, name: &str) -> bool {
        if self.types.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| self.types.get(base).is_some_and(|t| t == "histogram"))
        })
    }
}

fn sleeper() -> Value {
    json!({"code": "import time\ntime.sleep(0.8)\nprint('slept')", "language": "python"})
}

#[test]
fn metrics_count_refusals_by_reason_latency_by_language_and_busy_workers() {
    let server = start(ServerConfig {
        queue: 1,
        max_body_bytes: 64 * 1024,
        ..config()
    });
    let addr = server.addr();

    // Work: two Python programs (one times out), a C++ program built once and run twice, a
    // Python suite judged in one run.
    json_with(
        &post(
            addr,
            "/execute",
            &json!({"code": "print(6 * 7)", "language": "python"}),
        ),
        200,
    );
    let timed_out = json_with(
        &post(
            addr,
            "/execute",
            &json!({"code": "while True:\n    pass", "language": "python", "timeout": 0.3}),
        ),
        200,
    );
    assert_eq!(timed_out["status"], "timeout", "{timed_out}");
    let cpp = "#include <cstdio>\nint main(){int a,b; if(scanf(\"%d %d\",&a,&b)!=2) return 1; printf(\"%d\\n\",a+b);}\n";
    for stdin in ["2 3", "40 2"] {
        let r = json_with(
            &post(
                addr,
                "/run_code",
                &json!({"code": cpp, "language": "cpp", "stdin": stdin}),
            ),
            200,
        );
        assert_eq!(r["status"], "Success", "{r}");
    }
    let evaluated = json_with(
        &post(
            addr,
            "/v1/evaluate",
            &json!({"language": "python", "code": "print(int(input()) * 2)",
                    "tests": [{"input": "2", "expected": "4"}, {"input": "5", "expected": "10"}]}),
        ),
        200,
    );
    assert_eq!(evaluated["passed"], true, "{evaluated}");

    // Refusals: a bad request, an unknown endpoint, a body over the limit, a full queue.
    error_with(&post_raw(addr, "/execute", b"{not json"), 400);
    error_with(&get(addr, "/nowhere"), 404);
    let big = json!({"code": "x".repeat(100 * 1024), "language": "python"});
    error_with(&post(addr, "/execute", &big), 413);
    std::thread::scope(|s| {
        let running = s.spawn(move || post(addr, "/execute", &sleeper()).status);
        wait_for_queue(addr, 1, 0);
        let queued = s.spawn(move || post(addr, "/execute", &sleeper()).status);
        wait_for_queue(addr, 1, 1);
        let m = Exposition::parse(&get(addr, "/metrics").text());
        assert_eq!(m.value("afterburner_queue_depth"), 1.0);
        assert_eq!(m.value("afterburner_jobs_running"), 1.0);
        assert_eq!(m.value("afterburner_worker_busy_ratio"), 1.0);
        error_with(&post(addr, "/execute", &sleeper()), 503);
        assert_eq!(running.join().unwrap(), 200);
        assert_eq!(queued.join().unwrap(), 200);
    });

    let m = Exposition::parse(&get(addr, "/metrics").text());
    for (reason, n) in [
        ("bad_request", 1.0),
        ("not_found", 1.0),
        ("body_too_large", 1.0),
        ("queue_full", 1.0),
    ] {
        assert_eq!(
            m.value(&format!(
                "afterburner_http_refusals_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    assert_eq!(
        m.value("afterburner_jobs_refused_total{reason=\"queue_full\"}"),
        1.0
    );
    // Python: two /execute runs, one suite run, two sleepers; C++: two runs, one build.
    assert_eq!(
        m.value("afterburner_run_duration_seconds_count{language=\"python\"}"),
        5.0
    );
    assert_eq!(
        m.value("afterburner_run_duration_seconds_count{language=\"cpp\"}"),
        2.0
    );
    assert_eq!(
        m.value("afterburner_compile_duration_seconds_count{language=\"cpp\"}"),
        1.0,
        "the second /run_code reused the build"
    );
    let compile_s = m.value("afterburner_compile_duration_seconds_sum{language=\"cpp\"}");
    assert!(compile_s > 0.01 && compile_s < 60.0, "{compile_s}");
    let python_run_s = m.value("afterburner_run_duration_seconds_sum{language=\"python\"}");
    assert!(
        python_run_s >= 0.3 + 0.8 + 0.8,
        "the timeout and the sleepers alone took that long: {python_run_s}"
    );
    assert!(
        m.value("afterburner_run_duration_seconds_bucket{language=\"python\",le=\"+Inf\"}") == 5.0
    );
    let busy = m.value("afterburner_worker_busy_seconds_total");
    assert!(
        busy >= python_run_s && busy < 120.0,
        "jobs include their runs: busy {busy} s, runs {python_run_s} s"
    );
    assert_eq!(m.value("afterburner_worker_busy_ratio"), 0.0);
    assert_eq!(m.value("afterburner_queue_depth"), 0.0);
    assert!(m.value("afterburner_connections_accepted_total") >= 12.0);
    assert!(
        m.value("afterburner_connections_open") >= 1.0,
        "this request's own"
    );

    check_dashboard(&m);
}

/// Every panel of the example dashboard has queries, and every metric they name is exported.
fn check_dashboard(m: &Exposition) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/grafana/afterburner-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let dashboard: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    assert!(dashboard["title"].is_string() && dashboard["schemaVersion"].is_u64());
    let mut panels: Vec<&Value> = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        if p["type"] != "row" {
            panels.push(p);
        }
    }
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries nothing");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: expr"));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: `{expr}` names no metric");
            for name in names {
                assert!(
                    m.exports(&name),
                    "{title}: `{expr}` names `{name}`, which the server does not export"
                );
                queried.insert(name);
            }
        }
    }
    for needed in [
        "afterburner_queue_depth",
        "afterburner_worker_busy_ratio",
        "afterburner_worker_busy_seconds_total",
        "afterburner_http_refusals_total",
        "afterburner_http_request_duration_seconds_bucket",
        "afterburner_run_duration_seconds_bucket",
        "afterburner_compile_duration_seconds_bucket",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }
}

/// The `afterburner_*` identifiers of a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("afterburner_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.push(expr[start..end].to_string());
        i = end;
    }
    names
}
