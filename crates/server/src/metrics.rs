//! Counters and histograms behind `GET /metrics`, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (bound, c) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *c += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Point-in-time values read when rendering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub jobs_running: usize,
    pub workers: usize,
    pub results_stored: usize,
    pub uptime_s: f64,
}

/// Everything `/metrics` reports; shared by the HTTP layer and the workers.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    runs: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Error answers by reason.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    job_seconds: Mutex<Histogram>,
    queue_wait: Mutex<Histogram>,
    /// Wall time of program (or whole-suite) runs, by language.
    run_seconds: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Wall time of fresh builds (compilations, syntax checks), by language.
    compile_seconds: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Nanoseconds workers have spent on jobs, summed over workers.
    busy_ns: AtomicU64,
    worker_panics: AtomicU64,
    cancelled: AtomicU64,
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    /// Connections closed by their watchdog, by the phase they stalled in.
    connections_timed_out: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            runs: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(BTreeMap::new()),
            job_seconds: Mutex::new(Histogram::new()),
            queue_wait: Mutex::new(Histogram::new()),
            run_seconds: Mutex::new(BTreeMap::new()),
            compile_seconds: Mutex::new(BTreeMap::new()),
            busy_ns: AtomicU64::new(0),
            worker_panics: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_timed_out: Mutex::new(BTreeMap::new()),
        }
    }

    /// An error answer (4xx, 5xx), by reason (`queue_full`, `body_timeout`, `bad_request`...).
    pub fn refusal(&self, reason: &'static str) {
        if let Ok(mut m) = self.refusals.lock() {
            *m.entry(reason).or_insert(0) += 1;
        }
    }

    /// A program (or a whole suite) of `language` ran for `seconds` of wall time.
    pub fn ran(&self, language: &'static str, seconds: f64) {
        if let Ok(mut m) = self.run_seconds.lock() {
            m.entry(language)
                .or_insert_with(Histogram::new)
                .observe(seconds);
        }
    }

    /// A program of `language` was built (compiled, or syntax-checked) in `seconds`.
    pub fn compiled(&self, language: &'static str, seconds: f64) {
        if let Ok(mut m) = self.compile_seconds.lock() {
            m.entry(language)
                .or_insert_with(Histogram::new)
                .observe(seconds);
        }
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        let _ = self
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A connection was closed because it stalled in `phase` (`header`, `idle`).
    pub fn connection_timed_out(&self, phase: &'static str) {
        if let Ok(mut m) = self.connections_timed_out.lock() {
            *m.entry(phase).or_insert(0) += 1;
        }
    }

    /// One answered HTTP request.
    pub fn request(&self, endpoint: &str, code: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), code)).or_insert(0) += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            m.entry(endpoint.to_string())
                .or_insert_with(Histogram::new)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// One program run (or judged suite run) ended with `outcome` (a status name).
    pub fn run(&self, outcome: &str) {
        if let Ok(mut m) = self.runs.lock() {
            *m.entry(outcome.to_string()).or_insert(0) += 1;
        }
    }

    /// Jobs refused at admission, by reason (`queue_full`, `shutting_down`, `batch_too_large`).
    pub fn refused(&self, reason: &'static str, jobs: usize) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_insert(0) += jobs as u64;
        }
    }

    /// A job ran for `elapsed` after waiting `waited` in the queue.
    pub fn job(&self, waited: Duration, elapsed: Duration) {
        if let Ok(mut h) = self.queue_wait.lock() {
            h.observe(waited.as_secs_f64());
        }
        if let Ok(mut h) = self.job_seconds.lock() {
            h.observe(elapsed.as_secs_f64());
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A job's code panicked (the worker survived it).
    pub fn worker_panic(&self) {
        self.worker_panics.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued job was skipped because nobody waits for its answer any more.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "afterburner_queue_depth",
            "Programs waiting for a worker.",
            g.queue_depth as f64,
        );
        gauge(
            &mut out,
            "afterburner_queue_capacity",
            "Programs that may wait before requests are refused.",
            g.queue_capacity as f64,
        );
        gauge(
            &mut out,
            "afterburner_jobs_running",
            "Programs being run by a worker now.",
            g.jobs_running as f64,
        );
        gauge(
            &mut out,
            "afterburner_workers",
            "Worker threads, each pinned to its core.",
            g.workers as f64,
        );
        gauge(
            &mut out,
            "afterburner_worker_busy_ratio",
            "Share of the workers running a program now (jobs running / workers).",
            if g.workers == 0 {
                0.0
            } else {
                g.jobs_running as f64 / g.workers as f64
            },
        );
        let _ = writeln!(
            out,
            "# HELP afterburner_worker_busy_seconds_total Seconds workers spent on programs, summed over workers (counted when a job ends; rate() / afterburner_workers is the busy ratio).\n\
             # TYPE afterburner_worker_busy_seconds_total counter\nafterburner_worker_busy_seconds_total {}",
            self.busy_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        gauge(
            &mut out,
            "afterburner_connections_open",
            "Client connections open now.",
            self.connections_open.load(Ordering::Relaxed) as f64,
        );
        let _ = writeln!(
            out,
            "# HELP afterburner_connections_accepted_total Client connections accepted.\n\
             # TYPE afterburner_connections_accepted_total counter\nafterburner_connections_accepted_total {}",
            self.connections_accepted.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP afterburner_connections_timed_out_total Connections closed because their client stalled, by phase (header: headers too slow; idle: no request for too long).\n\
             # TYPE afterburner_connections_timed_out_total counter\n",
        );
        if let Ok(m) = self.connections_timed_out.lock() {
            for (phase, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "afterburner_connections_timed_out_total{{phase=\"{phase}\"}} {n}"
                );
            }
        }
        gauge(
            &mut out,
            "afterburner_results_stored",
            "Finished /execute results kept for GET /results/<task_id>.",
            g.results_stored as f64,
        );
        gauge(
            &mut out,
            "afterburner_uptime_seconds",
            "Seconds since the server started.",
            g.uptime_s,
        );

        out.push_str(
            "# HELP afterburner_http_requests_total HTTP requests answered, by endpoint and status code.\n\
             # TYPE afterburner_http_requests_total counter\n",
        );
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "afterburner_http_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}",
                    escape(endpoint)
                );
            }
        }
        out.push_str(
            "# HELP afterburner_http_request_duration_seconds Time from request to response, by endpoint.\n\
             # TYPE afterburner_http_request_duration_seconds histogram\n",
        );
        if let Ok(m) = self.latency.lock() {
            for (endpoint, h) in m.iter() {
                h.render(
                    &mut out,
                    "afterburner_http_request_duration_seconds",
                    &format!("endpoint=\"{}\"", escape(endpoint)),
                );
            }
        }
        out.push_str(
            "# HELP afterburner_runs_total Program runs (a whole suite counts once), by outcome.\n\
             # TYPE afterburner_runs_total counter\n",
        );
        if let Ok(m) = self.runs.lock() {
            for (outcome, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "afterburner_runs_total{{outcome=\"{}\"}} {n}",
                    escape(outcome)
                );
            }
        }
        out.push_str(
            "# HELP afterburner_jobs_refused_total Programs refused at admission, by reason.\n\
             # TYPE afterburner_jobs_refused_total counter\n",
        );
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "afterburner_jobs_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP afterburner_http_refusals_total Error answers (4xx and 5xx), by reason (queue_full, shutting_down, batch_too_large, body_too_large, body_timeout, bad_request, unauthorized, not_found, internal_error...).\n\
             # TYPE afterburner_http_refusals_total counter\n",
        );
        if let Ok(m) = self.refusals.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "afterburner_http_refusals_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP afterburner_jobs_cancelled_total Queued programs skipped because their client left.\n\
             # TYPE afterburner_jobs_cancelled_total counter\nafterburner_jobs_cancelled_total {}",
            self.cancelled.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP afterburner_worker_panics_total Jobs whose code panicked (answered 500).\n\
             # TYPE afterburner_worker_panics_total counter\nafterburner_worker_panics_total {}",
            self.worker_panics.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP afterburner_job_duration_seconds Time a worker spent on one program (build, runs, judging).\n\
             # TYPE afterburner_job_duration_seconds histogram\n",
        );
        if let Ok(h) = self.job_seconds.lock() {
            h.render(&mut out, "afterburner_job_duration_seconds", "");
        }
        out.push_str(
            "# HELP afterburner_queue_wait_seconds Time a program waited for a worker.\n\
             # TYPE afterburner_queue_wait_seconds histogram\n",
        );
        if let Ok(h) = self.queue_wait.lock() {
            h.render(&mut out, "afterburner_queue_wait_seconds", "");
        }
        for (name, help, m) in [
            (
                "afterburner_run_duration_seconds",
                "Wall time of a program's run (a whole suite's for /v1/evaluate and /v1/reward), by language.",
                &self.run_seconds,
            ),
            (
                "afterburner_compile_duration_seconds",
                "Wall time of building a program (compiling, or checking an interpreted one's syntax), by language; cached builds are not counted.",
                &self.compile_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            if let Ok(m) = m.lock() {
                for (language, h) in m.iter() {
                    h.render(&mut out, name, &format!("language=\"{language}\""));
                }
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counted() {
        let m = Metrics::new();
        m.request("/execute", 200, Duration::from_millis(30));
        m.request("/execute", 200, Duration::from_millis(300));
        m.request("/execute", 503, Duration::from_millis(1));
        let text = m.render(Gauges {
            queue_depth: 2,
            queue_capacity: 4,
            jobs_running: 1,
            workers: 1,
            results_stored: 0,
            uptime_s: 1.0,
        });
        assert!(
            text.contains("afterburner_http_requests_total{endpoint=\"/execute\",code=\"200\"} 2")
        );
        assert!(
            text.contains("afterburner_http_requests_total{endpoint=\"/execute\",code=\"503\"} 1")
        );
        assert!(text.contains(
            "afterburner_http_request_duration_seconds_bucket{endpoint=\"/execute\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "afterburner_http_request_duration_seconds_bucket{endpoint=\"/execute\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("afterburner_queue_depth 2"));
    }
}
