//! The harnesses on synthetic problems: one process per submission, verdicts per entry style,
//! stress suites, and attempts to forge a verdict.

mod support;

use std::time::Duration;

use afterburner_benchmarks::{
    CaseOrigin, Checker, Entry, Evaluation, Harness, HarnessConfig, Problem, StressSource,
    Submission, Suite, Verdict,
};
use afterburner_sandbox::{Language, Status};
use support::{harness, problem, reference, sandbox};

fn add_problem() -> Problem {
    problem(
        "add",
        Entry::StdinStdout,
        Checker::Exact,
        &[("1 2\n", "3\n"), ("12345 67890\n", "80235"), ("5 0", "5")],
    )
}

fn run(problem: &Problem, code: &str) -> Evaluation {
    run_in(harness(), problem, Language::Python, code)
}

fn run_in(h: &Harness<'_>, problem: &Problem, language: Language, code: &str) -> Evaluation {
    let suite = Suite::tests_only(problem);
    match h.evaluate(&Submission::new(problem, language, code), &suite, None) {
        Ok(e) => e,
        Err(e) => panic!("{}: {e}", problem.id),
    }
}

fn verdicts(e: &Evaluation) -> Vec<Verdict> {
    e.cases.iter().map(|c| c.verdict).collect()
}

const ADD: &str = "a, b = map(int, input().split())\nprint(a + b)\n";

#[test]
fn a_correct_program_passes_every_test_and_the_whole_run_is_measured() {
    let p = add_problem();
    let e = run(&p, ADD);
    assert_eq!(e.status, Status::Accepted, "{e:?}");
    assert_eq!(verdicts(&e), [Verdict::Accepted; 3]);
    assert!(e.cases.iter().all(|c| c.time_ms.is_some()));
    let m = &e.measurement;
    assert!(
        m.wall_ms > 0.0 && m.peak_rss_kb > 0 && m.integral_kb_ms > 0.0,
        "{m:?}"
    );
    // The usual ways of reading stdin and writing stdout all work.
    for code in [
        "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nsys.stdout.write(str(a + b))\n",
        "a, b = map(int, open(0).read().split())\nimport os\nos.write(1, str(a + b).encode())\n",
        "import sys\ndef main():\n    print(sum(map(int, sys.stdin.readline().split())))\nif __name__ == '__main__':\n    main()\n",
        "import threading, sys\ndef main():\n    print(sum(map(int, input().split())))\nthreading.stack_size(1 << 26)\nthreading.Thread(target=main).start()\n",
        "print(sum(map(int, input().split())))\nexit()\n",
    ] {
        let e = run(&p, code);
        assert_eq!(e.status, Status::Accepted, "{code}\n{e:?}");
    }
}

#[test]
fn all_tests_of_a_submission_run_in_one_process() {
    // Each test appends to a file in the run's private /tmp: only one process sees 1, 2, 3.
    let p = problem(
        "counter",
        Entry::StdinStdout,
        Checker::Exact,
        &[("", "1"), ("", "2"), ("", "3")],
    );
    let code = "with open('/tmp/count', 'a') as f:\n    f.write('x')\nprint(len(open('/tmp/count').read()))\n";
    let e = run(&p, code);
    assert_eq!(e.status, Status::Accepted, "{e:?}");
}

