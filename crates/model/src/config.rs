//! `ModelConfig`: the architecture hyper-parameters of a causal language model, read from a Hugging
//! Face `config.json` or built in code (the GGUF loader builds one from GGUF metadata).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The model families this runtime implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// `Qwen2ForCausalLM`: q/k/v projections with bias, o_proj without.
    Qwen2,
    /// `LlamaForCausalLM`: `attention_bias` applies to q/k/v/o (default false).
    Llama,
    /// `Qwen3ForCausalLM`: like Llama plus RMSNorm on each query and key head.
    Qwen3,
}

impl Architecture {
    /// The `architectures` entry of `config.json` for this family.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The family named by a `config.json` `architectures` entry, if supported.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "LlamaForCausalLM" => Some(Architecture::Llama),
            "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
            _ => None,
        }
    }
}

/// Hyper-parameters of a decoder-only transformer, in Hugging Face's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The model family.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Context length: the longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// Rotary embedding base.
    pub rope_theta: f64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// Whether o_proj carries a bias (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Whether the MLP projections carry a bias (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Whether each query/key head is RMS-normalised before rotary (Qwen3).
    pub qk_norm: bool,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids from `config.json`.
    pub eos_token_ids: Vec<u32>,
    /// The dtype the weights were saved in (`torch_dtype`), e.g. `"bfloat16"`.
    pub torch_dtype: Option<String>,
}

impl ModelConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::file(path, format!("cannot read the model config: {e}")))?;
        Self::from_json_str(&text).map_err(|message| ModelError::file(path, message))
    }

    /// Parses and validates the text of a `config.json`; the error says what is wrong.
    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let json: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = json
            .as_object()
            .ok_or_else(|| "expected a JSON object".to_string())?;
        let architectures: Vec<&str> = obj
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let architecture = match architectures.first() {
            None => {
                // Fall back to `model_type` as transformers' AutoModel does.
                match obj.get("model_type").and_then(Value::as_str) {
                    Some("qwen2") => Architecture::Qwen2,
                    Some("llama") => Architecture::Llama,
                    Some("qwen3") => Architecture::Qwen3,
                    other => {
                        return Err(format!(
                            "no `architectures` entry and unsupported `model_type` {other:?}; supported: Qwen2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM"
                        ));
                    }
                }
            }
            Some(name) => Architecture::from_hf_name(name).ok_or_else(|| {
                format!(
                    "unsupported architecture `{name}`; supported: Qwen2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM"
                )
            })?,
        };
        let usize_field = |name: &str| -> Result<Option<usize>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                    format!("field `{name}` must be a non-negative integer, found {v}")
                }),
            }
        };
        let required = |name: &str| -> Result<usize, String> {
            usize_field(name)?.ok_or_else(|| format!("missing required field `{name}`"))
        };
        let f64_field = |name: &str, default: f64| -> Result<f64, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| format!("field `{name}` must be a number, found {v}")),
            }
        };
        let bool_field = |name: &str, default: bool| -> Result<bool, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| format!("field `{name}` must be true or false, found {v}")),
            }
        };
        let token_ids =
            |name: &str| -> Result<Vec<u32>, String> { token_id_list(obj.get(name), name) };

        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(format!(
                "unsupported `hidden_act` `{act}` (only `silu` is implemented)"
            ));
        }
        if let Some(scaling) = obj.get("rope_scaling")
            && !scaling.is_null()
        {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            if kind != "default" {
                return Err(format!(
                    "unsupported `rope_scaling` of type `{kind}` (only plain rotary embeddings are implemented)"
                ));
            }
        }

        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        let default_context = match architecture {
            Architecture::Llama => 2048,
            Architecture::Qwen2 | Architecture::Qwen3 => 32768,
        };
        let attention_bias = bool_field("attention_bias", false)?;
        let head_dim = match usize_field("head_dim")? {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(format!(
                        "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} and no `head_dim` is given"
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: usize_field("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim,
            vocab_size: required("vocab_size")?,
            max_position_embeddings: usize_field("max_position_embeddings")?
                .unwrap_or(default_context),
            rope_theta: f64_field("rope_theta", 10000.0)?,
            rms_norm_eps: f64_field("rms_norm_eps", 1e-6)?,
            tie_word_embeddings: bool_field("tie_word_embeddings", false)?,
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama | Architecture::Qwen3 => attention_bias,
            },
            o_bias: match architecture {
                Architecture::Qwen2 => false,
                Architecture::Llama | Architecture::Qwen3 => attention_bias,
            },
            mlp_bias: match architecture {
                Architecture::Llama => bool_field("mlp_bias", false)?,
                Architecture::Qwen2 | Architecture::Qwen3 => false,
            },
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: token_ids("eos_token_id")?,
            torch_dtype: obj
                .get("torch_dtype")
                .or_else(|| obj.get("dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        config.validate()?;
        Ok(config)
    }

    /// The `config.json` transformers reads for this configuration.
    pub fn to_hf_json(&self) -> Value {
        let mut json = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": match self.architecture {
                Architecture::Qwen2 => "qwen2",
                Architecture::Llama => "llama",
                Architecture::Qwen3 => "qwen3",
            },
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => Value::from(*one),
                many => Value::from(many.to_vec()),
            },
            "torch_dtype": self.torch_dtype.clone().unwrap_or_else(|| "float32".to_string()),
        });
        if self.architecture != Architecture::Qwen2 {
            json["attention_bias"] = Value::Bool(self.qkv_bias);
        }
        if self.architecture == Architecture::Llama {
            json["mlp_bias"] = Value::Bool(self.mlp_bias);
        }
        json
    }

    /// Qwen2.5-0.5B's shape (the benchmark's model): hidden 896, 24 layers, 14 heads / 2 KV
    /// heads, MLP 4864, vocabulary 151936, tied embeddings.
    pub fn qwen2_5_0_5b() -> Self {
        ModelConfig {
            architecture: Architecture::Qwen2,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            head_dim: 64,
            vocab_size: 151_936,
            max_position_embeddings: 32_768,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            bos_token_id: Some(151_643),
            eos_token_ids: vec![151_645, 151_643],
            torch_dtype: Some("float32".to_string()),
        }
    }

    /// Checks that the hyper-parameters are consistent; the error says which ones are not.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }
}

