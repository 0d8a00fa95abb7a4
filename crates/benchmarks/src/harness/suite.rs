//! A problem's suite: its correctness tests plus stress inputs with derived expected outputs.

use std::fs;
use std::path::{Path, PathBuf};

use afterburner_sandbox::Language;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::literal::{leetcode_outputs_match, tokens_match};
use super::run::RawOutput;
use super::{Harness, HarnessError, PROTOCOL_VERSION, hex, scripts_digest};
use crate::problem::{Checker, Entry, Problem, ReferenceSolution, StressSource};
use afterburner_sandbox::clip;

/// Tests ENAMEL generates per input level (its defaults; levels past the fourth get 4).
pub const ENAMEL_TESTS_PER_LEVEL: [u64; 4] = [8, 4, 4, 4];

/// Where a case of a suite comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaseOrigin {
    /// The problem's correctness test with this index.
    Test {
        /// Index in [`Problem::tests`].
        index: usize,
    },
    /// A stress input.
    Stress {
        /// Index in [`Problem::stress`].
        source: usize,
        /// Input level (ENAMEL), if the generator has levels.
        level: Option<usize>,
        /// Case number within the source (and level).
        case: usize,
    },
}

impl CaseOrigin {
    /// A group name for reports: `tests`, `stress`, or `level-<n>`.
    pub fn group(&self) -> String {
        match self {
            CaseOrigin::Test { .. } => "tests".to_string(),
            CaseOrigin::Stress { level: None, .. } => "stress".to_string(),
            CaseOrigin::Stress {
                level: Some(level), ..
            } => format!("level-{level}"),
        }
    }

    /// Whether it is a stress input.
    pub fn is_stress(&self) -> bool {
        matches!(self, CaseOrigin::Stress { .. })
    }
}

/// One test of a suite: an input and its expected output (see [`crate::problem`] for formats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// The input given to the solution.
    pub input: String,
    /// The expected output (stays outside the solution's sandbox).
    pub expected: String,
    /// Where it comes from.
    pub origin: CaseOrigin,
}

/// A stress input left out of the suite, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedInput {
    /// Which input.
    pub origin: CaseOrigin,
    /// Why it was dropped (generator error, references failed or disagree).
    pub reason: String,
}

/// Everything one run of a solution is judged on: the protocol is one sandboxed run over all
/// cases, and passing means passing every case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    /// The problem's id.
    pub problem_id: String,
    /// Correctness tests first, then stress inputs.
    pub cases: Vec<Case>,
    /// Stress inputs that were dropped.
    pub dropped: Vec<DroppedInput>,
    /// Whether the stress part came from the on-disk cache.
    #[serde(skip)]
    pub from_cache: bool,
}

impl Suite {
    /// The suite of a problem's correctness tests alone.
    pub fn tests_only(problem: &Problem) -> Suite {
        Suite {
            problem_id: problem.id.clone(),
            cases: problem
                .tests
                .iter()
                .enumerate()
                .map(|(index, t)| Case {
                    input: t.input.clone(),
                    expected: t.expected.clone(),
                    origin: CaseOrigin::Test { index },
                })
                .collect(),
            dropped: Vec::new(),
            from_cache: false,
        }
    }

    /// Number of stress cases.
    pub fn stress_cases(&self) -> usize {
        self.cases.iter().filter(|c| c.origin.is_stress()).count()
    }