#[test]
fn wrong_crashing_exiting_and_broken_programs_get_their_verdicts() {
    let p = add_problem();
    let wrong = run(&p, "a, b = map(int, input().split())\nprint(a - b)\n");
    assert_eq!(wrong.status, Status::WrongAnswer);
    assert_eq!(
        verdicts(&wrong),
        [
            Verdict::WrongAnswer,
            Verdict::WrongAnswer,
            Verdict::Accepted
        ]
    );
    let detail = wrong.cases[0].detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("expected") && detail.contains("-1"),
        "{detail}"
    );

    let crash = run(
        &p,
        "a, b = map(int, input().split())\nif a == 12345:\n    raise ValueError('boom')\nprint(a + b)\n",
    );
    assert_eq!(crash.status, Status::RuntimeError);
    assert_eq!(
        verdicts(&crash),
        [Verdict::Accepted, Verdict::RuntimeError, Verdict::Accepted]
    );
    assert!(
        crash.cases[1]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("boom")
    );

    let exit = run(&p, "import sys\nsys.exit(3)\n");
    assert_eq!(exit.status, Status::RuntimeError);
    assert!(exit.cases[0].detail.as_deref().unwrap_or("").contains('3'));

    let syntax = run(&p, "def f(:\n");
    assert_eq!(syntax.status, Status::CompileError);
    assert!(
        syntax
            .message
            .as_deref()
            .unwrap_or("")
            .contains("SyntaxError")
    );
    assert_eq!(verdicts(&syntax), [Verdict::NotRun; 3]);
}

#[test]
fn a_run_that_exceeds_its_limit_stops_and_the_rest_is_not_run() {
    let config = HarnessConfig {
        limits: afterburner_sandbox::Limits {
            wall_time: Duration::from_secs(2),
            cpu_time: Duration::from_secs(2),
            ..HarnessConfig::default().limits
        },
        ..HarnessConfig::default()
    };
    let h = Harness::new(sandbox(), config).unwrap();
    let p = add_problem();
    let e = run_in(
        &h,
        &p,
        Language::Python,
        "a, b = map(int, input().split())\nwhile a == 12345:\n    pass\nprint(a + b)\n",
    );
    assert_eq!(e.status, Status::TimeLimit, "{e:?}");
    assert_eq!(
        verdicts(&e),
        [Verdict::Accepted, Verdict::NotRun, Verdict::NotRun]
    );
}

#[test]
fn programs_in_other_languages_are_built_once_and_run_per_test() {
    let p = add_problem();
    let c = "#include <stdio.h>\nint main(void){long a,b;if(scanf(\"%ld %ld\",&a,&b)!=2)return 1;printf(\"%ld\\n\",a+b);return 0;}\n";
    let e = run_in(harness(), &p, Language::C, c);
    assert_eq!(e.status, Status::Accepted, "{e:?}");
    assert!(e.compile_ms > 0.0);
    let times: f64 = e.cases.iter().filter_map(|c| c.time_ms).sum();
    // The run's wall time is the sum of the three runs.
    assert!((e.measurement.wall_ms - times).abs() < 1.0, "{e:?}");
    let broken = run_in(harness(), &p, Language::C, "int main( {");
    assert_eq!(broken.status, Status::CompileError);
}

#[test]
fn leetcode_methods_get_parsed_arguments_and_structural_comparison() {
    let mut p = problem(
        "shift",
        Entry::LeetCodeMethod {
            class_name: "Solution".into(),
            method_name: "shift".into(),
        },
        Checker::LeetCodeStructural,
        &[
            ("nums = [1,2,3], k = 2", "[3, 4, 5]"),
            ("nums = [], k = 0", "[]"),
            ("nums = [0.2], k = 0.1", "[0.3]"),
            ("nums = [10**0], k = 1", "[2]"),
        ],
    );
    // `10**0` is not a literal: that test cannot run, for any solution.
    let good = "class Solution:\n    def shift(self, nums: List[int], k: int) -> List[int]:\n        return [x + k for x in nums]\n";
    p.prelude = Some("from typing import List\n".into());
    let e = run(&p, good);
    assert_eq!(
        verdicts(&e),
        [
            Verdict::Accepted,
            Verdict::Accepted,
            Verdict::Accepted,
            Verdict::RuntimeError
        ],
        "{e:?}"
    );
    assert!(
        e.cases[3]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("does not parse")
    );
    p.tests.pop();
    assert_eq!(run(&p, good).status, Status::Accepted);
    let wrong = run(
        &p,
        "class Solution:\n    def shift(self, nums, k):\n        return [x - k for x in nums]\n",
    );
    assert_eq!(wrong.status, Status::WrongAnswer);
    let missing = run(&p, "class Solution:\n    pass\n");
    assert_eq!(missing.status, Status::RuntimeError);

    // Strings are printed unquoted upstream; a positional (APPS) call works the same way.
    let strings = problem(
        "reverse",
        Entry::Function {
            name: "reverse".into(),
        },
        Checker::LeetCodeStructural,
        &[("'abc'", "cba"), ("''", ""), ("\"it's\"", "s'ti")],
    );
    let e = run(&strings, "def reverse(s):\n    return s[::-1]\n");
    assert_eq!(e.status, Status::Accepted, "{e:?}");
}

