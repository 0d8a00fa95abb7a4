//! The loop end to end: a scripted OpenAI-compatible server on loopback proposes code, the real
//! sandbox measures it with the harness protocol (3 repeats, medians), and acceptance decides.
//! The candidates differ by hundreds of milliseconds of `sleep`, far beyond the noise, so the
//! decisions are deterministic.

use std::collections::HashMap;
use std::path::Path;

use afterburner_benchmarks::{Checker, Entry, Harness, HarnessConfig, Problem, Suite, TestCase};
use afterburner_optimize::trajectory::{Source, TRAJECTORY_FILE};
use afterburner_optimize::{
    AcceptanceRule, ChatClient, ClientConfig, HarnessJudge, Instruction, IterationRecord,
    LoopConfig, Optimizer, Outcome, ResponseCache, Task, Templates, TrajectoryWriter,
    read_trajectory,
};
use afterburner_sandbox::{Language, Sandbox, SandboxConfig};
use afterburner_testkit::scripted::{Reply, ScriptedServer};

fn problem() -> Problem {
    let tests = [("10\n", "55\n"), ("100\n", "5050\n")]
        .iter()
        .map(|(i, e)| TestCase {
            input: i.to_string(),
            expected: e.to_string(),
        })
        .collect();
    Problem {
        title: "Triangle numbers".into(),
        description: "Read n from standard input and print 1 + 2 + ... + n.".into(),
        ..Problem::from_tests("triangle", Entry::StdinStdout, tests, Checker::Exact)
    }
}

/// A program that sleeps `seconds` per test, then answers correctly.
fn sleepy(seconds: f64) -> String {
    format!("import time\nn = int(input())\ntime.sleep({seconds})\nprint(n * (n + 1) // 2)\n")
}

const FAST: &str = "n = int(input())\nprint(n * (n + 1) // 2)\n";
const WRONG: &str = "n = int(input())\nprint(n)\n";

fn answer(code: &str) -> String {
    format!("<thinking>Try this.</thinking>\n<solution>\n```python\n{code}```\n</solution>")
}

fn sandbox(dir: &Path) -> Sandbox {
    Sandbox::with_config(SandboxConfig {
        state_dir: Some(dir.join("sandbox")),
        ..SandboxConfig::default()
    })
    .expect("sandbox available (tests run as root)")
}

/// Runs the loop over `problem` against `server` with `iterations`, appending to `out`.
fn run_loop(
    harness: &Harness<'_>,
    server_url: &str,
    cache: &Path,
    out: &Path,
    iterations: usize,
) -> Outcome {
    let p = problem();
    let mut config = ClientConfig::new(server_url, "scripted");
    config.backoff = std::time::Duration::from_millis(10);
    config.max_retries = 1;
    let client = ChatClient::new(config, Some(ResponseCache::new(cache))).unwrap();
    let judge = HarnessJudge::new(
        harness,
        HashMap::from([(p.id.clone(), Suite::tests_only(&p))]),
        vec![None],
    );
    let templates = Templates::paper();
    let optimizer = Optimizer {
        model: &client,
        judge: &judge,
        templates: &templates,
        config: LoopConfig {
            iterations,
            instruction: Instruction::Time,
            language: Language::Python,
            rule: AcceptanceRule::default(),
        },
    };
    let path = out.join(TRAJECTORY_FILE);
    let previous = read_trajectory(&path)
        .unwrap()
        .rows
        .remove(&p.id)
        .unwrap_or_default();
    let writer = TrajectoryWriter::open(&path).unwrap();
    let task = Task {
        problem: &p,
        original: None,
        references: Vec::new(),
    };
    optimizer.run(
        &task,
        previous,
        &|r| writer.append(r).map_err(|e| e.to_string()),
        &|| false,
    )
}

fn harness(sandbox: &Sandbox) -> Harness<'_> {
    Harness::new(
        sandbox,
        HarnessConfig {
            repeats: 3,
            ..HarnessConfig::default()
        },
    )
    .unwrap()
}