    /// First 16 hex digits of the SHA-256 of every input and expected output: two suites with
    /// the same digest judge and measure the same way.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for c in &self.cases {
            h.update(c.input.len().to_le_bytes());
            h.update(c.input.as_bytes());
            h.update(c.expected.len().to_le_bytes());
            h.update(c.expected.as_bytes());
        }
        hex(&h.finalize()[..8])
    }

    /// The suite restricted to cases whose origin satisfies `keep`.
    pub fn filtered(&self, keep: impl Fn(&CaseOrigin) -> bool) -> Suite {
        Suite {
            cases: self
                .cases
                .iter()
                .filter(|c| keep(&c.origin))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// What the stress cache holds for one problem.
#[derive(Debug, Serialize, Deserialize)]
struct StressFile {
    key: String,
    problem_id: String,
    cases: Vec<Case>,
    dropped: Vec<DroppedInput>,
}

/// How many stress inputs a problem's sources make (before any is dropped): one per literal
/// input or argument-less generator, and 8, 4, 4, 4 per ENAMEL level.
pub fn planned_stress_inputs(problem: &Problem) -> usize {
    problem
        .stress
        .iter()
        .map(|s| match s {
            StressSource::Input(_) => 1,
            StressSource::Generator { levels, .. } if levels.is_empty() => 1,
            StressSource::Generator { levels, .. } => (0..levels.len())
                .map(|lid| ENAMEL_TESTS_PER_LEVEL.get(lid).copied().unwrap_or(4) as usize)
                .sum(),
        })
        .sum()
}

/// The number ENAMEL seeds a problem's inputs with: the HumanEval number at the end of the id
/// (ENAMEL uses the row index, which a subset of its rows does not keep), else a hash of the id.
fn problem_number(id: &str) -> u64 {
    let digits: String = id
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    match digits.parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            let d = Sha256::digest(id.as_bytes());
            u64::from_le_bytes([d[0], d[1], d[2], d[3], 0, 0, 0, 0])
        }
    }
}

fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Harness<'_> {
    /// The references whose consensus defines stress outputs: the first
    /// `consensus_references` verified ones (all of them, when none is verified).
    pub fn consensus_references<'p>(&self, problem: &'p Problem) -> Vec<&'p ReferenceSolution> {
        let runnable = |r: &&ReferenceSolution| {
            r.language == Language::Python || problem.entry == Entry::StdinStdout
        };
        let verified: Vec<_> = problem.verified_references().filter(runnable).collect();
        let pool = if verified.is_empty() {
            problem.references.iter().filter(runnable).collect()
        } else {
            verified
        };
        pool.into_iter()
            .take(self.config.consensus_references.max(1))
            .collect()
    }

    fn stress_key(&self, problem: &Problem, refs: &[&ReferenceSolution]) -> String {
        let refs: Vec<_> = refs
            .iter()
            .map(|r| json!([r.id, r.language, super::short_hash(&r.code)]))
            .collect();
        let key = json!({
            "version": PROTOCOL_VERSION,
            "problem": problem.id,
            "stress": problem.stress,
            "prelude": problem.prelude,
            "entry": problem.entry,
            "checker": problem.checker,
            "references": refs,
            "seed": self.config.stress_seed,
            "consensus_ms": self.config.consensus_limits.wall_time.as_millis() as u64,
            "scripts": scripts_digest(),
        });
        hex(&Sha256::digest(key.to_string().as_bytes())[..16])
    }

    fn stress_path(&self, problem: &Problem, key: &str) -> Option<PathBuf> {
        self.config.cache_dir.as_ref().map(|d| {
            d.join("stress")
                .join(format!("{}-{}.json", file_safe(&problem.id), &key[..16]))
        })
    }

    /// The problem's suite: its tests, then its stress inputs with expected outputs.
    ///
    /// Stress inputs come from [`StressSource::Input`]s as they are and from generators run
    /// once in the sandbox, seeded: COFFE's `generate_input()` once per generator; ENAMEL's
    /// `generate_input(size, lid, cid)` for 8, 4, 4, 4 cases at its levels, with ENAMEL's seed
    /// `seed ^ problem ^ (offset + cid)`, after a prelude that supplies `random`, `string`,
    /// `math`, `time` and ENAMEL's helpers. The expected output of each input is the output
    /// of the first of [`Harness::consensus_references`]; an input is dropped when the
    /// generator failed, a reference raised an error on it, no reference finished it, or two
    /// references disagree under the problem's checker (a reference that ran out of time
    /// abstains). With a cache folder the result is stored under
    /// `stress/<problem>-<key>.json`, keyed by the problem, its generators, the references,
    /// the seed and the harness scripts, and reused.
    pub fn suite(&self, problem: &Problem, cpu: Option<usize>) -> Result<Suite, HarnessError> {
        let mut suite = Suite::tests_only(problem);
        if problem.stress.is_empty() {
            return Ok(suite);
        }
        let refs = self.consensus_references(problem);
        let key = self.stress_key(problem, &refs);
        let path = self.stress_path(problem, &key);
        if let Some(file) = path.as_deref().and_then(|p| read_stress_file(p, &key)) {
            suite.cases.extend(file.cases);
            suite.dropped = file.dropped;
            suite.from_cache = true;
            return Ok(suite);
        }
        let (cases, dropped) = self.build_stress(problem, &refs, cpu)?;
        if let Some(path) = &path {
            let file = StressFile {
                key,
                problem_id: problem.id.clone(),
                cases,
                dropped,
            };
            write_stress_file(path, &file)?;
            suite.cases.extend(file.cases);
            suite.dropped = file.dropped;
        } else {
            suite.cases.extend(cases);
            suite.dropped = dropped;
        }
        Ok(suite)
    }

    fn build_stress(
        &self,
        problem: &Problem,
        refs: &[&ReferenceSolution],
        cpu: Option<usize>,
    ) -> Result<(Vec<Case>, Vec<DroppedInput>), HarnessError> {
        let mut inputs: Vec<(CaseOrigin, String)> = Vec::new();
        let mut dropped = Vec::new();
        for (s, stress) in problem.stress.iter().enumerate() {
            match stress {
                StressSource::Input(text) => inputs.push((
                    CaseOrigin::Stress {
                        source: s,
                        level: None,
                        case: 0,
                    },
                    text.clone(),
                )),
                StressSource::Generator { source, levels } => {
                    let mut calls = Vec::new();
                    let mut origins = Vec::new();
                    if levels.is_empty() {
                        origins.push(CaseOrigin::Stress {
                            source: s,
                            level: None,
                            case: 0,
                        });
                    } else {
                        let number = problem_number(&problem.id);
                        let mut offset = 0;
                        for (lid, &size) in levels.iter().enumerate() {
                            let n = ENAMEL_TESTS_PER_LEVEL.get(lid).copied().unwrap_or(4);
                            for cid in 0..n {
                                let seed = self.config.stress_seed ^ number ^ (offset + cid);
                                calls.push([size, lid as u64, cid, seed]);
                                origins.push(CaseOrigin::Stress {
                                    source: s,
                                    level: Some(lid),
                                    case: cid as usize,
                                });
                            }
                            offset += n;
                        }
                    }
                    let generated = self.generate(
                        problem,
                        source,
                        (!levels.is_empty()).then_some(calls.as_slice()),
                        cpu,
                    )?;
                    for (origin, result) in origins.into_iter().zip(generated) {
                        match result {
                            Ok(text) => inputs.push((origin, text)),
                            Err(e) => dropped.push(DroppedInput {
                                origin,
                                reason: format!("the generator failed: {e}"),
                            }),
                        }
                    }
                }
            }
        }
        if inputs.is_empty() {
            return Ok((Vec::new(), dropped));
        }
        if refs.is_empty() {
            dropped.extend(inputs.into_iter().map(|(origin, _)| DroppedInput {
                origin,
                reason: "no reference solution to derive its expected output from".into(),
            }));
            return Ok((Vec::new(), dropped));
        }

        let texts: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
        let mut outputs: Vec<Vec<Option<RawOutput>>> = Vec::with_capacity(refs.len());
        for r in refs {
            let raw = if r.language == Language::Python {
                self.raw_run(
                    problem,
                    &r.code,
                    &texts,
                    &self.config.consensus_limits,
                    cpu,
                    false,
                )?
            } else {
                self.native_run(r.language, &r.code, &texts, &self.config.limits, cpu, false)?
            };
            let fatal = raw
                .fatal
                .as_ref()
                .map(|(s, why)| format!("{s}: {}", clip(why, 300)));
            outputs.push(
                raw.outputs
                    .into_iter()
                    .map(|o| match (&fatal, o) {
                        (Some(why), _) => Some(RawOutput::Error(why.clone())),
                        (None, o) => o.map(|(out, _)| out),
                    })
                    .collect(),
            );
        }

        let call_entry = matches!(
            problem.entry,
            Entry::LeetCodeMethod { .. } | Entry::Function { .. }
        );
        let mut agreed: Vec<Option<String>> = vec![None; inputs.len()];
        let mut reasons: Vec<Option<String>> = vec![None; inputs.len()];
        // (input index, first text, other text, other ref) pairs for a dataset evaluator.
        let mut to_evaluate: Vec<(usize, String, String, usize)> = Vec::new();
        for j in 0..inputs.len() {
            let mut first: Option<(usize, &str)> = None;
            let mut reason = None;
            for (r, outs) in outputs.iter().enumerate() {
                match &outs[j] {
                    None => {}
                    Some(RawOutput::Error(e) | RawOutput::InputError(e)) => {
                        reason = Some(format!(
                            "reference {} failed on it: {}",
                            refs[r].id,
                            clip(e, 300)
                        ));
                        break;
                    }
                    Some(RawOutput::Ok { literal: false, .. }) if call_entry => {
                        reason = Some(format!(
                            "reference {} returned a value that is not a plain literal",
                            refs[r].id
                        ));
                        break;
                    }
                    Some(RawOutput::Ok { text, .. }) => match first {
                        None => first = Some((r, text)),
                        Some((f, expected)) => {
                            let same = match &problem.checker {
                                Checker::Exact => tokens_match(text, expected),
                                Checker::LeetCodeStructural => {
                                    leetcode_outputs_match(text, expected)
                                }
                                Checker::PythonEvaluator { .. } | Checker::PythonCheck { .. } => {
                                    to_evaluate.push((j, expected.to_string(), text.clone(), r));
                                    true
                                }
                            };
                            if !same {
                                reason = Some(format!(
                                    "references {} and {} disagree",
                                    refs[f].id, refs[r].id
                                ));
                                break;
                            }
                        }
                    },
                }
            }
            match (reason, first) {
                (Some(reason), _) => reasons[j] = Some(reason),
                (None, None) => {
                    reasons[j] =
                        Some("no reference finished it within the consensus time limit".to_string())
                }
                (None, Some((_, text))) => agreed[j] = Some(text.to_string()),
            }
        }
        if !to_evaluate.is_empty() {
            let triples: Vec<(&str, &str, &str)> = to_evaluate
                .iter()
                .map(|(j, e, a, _)| (texts[*j], e.as_str(), a.as_str()))
                .collect();
            let verdicts = self.run_evaluator(problem, &triples, cpu)?;
            for ((j, _, _, r), (ok, err)) in to_evaluate.iter().zip(verdicts) {
                if !ok && agreed[*j].is_some() {
                    agreed[*j] = None;
                    reasons[*j] = Some(format!(
                        "reference {} disagrees with {} under the dataset's checker{}",
                        refs[*r].id,
                        refs[0].id,
                        err.map(|e| format!(": {}", clip(&e, 300)))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        let mut cases = Vec::new();
        for (((origin, input), expected), reason) in inputs.into_iter().zip(agreed).zip(reasons) {
            match expected {
                Some(expected) => cases.push(Case {
                    input,
                    expected,
                    origin,
                }),
                None => dropped.push(DroppedInput {
                    origin,
                    reason: reason.unwrap_or_else(|| "dropped".to_string()),
                }),
            }
        }
        Ok((cases, dropped))
    }
}

/// A cached stress file, if it exists, parses and has the right key (else it is rebuilt).
fn read_stress_file(path: &Path, key: &str) -> Option<StressFile> {
    let text = fs::read_to_string(path).ok()?;
    let file: StressFile = serde_json::from_str(&text).ok()?;
    (file.key == key).then_some(file)
}

/// Writes a stress file atomically (a temporary file renamed into place).
fn write_stress_file(path: &Path, file: &StressFile) -> Result<(), HarnessError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| HarnessError::Io {
            action,
            path: p,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("create folder", dir))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let text = serde_json::to_string(file).map_err(|e| HarnessError::Io {
        action: "serialise",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    fs::write(&tmp, text).map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_numbers_come_from_humaneval_ids() {
        assert_eq!(problem_number("HumanEval/12"), 12);
        assert_eq!(problem_number("HumanEval/0"), 0);
        let a = problem_number("cc-abcdef");
        assert_eq!(a, problem_number("cc-abcdef"));
        assert!(a < 1 << 32);
    }

    #[test]
    fn cache_file_names_are_safe() {
        assert_eq!(file_safe("HumanEval/12"), "HumanEval_12");
        assert_eq!(file_safe("cc-0a1b"), "cc-0a1b");
    }

    #[test]
    fn origins_group_for_reports() {
        assert_eq!(CaseOrigin::Test { index: 3 }.group(), "tests");
        let s = CaseOrigin::Stress {
            source: 0,
            level: Some(3),
            case: 1,
        };
        assert_eq!(s.group(), "level-3");
        assert!(s.is_stress());
    }
}