/// Reads a token id field that may be absent, null, an integer or a list of integers.
pub(crate) fn token_id_list(value: Option<&Value>, name: &str) -> Result<Vec<u32>, String> {
    let as_id = |v: &Value| -> Result<u32, String> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("field `{name}` must hold token ids, found {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN2: &str = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":300,
        "max_position_embeddings":512,"rope_theta":1000000.0,"rms_norm_eps":1e-6,
        "tie_word_embeddings":true,"bos_token_id":null,"eos_token_id":5,"torch_dtype":"float32"}"#;

    #[test]
    fn qwen2_config_has_qkv_bias_and_derived_head_dim() {
        let c = ModelConfig::from_json_str(QWEN2).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!(c.head_dim, 16);
        assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
        assert_eq!(c.eos_token_ids, vec![5]);
        assert_eq!(c.bos_token_id, None);
    }

    #[test]
    fn a_config_survives_a_round_trip_through_config_json() {
        for config in [
            ModelConfig::from_json_str(QWEN2).unwrap(),
            ModelConfig::qwen2_5_0_5b(),
        ] {
            let text = config.to_hf_json().to_string();
            assert_eq!(ModelConfig::from_json_str(&text).unwrap(), config);
        }
    }

    #[test]
    fn hidden_size_not_divisible_by_heads_is_an_error() {
        let text = QWEN2.replace("\"num_attention_heads\":4", "\"num_attention_heads\":5");
        let err = ModelConfig::from_json_str(&text).unwrap_err();
        assert!(
            err.contains("not divisible by num_attention_heads 5"),
            "{err}"
        );
    }

    #[test]
    fn unknown_architecture_and_missing_field_are_named() {
        let err = ModelConfig::from_json_str(&QWEN2.replace("Qwen2ForCausalLM", "GPT2LMHeadModel"))
            .unwrap_err();
        assert!(
            err.contains("unsupported architecture `GPT2LMHeadModel`"),
            "{err}"
        );
        let err =
            ModelConfig::from_json_str(&QWEN2.replace("\"vocab_size\":300,", "")).unwrap_err();
        assert_eq!(err, "missing required field `vocab_size`");
    }

    #[test]
    fn llama_attention_bias_defaults_to_false_and_eos_may_be_a_list() {
        let text = QWEN2
            .replace("Qwen2ForCausalLM", "LlamaForCausalLM")
            .replace("\"eos_token_id\":5", "\"eos_token_id\":[5,7]");
        let c = ModelConfig::from_json_str(&text).unwrap();
        assert!(!c.qkv_bias && !c.o_bias);
        assert_eq!(c.eos_token_ids, vec![5, 7]);
    }
}