/// What a row says, for comparing rows read back (floats lose their last digit in JSON).
type RowSummary = (usize, bool, &'static str, Option<String>, Option<usize>);

fn summary(rows: &[IterationRecord]) -> Vec<RowSummary> {
    rows.iter()
        .map(|r| {
            (
                r.iteration,
                r.accepted,
                r.status.as_str(),
                r.code.clone(),
                r.incumbent,
            )
        })
        .collect()
}

fn perf_line(r: &IterationRecord) -> String {
    format!(
        "Passed: True / Time: {:.2} ms / Memory: {:.0} KB / Integral: {:.1} KB*ms",
        r.time.unwrap(),
        r.memory.unwrap(),
        r.integral.unwrap()
    )
}

#[test]
fn scripted_candidates_are_accepted_exactly_when_they_are_faster_beyond_the_noise() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox(dir.path());
    let harness = harness(&sandbox);
    let slow = sleepy(0.4);
    let slower = sleepy(0.8);
    let server = ScriptedServer::start(vec![
        Reply::content(answer(&slow)),
        Reply::content(answer(WRONG)),
        Reply::content("I would rather not write code today."),
        Reply::content(answer(FAST)),
        Reply::content(answer(&slower)),
    ])
    .unwrap();
    let out = run_loop(
        &harness,
        &server.base_url(),
        &dir.path().join("cache"),
        dir.path(),
        4,
    );
    assert_eq!(out.error, None);
    let rows = &out.records;
    assert_eq!(rows.len(), 5);

    let accepted: Vec<bool> = rows.iter().map(|r| r.accepted).collect();
    assert_eq!(accepted, [true, false, false, true, false], "{rows:#?}");
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "accepted",
            "wrong_answer",
            "no_code",
            "accepted",
            "accepted"
        ]
    );
    assert_eq!(rows[0].source, Source::Generate);
    assert!(rows[1..].iter().all(|r| r.source == Source::Improve));
    assert!(rows[2].code.is_none());
    assert!(
        rows[2].detail.as_deref().unwrap().contains("no code block"),
        "{:?}",
        rows[2].detail
    );
    // The measured figures order the passing candidates as their sleeps do.
    let t = |k: usize| rows[k].time.unwrap();
    assert!(t(3) < t(0) && t(0) < t(4), "{} {} {}", t(0), t(3), t(4));
    assert!(rows.iter().filter(|r| r.passed).all(|r| r.runs == 3));
    assert!(
        rows[4].decision.contains("not lower"),
        "{}",
        rows[4].decision
    );

    // The prompts carry the incumbent's code and its measurements, nothing else.
    let prompts = server.user_prompts();
    assert_eq!(prompts.len(), 5);
    assert!(!prompts[0].contains("## Original Solution"));
    for (k, prompt) in prompts.iter().enumerate().take(4).skip(1) {
        assert!(prompt.contains(slow.trim_end()), "prompt {k}:\n{prompt}");
        assert!(
            prompt.contains(&perf_line(&rows[0])),
            "prompt {k}:\n{prompt}"
        );
        assert!(
            !prompt.contains("print(n)\n"),
            "a rejected candidate leaked into prompt {k}"
        );
    }
    assert!(prompts[4].contains(FAST.trim_end()));
    assert!(prompts[4].contains(&perf_line(&rows[3])));
    assert!(!prompts[4].contains("time.sleep"));

    // The final code is the fastest passing one, and every row is on disk.
    assert_eq!(out.incumbent().unwrap().code.as_deref(), Some(FAST));
    let on_disk = read_trajectory(&dir.path().join(TRAJECTORY_FILE)).unwrap();
    assert_eq!(summary(&on_disk.rows["triangle"]), summary(&out.records));
}

#[test]
fn a_resumed_run_continues_from_its_incumbent_without_paying_twice_for_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox(dir.path());
    let harness = harness(&sandbox);
    let cache = dir.path().join("cache");
    let out_dir = dir.path().join("run");
    std::fs::create_dir_all(&out_dir).unwrap();
    let trajectory = out_dir.join(TRAJECTORY_FILE);
    let slow = sleepy(0.4);

    // First run: iterations 0 and 1 complete, then the endpoint fails at iteration 2.
    let first = ScriptedServer::start(vec![
        Reply::content(answer(&slow)),
        Reply::content(answer(WRONG)),
        Reply::status(500),
        Reply::status(500),
    ])
    .unwrap();
    let out = run_loop(&harness, &first.base_url(), &cache, &out_dir, 2);
    assert_eq!(out.records.len(), 2);
    let error = out.error.unwrap();
    assert!(
        error.contains("iteration 2") && error.contains("HTTP 500"),
        "{error}"
    );
    drop(first);

    // As if the process had died while measuring iteration 1: its answer is cached, its row lost.
    let text = std::fs::read_to_string(&trajectory).unwrap();
    let first_line = text.lines().next().unwrap();
    std::fs::write(&trajectory, format!("{first_line}\n")).unwrap();

    // Resume against another server: iteration 1 is replayed from the cache (its prompt, built
    // from the stored incumbent, is the same request), only iteration 2 is asked for.
    let second = ScriptedServer::start(vec![Reply::content(answer(FAST))]).unwrap();
    let out = run_loop(&harness, &second.base_url(), &cache, &out_dir, 2);
    assert_eq!(out.error, None);
    assert_eq!(out.ran, 2);
    assert_eq!(out.records.len(), 3);
    assert_eq!(out.records[1].cached, Some(true));
    assert_eq!(out.records[1].status.as_str(), "wrong_answer");
    assert_eq!(out.records[2].cached, Some(false));
    assert!(out.records[2].accepted);
    let prompts = second.user_prompts();
    assert_eq!(prompts.len(), 1, "only iteration 2 reaches the server");
    assert!(prompts[0].contains(slow.trim_end()));
    let rows = read_trajectory(&trajectory).unwrap();
    assert!(rows.issues.is_empty(), "{:?}", rows.issues);
    assert_eq!(summary(&rows.rows["triangle"]), summary(&out.records));
    drop(second);

    // Re-running the finished run asks for nothing: every iteration is read back.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let again = run_loop(&harness, &down, &cache, &out_dir, 2);
    assert_eq!((again.ran, again.error), (0, None));

    // A fresh run into another folder replays identical requests (the generation prompt of
    // iteration 0) without a server; later prompts carry new measurements, so they are new.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let zero = run_loop(&harness, &down, &cache, &fresh, 0);
    assert_eq!(zero.error, None);
    assert_eq!(zero.records[0].cached, Some(true));
    assert_eq!(zero.records[0].code.as_deref(), Some(slow.as_str()));
}
