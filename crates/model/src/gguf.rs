//! GGUF model files (llama.cpp's format, also Ollama's and LM Studio's): hyper-parameters,
//! weights renamed to Hugging Face names (dequantized to f32, or kept quantized), and the
//! tokenizer and chat template stored in the metadata, for `llama` and `qwen2` files.
//!
//! llama.cpp's converter permutes the rows of the Q and K projections of `llama` models (its
//! rotary layout pairs neighbouring dimensions, Hugging Face's pairs the two halves of a head);
//! [`GgufFile`] undoes that permutation on load, exactly as transformers' GGUF loader does, so the
//! weights it returns are the ones of the Hugging Face checkpoint. `qwen2` files are not permuted.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::chat_template::ChatTemplate;
use crate::config::{Architecture, ModelConfig};
use crate::error::ModelError;
use crate::generation::GenerationDefaults;
use crate::language_model::LanguageModel;
use crate::model::CausalLm;
use crate::quantized::BlockFormat;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;

/// An error reading a GGUF file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file cannot be opened or read.
    #[error("{path}: cannot read the GGUF file: {source}")]
    Io {
        /// The GGUF file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The header (magic, metadata, tensor table) is not valid GGUF.
    #[error("{path}: not a valid GGUF file: {reason}")]
    Format {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before the data of a tensor its header lists.
    #[error(
        "{path}: the file is truncated: it is {file_size} bytes long but tensor `{tensor}` needs bytes up to {needed_end} (download it again)"
    )]
    Truncated {
        /// The GGUF file.
        path: PathBuf,
        /// The first tensor (in file order) whose data lies past the end of the file.
        tensor: String,
        /// The offset just past that tensor's data.
        needed_end: u64,
        /// The size of the file.
        file_size: u64,
    },
    /// A tensor is stored in a GGML type this loader cannot read.
    #[error(
        "{path}: tensor `{tensor}` is stored as GGML type {type_id} ({type_name}), which is not supported; supported types: {SUPPORTED_TYPES}"
    )]
    UnsupportedQuantization {
        /// The GGUF file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The GGML type id in the file.
        type_id: u32,
        /// The GGML type's name in llama.cpp.
        type_name: &'static str,
    },
    /// `general.architecture` names a model family this loader does not know.
    #[error("{path}: architecture `{architecture}` is not supported (supported: llama, qwen2)")]
    UnsupportedArchitecture {
        /// The GGUF file.
        path: PathBuf,
        /// The value of `general.architecture`.
        architecture: String,
    },
    /// A metadata entry is missing, has the wrong type, or an impossible value.
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        /// The GGUF file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("{path}: tensor `{tensor}` is missing ({architecture} needs it)")]
    MissingTensor {
        /// The GGUF file.
        path: PathBuf,
        /// The llama.cpp name of the missing tensor.
        tensor: String,
        /// The architecture.
        architecture: GgufArchitecture,
    },
    /// The file holds tensors the architecture does not use (unsupported extensions such as rope
    /// scaling factors, or a different model).
    #[error("{path}: tensors not part of a {architecture} model: {tensors}")]
    UnexpectedTensors {
        /// The GGUF file.
        path: PathBuf,
        /// The architecture.
        architecture: GgufArchitecture,
        /// The unexpected tensor names, comma-separated.
        tensors: String,
    },
    /// A tensor's shape disagrees with the hyper-parameters in the metadata.
    #[error(
        "{path}: tensor `{tensor}` has shape {actual:?}, but the metadata implies {expected:?} ({reason})"
    )]
    TensorShape {
        /// The GGUF file.
        path: PathBuf,
        /// The llama.cpp name of the tensor.
        tensor: String,
        /// Its shape in the file (rows first, as Hugging Face writes it).
        actual: Vec<usize>,
        /// The shape the metadata implies.
        expected: Vec<usize>,
        /// Which hyper-parameters imply it.
        reason: String,
    },
    /// candle failed to build or dequantize a tensor.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        /// The GGUF file.
        path: PathBuf,
        /// The llama.cpp name of the tensor.
        tensor: String,
        /// candle's error message.
        reason: String,
    },
    /// The tokenizer described by the `tokenizer.ggml.*` metadata cannot be built.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl From<GgufError> for ModelError {
    fn from(error: GgufError) -> Self {
        let path = match &error {
            GgufError::Io { path, .. }
            | GgufError::Format { path, .. }
            | GgufError::Truncated { path, .. }
            | GgufError::UnsupportedQuantization { path, .. }
            | GgufError::UnsupportedArchitecture { path, .. }
            | GgufError::Metadata { path, .. }
            | GgufError::MissingTensor { path, .. }
            | GgufError::UnexpectedTensors { path, .. }
            | GgufError::TensorShape { path, .. }
            | GgufError::Tensor { path, .. }
            | GgufError::Tokenizer { path, .. } => path.clone(),
        };
        let message = error.to_string();
        let prefix = format!("{}: ", path.display());
        let message = message
            .strip_prefix(&prefix)
            .unwrap_or(&message)
            .to_string();
        ModelError::File { path, message }
    }
}

/// The GGML types candle can read, as listed in error messages.
const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// The model families a GGUF file can hold that this loader maps to Hugging Face names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArchitecture {
    /// `llama` (Llama, SmolLM2, Mistral...): Q/K rows permuted by llama.cpp, no attention bias.
    Llama,
    /// `qwen2` (Qwen2, Qwen2.5, Qwen2.5-Coder): Q/K/V biases, rows not permuted.
    Qwen2,
}

impl GgufArchitecture {
    /// The value of `general.architecture` for this family (also the metadata key prefix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// The Hugging Face `architectures` entry of the same model.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// Whether llama.cpp's converter permuted the Q/K projection rows of this family.
    pub fn rotary_rows_permuted(self) -> bool {
        matches!(self, Self::Llama)
    }
}

