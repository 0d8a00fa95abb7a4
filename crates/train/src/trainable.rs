//! What a run trains: LoRA adapters on a frozen base, or every weight of the model (full
//! fine-tuning, for small models), behind one interface the trainers share.
//!
//! Both give the trainers the variables to update, a reference policy (DPO's reference and
//! GRPO's KL): the adapters switched off, or for full fine-tuning a frozen copy of the starting
//! weights taken before training (it shares their storage until the first update, then costs
//! one more copy of the weights), and a way to save the result: a PEFT adapter folder, or a
//! Hugging Face model folder beside the base's config and tokenizer files.

use std::path::Path;
use std::sync::Mutex;

use afterburner_model::{CausalLm, LanguageModel, Tensor};
use candle_core::Var;

use crate::{Adapters, LoraConfig, TrainError};

/// Which weights a run trains (LLaMA-Factory's `finetuning_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinetuningType {
    /// LoRA adapters on the frozen base.
    #[default]
    Lora,
    /// Every weight (f32 master weights; the base must be a Hugging Face folder).
    Full,
}

/// Something whose adapters or weights can be switched off to compute the reference policy.
pub trait Reference {
    /// Switches the model to the reference policy.
    fn detach(&self, model: &mut CausalLm);
    /// Switches it back to the policy being trained.
    fn reattach(&self, model: &mut CausalLm);
}

impl Reference for Adapters {
    fn detach(&self, model: &mut CausalLm) {
        Adapters::detach(self, model);
    }

    fn reattach(&self, model: &mut CausalLm) {
        Adapters::reattach(self, model);
    }
}

/// Every weight of the model as a variable, with the frozen starting weights as reference.
#[derive(Debug)]
pub struct FullWeights {
    /// The variables under their Hugging Face names.
    pub vars: Vec<(String, Var)>,
    /// The model as it was before training (its tensors are not variables).
    reference: CausalLm,
    /// The trained model while the reference is swapped in.
    parked: Mutex<Option<CausalLm>>,
}

/// What a run trains.
#[derive(Debug)]
pub enum Trainable {
    /// LoRA adapters.
    Lora(Adapters),
    /// Every weight.
    Full(Box<FullWeights>),
}

