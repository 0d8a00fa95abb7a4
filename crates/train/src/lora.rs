//! LoRA adapters on the embedded model, initialised as PEFT does, saved and loaded in PEFT's
//! format (`adapter_config.json` + `adapter_model.safetensors`), so PEFT and vLLM load ours and
//! we load theirs.
//!
//! PEFT's initialisation (`peft/tuners/lora/layer.py`, `reset_lora_parameters` with
//! `init_lora_weights=True`): `A` by `kaiming_uniform_(a=sqrt(5))`, which is uniform on
//! `[-1/sqrt(in), 1/sqrt(in)]`, and `B` zero, so an adapter starts as the identity on the
//! model's output. The scaling is `alpha / r`. Tensor names are PEFT's:
//! `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `...lora_B.weight` (`[out, r]`).

use std::collections::HashMap;
use std::path::Path;

use std::sync::{Arc, Mutex};

use afterburner_model::{CausalLm, DType, Device, LoraAdapter, LoraDropout, SplitMix64, Tensor};
use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The default target modules: every projection of the attention and the MLP.
pub const DEFAULT_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// How adapters are shaped: PEFT's `LoraConfig` fields of the same names.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`; the scaling is `alpha / r`.
    pub alpha: f64,
    /// `lora_dropout`: probability of zeroing each input feature of an adapter's path in the
    /// loss's forward passes (sampling, old and reference log-probabilities run without it).
    pub dropout: f64,
    /// Module names (last component, e.g. `q_proj`) that get an adapter.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// PEFT's `adapter_config.json` (the fields PEFT and vLLM read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Always `CAUSAL_LM`.
    pub task_type: String,
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `lora_dropout`.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Target module names.
    pub target_modules: Vec<String>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// `none`: no bias is trained.
    #[serde(default = "no_bias")]
    pub bias: String,
    /// rsLoRA scaling (`alpha / sqrt(r)`); we write `false`, and refuse to load `true`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Whether the adapter is for inference only.
    #[serde(default)]
    pub inference_mode: bool,
    /// Modules trained in full beside the adapters (none from us; refused when present).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module ranks (none from us; refused when present).
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    /// Per-module alphas (none from us; refused when present).
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
    /// DoRA (weight-decomposed LoRA): refused when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_dora: bool,
    /// Transposed (Conv1D-style) weights: refused when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fan_in_fan_out: bool,
    /// A bias on `lora_B`: refused when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lora_bias: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn no_bias() -> String {
    "none".into()
}

/// The adapters attached to a model: each module's trainable `A` and `B`.
#[derive(Debug)]
pub struct Adapters {
    /// The configuration they were made with.
    pub config: LoraConfig,
    /// `(module name, A, B)` in the model's module order.
    pub modules: Vec<(String, Var, Var)>,
    /// The dropout the attached adapters apply now (`None`: off, for inference).
    dropout: Mutex<Option<LoraDropout>>,
}