impl fmt::Display for GgufArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hyper-parameters of a GGUF model, under Hugging Face `config.json` names.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHyperParams {
    /// The model family.
    pub architecture: GgufArchitecture,
    /// `{arch}.embedding_length`.
    pub hidden_size: usize,
    /// `{arch}.block_count`.
    pub num_hidden_layers: usize,
    /// `{arch}.feed_forward_length`.
    pub intermediate_size: usize,
    /// `{arch}.attention.head_count`.
    pub num_attention_heads: usize,
    /// `{arch}.attention.head_count_kv` (defaults to the head count, as in llama.cpp).
    pub num_key_value_heads: usize,
    /// `{arch}.attention.key_length`, else hidden size / heads.
    pub head_dim: usize,
    /// `{arch}.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f64,
    /// `{arch}.rope.freq_base` (defaults to 10000, as in llama.cpp and transformers).
    pub rope_theta: f64,
    /// `{arch}.context_length`.
    pub max_position_embeddings: usize,
    /// The length of `tokenizer.ggml.tokens` (equal to the embedding's rows).
    pub vocab_size: usize,
    /// True when the file has no `output.weight` (the LM head is the token embedding).
    pub tie_word_embeddings: bool,
    /// True when the attention projections Q/K/V carry biases (Qwen2).
    pub attention_bias: bool,
}

impl GgufHyperParams {
    /// The runtime's [`ModelConfig`] for these hyper-parameters (no o_proj or MLP biases, no q/k
    /// norms: neither family has them), with the given special token ids.
    pub fn to_model_config(
        &self,
        bos_token_id: Option<u32>,
        eos_token_ids: Vec<u32>,
    ) -> ModelConfig {
        ModelConfig {
            architecture: match self.architecture {
                GgufArchitecture::Llama => Architecture::Llama,
                GgufArchitecture::Qwen2 => Architecture::Qwen2,
            },
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: self.attention_bias,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            bos_token_id,
            eos_token_ids,
            torch_dtype: Some("float32".to_string()),
        }
    }
}

/// The tokenizer described by a GGUF file's metadata, with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The byte-level BPE tokenizer, giving the ids transformers gives for the same file.
    pub tokenizer: Tokenizer,
    /// `tokenizer.chat_template`, when present.
    pub chat_template: Option<String>,
    /// The token of `tokenizer.ggml.bos_token_id`.
    pub bos_token: Option<SpecialToken>,
    /// The token of `tokenizer.ggml.eos_token_id`.
    pub eos_token: Option<SpecialToken>,
    /// The token of `tokenizer.ggml.padding_token_id`.
    pub pad_token: Option<SpecialToken>,
    /// The token of `tokenizer.ggml.unknown_token_id`.
    pub unk_token: Option<SpecialToken>,
    /// `tokenizer.ggml.add_bos_token` (false when absent): the tokenizer prepends the BOS token.
    pub add_bos_token: bool,
    /// `tokenizer.ggml.add_eos_token` (false when absent): the tokenizer appends the EOS token.
    pub add_eos_token: bool,
}

/// A special token named by the GGUF metadata: its id and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// The token id.
    pub id: u32,
    /// The token's text as the vocabulary spells it (e.g. `<|im_end|>`).
    pub content: String,
}

/// The GGML type id and llama.cpp name of every tensor type, for error messages.
fn ggml_type_name(type_id: u32) -> &'static str {
    match type_id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2 (removed from llama.cpp)",
        5 => "Q4_3 (removed from llama.cpp)",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown type",
    }
}

/// Whether candle reads tensors of this GGML type id.
fn ggml_type_supported(type_id: u32) -> bool {
    matches!(type_id, 0..=3 | 6..=15 | 30)
}

/// One tensor the architecture uses: its llama.cpp name, Hugging Face name and expected shape.
struct TensorSpec {
    gguf_name: String,
    hf_name: String,
    shape: Vec<usize>,
    reason: &'static str,
    /// The number of heads whose rotary rows llama.cpp permuted (Q: heads, K: KV heads).
    permuted_heads: Option<usize>,
    required: bool,
}

/// An opened GGUF file: its header (metadata and tensor table), validated hyper-parameters and
/// tensor shapes. Tensor data is read only by [`GgufFile::load_weights`] and
/// [`GgufFile::load_quantized_weights`].
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    hyper_params: GgufHyperParams,
}

impl GgufFile {
    /// Opens `path`, reads the header and checks it: a supported architecture and tensor types,
    /// hyper-parameters that agree with every tensor's shape, and a file long enough to hold
    /// every tensor.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io_error = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(&path).map_err(io_error)?);
        let file_size = reader.seek(SeekFrom::End(0)).map_err(io_error)?;
        reader.seek(SeekFrom::Start(0)).map_err(io_error)?;
        let content = match Content::read(&mut reader) {
            Ok(content) => content,
            Err(error) => {
                // candle's message names neither the file nor, for an unknown tensor type, the
                // tensor: read the tensor table ourselves to say which tensor it is.
                reader.seek(SeekFrom::Start(0)).map_err(io_error)?;
                if let Ok(Some((tensor, type_id))) = first_unsupported_tensor(&mut reader) {
                    return Err(GgufError::UnsupportedQuantization {
                        path,
                        tensor,
                        type_id,
                        type_name: ggml_type_name(type_id),
                    });
                }
                let reason = if error.to_string().contains("remaining") {
                    format!("{error} (the file is probably truncated)")
                } else {
                    error.to_string()
                };
                return Err(GgufError::Format { path, reason });
            }
        };
        check_not_truncated(&path, &content, file_size)?;
        let hyper_params = read_hyper_params(&path, &content)?;
        let file = Self {
            path,
            content,
            hyper_params,
        };
        file.check_tensors()?;
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated hyper-parameters.
    pub fn hyper_params(&self) -> &GgufHyperParams {
        &self.hyper_params
    }

