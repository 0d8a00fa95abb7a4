//! Prompts: the paper's templates, embedded, and overrides from files (minijinja).
//!
//! Three templates make a request: `system` (rendered with `mode` = `generate` or `improve`),
//! `generate` (iteration 0 without an original solution) and `improve` (every later iteration:
//! the problem, the incumbent solution and its measured performance). The embedded defaults
//! reproduce the authors' wording:
//!
//! - the system prompt and the improvement template (`## Original Solution`,
//!   `## Original Performance`, `Passed: ... / Time: ... / Memory: ... / Integral: ...`, "Fix the
//!   original solution if it was not passed. Optimize the ... performance if the original
//!   solution was passed.") and the efficiency instructions `time efficient`, `memory efficient`,
//!   `both time and memory efficient` come from the authors' GRPO data script,
//!   `Elfsong/verl_afterburner`, `afterburner/data/afterburner_dataset.py`;
//! - the generation template comes from `Elfsong/Afterburner`,
//!   `evaluation/venus/venus_batch_generation.py` (`GENERATION_TEMPLATE`), with the efficiency
//!   line of `data_curation/sft_data.py` ("Make the code as ... as possible").
//!
//! Changes, each for a reason: the measured figures carry units (`ms`, `KB`, `KB*ms`; the
//! reference printed bare numbers) and a failed solution shows `N/A` (the reference printed
//! `inf`); `Passed` stays `True`/`False` as in the training data of the authors' models; the
//! original solution is shown in a fenced block; stdin/stdout problems are asked for a complete
//! program (the reference's "EXCLUDE ... import statements" line only fits function problems
//! whose imports the harness supplies); and both templates end by asking for the
//! `<thinking>...</thinking><solution>```lang ...```</solution>` format the response parser
//! and the reward expect.
//!
//! # Template variables
//!
//! | variable | value |
//! |---|---|
//! | `mode` | `generate` or `improve` |
//! | `language` | the target language (`python`, `cpp`...) |
//! | `fence` | the code fence tag for it |
//! | `title`, `problem` | the problem's title and statement |
//! | `starter_code` | the starter code, or none |
//! | `entry` | `program` (stdin/stdout), `function`, `method` or `runner` (Venus) |
//! | `objective` | `time`, `memory` or `integral` |
//! | `instruction` | `time efficient`, `memory efficient` or `both time and memory efficient` |
//! | `original` | (improve only) `code`, `block` (the code fenced), `passed` (bool), `status`, `detail`, `time_ms`, `memory_kb`, `integral` (numbers, none when it failed), `performance` (the `Passed: ... / Time: ...` line) |
//!
//! Undefined variables are errors, so a typo in an override fails at start-up (each template is
//! rendered once on a sample when loaded) instead of silently producing an empty prompt.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use afterburner_benchmarks::metrics::Objective;
use afterburner_benchmarks::{Checker, Entry, Problem};
use afterburner_sandbox::Language;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::chat::Message;

const SYSTEM: &str = include_str!("prompts/system.j2");
const GENERATE: &str = include_str!("prompts/generate.j2");
const IMPROVE: &str = include_str!("prompts/improve.j2");

/// The efficiency instruction of a run: which objective the loop optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instruction {
    /// Run time.
    Time,
    /// Peak memory.
    Memory,
    /// The memory-time integral.
    Integral,
}

impl Instruction {
    /// The objective acceptance compares.
    pub fn objective(self) -> Objective {
        match self {
            Instruction::Time => Objective::Time,
            Instruction::Memory => Objective::Memory,
            Instruction::Integral => Objective::Integral,
        }
    }

