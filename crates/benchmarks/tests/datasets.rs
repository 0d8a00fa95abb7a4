//! The harnesses on the real data in `../shared/data`: reference solutions pass, empty ones do
//! not. (Subsets where a full run is too slow for `cargo test`; full runs are in BENCHMARKS.md.)

mod support;

use afterburner_benchmarks::{Dataset, Format, Problem, Submission, Suite};
use afterburner_sandbox::{Language, Status};
use support::{harness, real};

/// Evaluates `code(problem)` for every problem (one run each, on the sandbox's default core);
/// returns (problem id, status, reason) per problem.
fn evaluate_all(
    problems: &[&Problem],
    code: impl Fn(&Problem) -> String,
) -> Vec<(String, Status, Option<String>)> {
    problems
        .iter()
        .map(|p| {
            let suite = Suite::tests_only(p);
            let e = harness()
                .evaluate(
                    &Submission::new(p, Language::Python, &code(p)),
                    &suite,
                    None,
                )
                .unwrap_or_else(|e| panic!("{}: {e}", p.id));
            (p.id.clone(), e.status, e.failure_reason())
        })
        .collect()
}

fn leetcode() -> Dataset {
    real(
        Format::LeetCode,
        "leetcode/LeetCodeDataset-v0.3.1-test.jsonl.gz",
    )
}

#[test]
fn leetcode_reference_completions_pass_and_empty_bodies_pass_nothing() {
    let d = leetcode();
    let problems: Vec<&Problem> = d.problems.iter().collect();
    assert_eq!(problems.len(), 146);
    let refs = evaluate_all(&problems, |p| p.references[0].code.clone());
    let failed: Vec<_> = refs.iter().filter(|r| r.1 != Status::Accepted).collect();
    let pass_rate = 1.0 - failed.len() as f64 / refs.len() as f64;
    assert!(pass_rate >= 0.98, "{pass_rate}: {failed:#?}");

    // The starter code with an empty (`pass`) body returns None: it must pass no problem.
    let empty = evaluate_all(&problems, |p| {
        let starter = &p.starter_code[&Language::Python];
        format!("{}\n        pass\n", starter.trim_end())
    });
    let passed: Vec<_> = empty.iter().filter(|r| r.1 == Status::Accepted).collect();
    assert!(passed.is_empty(), "{passed:#?}");
    assert!(
        empty.iter().all(|r| r.1 == Status::WrongAnswer),
        "{:#?}",
        empty
            .iter()
            .filter(|r| r.1 != Status::WrongAnswer)
            .collect::<Vec<_>>()
    );
}

#[test]
fn coffe_verified_solutions_pass_their_problems_with_stress_inputs() {
    let d = real(Format::Coffe, "coffe-code-contests");
    // Five problems with quick stress inputs (one of which loses an input to disagreeing
    // references), two verified solutions each. Every problem is in BENCHMARKS.md.
    for id in [
        "cc-4a4036eefa",
        "cc-660ac1d198",
        "cc-ca387e1d5e",
        "cc-8da9b13429",
        "cc-874ed991d3",
    ] {
        let p = d
            .problem(id)
            .unwrap_or_else(|| panic!("{id} is in the data"));
        let suite = harness()
            .suite(p, None)
            .unwrap_or_else(|e| panic!("{}: {e}", p.id));
        assert_eq!(suite.cases.len(), p.tests.len() + suite.stress_cases());
        assert_eq!(
            suite.stress_cases() + suite.dropped.len(),
            p.stress.len(),
            "{id}"
        );
        assert!(suite.stress_cases() >= 4, "{id}: {:?}", suite.dropped);
        for r in p.verified_references().take(2) {
            let e = harness()
                .evaluate(&Submission::new(p, r.language, &r.code), &suite, None)
                .unwrap_or_else(|e| panic!("{}: {e}", r.id));
            assert_eq!(
                e.status,
                Status::Accepted,
                "{}: {:?}",
                r.id,
                e.failure_reason()
            );
        }
        let wrong = harness()
            .evaluate(
                &Submission::new(p, Language::Python, "print(0)\n"),
                &suite,
                None,
            )
            .unwrap();
        assert_eq!(wrong.status, Status::WrongAnswer, "{}", p.id);
    }
}

#[test]
fn enamel_experts_and_canonical_solutions_pass_on_generated_inputs() {
    let d = real(Format::Enamel, "enamel");
    for id in ["HumanEval/1", "HumanEval/2", "HumanEval/10", "HumanEval/12"] {
        let p = d
            .problem(id)
            .unwrap_or_else(|| panic!("{id} is in the data"));
        let suite = harness()
            .suite(p, None)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(suite.cases.len(), 20, "{id}: {:?}", suite.dropped);
        for r in &p.references {
            let e = harness()
                .evaluate(&Submission::new(p, r.language, &r.code), &suite, None)
                .unwrap_or_else(|e| panic!("{}: {e}", r.id));
            assert_eq!(
                e.status,
                Status::Accepted,
                "{}: {:?}",
                r.id,
                e.failure_reason()
            );
        }
        // The prompt alone (a stub returning None) fails.
        let stub = harness()
            .evaluate(
                &Submission::new(p, Language::Python, &p.description),
                &suite,
                None,
            )
            .unwrap();
        assert_ne!(stub.status, Status::Accepted, "{id}");
    }
}