#[test]
fn linked_lists_and_trees_are_compared_as_lists() {
    let mut p = problem(
        "reverse-list",
        Entry::LeetCodeMethod {
            class_name: "Solution".into(),
            method_name: "reverseList".into(),
        },
        Checker::LeetCodeStructural,
        &[
            ("head = list_node([1, 2, 3])", "[3, 2, 1]"),
            ("head = list_node([])", "None"),
        ],
    );
    p.prelude = Some(
        "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val = val\n        self.next = next\n\
         def list_node(values):\n    head = None\n    for v in reversed(values):\n        head = ListNode(v, head)\n    return head\n"
            .into(),
    );
    let code = "class Solution:\n    def reverseList(self, head):\n        prev = None\n        while head:\n            head.next, prev, head = prev, head, head.next\n        return prev\n";
    assert_eq!(run(&p, code).status, Status::Accepted);
}

const CHECK: &str = "def __check(input, answer, output):\n    return type(output) == type(answer) and output == answer\n";

fn sort_problem() -> Problem {
    let mut p = problem(
        "sort",
        Entry::Function {
            name: "sort_tuple".into(),
        },
        Checker::PythonCheck {
            source: CHECK.into(),
        },
        &[("[3, 1, 2]", "(1, 2, 3)"), ("[]", "()")],
    );
    p.prelude = Some("def sort_tuple(xs):\n    \"\"\"Sorted, as a tuple.\"\"\"\n".into());
    p
}

#[test]
fn dataset_checkers_run_in_a_separate_process_and_see_exact_types() {
    let p = sort_problem();
    let good = run(&p, "def sort_tuple(xs):\n    return tuple(sorted(xs))\n");
    assert_eq!(good.status, Status::Accepted, "{good:?}");
    // The ENAMEL checker compares types: a list is not a tuple.
    let list = run(&p, "def sort_tuple(xs):\n    return sorted(xs)\n");
    assert_eq!(list.status, Status::WrongAnswer, "{list:?}");
}