    /// The instruction text of the authors' prompts.
    pub fn text(self) -> &'static str {
        match self {
            Instruction::Time => "time efficient",
            Instruction::Memory => "memory efficient",
            Instruction::Integral => "both time and memory efficient",
        }
    }

    /// `time`, `memory` or `integral`.
    pub fn name(self) -> &'static str {
        match self {
            Instruction::Time => "time",
            Instruction::Memory => "memory",
            Instruction::Integral => "integral",
        }
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Instruction {
    type Err = String;

    /// Parses `time`, `memory` or `integral`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<Objective>().map_err(|e| e.to_string())? {
            Objective::Time => Ok(Instruction::Time),
            Objective::Memory => Ok(Instruction::Memory),
            Objective::Integral => Ok(Instruction::Integral),
        }
    }
}

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A template file could not be read.
    #[error("cannot read the {template} template {}: {source}", path.display())]
    Read {
        /// Which template.
        template: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A template does not parse or does not render.
    #[error("the {template} template ({origin}): {detail}")]
    Template {
        /// Which template.
        template: &'static str,
        /// `built-in` or the file it came from.
        origin: String,
        /// What minijinja said.
        detail: String,
    },
}

/// The incumbent as a prompt shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OriginalView {
    /// Its code.
    pub code: String,
    /// The code in a fenced block.
    pub block: String,
    /// Whether it passed.
    pub passed: bool,
    /// Its status (`accepted`, `wrong_answer`...).
    pub status: String,
    /// Why it failed, when it did.
    pub detail: Option<String>,
    /// Median run time, ms (when it passed).
    pub time_ms: Option<f64>,
    /// Median peak memory, KB (when it passed).
    pub memory_kb: Option<f64>,
    /// Median memory integral, KB*ms (when it passed).
    pub integral: Option<f64>,
    /// `Passed: True / Time: 12.34 ms / Memory: 9876 KB / Integral: 54321.0 KB*ms`.
    pub performance: String,
}

impl OriginalView {
    /// The view of code with the given outcome, in `language`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        code: &str,
        language: Language,
        passed: bool,
        status: &str,
        detail: Option<&str>,
        time_ms: Option<f64>,
        memory_kb: Option<f64>,
        integral: Option<f64>,
    ) -> Self {
        let (time_ms, memory_kb, integral) = if passed {
            (time_ms, memory_kb, integral)
        } else {
            (None, None, None)
        };
        OriginalView {
            block: fenced(code, language),
            code: code.to_string(),
            passed,
            status: status.to_string(),
            detail: detail.map(str::to_string),
            performance: performance_line(passed, time_ms, memory_kb, integral),
            time_ms,
            memory_kb,
            integral,
        }
    }
}

/// `Passed: True / Time: 12.34 ms / Memory: 9876 KB / Integral: 54321.0 KB*ms` (`N/A` for
/// figures a failed solution does not have).
pub fn performance_line(
    passed: bool,
    time_ms: Option<f64>,
    memory_kb: Option<f64>,
    integral: Option<f64>,
) -> String {
    let fmt = |v: Option<f64>, digits: usize, unit: &str| match v {
        Some(x) if passed && x.is_finite() => format!("{x:.digits$} {unit}"),
        _ => "N/A".to_string(),
    };
    format!(
        "Passed: {} / Time: {} / Memory: {} / Integral: {}",
        if passed { "True" } else { "False" },
        fmt(time_ms, 2, "ms"),
        fmt(memory_kb, 0, "KB"),
        fmt(integral, 1, "KB*ms")
    )
}

/// `code` in a fenced block tagged with `language`, the fence longer than any backtick run in it.
pub fn fenced(code: &str, language: Language) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in code.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(3.max(longest + 1));
    format!(
        "{fence}{}\n{}\n{fence}",
        fence_tag(language),
        code.trim_end_matches('\n')
    )
}

/// The code fence tag for a language.
pub fn fence_tag(language: Language) -> &'static str {
    language.name()
}

/// Everything a template can see.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptContext {
    /// `generate` or `improve`.
    pub mode: &'static str,
    /// The target language's name.
    pub language: String,
    /// The code fence tag.
    pub fence: String,
    /// The problem's title.
    pub title: String,
    /// The problem's statement.
    pub problem: String,
    /// Starter code in the target language, if any.
    pub starter_code: Option<String>,
    /// `program`, `function`, `method` or `runner`.
    pub entry: &'static str,
    /// `time`, `memory` or `integral`.
    pub objective: &'static str,
    /// The instruction text.
    pub instruction: &'static str,
    /// The incumbent (improve only).
    pub original: Option<OriginalView>,
}

