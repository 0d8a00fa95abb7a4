//! Training data from measured human solutions: SFT, DPO and GRPO rows in the formats of TRL,
//! LLaMA-Factory, verl and OpenRLHF (`afterburner data`).
//!
//! - [`select`]: which prompts and completions a set of measured problems yields ([`select()`]):
//!   the loop's own prompts (`afterburner_optimize::prompt`), answers in the format the reward
//!   parses, and every comparison under the tie rule of the measured noise.
//! - [`format`]: the rows of each trainer ([`format::table`]).
//! - [`table`]: typed rows written as JSON Lines or Parquet.
//! - [`write_data`]: one folder with a file per split and `manifest.json` (plus LLaMA-Factory's
//!   `dataset_info.json`).
//!
//! It measures nothing itself: the caller calibrates (the benchmarks crate's `Workbench`) and
//! hands over the measured problems.

#![warn(missing_docs)]

pub mod format;
pub mod select;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

pub use format::Trainer;
pub use select::{
    Baseline, Example, Examples, Kind, MeasuredProblem, MeasuredSolution, Selection, Skipped,
    Split, Target, select,
};
pub use table::{FileFormat, Table};

/// Why data could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The options do not make sense (or a trainer has no such format).
    #[error("{0}")]
    Options(String),
    /// A prompt template did not render.
    #[error("prompt: {0}")]
    Prompt(String),
    /// A value does not fit its column (a bug in a builder, caught before the file is written).
    #[error("{}: {detail}", path.display())]
    Schema {
        /// The file being written.
        path: PathBuf,
        /// Which row and column, and why.
        detail: String,
    },
    /// A file could not be written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where the data comes from, for the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// The dataset as given (`FORMAT:PATH`).
    pub dataset: String,
    /// Its format (`coffe`, `leetcode`...): verl's `data_source` is `afterburner/<format>`.
    pub dataset_format: String,
    /// The calibration's machine fingerprint.
    pub fingerprint: String,
    /// The machine, in words.
    pub machine: String,
    /// The measurement protocol's id.
    pub protocol: String,
    /// The calibration cache folder.
    pub cache: PathBuf,
    /// Problems selected (before `--exclude`).
    pub problems: usize,
    /// Rows of the dataset's files that could not be loaded (the command printed each: file,
    /// row, reason).
    pub dataset_rows_skipped: usize,
    /// The exact options of the command, as given.
    pub options: Value,
}

/// What [`write_data`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The version of Afterburner that wrote it.
    pub afterburner_version: &'static str,
    /// `sft`, `dpo` or `grpo`.
    pub kind: Kind,
    /// The trainer format.
    pub format: Trainer,
    /// JSONL or Parquet.
    pub file_format: FileFormat,
    /// Rows per split.
    pub counts: BTreeMap<&'static str, usize>,
    /// Rows per efficiency instruction.
    pub by_instruction: BTreeMap<&'static str, usize>,
    /// Rows per prompt mode (`generate`, `improve`).
    pub by_mode: BTreeMap<&'static str, usize>,
    /// The file of each split, relative to the folder.
    pub files: BTreeMap<&'static str, String>,
    /// Problems that yielded rows.
    pub problems_with_rows: usize,
    /// Problems left out by `--exclude`.
    pub excluded: usize,
    /// Problems that yielded nothing, with the reason.
    pub skipped: Vec<Skipped>,
    /// References dropped as duplicates (same code once normalised).
    pub duplicate_solutions: usize,
    /// Where it comes from.
    pub source: Provenance,
    /// When it was written (seconds since the Unix epoch).
    pub created_at: u64,
}

/// Writes `examples` of `kind` for `trainer` into `dir`: `train.EXT` and `test.EXT` (every
/// split, empty ones included, so recipes can name both), `manifest.json`, and for
/// LLaMA-Factory `dataset_info.json` with entries `afterburner_<kind>_<split>`.
pub fn write_data(
    dir: &Path,
    examples: &Examples,
    kind: Kind,
    trainer: Trainer,
    file_format: FileFormat,
    source: Provenance,
) -> Result<Manifest, DataError> {
    trainer.supports(kind)?;
    std::fs::create_dir_all(dir).map_err(|e| DataError::Io {
        action: "create the folder",
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut counts = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut info_files = Vec::new();
    for split in [Split::Train, Split::Test] {
        let rows: Vec<&Example> = examples
            .examples
            .iter()
            .filter(|e| e.split == split)
            .collect();
        let table = format::table(&rows, kind, trainer, &source.dataset_format)?;
        let name = format!("{}.{}", split.name(), file_format.extension());
        table.write(&dir.join(&name), file_format)?;
        counts.insert(split.name(), rows.len());
        info_files.push((
            format!("afterburner_{}_{}", kind.name(), split.name()),
            name.clone(),
        ));
        files.insert(split.name(), name);
    }
    if trainer == Trainer::LlamaFactory {
        let info = format::llamafactory_dataset_info(kind, &info_files);
        write_json(&dir.join("dataset_info.json"), &info)?;
    }
    let mut by_instruction = BTreeMap::new();
    let mut by_mode = BTreeMap::new();
    for e in &examples.examples {
        *by_instruction.entry(e.instruction.name()).or_insert(0) += 1;
        *by_mode.entry(e.mode).or_insert(0) += 1;
    }
    let problems_with_rows = examples
        .examples
        .iter()
        .map(|e| e.problem_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let manifest = Manifest {
        afterburner_version: env!("CARGO_PKG_VERSION"),
        kind,
        format: trainer,
        file_format,
        counts,
        by_instruction,
        by_mode,
        files,
        problems_with_rows,
        excluded: examples.excluded,
        skipped: examples.skipped.clone(),
        duplicate_solutions: examples.duplicate_solutions,
        source,
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    write_json(&dir.join("manifest.json"), &manifest)?;
    Ok(manifest)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), DataError> {
    let io = |action: &'static str, e: std::io::Error| DataError::Io {
        action,
        path: path.to_path_buf(),
        source: e,
    };
    let mut text = serde_json::to_string_pretty(value).map_err(|e| io("serialise", e.into()))?;
    text.push('\n');
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))
}

/// Reads `--exclude FILE`: one problem id per line; blank lines and lines starting with `#`
/// are ignored, and a JSON Lines file of objects with a `problem_id` works too (an eval's
/// solutions file, say).
pub fn read_exclude(path: &Path) -> Result<std::collections::BTreeSet<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        action: "read the exclude file",
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut ids = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('{') {
            let value: Value = serde_json::from_str(line).map_err(|e| {
                DataError::Options(format!(
                    "{} line {}: not a JSON object ({e})",
                    path.display(),
                    n + 1
                ))
            })?;
            let id = value
                .get("problem_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    DataError::Options(format!(
                        "{} line {}: a JSON line needs a string `problem_id`",
                        path.display(),
                        n + 1
                    ))
                })?;
            ids.insert(id.to_string());
        } else {
            ids.insert(line.to_string());
        }
    }
    Ok(ids)
}
