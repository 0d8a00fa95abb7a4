//! The choices of `afterburner data` on constructed figures: the tie rule decides every
//! "more efficient", answers parse as the reward parses them, splits never share a problem,
//! duplicates and excluded problems never appear, and every format's rows are typed as its
//! trainer reads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use afterburner_benchmarks::{Checker, Entry, Problem, RecordedPerformance, ReferenceSolution};
use afterburner_data::format::table;
use afterburner_data::{
    FileFormat, Kind, MeasuredProblem, MeasuredSolution, Provenance, Selection, Split, Target,
    Trainer, select, write_data,
};
use afterburner_optimize::{Instruction, Templates};
use afterburner_reward::parse_response;
use afterburner_sandbox::{Language, Noise, Status};
use serde_json::Value;

fn problem(id: &str, codes: &[&str]) -> Problem {
    Problem {
        title: format!("Problem {id}"),
        description: "Read n and print n squared.".into(),
        references: codes
            .iter()
            .enumerate()
            .map(|(k, code)| ReferenceSolution {
                id: format!("{id}-s{k}"),
                language: Language::Python,
                code: code.to_string(),
                verified: true,
                recorded: None,
            })
            .collect(),
        ..Problem::from_tests(id, Entry::StdinStdout, Vec::new(), Checker::Exact)
    }
}

/// Figures: (time ms, memory KB) with a 1% CV, or None for a failing solution.
fn measured<'p>(problem: &'p Problem, figures: &[Option<(f64, f64)>]) -> MeasuredProblem<'p> {
    MeasuredProblem {
        problem,
        solutions: problem
            .references
            .iter()
            .zip(figures)
            .map(|(reference, f)| MeasuredSolution {
                reference,
                passed: f.is_some(),
                status: if f.is_some() {
                    Status::Accepted
                } else {
                    Status::WrongAnswer
                },
                detail: f.is_none().then(|| "test 1: expected 4, got 5".to_string()),
                performance: f.map(|(t, m)| {
                    RecordedPerformance::new(t, m, t * m).with_noise(Noise {
                        time: 0.01,
                        memory: 0.001,
                        integral: 0.01,
                    })
                }),
            })
            .collect(),
        error: None,
    }
}

fn selection(instructions: &[Instruction], per_problem: usize) -> Selection {
    Selection {
        instructions: instructions.to_vec(),
        per_problem,
        test_share: 0.0,
        exclude: BTreeSet::new(),
    }
}

const CODES: [&str; 5] = [
    "n = int(input())\nprint(n * n)",
    "n = int(input())\nprint(sum(n for _ in range(n)))",
    "n = int(input())\nprint(n ** 2)",
    "import sys\nn = int(sys.stdin.readline())\nprint(n*n)",
    "n = int(input())\nprint(n + n)",
];

#[test]
fn sft_teaches_the_most_efficient_passing_solution_in_the_answer_format_the_reward_parses() {
    let p = problem("p1", &CODES);
    // s3 is fastest; s1 slowest; s4 fails; s2 is within 3% of s0 (a tie).
    let m = measured(
        &p,
        &[
            Some((50.0, 9000.0)),
            Some((400.0, 9000.0)),
            Some((51.0, 9000.0)),
            Some((20.0, 9100.0)),
            None,
        ],
    );
    let out = select(
        &[m],
        Kind::Sft,
        &selection(&[Instruction::Time], 10),
        &Templates::paper(),
    )
    .unwrap();
    let rows = &out.examples;
    assert_eq!(rows[0].mode, "generate");
    for e in rows {
        let Target::Completion { text, solution_id } = &e.target else {
            panic!("not SFT: {e:?}")
        };
        assert_eq!(solution_id, "p1-s3", "always the fastest passing solution");
        let parsed = parse_response(text, Language::Python);
        assert!(parsed.well_formed, "{text}");
        assert_eq!(parsed.code.as_deref().map(str::trim_end), Some(CODES[3]));
    }
    // Originals: every passing solution clearly slower than s3 (slowest first), then the failing one.
    let originals: Vec<&str> = rows[1..]
        .iter()
        .map(|e| {
            let user = &e.prompt.last().unwrap().content;
            assert!(user.contains("## Original Performance"), "{user}");
            if user.contains("Passed: False") {
                "failing"
            } else if user.contains("400.00 ms") {
                "s1"
            } else if user.contains("51.00 ms") {
                "s2"
            } else {
                "s0"
            }
        })
        .collect();
    assert_eq!(originals, ["s1", "s2", "s0", "failing"]);
}