fn entry_kind(entry: &Entry) -> &'static str {
    match entry {
        Entry::StdinStdout => "program",
        Entry::Function { .. } => "function",
        Entry::LeetCodeMethod { .. } => "method",
        Entry::VenusRunner { .. } => "runner",
    }
}

impl PromptContext {
    /// The context of a prompt for `problem` in `language` under `instruction`; with an
    /// `original` it is an improvement prompt, without one a generation prompt.
    pub fn new(
        problem: &Problem,
        language: Language,
        instruction: Instruction,
        original: Option<OriginalView>,
    ) -> Self {
        PromptContext {
            mode: if original.is_some() {
                "improve"
            } else {
                "generate"
            },
            language: language.name().to_string(),
            fence: fence_tag(language).to_string(),
            title: problem.title.clone(),
            problem: problem.description.trim().to_string(),
            starter_code: problem
                .starter_code
                .get(&language)
                .map(|s| s.trim_end().to_string())
                .filter(|s| !s.trim().is_empty()),
            entry: entry_kind(&problem.entry),
            objective: instruction.name(),
            instruction: instruction.text(),
            original,
        }
    }
}

/// The three templates, ready to render.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    origins: [String; 3],
}

const NAMES: [&str; 3] = ["system", "generate", "improve"];

fn template_error(template: &'static str, origin: &str, e: &minijinja::Error) -> PromptError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(&format!(": {s}"));
        source = s.source();
    }
    PromptError::Template {
        template,
        origin: origin.to_string(),
        detail,
    }
}

impl Templates {
    /// The paper's templates.
    pub fn paper() -> Self {
        Self::build([None, None, None]).unwrap_or_else(|e| {
            // The embedded templates are tested; failing here is a build defect.
            panic!("the built-in prompt templates do not load: {e}")
        })
    }

    /// The paper's templates with any of `system`, `generate`, `improve` replaced by a file.
    pub fn with_files(
        system: Option<&Path>,
        generate: Option<&Path>,
        improve: Option<&Path>,
    ) -> Result<Self, PromptError> {
        let mut sources: [Option<(String, String)>; 3] = [None, None, None];
        for (k, path) in [system, generate, improve].into_iter().enumerate() {
            if let Some(path) = path {
                let text = std::fs::read_to_string(path).map_err(|source| PromptError::Read {
                    template: NAMES[k],
                    path: path.to_path_buf(),
                    source,
                })?;
                sources[k] = Some((text, path.display().to_string()));
            }
        }
        Self::build(sources)
    }