fn venus_problem() -> Problem {
    let runner = "import json, sys\n==Code Submission==\ndata = json.loads(sys.stdin.read())\nprint(json.dumps(Solution().add(data['a'], data['b'])))\n";
    let evaluator = "def evaluate(expected, actual):\n    import json\n    return json.loads(expected) == json.loads(actual)\n";
    problem(
        "venus-add",
        Entry::VenusRunner {
            runner: runner.into(),
        },
        Checker::PythonEvaluator {
            source: evaluator.into(),
        },
        &[(r#"{"a": 1, "b": 2}"#, "3"), (r#"{"a": 40, "b": 2}"#, "42")],
    )
}

#[test]
fn venus_runners_wrap_the_solution_and_the_evaluator_judges() {
    let p = venus_problem();
    let good = run(
        &p,
        "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n",
    );
    assert_eq!(good.status, Status::Accepted, "{good:?}");
    let wrong = run(
        &p,
        "class Solution:\n    def add(self, a, b):\n        return a * b\n",
    );
    assert_eq!(
        verdicts(&wrong),
        [Verdict::WrongAnswer, Verdict::WrongAnswer],
        "{wrong:?}"
    );
}

/// A candidate that knows the shape of the secret and hunts for it everywhere it can reach.
const HUNT: &str = r#"
import gc, os, sys
needle = 'SECRET' + '-EXPECTED'
found = []
def scan(text):
    if found:
        return
    if isinstance(text, bytes):
        text = text.decode('latin-1')
    if isinstance(text, str) and text is not needle and needle in text:
        i = text.index(needle)
        if text[i:i + 22] != needle:
            found.append(text[i:i + 22])
# The interpreter's own install (bound read-only from the host) holds no per-run secret and, with
# a large site-packages, takes longer to read than the wall limit on a loaded machine.
toolchain = os.path.realpath(sys.base_prefix)
for top in ['/tmp', '/box', '/root', '/home', '/work', '/var/tmp', '/dev/shm', '/run']:
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != toolchain]
        for name in files:
            try:
                with open(os.path.join(root, name), 'rb') as f:
                    scan(f.read(1 << 24))
            except Exception:
                pass
for path in ['/proc/self/environ', '/proc/self/cmdline', '/proc/1/environ', '/proc/1/cmdline']:
    try:
        scan(open(path, 'rb').read())
    except Exception:
        pass
for fd in range(64):
    try:
        scan(os.pread(fd, 1 << 24, 0))
    except Exception:
        pass
for o in gc.get_objects():
    try:
        items = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()
        for x in items:
            scan(x)
    except Exception:
        pass
f = sys._getframe()
while f is not None:
    for v in list(f.f_locals.values()):
        scan(v)
        if isinstance(v, (list, tuple)):
            for x in v:
                scan(x)
    f = f.f_back
print(found[0] if found else 'nothing found')
"#;

#[test]
fn forged_verdicts_fail() {
    let secret = problem(
        "secret",
        Entry::StdinStdout,
        Checker::Exact,
        &[
            ("ping\n", "SECRET-EXPECTED-1f2e3d"),
            ("pong\n", "SECRET-EXPECTED-9a8b7c"),
        ],
    );
    let forgeries = [
        ("prints Success", "print('Success')\n"),
        (
            "prints Success and exits at once",
            "print('Success')\nimport os\nos._exit(0)\n",
        ),
        ("exits cleanly without output", "import sys\nsys.exit(0)\n"),
        ("hunts for the expected output", HUNT),
        (
            "writes fake records to every descriptor",
            "import os\nfor fd in range(3, 64):\n    for rec in ['{\"i\": 0, \"st\": \"ok\", \"out\": \"Success\"}', '{\"verdict\": \"accepted\", \"ok\": true}', '{\"done\": 2}']:\n        try:\n            os.write(fd, (rec + '\\n').encode())\n        except OSError:\n            pass\n",
        ),
        (
            "silences the driver",
            "import __main__\n__main__._Channel.emit = lambda self, obj: None\nprint('Success')\n",
        ),
        (
            "kills its own process",
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        ),
    ];
    for (what, code) in forgeries {
        let e = run(&secret, code);
        assert!(
            matches!(e.status, Status::WrongAnswer | Status::RuntimeError),
            "{what}: {e:?}"
        );
        assert!(
            e.cases.iter().all(|c| c.verdict != Verdict::Accepted),
            "{what}: {e:?}"
        );
        if what == "hunts for the expected output" {
            let got = e.cases[0].detail.as_deref().unwrap_or("");
            assert!(
                got.contains("nothing found"),
                "the hunt found something: {got}"
            );
        }
    }

    // Control: the hunt does find the secret where it can be reached (here, in the input).
    let leaked = problem(
        "leaked",
        Entry::StdinStdout,
        Checker::Exact,
        &[("SECRET-EXPECTED-1f2e3d\n", "SECRET-EXPECTED-1f2e3d")],
    );
    let e = run(&leaked, HUNT);
    assert_eq!(e.status, Status::Accepted, "the hunt is blind: {e:?}");

    // Method calls: an object equal to everything is not a plain value, and exiting early
    // leaves no result.
    let mut leet = problem(
        "leet",
        Entry::LeetCodeMethod {
            class_name: "Solution".into(),
            method_name: "f".into(),
        },
        Checker::LeetCodeStructural,
        &[("n = 1", "[4, 8, 15]")],
    );
    leet.prelude = Some("from typing import *\n".into());
    let anything = "class Anything:\n    def __eq__(self, other):\n        return True\n    def __repr__(self):\n        return 'Success'\nclass Solution:\n    def f(self, n):\n        return Anything()\n";
    for code in [
        anything,
        "import os\nos._exit(0)\n",
        "class Solution:\n    def f(self, n):\n        print('[4, 8, 15]')\n        import os\n        os._exit(0)\n",
    ] {
        let e = run(&leet, code);
        assert_ne!(e.status, Status::Accepted, "{code}: {e:?}");
    }
    // The dataset's checker never sees an object of the candidate's, only a literal.
    let e = run(
        &sort_problem(),
        &anything.replace(
            "class Solution:\n    def f(self, n):\n        return Anything()\n",
            "def sort_tuple(xs):\n    return Anything()\n",
        ),
    );
    assert_eq!(e.status, Status::WrongAnswer, "{e:?}");
    // A Venus solution that prints what an evaluator might like and leaves.
    let e = run(
        &venus_problem(),
        "class Solution:\n    def add(self, a, b):\n        print('True')\n        print('Success')\n        import os\n        os._exit(0)\n",
    );
    assert_eq!(e.status, Status::WrongAnswer, "{e:?}");
}

#[test]
fn stress_inputs_are_generated_once_checked_by_consensus_and_cached() {
    let mut p = problem(
        "sum",
        Entry::StdinStdout,
        Checker::Exact,
        &[("3\n1 2 3\n", "6")],
    );
    p.stress = vec![
        StressSource::Generator {
            source: "import random\ndef generate_input():\n    n = 2000\n    return str(n) + '\\n' + ' '.join(str(random.randint(1, 10**9)) for _ in range(n)) + '\\n'\n".into(),
            levels: Vec::new(),
        },
        StressSource::Input("4\n1 1 1 1\n".into()),
        StressSource::Input("2\n5 5\n".into()),
        StressSource::Generator {
            source: "def generate_input():\n    raise RuntimeError('broken generator')\n".into(),
            levels: Vec::new(),
        },
    ];
    let read = "n = int(input())\nxs = list(map(int, input().split()))\n";
    p.references = vec![
        reference("sum", 0, &format!("{read}print(sum(xs))\n")),
        reference(
            "sum",
            1,
            &format!("{read}t = 0\nfor x in xs:\n    t += x\nprint(t)\n"),
        ),
        // Wrong exactly when n == 2.
        reference(
            "sum",
            2,
            &format!("{read}print(sum(xs) if n != 2 else 0)\n"),
        ),
    ];
    let h = harness();
    let suite = h.suite(&p, None).unwrap();
    assert!(!suite.from_cache);
    let origins: Vec<&CaseOrigin> = suite.cases.iter().map(|c| &c.origin).collect();
    assert_eq!(suite.cases.len(), 3, "{:?}", suite.dropped);
    assert_eq!(origins[0], &CaseOrigin::Test { index: 0 });
    assert_eq!(suite.stress_cases(), 2);
    assert_eq!(suite.cases[2].expected.trim(), "4");
    let reasons: Vec<&str> = suite.dropped.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("disagree")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("broken generator")),
        "{reasons:?}"
    );

    let again = h.suite(&p, None).unwrap();
    assert!(again.from_cache);
    assert_eq!(again.cases, suite.cases);
    assert_eq!(again.digest(), suite.digest());

    // A slow solution must pass the stress inputs too, and is measured on them.
    let e = h
        .evaluate(
            &Submission::new(&p, Language::Python, &p.references[0].code),
            &suite,
            None,
        )
        .unwrap();
    assert_eq!(e.status, Status::Accepted, "{e:?}");
    let measured = h
        .measure(
            &Submission::new(&p, Language::Python, &p.references[2].code),
            &suite,
            None,
        )
        .unwrap();
    assert!(
        measured.passed,
        "the wrong reference passes the kept inputs"
    );
    assert!(measured.performance.is_some());
}