    /// The raw metadata (every key of the file).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The GGML type of a tensor, by llama.cpp name (`blk.0.attn_q.weight`).
    pub fn tensor_type(&self, gguf_name: &str) -> Option<GgmlDType> {
        self.content
            .tensor_infos
            .get(gguf_name)
            .map(|info| info.ggml_dtype)
    }

    /// Every weight dequantized to f32 on `device`, under Hugging Face names
    /// (`model.layers.0.self_attn.q_proj.weight`...), Q/K rows un-permuted for `llama`.
    /// Tied models have no `lm_head.weight` entry.
    pub fn load_weights(&self, device: &Device) -> Result<HashMap<String, Tensor>, GgufError> {
        self.dequantize_all(&self.load_quantized_weights(&Device::Cpu)?, device)
    }

    /// `quantized` dequantized to f32 on `device`.
    fn dequantize_all(
        &self,
        quantized: &HashMap<String, QTensor>,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, GgufError> {
        let mut weights = HashMap::with_capacity(quantized.len());
        for (hf_name, qtensor) in quantized {
            let tensor = qtensor
                .dequantize(device)
                .map_err(|source| self.tensor_error(hf_name, source))?;
            weights.insert(hf_name.clone(), tensor);
        }
        Ok(weights)
    }

    /// Every weight as stored (quantized or not) on `device`, under Hugging Face names, Q/K rows
    /// un-permuted for `llama` (rows are moved as whole quantization blocks: nothing is
    /// re-quantized). [`GgufFile::load_language_model_quantized`] keeps the Q4_0/Q4_1/Q8_0
    /// projections of these as [`crate::quantized::QuantizedMatrix`].
    pub fn load_quantized_weights(
        &self,
        device: &Device,
    ) -> Result<HashMap<String, QTensor>, GgufError> {
        let io_error = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(&self.path).map_err(io_error)?);
        let mut weights = HashMap::new();
        for spec in self.tensor_specs() {
            let Some(info) = self.content.tensor_infos.get(&spec.gguf_name) else {
                continue; // optional and absent; required ones were checked in `open`
            };
            let dtype = info.ggml_dtype;
            let size = tensor_bytes(info.shape.dims(), dtype);
            let mut raw = vec![0u8; size];
            reader
                .seek(SeekFrom::Start(
                    self.content.tensor_data_offset + info.offset,
                ))
                .map_err(io_error)?;
            reader.read_exact(&mut raw).map_err(io_error)?;
            if let Some(heads) = spec.permuted_heads {
                raw = unpermute_rotary_rows_raw(&raw, info.shape.dims(), dtype, heads)
                    .map_err(|source| self.tensor_error(&spec.gguf_name, source))?;
            }
            let qtensor = qtensor_from_ggml(dtype, &raw, info.shape.dims().to_vec(), device)
                .map_err(|source| self.tensor_error(&spec.gguf_name, source))?;
            weights.insert(spec.hf_name, qtensor);
        }
        Ok(weights)
    }

    /// The tokenizer described by the `tokenizer.ggml.*` metadata (byte-level BPE, `gpt2`), with
    /// control tokens as special added tokens and the chat template.
    pub fn tokenizer(&self) -> Result<GgufTokenizer, GgufError> {
        build_tokenizer(&self.path, &self.content.metadata)
    }

    /// The runtime's [`ModelConfig`]: the hyper-parameters plus `tokenizer.ggml.bos_token_id` and
    /// `tokenizer.ggml.eos_token_id`, as transformers builds the config from the same file.
    pub fn model_config(&self) -> Result<ModelConfig, GgufError> {
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            let Some(value) = self.content.metadata.get(key) else {
                return Ok(None);
            };
            let id = metadata_usize(&self.path, key, value)?;
            if id >= self.hyper_params.vocab_size {
                return Err(GgufError::Metadata {
                    path: self.path.clone(),
                    key: key.to_string(),
                    reason: format!(
                        "token id {id} is outside the {}-token vocabulary",
                        self.hyper_params.vocab_size
                    ),
                });
            }
            Ok(u32::try_from(id).ok())
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        Ok(self
            .hyper_params
            .to_model_config(bos, eos.into_iter().collect()))
    }