fn model_error(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

impl Trainable {
    /// Starts a run: fresh adapters (seeded as PEFT initialises them), or every weight made a
    /// variable.
    pub fn start(
        model: &mut LanguageModel,
        kind: FinetuningType,
        lora: &LoraConfig,
        seed: u64,
    ) -> Result<Trainable, TrainError> {
        let device = model.model().device().clone();
        match kind {
            FinetuningType::Lora => Ok(Trainable::Lora(Adapters::attach(
                model.model_mut(),
                lora,
                seed,
                &device,
            )?)),
            FinetuningType::Full => {
                let base = model.origin().to_path_buf();
                if !(base.is_dir() && base.join("config.json").is_file()) {
                    return Err(TrainError::Config(format!(
                        "full fine-tuning writes a Hugging Face folder and needs one as the base \
                         ({} has no config.json); use LoRA for GGUF models",
                        base.display()
                    )));
                }
                let reference = model.model().clone();
                let vars = model.model_mut().make_trainable().map_err(model_error)?;
                Ok(Trainable::Full(Box::new(FullWeights {
                    vars,
                    reference,
                    parked: Mutex::new(None),
                })))
            }
        }
    }

    /// Resumes a run from the checkpoint folder `dir` (what [`Self::save`] wrote into it).
    pub fn resume(
        model: &mut LanguageModel,
        kind: FinetuningType,
        dir: &Path,
    ) -> Result<Trainable, TrainError> {
        let device = model.model().device().clone();
        match kind {
            FinetuningType::Lora => Ok(Trainable::Lora(Adapters::load_peft(
                model.model_mut(),
                &dir.join(Self::folder_name(kind)),
                &device,
            )?)),
            FinetuningType::Full => {
                let trainable = Self::start(model, kind, &LoraConfig::default(), 0)?;
                let Trainable::Full(full) = &trainable else {
                    return Err(TrainError::Config("not a full fine-tuning run".into()));
                };
                let file = dir.join(Self::folder_name(kind)).join("model.safetensors");
                let saved = candle_core::safetensors::load(&file, &device).map_err(|e| {
                    TrainError::io("read", &file, std::io::Error::other(e.to_string()))
                })?;
                for (name, var) in &full.vars {
                    let tensor = saved.get(name).ok_or_else(|| {
                        TrainError::Config(format!("{}: no tensor `{name}`", file.display()))
                    })?;
                    var.set(tensor).map_err(|e| {
                        TrainError::Config(format!("{}: `{name}`: {e}", file.display()))
                    })?;
                }
                Ok(trainable)
            }
        }
    }

    /// The folder a run's result goes in: `adapter` (PEFT) or `model` (Hugging Face).
    pub fn folder_name(kind: FinetuningType) -> &'static str {
        match kind {
            FinetuningType::Lora => "adapter",
            FinetuningType::Full => "model",
        }
    }

    /// The variables the optimiser updates.
    pub fn vars(&self) -> Vec<Var> {
        match self {
            Trainable::Lora(a) => a.vars(),
            Trainable::Full(f) => f.vars.iter().map(|(_, v)| v.clone()).collect(),
        }
    }

    /// Turns LoRA dropout on for the loss's forward passes (nothing for full fine-tuning).
    pub fn dropout_on(&self, model: &mut CausalLm, seed: u64) {
        if let Trainable::Lora(a) = self {
            a.dropout_on(model, seed);
        }
    }

    /// Turns LoRA dropout off.
    pub fn dropout_off(&self, model: &mut CausalLm) {
        if let Trainable::Lora(a) = self {
            a.dropout_off(model);
        }
    }

    /// Saves the result into `dir` (a PEFT adapter, or a Hugging Face folder with the base's
    /// config and tokenizer files).
    pub fn save(&self, model: &LanguageModel, dir: &Path, base: &str) -> Result<(), TrainError> {
        match self {
            Trainable::Lora(a) => a.save_peft(dir, Some(base)),
            Trainable::Full(f) => {
                let weights: Vec<(String, Tensor)> = f
                    .vars
                    .iter()
                    .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
                    .collect();
                save_hf_folder(model.origin(), &weights, dir).map(|_| ())
            }
        }
    }
}

impl Reference for Trainable {
    fn detach(&self, model: &mut CausalLm) {
        match self {
            Trainable::Lora(a) => a.detach(model),
            Trainable::Full(f) => {
                let trained = std::mem::replace(model, f.reference.clone());
                if let Ok(mut parked) = f.parked.lock() {
                    *parked = Some(trained);
                }
            }
        }
    }

    fn reattach(&self, model: &mut CausalLm) {
        match self {
            Trainable::Lora(a) => a.reattach(model),
            Trainable::Full(f) => {
                if let Some(trained) = f.parked.lock().ok().and_then(|mut p| p.take()) {
                    *model = trained;
                }
            }
        }
    }
}

/// Writes a Hugging Face model folder `out`: `weights` as `model.safetensors`, and every other
/// file of the base folder `base` (config, generation config, tokenizer, chat template) copied.
/// Returns the names of the copied files.
pub fn save_hf_folder(
    base: &Path,
    weights: &[(String, Tensor)],
    out: &Path,
) -> Result<Vec<String>, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io("create", out, e))?;
    let mut copied = Vec::new();
    let entries = std::fs::read_dir(base).map_err(|e| TrainError::io("read", base, e))?;
    for entry in entries {
        let path = entry.map_err(|e| TrainError::io("read", base, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let weights_file = name.ends_with(".safetensors")
            || name.ends_with(".bin")
            || name == "model.safetensors.index.json";
        if path.is_file() && !weights_file {
            std::fs::copy(&path, out.join(&name)).map_err(|e| TrainError::io("copy", &path, e))?;
            copied.push(name);
        }
    }
    Adapters::save_weights(weights, &out.join("model.safetensors"))?;
    copied.sort();
    Ok(copied)
}
