//! The in-process sandbox reward (`SandboxReward`, what `afterburner train grpo` uses): a
//! correct, a wrong and a code-less response judged on a real problem in the real sandbox give
//! SPEC §7's reward; an unknown problem or a bad label is "not judged", never a made-up score.

use std::collections::HashMap;

use afterburner_benchmarks::{Checker, Entry, Harness, HarnessConfig, Problem, Suite, TestCase};
use afterburner_optimize::{RewardLabel, SandboxReward};
use afterburner_reward::RewardConfig;
use afterburner_sandbox::{Sandbox, SandboxConfig};

fn problem() -> Problem {
    let tests = (1..=5)
        .map(|n: u64| TestCase {
            input: format!("{n}\n"),
            expected: format!("{}\n", n * (n + 1) / 2),
        })
        .collect();
    Problem::from_tests("triangle", Entry::StdinStdout, tests, Checker::Exact)
}

fn answer(code: &str) -> String {
    format!("<thinking>t</thinking>\n<solution>\n```python\n{code}```\n</solution>")
}

#[test]
fn responses_are_rewarded_as_the_reward_endpoint_rewards_them() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::with_config(SandboxConfig {
        state_dir: Some(dir.path().join("sandbox")),
        ..SandboxConfig::default()
    })
    .expect("sandbox available (tests run as root)");
    let harness = Harness::new(
        &sandbox,
        HarnessConfig {
            repeats: 1,
            drift_interval: None,
            ..HarnessConfig::default()
        },
    )
    .unwrap();
    let p = problem();
    let suite = Suite::tests_only(&p);
    let judge = SandboxReward::new(
        &harness,
        HashMap::from([(p.id.clone(), (&p, suite))]),
        vec![None],
        RewardConfig::default(),
    );
    let label = RewardLabel::parse(
        r#"{"problem_id": "triangle", "language": "python", "instruction": "time",
            "baseline": {"passed": false}}"#,
    )
    .unwrap();
    let right = answer("n = int(input())\nprint(n * (n + 1) // 2)\n");
    let wrong = answer("n = int(input())\nprint(n)\n");
    let (rewards, problems) = judge.rewards(&[
        (&label, right.as_str()),
        (&label, wrong.as_str()),
        (&label, "I cannot write this."),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let rewards: Vec<f64> = rewards.into_iter().map(|r| r.unwrap().total).collect();
    // Fail -> pass earns the correctness term; fail -> fail does not; no code loses the format.
    assert!(rewards[0] > rewards[1], "{rewards:?}");
    assert!(rewards[1] > rewards[2], "{rewards:?}");
    let direct = judge.reward(&label, &right).unwrap();
    assert_eq!(direct.correctness, 1.0, "{direct:?}");

    let unknown = RewardLabel::parse(r#"{"problem_id": "nope", "instruction": "time"}"#).unwrap();
    let (rewards, problems) = judge.rewards(&[(&unknown, right.as_str())]);
    assert_eq!(rewards, vec![None]);
    assert!(
        problems[0].contains("problem `nope` is not among the 1 loaded"),
        "{problems:?}"
    );
    assert!(RewardLabel::parse("{\"instruction\": \"time\"}").is_err());
}
