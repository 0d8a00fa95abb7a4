//! Datasets on disk: which format at which path, what was loaded, and what went wrong.
//!
//! Plain values only; reading a dataset ([`crate::load`]) is the importers' job (`import/`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use afterburner_sandbox::Language;
use serde::Serialize;

use crate::problem::Problem;

/// An upstream dataset file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The paper's Venus rows (Parquet or JSONL); the language names the Venus config.
    Venus(Language),
    /// APPS JSONL (`problem_id, question, solutions, input_output, difficulty`).
    Apps,
    /// A COFFE dataset folder (`solutions.json`, `testcases.json`, `stressful_testcases.json`).
    Coffe,
    /// LeetCodeDataset JSONL, plain or gzipped.
    LeetCode,
    /// An ENAMEL folder (`enamel.csv` with aligned JSON reference lists).
    Enamel,
}

impl Format {
    /// The names `FORMAT` may take in a `FORMAT:PATH` spec.
    pub const NAMES: &'static str = "venus (or venus-<language>), apps, coffe, leetcode, enamel";
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Venus(Language::Python) => f.write_str("venus"),
            Format::Venus(language) => write!(f, "venus-{language}"),
            Format::Apps => f.write_str("apps"),
            Format::Coffe => f.write_str("coffe"),
            Format::LeetCode => f.write_str("leetcode"),
            Format::Enamel => f.write_str("enamel"),
        }
    }
}

impl FromStr for Format {
    type Err = LoadError;

    /// Parses `venus`, `venus-<language>` (`venus-cpp`, `venus-python3`...), `apps`, `coffe`, `leetcode`, `enamel`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let unknown = || LoadError::UnknownFormat {
            format: s.to_string(),
        };
        Ok(match name.as_str() {
            "venus" => Format::Venus(Language::Python),
            "apps" => Format::Apps,
            "coffe" => Format::Coffe,
            "leetcode" | "leetcodedataset" => Format::LeetCode,
            "enamel" => Format::Enamel,
            other => match other.strip_prefix("venus-") {
                Some(language) => Format::Venus(language.parse().map_err(|_| unknown())?),
                None => return Err(unknown()),
            },
        })
    }
}

/// Which dataset to load: a format and a path, written `FORMAT:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatasetSpec {
    /// The file format.
    pub format: Format,
    /// The file or folder.
    pub path: PathBuf,
}

impl DatasetSpec {
    /// A spec for `format` at `path`.
    pub fn new(format: Format, path: impl Into<PathBuf>) -> Self {
        DatasetSpec {
            format,
            path: path.into(),
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.format, self.path.display())
    }
}

impl FromStr for DatasetSpec {
    type Err = LoadError;

    /// Parses `FORMAT:PATH`, e.g. `coffe:data/coffe-code-contests` or `venus-cpp:venus.parquet`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (format, path) = s.split_once(':').ok_or_else(|| LoadError::BadSpec {
            spec: s.to_string(),
            reason: format!("expected FORMAT:PATH with FORMAT one of {}", Format::NAMES),
        })?;
        if path.is_empty() {
            return Err(LoadError::BadSpec {
                spec: s.to_string(),
                reason: "the path is empty".to_string(),
            });
        }
        Ok(DatasetSpec::new(format.parse()?, path))
    }
}

/// A loaded dataset: its problems and the report of what could not be loaded.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it came from.
    pub spec: DatasetSpec,
    /// The problems, in upstream order, with unique ids.
    pub problems: Vec<Problem>,
    /// Rows skipped or partly dropped while loading.
    pub report: LoadReport,
}

impl Dataset {
    /// The problem with this id, if any.
    pub fn problem(&self, id: &str) -> Option<&Problem> {
        self.problems.iter().find(|p| p.id == id)
    }
}

/// What happened to the rows of a dataset while loading it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// Number of problems loaded.
    pub loaded: usize,
    /// Rows that were not loaded, each with the reason.
    pub skipped: Vec<RowIssue>,
    /// Rows that loaded but lost something (e.g. tests whose expected output is an upstream error message).
    pub warnings: Vec<RowIssue>,
}

impl LoadReport {
    /// Records a row that was not loaded.
    pub(crate) fn skip(&mut self, file: &Path, row: usize, reason: impl Into<String>) {
        self.skipped.push(RowIssue::new(file, row, reason));
    }

    /// Records a row that loaded with a loss.
    pub(crate) fn warn(&mut self, file: &Path, row: usize, reason: impl Into<String>) {
        self.warnings.push(RowIssue::new(file, row, reason));
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} loaded, {} skipped, {} warnings",
            self.loaded,
            self.skipped.len(),
            self.warnings.len()
        )?;
        for issue in &self.skipped {
            write!(f, "\n  skipped {issue}")?;
        }
        for issue in &self.warnings {
            write!(f, "\n  warning {issue}")?;
        }
        Ok(())
    }
}

/// One row of a file that was skipped or partly dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowIssue {
    /// The file the row is in.
    pub file: PathBuf,
    /// 1-based row: the line of a JSONL file, the record after the header of a CSV file,
    /// the position in a JSON list or map, or the row of a Parquet file.
    pub row: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl RowIssue {
    fn new(file: &Path, row: usize, reason: impl Into<String>) -> Self {
        RowIssue {
            file: file.to_path_buf(),
            row,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RowIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} row {}: {}",
            self.file.display(),
            self.row,
            self.reason
        )
    }
}

/// Why a dataset could not be loaded (or written) at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The format name is not one this crate reads.
    #[error("unknown dataset format `{format}` (known: {})", Format::NAMES)]
    UnknownFormat {
        /// The name given.
        format: String,
    },
    /// The spec is not `FORMAT:PATH`.
    #[error("bad dataset spec `{spec}`: {reason}")]
    BadSpec {
        /// The spec given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or folder could not be opened, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `open`, `write`...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file as a whole is not in the expected format.
    #[error("{} is not a valid {format} file: {reason}", path.display())]
    Malformed {
        /// The path.
        path: PathBuf,
        /// The format it should be in.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl LoadError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        LoadError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &Path, format: &'static str, reason: impl Into<String>) -> Self {
        LoadError::Malformed {
            path: path.to_path_buf(),
            format,
            reason: reason.into(),
        }
    }
}