/// A seeded generator for initial weights (SplitMix64): the same seed, the same adapter.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    /// The generator's state (to checkpoint it).
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A generator continuing from a [`Self::state`].
    pub fn from_state(state: u64) -> Self {
        SeededRng(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn module_matches(name: &str, targets: &[String]) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    targets.iter().any(|t| t == last || t == name)
}

fn model_error(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

impl Adapters {
    /// Attaches fresh adapters to every target module of `model` (f32, on `device`), `A`
    /// uniform on `[-1/sqrt(in), 1/sqrt(in)]` from `seed`, `B` zero. Errors when no module
    /// matches or a target names nothing in the model.
    pub fn attach(
        model: &mut CausalLm,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Adapters, TrainError> {
        if config.r == 0 {
            return Err(TrainError::Config("--lora-r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(TrainError::Config(format!(
                "--lora-dropout {} must be at least 0 and below 1",
                config.dropout
            )));
        }
        let mut rng = SeededRng::new(seed);
        let scaling = config.alpha / config.r as f64;
        let mut modules = Vec::new();
        let mut seen_targets = std::collections::BTreeSet::new();
        for (name, linear) in model.linears_mut() {
            if name == "lm_head" || !module_matches(&name, &config.target_modules) {
                continue;
            }
            seen_targets.insert(name.rsplit('.').next().unwrap_or(&name).to_string());
            let (out, inp) = linear.dims().map_err(model_error)?;
            let bound = 1.0 / (inp as f64).sqrt();
            let values: Vec<f32> = (0..config.r * inp)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Var::from_tensor(
                &Tensor::from_vec(values, (config.r, inp), device).map_err(model_error)?,
            )
            .map_err(model_error)?;
            let b = Var::zeros((out, config.r), DType::F32, device).map_err(model_error)?;
            linear.lora = Some(LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scaling,
                dropout: None,
            });
            modules.push((name, a, b));
        }
        if modules.is_empty() {
            return Err(TrainError::Config(format!(
                "no module of the model matches the LoRA targets {:?} (its projections are \
                 q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                config.target_modules
            )));
        }
        if let Some(missing) = config
            .target_modules
            .iter()
            .find(|t| !seen_targets.contains(t.rsplit('.').next().unwrap_or(t)))
        {
            return Err(TrainError::Config(format!(
                "the LoRA target `{missing}` names no module of the model"
            )));
        }
        Ok(Adapters {
            config: config.clone(),
            modules,
            dropout: Mutex::new(None),
        })
    }

    /// Switches the adapters off: the model computes as its base (the DPO reference).
    pub fn detach(&self, model: &mut CausalLm) {
        for (name, linear) in model.linears_mut() {
            if self.modules.iter().any(|(n, _, _)| *n == name) {
                linear.lora = None;
            }
        }
    }

    /// Switches the adapters back on after [`Self::detach`] (with the dropout they had).
    pub fn reattach(&self, model: &mut CausalLm) {
        let scaling = self.config.alpha / self.config.r as f64;
        let dropout = self.dropout.lock().map(|d| d.clone()).unwrap_or_default();
        for (name, linear) in model.linears_mut() {
            if let Some((_, a, b)) = self.modules.iter().find(|(n, _, _)| *n == name) {
                linear.lora = Some(LoraAdapter {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scaling,
                    dropout: dropout.clone(),
                });
            }
        }
    }

    /// Turns `lora_dropout` on for the loss's forward passes, its masks drawn from `seed` (a
    /// step's own seed, so a resumed run draws the same masks); nothing when the dropout is 0.
    pub fn dropout_on(&self, model: &mut CausalLm, seed: u64) {
        if self.config.dropout > 0.0 {
            self.set_dropout(
                model,
                Some(LoraDropout {
                    p: self.config.dropout,
                    rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
                }),
            );
        }
    }

    /// Turns the dropout off (sampling, evaluation, saving).
    pub fn dropout_off(&self, model: &mut CausalLm) {
        if self.config.dropout > 0.0 {
            self.set_dropout(model, None);
        }
    }

    fn set_dropout(&self, model: &mut CausalLm, dropout: Option<LoraDropout>) {
        if let Ok(mut d) = self.dropout.lock() {
            *d = dropout;
        }
        self.reattach(model);
    }

    /// The model's weights with the adapters merged in (`W + scaling * B A` for each adapted
    /// projection, in the weight's dtype), under Hugging Face names, ready to save as a model.
    pub fn merged_weights(&self, model: &CausalLm) -> Result<Vec<(String, Tensor)>, TrainError> {
        let scaling = self.config.alpha / self.config.r as f64;
        let mut weights = model.named_parameters().map_err(model_error)?;
        for (name, a, b) in &self.modules {
            let key = format!("{name}.weight");
            let Some((_, weight)) = weights.iter_mut().find(|(n, _)| *n == key) else {
                return Err(TrainError::Adapter(format!(
                    "the model has no weight `{key}` to merge the adapter into"
                )));
            };
            let delta = b
                .as_tensor()
                .matmul(a.as_tensor())
                .and_then(|d| d * scaling)
                .and_then(|d| d.to_dtype(weight.dtype()))
                .map_err(model_error)?;
            *weight = (&*weight + delta).map_err(model_error)?;
        }
        Ok(weights)
    }

    /// Writes weights (e.g. [`Self::merged_weights`]) to a safetensors file.
    pub fn save_weights(weights: &[(String, Tensor)], path: &Path) -> Result<(), TrainError> {
        let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
        candle_core::safetensors::save(&map, path)
            .map_err(|e| TrainError::io("write", path, std::io::Error::other(e.to_string())))
    }

    /// The trainable variables, `A` then `B` of each module.
    pub fn vars(&self) -> Vec<Var> {
        self.modules
            .iter()
            .flat_map(|(_, a, b)| [a.clone(), b.clone()])
            .collect()
    }

    /// The tensors under PEFT's names.
    pub fn peft_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, a, b) in &self.modules {
            out.insert(
                format!("base_model.model.{name}.lora_A.weight"),
                a.as_tensor().clone(),
            );
            out.insert(
                format!("base_model.model.{name}.lora_B.weight"),
                b.as_tensor().clone(),
            );
        }
        out
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save_peft(&self, dir: &Path, base_model: Option<&str>) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("create", dir, e))?;
        let targets: Vec<String> = {
            let mut t: Vec<String> = self
                .modules
                .iter()
                .map(|(n, _, _)| n.rsplit('.').next().unwrap_or(n).to_string())
                .collect();
            t.sort();
            t.dedup();
            t
        };
        let config = AdapterConfig {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: self.config.r,
            lora_alpha: self.config.alpha,
            lora_dropout: self.config.dropout,
            target_modules: targets,
            base_model_name_or_path: base_model.map(str::to_string),
            bias: "none".into(),
            use_rslora: false,
            inference_mode: true,
            modules_to_save: None,
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
            use_dora: false,
            fan_in_fan_out: false,
            lora_bias: false,
        };
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| TrainError::Config(format!("adapter config: {e}")))?;
        let config_path = dir.join("adapter_config.json");
        std::fs::write(&config_path, text + "\n")
            .map_err(|e| TrainError::io("write", &config_path, e))?;
        let weights = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&self.peft_tensors(), &weights)
            .map_err(|e| TrainError::io("write", &weights, std::io::Error::other(e.to_string())))
    }

    /// Loads a PEFT LoRA adapter folder (ours or PEFT's) onto `model` as trainable variables
    /// (f32). Errors name the file and what does not fit: another PEFT type, rsLoRA, per-module
    /// ranks, `modules_to_save`, a tensor for a module the model lacks, or a wrong shape.
    pub fn load_peft(
        model: &mut CausalLm,
        dir: &Path,
        device: &Device,
    ) -> Result<Adapters, TrainError> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| TrainError::io("read", &config_path, e))?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| {
            TrainError::Adapter(format!(
                "{}: not a PEFT adapter config: {e}",
                config_path.display()
            ))
        })?;
        let refuse = |why: String| TrainError::Adapter(format!("{}: {why}", config_path.display()));
        if config.peft_type != "LORA" {
            return Err(refuse(format!(
                "peft_type is {}, not LORA",
                config.peft_type
            )));
        }
        if config.use_rslora {
            return Err(refuse(
                "rsLoRA scaling (use_rslora: true) is not supported".into(),
            ));
        }
        if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
            return Err(refuse(
                "per-module ranks or alphas are not supported".into(),
            ));
        }
        if config
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_empty())
        {
            return Err(refuse(
                "modules_to_save (fully trained modules) is not supported".into(),
            ));
        }
        if config.use_dora || config.fan_in_fan_out || config.lora_bias {
            return Err(refuse(
                "DoRA, fan_in_fan_out and lora_bias adapters are not supported".into(),
            ));
        }
        if config.bias != "none" {
            return Err(refuse(format!(
                "bias `{}` is not supported (only none)",
                config.bias
            )));
        }
        let weights_path = dir.join("adapter_model.safetensors");
        let mut tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| TrainError::Adapter(format!("{}: {e}", weights_path.display())))?;
        let scaling = config.lora_alpha / config.r as f64;
        let mut modules = Vec::new();
        for (name, linear) in model.linears_mut() {
            let key = |part: &str| format!("base_model.model.{name}.{part}.weight");
            let (Some(a), Some(b)) = (
                tensors.remove(&key("lora_A")),
                tensors.remove(&key("lora_B")),
            ) else {
                continue;
            };
            let (out, inp) = linear.dims().map_err(model_error)?;
            if a.dims() != [config.r, inp] || b.dims() != [out, config.r] {
                return Err(TrainError::Adapter(format!(
                    "{}: {name}: lora_A {:?} and lora_B {:?} do not fit a [{out}, {inp}] \
                     projection at rank {}",
                    weights_path.display(),
                    a.dims(),
                    b.dims(),
                    config.r
                )));
            }
            let a = Var::from_tensor(&a.to_dtype(DType::F32).map_err(model_error)?)
                .map_err(model_error)?;
            let b = Var::from_tensor(&b.to_dtype(DType::F32).map_err(model_error)?)
                .map_err(model_error)?;
            linear.lora = Some(LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scaling,
                dropout: None,
            });
            modules.push((name, a, b));
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(TrainError::Adapter(format!(
                "{}: tensor `{extra}` names no projection of the model (is the adapter for \
                 another base model?)",
                weights_path.display()
            )));
        }
        if modules.is_empty() {
            return Err(TrainError::Adapter(format!(
                "{}: no LoRA tensor in it",
                weights_path.display()
            )));
        }
        Ok(Adapters {
            config: LoraConfig {
                r: config.r,
                alpha: config.lora_alpha,
                dropout: config.lora_dropout,
                target_modules: config.target_modules,
            },
            modules,
            dropout: Mutex::new(None),
        })
    }
}