    /// The whole model, ready to generate: weights dequantized and cast to `dtype` on `device`,
    /// the metadata's tokenizer and chat template, greedy generation defaults stopping at the
    /// file's EOS token and padding with its padding token.
    pub fn load_language_model(
        &self,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<LanguageModel> {
        self.load_language_model_as(dtype, device, false)
    }

    /// The whole model on the CPU with the projections stored as Q4_0, Q4_1 or Q8_0 kept in
    /// those blocks (about 6x less weight memory than f32 for Q4 files; see BENCHMARKS.md for
    /// speed) and everything else (embedding, norms, other block types) in f32. Inference only:
    /// the f32 model of [`GgufFile::load_language_model`] is the reference for parity and training.
    pub fn load_language_model_quantized(&self) -> crate::Result<LanguageModel> {
        self.load_language_model_as(DType::F32, &Device::Cpu, true)
    }

    fn load_language_model_as(
        &self,
        dtype: DType,
        device: &Device,
        keep_quantized: bool,
    ) -> crate::Result<LanguageModel> {
        let config = self.model_config()?;
        config
            .validate()
            .map_err(|message| ModelError::file(&self.path, message))?;
        let tokenizer = self.tokenizer()?;
        let chat_template = match &tokenizer.chat_template {
            Some(source) => Some(
                ChatTemplate::new(
                    source,
                    tokenizer.bos_token.as_ref().map(|t| t.content.clone()),
                    tokenizer.eos_token.as_ref().map(|t| t.content.clone()),
                )
                .map_err(|e| {
                    ModelError::file(&self.path, format!("tokenizer.chat_template: {e}"))
                })?,
            ),
            None => None,
        };
        let mut defaults = GenerationDefaults::from_config(&config);
        defaults.pad_token_id = tokenizer.pad_token.as_ref().map(|t| t.id);
        let mut quantized = self.load_quantized_weights(&Device::Cpu)?;
        // Projections in a block format the CPU kernels multiply stay quantized: the dense
        // model is built with a zero-byte broadcast placeholder in their place, replaced below,
        // so the f32 copy of the whole model never exists. The embedding is looked up by row
        // and stays f32.
        let mut kept: HashMap<String, QTensor> = if keep_quantized {
            quantized
                .extract_if(|name, q| {
                    name != "model.embed_tokens.weight"
                        && q.shape().rank() == 2
                        && BlockFormat::of(q.dtype()).is_some()
                })
                .collect()
        } else {
            HashMap::new()
        };
        let mut dense = self.dequantize_all(&quantized, device)?;
        // A tied LM head multiplies the embedding's blocks: move them over (the dense
        // embedding was just made from them, for the row lookups).
        if keep_quantized
            && config.tie_word_embeddings
            && let Some(q) = quantized.remove("model.embed_tokens.weight")
            && BlockFormat::of(q.dtype()).is_some()
        {
            kept.insert("model.embed_tokens.weight".to_string(), q);
        }
        drop(quantized);
        for (name, q) in &kept {
            if !dense.contains_key(name) {
                let placeholder = Tensor::zeros((), DType::F32, &Device::Cpu)
                    .and_then(|zero| zero.broadcast_as(q.shape().dims()))
                    .map_err(|e| self.tensor_error(name, e))?;
                dense.insert(name.clone(), placeholder);
            }
        }
        let weights = Weights::from_tensors(dense, &self.path);
        let mut model = CausalLm::load(&config, &weights, dtype, device)?;
        drop(weights);
        if keep_quantized {
            let replaced = model
                .use_quantized_weights(&kept)
                .map_err(|e| ModelError::file(&self.path, e.to_string()))?;
            if replaced != kept.len() {
                return Err(ModelError::file(
                    &self.path,
                    format!(
                        "{} quantized projections were read but {replaced} taken by the model",
                        kept.len()
                    ),
                ));
            }
        }
        drop(kept);
        let text_tokenizer = TextTokenizer::from_tokenizer(tokenizer.tokenizer, &self.path);
        Ok(LanguageModel::from_parts(
            model,
            text_tokenizer,
            chat_template,
            defaults,
            &self.path,
        ))
    }

    fn tensor_error(&self, tensor: &str, source: candle_core::Error) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            reason: source.to_string(),
        }
    }

    /// The tensors of the architecture, with their expected shapes.
    fn tensor_specs(&self) -> Vec<TensorSpec> {
        let p = &self.hyper_params;
        let (hidden, inter, vocab) = (p.hidden_size, p.intermediate_size, p.vocab_size);
        let q_rows = p.num_attention_heads * p.head_dim;
        let kv_rows = p.num_key_value_heads * p.head_dim;
        let permuted = p.architecture.rotary_rows_permuted();
        let spec =
            |gguf: String, hf: String, shape: Vec<usize>, reason, heads, required| TensorSpec {
                gguf_name: gguf,
                hf_name: hf,
                shape,
                reason,
                permuted_heads: if permuted { heads } else { None },
                required,
            };
        let mut specs = vec![
            spec(
                "token_embd.weight".into(),
                "model.embed_tokens.weight".into(),
                vec![vocab, hidden],
                "vocabulary size x embedding_length",
                None,
                true,
            ),
            spec(
                "output_norm.weight".into(),
                "model.norm.weight".into(),
                vec![hidden],
                "embedding_length",
                None,
                true,
            ),
        ];
        if !p.tie_word_embeddings {
            specs.push(spec(
                "output.weight".into(),
                "lm_head.weight".into(),
                vec![vocab, hidden],
                "vocabulary size x embedding_length",
                None,
                true,
            ));
        }
        let bias = p.attention_bias;
        for layer in 0..p.num_hidden_layers {
            let g = |name: &str| format!("blk.{layer}.{name}");
            let h = |name: &str| format!("model.layers.{layer}.{name}");
            let heads = Some(p.num_attention_heads);
            let kv_heads = Some(p.num_key_value_heads);
            specs.extend([
                spec(
                    g("attn_norm.weight"),
                    h("input_layernorm.weight"),
                    vec![hidden],
                    "embedding_length",
                    None,
                    true,
                ),
                spec(
                    g("ffn_norm.weight"),
                    h("post_attention_layernorm.weight"),
                    vec![hidden],
                    "embedding_length",
                    None,
                    true,
                ),
                spec(
                    g("attn_q.weight"),
                    h("self_attn.q_proj.weight"),
                    vec![q_rows, hidden],
                    "head_count * head dim x embedding_length",
                    heads,
                    true,
                ),
                spec(
                    g("attn_k.weight"),
                    h("self_attn.k_proj.weight"),
                    vec![kv_rows, hidden],
                    "head_count_kv * head dim x embedding_length",
                    kv_heads,
                    true,
                ),
                spec(
                    g("attn_v.weight"),
                    h("self_attn.v_proj.weight"),
                    vec![kv_rows, hidden],
                    "head_count_kv * head dim x embedding_length",
                    None,
                    true,
                ),
                spec(
                    g("attn_output.weight"),
                    h("self_attn.o_proj.weight"),
                    vec![hidden, q_rows],
                    "embedding_length x head_count * head dim",
                    None,
                    true,
                ),
                spec(
                    g("attn_q.bias"),
                    h("self_attn.q_proj.bias"),
                    vec![q_rows],
                    "head_count * head dim",
                    heads,
                    bias,
                ),
                spec(
                    g("attn_k.bias"),
                    h("self_attn.k_proj.bias"),
                    vec![kv_rows],
                    "head_count_kv * head dim",
                    kv_heads,
                    bias,
                ),
                spec(
                    g("attn_v.bias"),
                    h("self_attn.v_proj.bias"),
                    vec![kv_rows],
                    "head_count_kv * head dim",
                    None,
                    bias,
                ),
                spec(
                    g("ffn_gate.weight"),
                    h("mlp.gate_proj.weight"),
                    vec![inter, hidden],
                    "feed_forward_length x embedding_length",
                    None,
                    true,
                ),
                spec(
                    g("ffn_up.weight"),
                    h("mlp.up_proj.weight"),
                    vec![inter, hidden],
                    "feed_forward_length x embedding_length",
                    None,
                    true,
                ),
                spec(
                    g("ffn_down.weight"),
                    h("mlp.down_proj.weight"),
                    vec![hidden, inter],
                    "embedding_length x feed_forward_length",
                    None,
                    true,
                ),
            ]);
        }
        specs
    }

    /// Every required tensor present with the expected shape; no tensor the model would ignore.
    fn check_tensors(&self) -> Result<(), GgufError> {
        let specs = self.tensor_specs();
        for spec in &specs {
            let Some(info) = self.content.tensor_infos.get(&spec.gguf_name) else {
                if spec.required {
                    return Err(GgufError::MissingTensor {
                        path: self.path.clone(),
                        tensor: spec.gguf_name.clone(),
                        architecture: self.hyper_params.architecture,
                    });
                }
                continue;
            };
            if info.shape.dims() != spec.shape.as_slice() {
                return Err(GgufError::TensorShape {
                    path: self.path.clone(),
                    tensor: spec.gguf_name.clone(),
                    actual: info.shape.dims().to_vec(),
                    expected: spec.shape.clone(),
                    reason: spec.reason.to_string(),
                });
            }
        }
        let known: std::collections::HashSet<&str> =
            specs.iter().map(|spec| spec.gguf_name.as_str()).collect();
        let mut unexpected: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(String::as_str)
            .filter(|name| !known.contains(name))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            return Err(GgufError::UnexpectedTensors {
                path: self.path.clone(),
                architecture: self.hyper_params.architecture,
                tensors: unexpected.join(", "),
            });
        }
        Ok(())
    }
}