#[test]
fn enamel_style_generators_get_levels_seeds_and_helpers() {
    let mut p = problem(
        "HumanEval/1000",
        Entry::Function {
            name: "depth".into(),
        },
        Checker::PythonCheck {
            source: CHECK.into(),
        },
        &[],
    );
    p.prelude =
        Some("def depth(s: str) -> int:\n    \"\"\"Deepest nesting of parentheses.\"\"\"\n".into());
    // `random` is not imported: the generator prelude supplies it, and ENAMEL's `rand_parens`.
    p.stress = vec![StressSource::Generator {
        source: "def generate_input(size, lid, cid):\n    return (rand_parens(size + random.randint(0, 3)),)\n".into(),
        levels: vec![4, 40],
    }];
    let expert = "def depth(s):\n    d = m = 0\n    for c in s:\n        d += 1 if c == '(' else -1\n        m = max(m, d)\n    return m\n";
    let canonical = "def depth(s):\n    best = 0\n    for i in range(len(s) + 1):\n        best = max(best, s[:i].count('(') - s[:i].count(')'))\n    return best\n";
    p.references = vec![reference(&p.id, 0, expert), reference(&p.id, 1, canonical)];
    let h = harness();
    let suite = h.suite(&p, None).unwrap();
    assert!(suite.dropped.is_empty(), "{:?}", suite.dropped);
    assert_eq!(suite.cases.len(), 12);
    let level = |c: &afterburner_benchmarks::Case| match c.origin {
        CaseOrigin::Stress { level, .. } => level,
        _ => None,
    };
    assert_eq!(
        suite.cases.iter().filter(|c| level(c) == Some(0)).count(),
        8
    );
    assert_eq!(
        suite.cases.iter().filter(|c| level(c) == Some(1)).count(),
        4
    );
    assert!(suite.cases.iter().all(|c| c.input.starts_with('\'')));
    for code in [expert, canonical] {
        let e = h
            .evaluate(&Submission::new(&p, Language::Python, code), &suite, None)
            .unwrap();
        assert_eq!(e.status, Status::Accepted, "{e:?}");
    }
    let wrong = h
        .evaluate(
            &Submission::new(
                &p,
                Language::Python,
                "def depth(s):\n    return len(s) // 2\n",
            ),
            &suite,
            None,
        )
        .unwrap();
    assert_eq!(wrong.status, Status::WrongAnswer);
}

