//! The problem model: everything a harness needs to run and judge a solution.
//!
//! A [`Problem`] is a plain value. It carries its statement, how a solution is
//! called ([`Entry`]), its correctness tests and how outputs are compared
//! ([`Checker`]), optional stress inputs ([`StressSource`]) and the human
//! reference solutions whose measurements form the distribution the metrics
//! compare against. Nothing here runs programs.
//!
//! # Test case formats
//!
//! The meaning of [`TestCase::input`] and [`TestCase::expected`] follows the
//! problem's [`Entry`]:
//!
//! | entry | `input` | `expected` |
//! |---|---|---|
//! | [`Entry::StdinStdout`] | the program's stdin | its stdout |
//! | [`Entry::LeetCodeMethod`] | the source text of a Python call's argument list: keyword (`n = 7, queries = [[0,5]]`, LeetCodeDataset) or positional (`7, [[0, 5]]`, APPS) | the result as LeetCodeDataset prints it: `str()` of the value, e.g. `[2, 2, 2]`, `True`, `2.0`, or an unquoted string |
//! | [`Entry::Function`] | as for `LeetCodeMethod`, passed to `name(...)` | the result as a Python literal |
//! | [`Entry::VenusRunner`] | the runner's stdin | the runner's output, judged by the Venus evaluator |
//!
//! A harness calls `Solution().method(<input>)` or `name(<input>)`, prints the
//! result, and compares it with `expected` *outside* the sandbox using the
//! problem's [`Checker`]: expected outputs never enter the sandboxed process.
//!
//! ENAMEL (HumanEval) problems carry no fixed tests: as in ENAMEL itself, their
//! tests are the inputs its generator makes at each level, with answers computed
//! by the expert reference and compared by the ENAMEL checker. (The docstring
//! examples are not imported as tests: some are wrong, e.g. `HumanEval/47`
//! claims the median of `[-10, 4, 6, 1000, 10, 20]` is `15.0`.)

use std::collections::BTreeMap;

use afterburner_sandbox::Language;
/// Re-exported from the sandbox crate, where the measurement vocabulary lives.
pub use afterburner_sandbox::RecordedPerformance;
use serde::{Deserialize, Serialize};

/// One benchmark problem with its tests and reference solutions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable id: the upstream id where one exists (`task_id`, `problem_id`), else derived (`cc-<sha256 prefix>` for COFFE).
    pub id: String,
    /// Short human-readable title.
    pub title: String,
    /// The full problem statement shown to a solver.
    pub description: String,
    /// Upstream difficulty label (`Easy`, `interview`, ...), if any.
    pub difficulty: Option<String>,
    /// Upstream topic tags.
    pub tags: Vec<String>,
    /// Starter code (signature skeleton) per language; empty for stdin/stdout problems.
    pub starter_code: BTreeMap<Language, String>,
    /// How a solution is invoked.
    pub entry: Entry,
    /// Source to prepend to a solution (imports and helpers), if the dataset defines one.
    ///
    /// Generators in [`StressSource::Generator`] and the ENAMEL checker also run after it.
    pub prelude: Option<String>,
    /// Correctness tests; see the module docs for their format per [`Entry`].
    pub tests: Vec<TestCase>,
    /// How an actual output is judged against the expected one.
    pub checker: Checker,
    /// Large inputs for efficiency measurement.
    pub stress: Vec<StressSource>,
    /// Reference (mostly human) solutions.
    pub references: Vec<ReferenceSolution>,
}

/// How a solution is invoked by a harness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A whole program reading stdin and writing stdout.
    StdinStdout,
    /// A method of a LeetCode-style class: `ClassName().method_name(<args>)`.
    #[serde(rename = "leetcode_method")]
    LeetCodeMethod {
        /// The class to instantiate (`Solution`).
        class_name: String,
        /// The method to call (`twoSum`).
        method_name: String,
    },
    /// A free function: `name(<args>)` (HumanEval, ENAMEL, APPS call-based).
    Function {
        /// The function's name.
        name: String,
    },
    /// A Venus runner program that reads one test input from stdin, calls the solution and prints the result.
    VenusRunner {
        /// Runner source containing the placeholder [`VENUS_PLACEHOLDER`], replaced by the solution code.
        runner: String,
    },
}

/// The placeholder in a Venus runner that the solution source replaces.
pub const VENUS_PLACEHOLDER: &str = "==Code Submission==";

/// One correctness test; see the module docs for the format per [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    /// The input (stdin text, or a Python argument list).
    pub input: String,
    /// The expected output (stdout text, or a Python literal).
    pub expected: String,
}

/// How an actual output is compared with the expected one (always outside the sandbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    /// Equal after splitting both on whitespace (token by token).
    Exact,
    /// Python literals compared structurally, floats with a tolerance; unquoted strings compared as text.
    #[serde(rename = "leetcode_structural")]
    LeetCodeStructural,
    /// Venus: Python source defining `evaluate(expected: str, actual: str) -> bool`.
    PythonEvaluator {
        /// The evaluator source.
        source: String,
    },
    /// ENAMEL: Python source defining `__check(input, answer, output) -> bool` over Python values,
    /// run after the problem's prelude in a process separate from the candidate.
    PythonCheck {
        /// The checker source.
        source: String,
    },
}

/// A source of large inputs for efficiency measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StressSource {
    /// A literal input in the problem's test input format.
    Input(String),
    /// A seeded Python generator of one input in the problem's test input format.
    ///
    /// With `levels` empty the source defines `generate_input()` returning stdin text
    /// (COFFE, seeded inside the source). Otherwise it defines
    /// `generate_input(size, lid, cid)` returning a tuple of positional arguments
    /// (ENAMEL): call it with `size = levels[lid]` for each level `lid` and case `cid`,
    /// after seeding `random`. ENAMEL generators also use helpers from ENAMEL's
    /// `enam.datautils` module (`rand_parens`, `rand_probably_prime`, `rand_primality`),
    /// which the dataset files do not contain.
    Generator {
        /// The generator source.
        source: String,
        /// Input sizes, one per level (empty when the generator takes no arguments).
        levels: Vec<u64>,
    },
}

/// A reference solution, usually written by a human.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceSolution {
    /// Stable id: `<problem id>/ref-<index in the upstream list>` (ENAMEL: `<problem id>/expert`, `<problem id>/canonical`).
    pub id: String,
    /// The solution's language.
    pub language: Language,
    /// Full source code.
    pub code: String,
    /// Whether upstream reports that it passes the problem's tests.
    pub verified: bool,
    /// Performance recorded upstream (Venus), if any and finite.
    pub recorded: Option<RecordedPerformance>,
}

impl Problem {
    /// A problem given by its tests alone: no title, statement, tags, starter code, prelude,
    /// stress inputs or references (as a client sending inline tests describes one).
    pub fn from_tests(
        id: impl Into<String>,
        entry: Entry,
        tests: Vec<TestCase>,
        checker: Checker,
    ) -> Problem {
        Problem {
            id: id.into(),
            title: String::new(),
            description: String::new(),
            difficulty: None,
            tags: Vec::new(),
            starter_code: BTreeMap::new(),
            entry,
            prelude: None,
            tests,
            checker,
            stress: Vec::new(),
            references: Vec::new(),
        }
    }

    /// The reference solutions upstream reports as passing.
    pub fn verified_references(&self) -> impl Iterator<Item = &ReferenceSolution> {
        self.references.iter().filter(|r| r.verified)
    }
}