#[test]
fn dpo_pairs_differ_beyond_the_measured_noise_or_reject_a_failing_solution() {
    let p = problem("p2", &CODES[..4]);
    // Time: 100 vs 102 is within the 3% floor (tied); 100 vs 150 is not.
    let m = measured(
        &p,
        &[
            Some((100.0, 8000.0)),
            Some((102.0, 8000.0)),
            Some((150.0, 8000.0)),
            None,
        ],
    );
    let out = select(
        &[m],
        Kind::Dpo,
        &selection(&[Instruction::Time, Instruction::Memory], 10),
        &Templates::paper(),
    )
    .unwrap();
    let pairs: Vec<(Instruction, String, String)> = out
        .examples
        .iter()
        .map(|e| match &e.target {
            Target::Preference {
                chosen_id,
                rejected_id,
                ..
            } => (e.instruction, chosen_id.clone(), rejected_id.clone()),
            other => panic!("not DPO: {other:?}"),
        })
        .collect();
    // Time: (s0 best, s2 worst) differ by 50%; the failing s3 is rejected against s0. Memory:
    // all 8000 KB, tied: only the failing pair.
    assert_eq!(
        pairs,
        [
            (Instruction::Time, "p2-s0".into(), "p2-s2".into()),
            (Instruction::Time, "p2-s0".into(), "p2-s3".into()),
            (Instruction::Memory, "p2-s0".into(), "p2-s3".into()),
        ]
    );
}

#[test]
fn a_problem_whose_solutions_all_tie_gives_no_dpo_pair_and_says_why() {
    let p = problem("p3", &CODES[..3]);
    let m = measured(
        &p,
        &[
            Some((100.0, 8000.0)),
            Some((101.0, 8001.0)),
            Some((102.0, 8002.0)),
        ],
    );
    let out = select(
        &[m],
        Kind::Dpo,
        &selection(&[Instruction::Time, Instruction::Memory], 6),
        &Templates::paper(),
    )
    .unwrap();
    assert!(out.examples.is_empty());
    assert_eq!(out.skipped.len(), 1);
    assert!(
        out.skipped[0]
            .reason
            .contains("differ by more than their measured noise"),
        "{:?}",
        out.skipped
    );
}

