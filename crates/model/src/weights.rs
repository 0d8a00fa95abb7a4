//! `Weights`: named tensors in Hugging Face names, from memory-mapped safetensors files (one file
//! or a sharded index) or from an in-memory map (what the GGUF loader produces).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The file name of an unsharded safetensors checkpoint.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The file name of a sharded checkpoint's index.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";

/// A source of named weight tensors.
pub struct Weights {
    source: Source,
}

enum Source {
    /// Memory-mapped safetensors files and, per tensor name, which of them holds it.
    Mmaped {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        file_of: HashMap<String, usize>,
        /// The file named in errors for tensors found in no file (the index or the single file).
        listing: PathBuf,
    },
    /// Tensors already in memory, with a description of where they came from.
    Memory {
        tensors: HashMap<String, Tensor>,
        origin: PathBuf,
    },
}

impl Weights {
    /// Opens the checkpoint of a model folder: `model.safetensors`, else the sharded
    /// `model.safetensors.index.json`, else any single `*.safetensors` file.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let single = dir.join(SAFETENSORS_FILE);
        if single.is_file() {
            return Self::from_safetensors_file(&single);
        }
        let index = dir.join(SAFETENSORS_INDEX_FILE);
        if index.is_file() {
            return Self::from_index(&index);
        }
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| ModelError::file(dir, format!("cannot list the model folder: {e}")))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        candidates.sort();
        match candidates.as_slice() {
            [one] => Self::from_safetensors_file(one),
            [] => Err(ModelError::file(
                dir,
                format!(
                    "no weights: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} with its shards"
                ),
            )),
            _ => Err(ModelError::file(
                dir,
                format!(
                    "several .safetensors files but no {SAFETENSORS_INDEX_FILE} saying which tensor is in which"
                ),
            )),
        }
    }

    /// Memory-maps one safetensors file.
    pub fn from_safetensors_file(path: &Path) -> Result<Self> {
        let st = open_safetensors(path)?;
        let file_of = st
            .tensors()
            .into_iter()
            .map(|(name, _)| (name, 0))
            .collect();
        Ok(Weights {
            source: Source::Mmaped {
                files: vec![(path.to_path_buf(), st)],
                file_of,
                listing: path.to_path_buf(),
            },
        })
    }

    /// Memory-maps the shards listed by a `model.safetensors.index.json` (`weight_map`).
    pub fn from_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index)
            .map_err(|e| ModelError::file(index, format!("cannot read the shard index: {e}")))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::file(index, "no `weight_map` object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&str> = Vec::new();
        let mut file_of = HashMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                ModelError::file(
                    index,
                    format!("weight_map entry `{tensor}` is not a file name"),
                )
            })?;
            let position = match shard_names.iter().position(|s| *s == shard) {
                Some(p) => p,
                None => {
                    shard_names.push(shard);
                    shard_names.len() - 1
                }
            };
            file_of.insert(tensor.clone(), position);
        }
        let mut files = Vec::with_capacity(shard_names.len());
        for shard in shard_names {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(ModelError::file(
                    index,
                    format!(
                        "lists shard `{shard}`, which is missing from {}",
                        dir.display()
                    ),
                ));
            }
            let st = open_safetensors(&path)?;
            files.push((path, st));
        }
        Ok(Weights {
            source: Source::Mmaped {
                files,
                file_of,
                listing: index.to_path_buf(),
            },
        })
    }

    /// Wraps tensors already in memory (Hugging Face names); `origin` names them in errors
    /// (e.g. the GGUF file they were read from).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: impl Into<PathBuf>) -> Self {
        Weights {
            source: Source::Memory {
                tensors,
                origin: origin.into(),
            },
        }
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Mmaped { file_of, .. } => file_of.contains_key(name),
            Source::Memory { tensors, .. } => tensors.contains_key(name),
        }
    }

    /// The names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.source {
            Source::Mmaped { file_of, .. } => file_of.keys().cloned().collect(),
            Source::Memory { tensors, .. } => tensors.keys().cloned().collect(),
        };
        names.sort();
        names
    }

    /// Loads tensor `name`, checks that its shape is `shape`, and converts it to `dtype` on `device`.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (path, tensor) = match &self.source {
            Source::Mmaped {
                files,
                file_of,
                listing,
            } => {
                let Some(&index) = file_of.get(name) else {
                    return Err(ModelError::tensor(listing, name, "missing"));
                };
                let (path, st) = &files[index];
                let tensor = st
                    .load(name, device)
                    .map_err(|e| ModelError::tensor(path, name, format!("cannot be read: {e}")))?;
                (path, tensor)
            }
            Source::Memory { tensors, origin } => {
                let Some(tensor) = tensors.get(name) else {
                    return Err(ModelError::tensor(origin, name, "missing"));
                };
                (origin, tensor.to_device(device)?)
            }
        };
        if tensor.dims() != shape {
            return Err(ModelError::tensor(
                path,
                name,
                format!("expected shape {shape:?}, found {:?}", tensor.dims()),
            ));
        }
        tensor.to_dtype(dtype).map_err(|e| {
            ModelError::tensor(path, name, format!("cannot be converted to {dtype:?}: {e}"))
        })
    }
}

fn open_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the file is mapped read-only and the model files are not modified while the model is loaded.
    unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| ModelError::file(path, format!("not a readable safetensors file: {e}")))
}
