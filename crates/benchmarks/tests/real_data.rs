//! The importers on the real benchmark data in `../shared/data` (see its README).

use std::path::PathBuf;

use afterburner_benchmarks::{
    Checker, Dataset, DatasetSpec, Entry, Format, StressSource, coffe_id, load,
};
use afterburner_sandbox::Language;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

fn data(folder: &str) -> PathBuf {
    PathBuf::from(DATA).join(folder)
}

fn load_real(format: Format, folder: &str) -> Dataset {
    let spec = DatasetSpec::new(format, data(folder));
    match load(&spec) {
        Ok(dataset) => dataset,
        Err(e) => panic!("{spec}: {e}"),
    }
}

fn coffe() -> Dataset {
    load_real(Format::Coffe, "coffe-code-contests")
}

fn leetcode() -> Dataset {
    load_real(
        Format::LeetCode,
        "leetcode/LeetCodeDataset-v0.3.1-test.jsonl.gz",
    )
}

fn enamel() -> Dataset {
    load_real(Format::Enamel, "enamel")
}

fn tests(d: &Dataset) -> usize {
    d.problems.iter().map(|p| p.tests.len()).sum()
}

fn references(d: &Dataset) -> usize {
    d.problems.iter().map(|p| p.references.len()).sum()
}

fn generators(d: &Dataset) -> usize {
    d.problems
        .iter()
        .flat_map(|p| &p.stress)
        .filter(|s| matches!(s, StressSource::Generator { .. }))
        .count()
}

#[test]
fn all_43_coffe_problems_load_with_tests_generators_and_verified_solutions() {
    let d = coffe();
    assert_eq!(d.report.loaded, 43, "{}", d.report);
    assert!(d.report.skipped.is_empty(), "{}", d.report);
    assert!(d.report.warnings.is_empty(), "{}", d.report);
    assert_eq!(d.problems.len(), 43);
    assert_eq!(tests(&d), 8437);
    assert_eq!(generators(&d), 209);
    assert_eq!(references(&d), 3264);
    assert_eq!(
        d.problems
            .iter()
            .map(|p| p.verified_references().count())
            .sum::<usize>(),
        3264
    );
    for p in &d.problems {
        assert_eq!(p.entry, Entry::StdinStdout, "{}", p.id);
        assert_eq!(p.checker, Checker::Exact, "{}", p.id);
        assert!(!p.tests.is_empty(), "{}", p.id);
        assert!(!p.references.is_empty(), "{}", p.id);
        assert!(!p.description.contains("Python Solution:"), "{}", p.id);
        assert!(matches!(p.stress.len(), 2 | 5), "{}", p.id);
        for s in &p.stress {
            let StressSource::Generator { source, levels } = s else {
                panic!("{}: literal stress input", p.id);
            };
            assert!(source.contains("def generate_input()"), "{}", p.id);
            assert!(levels.is_empty(), "{}", p.id);
        }
    }
}

#[test]
fn coffe_ids_hash_the_full_prompt_and_descriptions_drop_the_wrapper() {
    let d = coffe();
    let first = &d.problems[0];
    assert_eq!(first.id, "cc-1827c92676");
    assert!(first.id.starts_with("cc-") && first.id.len() == 13);
    assert!(
        first
            .description
            .starts_with("A robot cleaner is placed on the floor")
    );
    assert!(
        !first
            .description
            .contains("You are an expert Python programmer")
    );
    assert!(!first.description.contains("Python Solution:"));
    assert_eq!(first.references[0].id, "cc-1827c92676/ref-0");
    assert_eq!(first.references[0].language, Language::Python);
    assert_eq!(
        first.tests[0].input,
        "5\n10 10 6 1 2 8\n10 10 9 9 1 1\n9 8 5 6 2 1\n6 9 2 2 5 8\n2 2 1 1 2 1\n"
    );
    assert_eq!(first.tests[0].expected, "7\n10\n9\n3\n0\n");
    assert_eq!(coffe_id("abc"), "cc-ba7816bf8f");
}

#[test]
fn all_146_leetcode_problems_load_as_methods_with_their_input_output_tests() {
    let d = leetcode();
    assert_eq!(d.report.loaded, 146, "{}", d.report);
    assert!(d.report.skipped.is_empty(), "{}", d.report);
    // 15,111 upstream tests, of which 676 record an `Error: ...` and 25 `Execution timed out`.
    assert_eq!(tests(&d), 14_410);
    assert_eq!(d.report.warnings.len(), 35, "{}", d.report);
    assert_eq!(references(&d), 146);
    assert_eq!(generators(&d), 0);
    for p in &d.problems {
        let Entry::LeetCodeMethod {
            class_name,
            method_name,
        } = &p.entry
        else {
            panic!("{}: entry {:?}", p.id, p.entry);
        };
        assert_eq!(class_name, "Solution");
        assert!(!method_name.is_empty());
        assert_eq!(p.checker, Checker::LeetCodeStructural, "{}", p.id);
        assert!(
            p.prelude
                .as_deref()
                .is_some_and(|s| s.contains("class ListNode")),
            "{}",
            p.id
        );
        assert!(p.starter_code.contains_key(&Language::Python), "{}", p.id);
        assert!(!p.tests.is_empty(), "{}", p.id);
        assert!(p.tests.iter().all(|t| !t.expected.starts_with("Error:")));
    }
}