    /// Templates from sources (`None`: the built-in one), each checked on a sample.
    pub fn build(sources: [Option<(String, String)>; 3]) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error("system", "syntax settings", &e))?;
        env.set_syntax(syntax);
        let defaults = [SYSTEM, GENERATE, IMPROVE];
        let mut origins: [String; 3] = Default::default();
        for (k, source) in sources.into_iter().enumerate() {
            let (text, origin) = match source {
                Some((text, origin)) => (text, origin),
                None => (defaults[k].to_string(), "built-in".to_string()),
            };
            env.add_template_owned(NAMES[k], text)
                .map_err(|e| template_error(NAMES[k], &origin, &e))?;
            origins[k] = origin;
        }
        let templates = Templates { env, origins };
        templates.check()?;
        Ok(templates)
    }

    /// Renders every template on a sample problem, so that errors surface at start-up.
    fn check(&self) -> Result<(), PromptError> {
        let problem = Problem {
            title: "Sample".into(),
            description: "Print the sum of two integers.".into(),
            ..Problem::from_tests("sample", Entry::StdinStdout, Vec::new(), Checker::Exact)
        };
        let generate = PromptContext::new(&problem, Language::Python, Instruction::Time, None);
        self.messages(&generate)?;
        let original = OriginalView::new(
            "print(sum(map(int, input().split())))",
            Language::Python,
            true,
            "accepted",
            None,
            Some(30.0),
            Some(9000.0),
            Some(270000.0),
        );
        let improve = PromptContext::new(
            &problem,
            Language::Python,
            Instruction::Time,
            Some(original),
        );
        self.messages(&improve)?;
        Ok(())
    }

    fn render(&self, k: usize, ctx: &Value) -> Result<String, PromptError> {
        let template = self
            .env
            .get_template(NAMES[k])
            .map_err(|e| template_error(NAMES[k], &self.origins[k], &e))?;
        template
            .render(ctx.clone())
            .map(|s| s.trim().to_string())
            .map_err(|e| template_error(NAMES[k], &self.origins[k], &e))
    }

    /// The chat messages for `ctx`: a system message (unless it renders empty) and the user
    /// message of its mode.
    pub fn messages(&self, ctx: &PromptContext) -> Result<Vec<Message>, PromptError> {
        let value = Value::from(minijinja::value::Serde(ctx));
        let system = self.render(0, &value)?;
        let user = self.render(if ctx.original.is_some() { 2 } else { 1 }, &value)?;
        let mut messages = Vec::with_capacity(2);
        if !system.is_empty() {
            messages.push(Message::system(system));
        }
        messages.push(Message::user(user));
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Role;
    use std::collections::BTreeMap;

    fn problem(entry: Entry) -> Problem {
        let mut starter_code = BTreeMap::new();
        if entry != Entry::StdinStdout {
            starter_code.insert(
                Language::Python,
                "class Solution:\n    def total(self, n: int) -> int:\n".to_string(),
            );
        }
        Problem {
            title: "Sum".into(),
            description: "Given n, return 1 + 2 + ... + n.".into(),
            starter_code,
            ..Problem::from_tests("p1", entry, Vec::new(), Checker::Exact)
        }
    }

    fn method() -> Entry {
        Entry::LeetCodeMethod {
            class_name: "Solution".into(),
            method_name: "total".into(),
        }
    }

    /// The messages `t` renders to generate a time-efficient Python solution of the method
    /// problem.
    fn generation_messages(t: &Templates) -> Vec<Message> {
        let ctx = PromptContext::new(
            &problem(method()),
            Language::Python,
            Instruction::Time,
            None,
        );
        t.messages(&ctx).unwrap()
    }

    #[test]
    fn the_generation_prompt_follows_the_paper() {
        let m = generation_messages(&Templates::paper());
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, Role::System);
        assert!(
            m[0].content
                .contains("<thinking> </thinking> and <solution> </solution>")
        );
        let u = &m[1].content;
        assert!(u.starts_with("## Instructions\nYou are an expert competitive programmer"));
        assert!(
            u.contains("Your task is to implement a solution to the following problem in python.")
        );
        assert!(u.contains("## Problem Description\nGiven n, return 1 + 2 + ... + n."));
        assert!(u.contains("## Starter Code\nclass Solution:"));
        assert!(u.contains("Make the code as time efficient as possible."));
        assert!(u.contains("EXCLUDE ALL explanations"));
        assert!(u.contains("<solution>\n```python\nyour code\n```\n</solution>"));
        assert!(!u.contains("Original"));
    }

    #[test]
    fn the_improvement_prompt_carries_the_incumbent_and_its_measurements() {
        let t = Templates::paper();
        let original = OriginalView::new(
            "class Solution:\n    def total(self, n):\n        return sum(range(n + 1))\n",
            Language::Python,
            true,
            "accepted",
            None,
            Some(312.456),
            Some(13536.0),
            Some(3580633.25),
        );
        let ctx = PromptContext::new(
            &problem(method()),
            Language::Python,
            Instruction::Integral,
            Some(original),
        );
        let m = t.messages(&ctx).unwrap();
        assert!(
            m[0].content
                .contains("provides an original solution, then the Assistant improve it")
        );
        let u = &m[1].content;
        assert!(u.contains(
            "## Original Solution\n```python\nclass Solution:\n    def total(self, n):\n        return sum(range(n + 1))\n```"
        ));
        assert!(u.contains(
            "## Original Performance\nPassed: True / Time: 312.46 ms / Memory: 13536 KB / Integral: 3580633.2 KB*ms"
        ));
        assert!(u.contains(
            "Optimize the both time and memory efficient performance if the original solution was passed."
        ));
    }

    #[test]
    fn a_failed_incumbent_shows_no_figures() {
        let v = OriginalView::new(
            "print(1)",
            Language::Python,
            false,
            "wrong_answer",
            Some("test 0"),
            Some(5.0),
            Some(1.0),
            Some(1.0),
        );
        assert_eq!(
            v.performance,
            "Passed: False / Time: N/A / Memory: N/A / Integral: N/A"
        );
        assert_eq!(v.time_ms, None);
    }

    #[test]
    fn stdin_problems_ask_for_a_complete_program() {
        let t = Templates::paper();
        let ctx = PromptContext::new(
            &problem(Entry::StdinStdout),
            Language::Python,
            Instruction::Memory,
            None,
        );
        let u = &t.messages(&ctx).unwrap()[1].content;
        assert!(u.contains("reads the input from standard input"));
        assert!(!u.contains("EXCLUDE ALL"));
        assert!(!u.contains("## Starter Code"));
        assert!(u.contains("Make the code as memory efficient as possible."));
    }

    #[test]
    fn code_with_backticks_gets_a_longer_fence() {
        let block = fenced("s = '```'\nprint(s)\n", Language::Python);
        assert!(block.starts_with("````python\n"), "{block}");
        assert!(block.ends_with("\n````"), "{block}");
    }

    #[test]
    fn overrides_replace_templates_and_typos_fail_at_load_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("improve.j2");
        std::fs::write(
            &good,
            "Make it {{ objective }}-fast: {{ original.code }} ({{ original.performance }})",
        )
        .unwrap();
        let t = Templates::with_files(None, None, Some(&good)).unwrap();
        let original = OriginalView::new(
            "x = 1",
            Language::Python,
            true,
            "accepted",
            None,
            Some(1.0),
            Some(2.0),
            Some(3.0),
        );
        let ctx = PromptContext::new(
            &problem(Entry::StdinStdout),
            Language::Python,
            Instruction::Time,
            Some(original),
        );
        let m = t.messages(&ctx).unwrap();
        assert_eq!(
            m[1].content,
            "Make it time-fast: x = 1 (Passed: True / Time: 1.00 ms / Memory: 2 KB / Integral: 3.0 KB*ms)"
        );

        let typo = dir.path().join("generate.j2");
        std::fs::write(&typo, "Solve {{ problm }}").unwrap();
        let e = Templates::with_files(None, Some(&typo), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("generate template"), "{e}");
        assert!(e.contains("generate.j2"), "{e}");
        assert!(e.contains("undefined"), "{e}");

        let broken = dir.path().join("system.j2");
        std::fs::write(&broken, "{% if %}").unwrap();
        let e = Templates::with_files(Some(&broken), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("system template"), "{e}");

        let missing = dir.path().join("nope.j2");
        let e = Templates::with_files(Some(&missing), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the system template"), "{e}");
    }

    #[test]
    fn an_empty_system_template_sends_only_the_user_message() {
        let t = Templates::build([Some((String::new(), "test".into())), None, None]).unwrap();
        let m = generation_messages(&t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].role, Role::User);
    }

    #[test]
    fn instructions_parse_and_name_their_objective() {
        assert_eq!(
            "Memory".parse::<Instruction>().unwrap(),
            Instruction::Memory
        );
        assert_eq!(
            "integral".parse::<Instruction>().unwrap().objective(),
            Objective::Integral
        );
        assert!(
            "speed"
                .parse::<Instruction>()
                .unwrap_err()
                .contains("time, memory or integral")
        );
    }
}