/// The size in bytes of a tensor's data of this shape and type.
fn tensor_bytes(dims: &[usize], dtype: GgmlDType) -> usize {
    dims.iter().product::<usize>() / dtype.block_size() * dtype.type_size()
}

/// Fails when any tensor's data lies past the end of the file.
fn check_not_truncated(path: &Path, content: &Content, file_size: u64) -> Result<(), GgufError> {
    let mut infos: Vec<(&String, u64)> = content
        .tensor_infos
        .iter()
        .map(|(name, info)| (name, info.offset))
        .collect();
    infos.sort_by_key(|(_, offset)| *offset);
    for (name, _) in infos {
        let info = &content.tensor_infos[name];
        let dims = info.shape.dims();
        // A quantized row must hold whole blocks (ggml's rule), or the size is meaningless.
        let row = dims.last().copied().unwrap_or(1);
        if !row.is_multiple_of(info.ggml_dtype.block_size()) {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{name}` has rows of {row} elements, not a multiple of the {:?} block size {}",
                    info.ggml_dtype,
                    info.ggml_dtype.block_size()
                ),
            });
        }
        let end =
            content.tensor_data_offset + info.offset + tensor_bytes(dims, info.ggml_dtype) as u64;
        if end > file_size {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                tensor: name.clone(),
                needed_end: end,
                file_size,
            });
        }
    }
    Ok(())
}

/// Reads the GGUF header's tensor table and returns the first tensor whose GGML type candle does
/// not support (used only to explain a failed `Content::read`).
fn first_unsupported_tensor<R: Read>(reader: &mut R) -> std::io::Result<Option<(String, u32)>> {
    fn u32_of<R: Read>(r: &mut R) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64_of<R: Read>(r: &mut R) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn len_of<R: Read>(r: &mut R, v1: bool) -> std::io::Result<u64> {
        if v1 {
            u32_of(r).map(u64::from)
        } else {
            u64_of(r)
        }
    }
    fn skip<R: Read>(r: &mut R, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
        if copied == n {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }
    fn skip_value<R: Read>(r: &mut R, value_type: u32, v1: bool) -> std::io::Result<()> {
        match value_type {
            0 | 1 | 7 => skip(r, 1),
            2 | 3 => skip(r, 2),
            4..=6 => skip(r, 4),
            10..=12 => skip(r, 8),
            8 => {
                let len = len_of(r, v1)?;
                skip(r, len)
            }
            9 => {
                let element_type = u32_of(r)?;
                let count = len_of(r, v1)?;
                for _ in 0..count {
                    skip_value(r, element_type, v1)?;
                }
                Ok(())
            }
            _ => Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
    if u32_of(reader)? != 0x4655_4747 {
        return Ok(None);
    }
    let v1 = u32_of(reader)? == 1;
    let tensor_count = len_of(reader, v1)?;
    let kv_count = len_of(reader, v1)?;
    for _ in 0..kv_count {
        let key_len = len_of(reader, v1)?;
        skip(reader, key_len)?;
        let value_type = u32_of(reader)?;
        skip_value(reader, value_type, v1)?;
    }
    for _ in 0..tensor_count {
        let name_len = len_of(reader, v1)?;
        if name_len > 1 << 16 {
            return Ok(None); // not a plausible tensor name: leave the diagnosis to candle
        }
        let mut name = vec![0u8; name_len as usize];
        reader.read_exact(&mut name)?;
        let n_dims = u32_of(reader)?;
        skip(reader, u64::from(n_dims) * if v1 { 4 } else { 8 })?;
        let type_id = u32_of(reader)?;
        let _offset = u64_of(reader)?;
        if !ggml_type_supported(type_id) {
            return Ok(Some((String::from_utf8_lossy(&name).into_owned(), type_id)));
        }
    }
    Ok(None)
}

/// Undoes llama.cpp's rotary permutation of the rows of a Q or K projection (weight or bias) of
/// `heads` heads, as transformers' `_reverse_permute_weights` does: rows viewed as
/// `(heads, head_dim / 2, 2, ...)` become `(heads, 2, head_dim / 2, ...)`.
pub fn unpermute_rotary_rows(tensor: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        candle_core::bail!("cannot un-permute {rows} rows for {heads} rotary heads");
    }
    let mut grouped = vec![heads, rows / heads / 2, 2];
    grouped.extend_from_slice(&dims[1..]);
    tensor
        .reshape(grouped)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// [`unpermute_rotary_rows`] on a tensor's raw GGML data (rows are whole quantization blocks).
fn unpermute_rotary_rows_raw(
    raw: &[u8],
    dims: &[usize],
    dtype: GgmlDType,
    heads: usize,
) -> candle_core::Result<Vec<u8>> {
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        candle_core::bail!("cannot un-permute {rows} rows for {heads} rotary heads");
    }
    let row_elements: usize = dims[1..].iter().product();
    if !row_elements.is_multiple_of(dtype.block_size()) {
        candle_core::bail!(
            "rows of {row_elements} elements are not whole {dtype:?} blocks, cannot un-permute"
        );
    }
    let row_bytes = row_elements / dtype.block_size() * dtype.type_size();
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(raw.len());
    // New row (head, t, i) is old row (head, i, t).
    for head in 0..heads {
        for t in 0..2 {
            for i in 0..half {
                let old = head * 2 * half + i * 2 + t;
                out.extend_from_slice(&raw[old * row_bytes..(old + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// A metadata value, or an error naming the key.
fn metadata<'a>(path: &Path, content: &'a Content, key: &str) -> Result<&'a Value, GgufError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: "missing".to_string(),
        })
}

/// An unsigned integer metadata value (any width).
fn metadata_usize(path: &Path, key: &str, value: &Value) -> Result<usize, GgufError> {
    let number = match value {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    };
    number
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: format!("expected a non-negative integer, found {value:?}"),
        })
}

/// A floating-point metadata value.
fn metadata_f64(path: &Path, key: &str, value: &Value) -> Result<f64, GgufError> {
    match value {
        Value::F32(v) => Ok(f64::from(*v)),
        Value::F64(v) => Ok(*v),
        other => Err(GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: format!("expected a floating-point number, found {other:?}"),
        }),
    }
}

/// A string metadata value.
fn metadata_str<'a>(path: &Path, key: &str, value: &'a Value) -> Result<&'a str, GgufError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: format!("expected a string, found {other:?}"),
        }),
    }
}

/// Reads and checks the hyper-parameters of a `llama` or `qwen2` file.
fn read_hyper_params(path: &Path, content: &Content) -> Result<GgufHyperParams, GgufError> {
    let arch_name = metadata_str(
        path,
        "general.architecture",
        metadata(path, content, "general.architecture")?,
    )?;
    let architecture = match arch_name {
        "llama" => GgufArchitecture::Llama,
        "qwen2" => GgufArchitecture::Qwen2,
        other => {
            return Err(GgufError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture: other.to_string(),
            });
        }
    };
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    let required_usize = |suffix: &str| -> Result<usize, GgufError> {
        let key = key(suffix);
        metadata_usize(path, &key, metadata(path, content, &key)?)
    };
    let optional = |suffix: &str| -> Option<(String, &Value)> {
        let key = key(suffix);
        content.metadata.get(&key).map(|value| (key, value))
    };
    let bad = |suffix: &str, reason: String| GgufError::Metadata {
        path: path.to_path_buf(),
        key: key(suffix),
        reason,
    };

    let hidden_size = required_usize("embedding_length")?;
    let num_hidden_layers = required_usize("block_count")?;
    let intermediate_size = required_usize("feed_forward_length")?;
    let num_attention_heads = required_usize("attention.head_count")?;
    let num_key_value_heads = match optional("attention.head_count_kv") {
        Some((key, value)) => metadata_usize(path, &key, value)?,
        None => num_attention_heads,
    };
    let max_position_embeddings = required_usize("context_length")?;
    let eps_key = key("attention.layer_norm_rms_epsilon");
    let rms_norm_eps = metadata_f64(path, &eps_key, metadata(path, content, &eps_key)?)?;
    let rope_theta = match optional("rope.freq_base") {
        Some((key, value)) => metadata_f64(path, &key, value)?,
        None => 10_000.0,
    };
    for (suffix, value) in [
        ("embedding_length", hidden_size),
        ("block_count", num_hidden_layers),
        ("feed_forward_length", intermediate_size),
        ("attention.head_count", num_attention_heads),
        ("attention.head_count_kv", num_key_value_heads),
        ("context_length", max_position_embeddings),
    ] {
        if value == 0 {
            return Err(bad(suffix, "must be at least 1, found 0".to_string()));
        }
    }
    if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
        return Err(GgufError::Metadata {
            path: path.to_path_buf(),
            key: eps_key,
            reason: format!("must be a positive number, found {rms_norm_eps}"),
        });
    }
    if !(rope_theta > 0.0 && rope_theta.is_finite()) {
        return Err(bad(
            "rope.freq_base",
            format!("must be a positive number, found {rope_theta}"),
        ));
    }
    let head_dim = match optional("attention.key_length") {
        Some((key, value)) => metadata_usize(path, &key, value)?,
        None => {
            if !hidden_size.is_multiple_of(num_attention_heads) {
                return Err(bad(
                    "attention.head_count",
                    format!(
                        "{num_attention_heads} heads do not divide embedding_length {hidden_size}"
                    ),
                ));
            }
            hidden_size / num_attention_heads
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(bad(
            "attention.key_length",
            format!(
                "the head dimension must be even and positive for rotary embeddings, found {head_dim}"
            ),
        ));
    }
    if let Some((key, value)) = optional("attention.value_length")
        && metadata_usize(path, &key, value)? != head_dim
    {
        return Err(bad(
            "attention.value_length",
            format!("must equal the key head dimension {head_dim}"),
        ));
    }
    if !num_attention_heads.is_multiple_of(num_key_value_heads) {
        return Err(bad(
            "attention.head_count_kv",
            format!(
                "{num_key_value_heads} key/value heads do not divide the {num_attention_heads} attention heads"
            ),
        ));
    }
    if let Some((key, value)) = optional("rope.dimension_count") {
        let rotary = metadata_usize(path, &key, value)?;
        if rotary != head_dim {
            return Err(bad(
                "rope.dimension_count",
                format!(
                    "partial rotary embeddings ({rotary} of {head_dim} dimensions) are not supported"
                ),
            ));
        }
    }
    if let Some((key, value)) = optional("rope.scaling.type") {
        let scaling = metadata_str(path, &key, value)?;
        if scaling != "none" {
            return Err(bad(
                "rope.scaling.type",
                format!("rope scaling `{scaling}` is not supported"),
            ));
        }
    }
    let tokens_key = "tokenizer.ggml.tokens";
    let vocab_size = match metadata(path, content, tokens_key)? {
        Value::Array(tokens) => tokens.len(),
        other => {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: tokens_key.to_string(),
                reason: format!(
                    "expected an array of strings, found {:?}",
                    other.value_type()
                ),
            });
        }
    };
    if let Some((key, value)) = optional("vocab_size") {
        let declared = metadata_usize(path, &key, value)?;
        if declared != vocab_size {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key,
                reason: format!(
                    "says {declared}, but tokenizer.ggml.tokens has {vocab_size} tokens"
                ),
            });
        }
    }
    let tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    let attention_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    Ok(GgufHyperParams {
        architecture,
        hidden_size,
        num_hidden_layers,
        intermediate_size,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        max_position_embeddings,
        vocab_size,
        tie_word_embeddings,
        attention_bias,
    })
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): the alphabet byte-level BPE
/// vocabularies are spelled in.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(byte)] = if printable {
            char::from(byte)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}

/// The split regex for a `tokenizer.ggml.pre` value, as transformers' GGUF tokenizer maps it
/// (`None`: GPT-2's own byte-level regex).
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "tekken" => Some(TEKKEN),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2),
        "qwen35" => Some(QWEN35),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => Some(GPT4O),
        _ => None,
    }
}

/// A string-array metadata value.
fn metadata_strings<'a>(
    path: &Path,
    key: &str,
    value: &'a Value,
) -> Result<Vec<&'a str>, GgufError> {
    let bad = |reason: String| GgufError::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let Value::Array(items) = value else {
        return Err(bad(format!(
            "expected an array of strings, found {:?}",
            value.value_type()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(s) => Ok(s.as_str()),
            other => Err(bad(format!(
                "element {index} is {:?}, expected a string",
                other.value_type()
            ))),
        })
        .collect()
}

/// Builds the tokenizer of a `gpt2` (byte-level BPE) GGUF file the way transformers'
/// `GGUFGPTConverter`/`byte_level_tokenizer` does.
fn build_tokenizer(
    path: &Path,
    metadata: &HashMap<String, Value>,
) -> Result<GgufTokenizer, GgufError> {
    let err = |reason: String| GgufError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let get = |key: &str| {
        metadata.get(key).ok_or_else(|| GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: "missing".to_string(),
        })
    };
    let model_key = "tokenizer.ggml.model";
    let model = metadata_str(path, model_key, get(model_key)?)?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model `{model}` is not supported (only `gpt2`, byte-level BPE)"
        )));
    }
    let tokens = metadata_strings(path, "tokenizer.ggml.tokens", get("tokenizer.ggml.tokens")?)?;
    let merges = metadata_strings(path, "tokenizer.ggml.merges", get("tokenizer.ggml.merges")?)?;
    let token_types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::I32(v) => Ok(i64::from(*v)),
                Value::U32(v) => Ok(i64::from(*v)),
                Value::I8(v) => Ok(i64::from(*v)),
                Value::U8(v) => Ok(i64::from(*v)),
                other => Err(GgufError::Metadata {
                    path: path.to_path_buf(),
                    key: "tokenizer.ggml.token_type".to_string(),
                    reason: format!("expected integers, found {:?}", other.value_type()),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: "tokenizer.ggml.token_type".to_string(),
                reason: format!("expected an array, found {:?}", other.value_type()),
            });
        }
    };
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(GgufError::Metadata {
            path: path.to_path_buf(),
            key: "tokenizer.ggml.token_type".to_string(),
            reason: format!(
                "has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            ),
        });
    }

    // Tokens spelled outside the byte alphabet are respelled byte by byte, as transformers does.
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |token: &str| token.chars().all(|c| alphabet.contains(&c));
    let mut vocab: ahash::AHashMap<String, u32> = ahash::AHashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            (*token).to_string()
        } else {
            token
                .bytes()
                .map(|b| spelling[usize::from(b)])
                .collect::<String>()
        };
        let id = u32::try_from(id).map_err(|_| err("more than 2^32 tokens".to_string()))?;
        vocab.insert(spelled, id);
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    err(format!(
                        "tokenizer.ggml.merges[{index}] `{merge}` is not two tokens separated by a space"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre_key = "tokenizer.ggml.pre";
    let pre = match metadata.get(pre_key) {
        Some(value) => Some(metadata_str(path, pre_key, value)?),
        None => None,
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre.and_then(pre_tokenizer_split) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(format!("split regex for tokenizer.ggml.pre `{pre:?}`: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens (type 3) spelled in the byte alphabet become special added tokens, user-defined
    // ones (type 4) plain added tokens: both are matched whole in raw text.
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(token, kind)| **kind == 3 && in_alphabet(token))
        .map(|(token, _)| AddedToken::from((*token).to_string(), true))
        .collect();
    tokenizer
        .add_special_tokens(control)
        .map_err(|e| err(format!("cannot add the control tokens: {e}")))?;
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(token, kind)| **kind == 4 && tokenizer.get_vocab(false).contains_key(**token))
        .map(|(token, _)| AddedToken::from((*token).to_string(), false).normalized(false))
        .collect();
    if !user_defined.is_empty() {
        tokenizer
            .add_tokens(user_defined)
            .map_err(|e| err(format!("cannot add the user-defined tokens: {e}")))?;
    }

    let special = |key: &str| -> Result<Option<SpecialToken>, GgufError> {
        let Some(value) = metadata.get(key) else {
            return Ok(None);
        };
        let id = metadata_usize(path, key, value)?;
        let content = tokens.get(id).ok_or_else(|| GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: format!(
                "token id {id} is outside the {}-token vocabulary",
                tokens.len()
            ),
        })?;
        Ok(Some(SpecialToken {
            id: u32::try_from(id).unwrap_or(u32::MAX),
            content: (*content).to_string(),
        }))
    };
    let flag = |key: &str| -> Result<bool, GgufError> {
        match metadata.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason: format!("expected a boolean, found {other:?}"),
            }),
        }
    };
    let bos_token = special("tokenizer.ggml.bos_token_id")?;
    let eos_token = special("tokenizer.ggml.eos_token_id")?;
    let pad_token = special("tokenizer.ggml.padding_token_id")?;
    let unk_token = special("tokenizer.ggml.unknown_token_id")?;
    let add_bos_token = flag("tokenizer.ggml.add_bos_token")?;
    let add_eos_token = flag("tokenizer.ggml.add_eos_token")?;

    // transformers' post-processor: `[bos] $A [eos]`, `[bos] $A [eos] [bos] $B [eos]`.
    let mut single = Vec::new();
    let mut pair_b = Vec::new();
    let mut specials = Vec::new();
    if add_bos_token {
        let bos = bos_token.as_ref().ok_or_else(|| {
            err("tokenizer.ggml.add_bos_token is set but there is no bos_token_id".to_string())
        })?;
        single.push(format!("{}:0", bos.content));
        pair_b.push(format!("{}:1", bos.content));
        specials.push((bos.content.clone(), bos.id));
    }
    single.push("$A:0".to_string());
    pair_b.push("$B:1".to_string());
    if add_eos_token {
        let eos = eos_token.as_ref().ok_or_else(|| {
            err("tokenizer.ggml.add_eos_token is set but there is no eos_token_id".to_string())
        })?;
        single.push(format!("{}:0", eos.content));
        pair_b.push(format!("{}:1", eos.content));
        if !specials.iter().any(|(content, _)| *content == eos.content) {
            specials.push((eos.content.clone(), eos.id));
        }
    }
    let pair = [single.clone(), pair_b].concat();
    let processor = TemplateProcessing::builder()
        .try_single(single.join(" "))
        .and_then(|b| b.try_pair(pair.join(" ")))
        .map_err(|e| err(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| err(format!("post-processor template: {e}")))?;
    tokenizer.with_post_processor(Some(processor));

    let chat_template = match metadata.get("tokenizer.chat_template") {
        Some(value) => Some(metadata_str(path, "tokenizer.chat_template", value)?.to_string()),
        None => None,
    };
    Ok(GgufTokenizer {
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        pad_token,
        unk_token,
        add_bos_token,
        add_eos_token,
    })
}

/// Whether `path` names a GGUF file (by its `.gguf` extension, any case).
pub fn is_gguf_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
}

/// The GGUF file `path` names: `path` itself when it is a `.gguf` file, or the only `.gguf` file
/// of the folder `path` (an error when it holds several, naming them); `None` otherwise.
pub fn find_gguf(path: &Path) -> crate::Result<Option<PathBuf>> {
    if is_gguf_file(path) {
        return Ok(Some(path.to_path_buf()));
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| ModelError::file(path, format!("cannot list the model folder: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_gguf_file(p))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(ModelError::file(
            path,
            format!(
                "holds several GGUF files ({}): name one of them",
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Loads the model of a GGUF file (or of the folder holding exactly one) in `dtype` on `device`:
/// [`GgufFile::open`] then [`GgufFile::load_language_model`].
pub fn load_language_model(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> crate::Result<LanguageModel> {
    open_found(path)?.load_language_model(dtype, device)
}

/// Loads the model of a GGUF file (or of the folder holding exactly one) with its Q4_0, Q4_1
/// and Q8_0 projections kept quantized: [`GgufFile::load_language_model_quantized`].
pub fn load_language_model_quantized(path: &Path) -> crate::Result<LanguageModel> {
    open_found(path)?.load_language_model_quantized()
}

/// [`GgufFile::open`] on the GGUF file `path` names (itself, or the one in that folder).
fn open_found(path: &Path) -> crate::Result<GgufFile> {
    let file = find_gguf(path)?.ok_or_else(|| {
        ModelError::file(path, "is neither a .gguf file nor a folder holding one")
    })?;
    Ok(GgufFile::open(&file)?)
}