#[test]
fn leetcode_problems_keep_the_upstream_fields() {
    let d = leetcode();
    let p = d
        .problem("number-of-subsequences-with-odd-sum")
        .expect("known task");
    assert_eq!(p.title, "Number Of Subsequences With Odd Sum");
    assert_eq!(p.difficulty.as_deref(), Some("Medium"));
    assert_eq!(
        p.entry,
        Entry::LeetCodeMethod {
            class_name: "Solution".into(),
            method_name: "subsequenceCount".into()
        }
    );
    assert_eq!(
        p.tests[0].input,
        "nums = [53,54,55,56,57,58,59,60,61,62,63]"
    );
    assert_eq!(p.tests[0].expected, "1024");
    assert_eq!(
        p.references[0].id,
        "number-of-subsequences-with-odd-sum/ref-0"
    );
    assert!(p.references[0].verified);
}

#[test]
fn all_114_enamel_problems_load_with_levels_expert_and_canonical_solutions() {
    let d = enamel();
    assert_eq!(d.report.loaded, 114, "{}", d.report);
    assert!(d.report.skipped.is_empty(), "{}", d.report);
    assert!(d.report.warnings.is_empty(), "{}", d.report);
    assert_eq!(generators(&d), 114);
    assert_eq!(references(&d), 228);
    assert_eq!(tests(&d), 0);
    for p in &d.problems {
        assert!(p.id.starts_with("HumanEval/"), "{}", p.id);
        let Entry::Function { name } = &p.entry else {
            panic!("{}: entry {:?}", p.id, p.entry);
        };
        assert!(p.description.contains(&format!("def {name}(")), "{}", p.id);
        let [StressSource::Generator { source, levels }] = p.stress.as_slice() else {
            panic!("{}: stress {:?}", p.id, p.stress);
        };
        assert!(source.contains("def generate_input(size"), "{}", p.id);
        assert_eq!(levels.len(), 4, "{}", p.id);
        let Checker::PythonCheck { source } = &p.checker else {
            panic!("{}: checker {:?}", p.id, p.checker);
        };
        assert!(source.contains("def __check(input, answer, output)"));
        let ids: Vec<_> = p.references.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [format!("{}/expert", p.id), format!("{}/canonical", p.id)]
        );
        // The expert defines ENAMEL's answers; the canonical solution is not verified on them.
        assert!(p.references[0].verified && !p.references[1].verified);
        assert!(
            p.references
                .iter()
                .all(|r| r.code.contains(&format!("def {name}(")))
        );
    }
    let first = &d.problems[0];
    assert_eq!(first.id, "HumanEval/0");
    assert_eq!(
        first.stress[0],
        StressSource::Generator {
            source: first_generator(&d),
            levels: vec![20, 100, 10_000, 15_000]
        }
    );
}

fn first_generator(d: &Dataset) -> String {
    match &d.problems[0].stress[0] {
        StressSource::Generator { source, .. } => source.clone(),
        StressSource::Input(_) => String::new(),
    }
}

#[test]
fn problems_survive_a_json_round_trip() {
    for d in [coffe(), leetcode(), enamel()] {
        let json = serde_json::to_string(&d.problems).expect("serialises");
        let back: Vec<afterburner_benchmarks::Problem> =
            serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, d.problems, "{}", d.spec);
    }
}

#[test]
fn fifteen_enamel_generators_need_helpers_the_dataset_does_not_ship() {
    // `rand_parens`, `rand_probably_prime` and `rand_primality` live in ENAMEL's
    // `enam.datautils` module, not in the data files; a harness must provide them.
    let d = enamel();
    let helpers = ["rand_parens", "rand_probably_prime", "rand_primality"];
    let needing: Vec<&str> = d
        .problems
        .iter()
        .filter(|p| {
            p.stress.iter().any(|s| {
                matches!(s, StressSource::Generator { source, .. }
                    if helpers.iter().any(|h| source.contains(h)))
            })
        })
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(needing.len(), 15, "{needing:?}");
    assert!(needing.contains(&"HumanEval/31"));
}