#[test]
fn venus_rows_load_and_their_solutions_are_judged_end_to_end() {
    use afterburner_benchmarks::{DatasetSpec, Format, VenusRow, VenusSolution, write_venus_jsonl};
    let solution = |code: &str, passed: bool| VenusSolution {
        code: code.to_string(),
        status: "success".to_string(),
        passed,
        time: 10.0,
        memory: 1000.0,
        integral: 10_000.0,
    };
    let row = VenusRow {
        problem_id: 7,
        title: "Add".to_string(),
        question_content: "Add two integers.".to_string(),
        difficulty: "Easy".to_string(),
        tags: Vec::new(),
        code_prompt: "class Solution:\n    def add(self, a: int, b: int) -> int:\n".to_string(),
        test_case_generator: String::new(),
        test_case_evaluator: "def evaluate(expected, actual):\n    return int(expected) == int(actual)\n"
            .to_string(),
        test_case_runners: "==Code Submission==\n\nimport sys\nprint(Solution().add(*map(int, sys.stdin.read().split())))\n".to_string(),
        test_cases: r#"[{"input": "1 2", "output": "3"}, {"input": "20 22", "output": "042"}]"#.to_string(),
        solutions: vec![
            solution("class Solution:\n    def add(self, a: int, b: int) -> int:\n        return sum(deque([a, b]))\n", true),
            solution("class Solution:\n    def add(self, a, b): return a - b\n", false),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("venus.jsonl");
    write_venus_jsonl(&path, &[row]).unwrap();
    let d = DatasetSpec::new(Format::Venus(Language::Python), &path)
        .load()
        .unwrap();
    let p = &d.problems[0];
    let suite = Suite::tests_only(p);
    // The first solution needs the Venus prelude (`deque`) and the evaluator's `int()`.
    let statuses: Vec<Status> = p
        .references
        .iter()
        .map(|r| {
            harness()
                .evaluate(&Submission::new(p, r.language, &r.code), &suite, None)
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [Status::Accepted, Status::WrongAnswer]);
}

#[test]
fn each_run_records_the_drift_probe_of_its_window_and_the_baseline_is_kept_per_machine() {
    let dir = tempfile::tempdir().unwrap();
    let config = HarnessConfig {
        drift_interval: Some(Duration::ZERO),
        cache_dir: Some(dir.path().to_path_buf()),
        ..HarnessConfig::default()
    };
    let h = Harness::new(sandbox(), config.clone()).unwrap();
    let p = add_problem();
    let suite = Suite::tests_only(&p);
    let m = h
        .measure(&Submission::new(&p, Language::Python, ADD), &suite, None)
        .unwrap();
    assert!(m.passed, "{m:?}");
    let raw = m.raw.as_ref().expect("the raw medians are kept");
    let summary = m.summary.as_ref().expect("passed");
    assert!(raw.wall_ms > 0.0 && summary.wall_ms > 0.0);
    assert_eq!(
        raw.peak_rss_kb, summary.peak_rss_kb,
        "memory is not corrected"
    );
    // The baseline was measured once and written for this machine and probe.
    let file = dir.path().join(afterburner_benchmarks::harness::PROBE_FILE);
    let text = std::fs::read_to_string(&file).expect("probe.json written");
    let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    let baseline = stored["baseline_ms"].as_f64().unwrap();
    assert!(baseline > 0.0, "{stored}");
    assert_eq!(
        stored["probes_ms"].as_array().map(Vec::len),
        Some(afterburner_benchmarks::harness::BASELINE_PROBES)
    );
    assert_eq!(
        stored["machine"].as_str(),
        Some(afterburner_benchmarks::machine_fingerprint(sandbox()).as_str())
    );
    // A second harness (another process, later) reads it instead of measuring its own.
    let mut edited = stored.clone();
    edited["baseline_ms"] = serde_json::json!(baseline * 2.0);
    std::fs::write(&file, edited.to_string()).unwrap();
    let h2 = Harness::new(sandbox(), config).unwrap();
    let m2 = h2
        .measure(&Submission::new(&p, Language::Python, ADD), &suite, None)
        .unwrap();
    let ratio = m2.summary.unwrap().wall_ms / m2.raw.unwrap().wall_ms;
    let first_ratio = summary.wall_ms / raw.wall_ms;
    assert!(
        ratio > 1.3 * first_ratio,
        "a doubled baseline doubles the corrected figures: {ratio} vs {first_ratio}"
    );
    // Without drift correction nothing is probed or kept twice.
    let off = Harness::new(
        sandbox(),
        HarnessConfig {
            drift_interval: None,
            ..HarnessConfig::default()
        },
    )
    .unwrap();
    let m3 = off
        .measure(&Submission::new(&p, Language::Python, ADD), &suite, None)
        .unwrap();
    assert!(m3.passed && m3.raw.is_none());
    assert_ne!(
        HarnessConfig::default().protocol_id(),
        HarnessConfig {
            drift_interval: None,
            ..HarnessConfig::default()
        }
        .protocol_id()
    );
}