#[test]
fn grpo_labels_are_reward_requests_with_the_originals_measured_performance() {
    let p = problem("p4", &CODES);
    let m = measured(
        &p,
        &[
            Some((10.0, 1000.0)),
            Some((20.0, 2000.0)),
            Some((30.0, 3000.0)),
            Some((40.0, 4000.0)),
            None,
        ],
    );
    let out = select(
        &[m],
        Kind::Grpo,
        &selection(&[Instruction::Integral], 3),
        &Templates::paper(),
    )
    .unwrap();
    assert_eq!(out.examples.len(), 3);
    let labels: Vec<Value> = out
        .examples
        .iter()
        .map(|e| serde_json::from_str(&e.label()).unwrap())
        .collect();
    for l in &labels {
        assert_eq!(l["problem_id"], "p4");
        assert_eq!(l["language"], "python");
        assert_eq!(l["instruction"], "integral");
    }
    // Spread over the ranking, least efficient first.
    let times: Vec<f64> = labels
        .iter()
        .map(|l| l["baseline"]["time_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(times, [40.0, 30.0, 20.0]);
    assert_eq!(labels[0]["baseline"]["integral"], 160000.0);
    assert_eq!(labels[0]["baseline"]["passed"], true);

    // A quota larger than the passing solutions takes the failing one too, without figures.
    let m = measured(&p, &[Some((10.0, 1000.0)), None, None, None, None]);
    let out = select(
        &[m],
        Kind::Grpo,
        &selection(&[Instruction::Time], 2),
        &Templates::paper(),
    )
    .unwrap();
    let failing: Value = serde_json::from_str(&out.examples[1].label()).unwrap();
    assert_eq!(
        failing["baseline"],
        serde_json::json!({"passed": false}),
        "a failing original has no figures"
    );
    assert!(
        out.examples[1].prompt[1]
            .content
            .contains("Passed: False / Time: N/A")
    );
}

#[test]
fn splits_keep_problems_whole_duplicates_collapse_and_excluded_problems_never_appear() {
    let problems: Vec<Problem> = (0..40)
        .map(|i| {
            problem(
                &format!("q{i}"),
                &[
                    CODES[0],
                    // The same code with other line endings and trailing spaces: a duplicate.
                    "n = int(input())   \r\n\r\nprint(n * n)\r\n",
                    CODES[1],
                ],
            )
        })
        .collect();
    let measured: Vec<MeasuredProblem> = problems
        .iter()
        .map(|p| {
            measured(
                p,
                &[
                    Some((10.0, 1000.0)),
                    Some((10.0, 1000.0)),
                    Some((90.0, 3000.0)),
                ],
            )
        })
        .collect();
    let mut sel = selection(&[Instruction::Time, Instruction::Memory], 4);
    sel.test_share = 0.3;
    sel.exclude = ["q3".to_string(), "q5".to_string()].into();
    let out = select(&measured, Kind::Sft, &sel, &Templates::paper()).unwrap();
    assert_eq!(out.excluded, 2);
    assert_eq!(out.duplicate_solutions, 38);
    let mut split_of: BTreeMap<&str, Split> = BTreeMap::new();
    for e in &out.examples {
        assert!(e.problem_id != "q3" && e.problem_id != "q5");
        assert_eq!(e.split, Split::of(&e.problem_id, 0.3));
        if let Some(s) = split_of.insert(&e.problem_id, e.split) {
            assert_eq!(s, e.split, "{} in two splits", e.problem_id);
        }
        if let Target::Completion { solution_id, .. } = &e.target {
            assert_ne!(
                solution_id.rsplit('-').next(),
                Some("s1"),
                "the duplicate is never used"
            );
        }
    }
    let tests = split_of.values().filter(|s| **s == Split::Test).count();
    assert!((3..=20).contains(&tests), "{tests} of 38 problems in test");
    // At most `per_problem` rows per problem, balanced over the two instructions.
    let mut per: HashMap<(&str, Instruction), usize> = HashMap::new();
    for e in &out.examples {
        *per.entry((&e.problem_id, e.instruction)).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 2), "{per:?}");
}

fn provenance() -> Provenance {
    Provenance {
        dataset: "coffe:constructed".into(),
        dataset_format: "coffe".into(),
        fingerprint: "test".into(),
        machine: "test machine".into(),
        protocol: "v3".into(),
        cache: "/nonexistent".into(),
        problems: 1,
        dataset_rows_skipped: 0,
        options: serde_json::json!({"per_problem": 6}),
    }
}

#[test]
fn every_format_writes_typed_rows_with_problem_and_split_and_refuses_what_its_trainer_lacks() {
    let p = problem("p5", &CODES);
    let m = measured(
        &p,
        &[
            Some((10.0, 1000.0)),
            Some((50.0, 5000.0)),
            Some((90.0, 9000.0)),
            Some((40.0, 8000.0)),
            None,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let templates = Templates::paper();
    for kind in [Kind::Sft, Kind::Dpo, Kind::Grpo] {
        let examples = select(
            std::slice::from_ref(&m),
            kind,
            &selection(&[Instruction::Time, Instruction::Memory], 4),
            &templates,
        )
        .unwrap();
        assert!(!examples.examples.is_empty(), "{kind:?}");
        for trainer in [
            Trainer::Trl,
            Trainer::LlamaFactory,
            Trainer::Verl,
            Trainer::OpenRlhf,
        ] {
            let refs: Vec<_> = examples.examples.iter().collect();
            let built = table(&refs, kind, trainer, "coffe");
            let unsupported = matches!(
                (trainer, kind),
                (Trainer::Verl, Kind::Dpo) | (Trainer::LlamaFactory, Kind::Grpo)
            );
            if unsupported {
                let e = built.unwrap_err().to_string();
                assert!(e.contains("has no"), "{e}");
                continue;
            }
            let t = built.unwrap();
            let names: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
            let traced = if trainer == Trainer::Verl {
                names.contains(&"extra_info")
            } else {
                names.contains(&"problem_id") && names.contains(&"split")
            };
            assert!(traced, "{trainer} {kind:?}: {names:?}");
            for file_format in [FileFormat::Jsonl, FileFormat::Parquet] {
                let out = dir
                    .path()
                    .join(format!("{}-{}-{:?}", trainer, kind.name(), file_format));
                let manifest =
                    write_data(&out, &examples, kind, trainer, file_format, provenance()).unwrap();
                assert_eq!(
                    manifest.counts.values().sum::<usize>(),
                    examples.examples.len()
                );
                for file in manifest.files.values() {
                    assert!(out.join(file).is_file());
                }
                assert!(out.join("manifest.json").is_file());
                assert_eq!(
                    out.join("dataset_info.json").is_file(),
                    trainer == Trainer::LlamaFactory
                );
            }
        }
    }
}

#[test]
fn jsonl_rows_keep_column_order_and_verl_rows_carry_the_label_as_ground_truth() {
    let p = problem("p6", &CODES[..3]);
    let m = measured(&p, &[Some((10.0, 1000.0)), Some((50.0, 5000.0)), None]);
    let examples = select(
        &[m],
        Kind::Grpo,
        &selection(&[Instruction::Time], 2),
        &Templates::paper(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_data(
        dir.path(),
        &examples,
        Kind::Grpo,
        Trainer::Verl,
        FileFormat::Jsonl,
        provenance(),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("{\"data_source\":\"afterburner/coffe\",\"prompt\":["),
        "{first}"
    );
    let row: Value = serde_json::from_str(first).unwrap();
    assert_eq!(row["ability"], "code");
    assert_eq!(row["reward_model"]["style"], "rule");
    let truth: Value =
        serde_json::from_str(row["reward_model"]["ground_truth"].as_str().unwrap()).unwrap();
    assert_eq!(truth["problem_id"], "p6");
    assert_eq!(truth["baseline"]["time_ms"], 50.0);
    assert_eq!(row["extra_info"]["index"], 0);
    assert_eq!(row["extra_info"]["split"], "train");
    assert_eq!(row["extra_info"]["baseline_time_ms"], 50.0);
    assert_eq!(row["prompt"][0]["role"], "system");
    assert_eq!(row["prompt"][1]["role"], "user");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["counts"]["train"], 2);
    assert_eq!(manifest["counts"]["test"], 0);
    assert_eq!(manifest["source"]["options"]["per_problem"], 6);
}
