//! `LanguageModel`: a loaded model folder bundling weights, tokenizer, chat template and
//! generation defaults behind the calls the CLI, the optimisation loop, the server and trainers use.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::generation::{
    Generation, GenerationDefaults, GenerationSettings, TokenEvent, generate, generate_streaming,
};
use crate::model::{CausalLm, LogitsOutput};
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;

/// A model ready to tokenize, render chats, score and generate.
#[derive(Debug)]
pub struct LanguageModel {
    origin: PathBuf,
    model: CausalLm,
    tokenizer: TextTokenizer,
    chat_template: Option<ChatTemplate>,
    defaults: GenerationDefaults,
}

impl LanguageModel {
    /// Resolves `model` (a folder, a `.gguf` file, or `ORG/NAME` in the Hugging Face cache,
    /// downloaded when allowed; see [`crate::hub::resolve_model`]) and loads it in `dtype` on
    /// `device` (see [`Self::from_path`]).
    pub fn load(model: &str, dtype: DType, device: &Device) -> Result<Self> {
        let path = crate::hub::resolve_model(model)?;
        Self::from_path(&path, dtype, device)
    }

    /// Loads a local model: a Hugging Face folder (with `config.json`), else a `.gguf` file or
    /// a folder holding exactly one.
    pub fn from_path(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if path.is_dir() && path.join("config.json").is_file() {
            return Self::from_folder(path, dtype, device);
        }
        if crate::gguf::find_gguf(path)?.is_some() {
            return crate::gguf::load_language_model(path, dtype, device);
        }
        Self::from_folder(path, dtype, device)
    }

    /// Loads a Hugging Face model folder: `config.json`, `model.safetensors` (or the sharded
    /// index), `tokenizer.json`, `tokenizer_config.json` (chat template) and `generation_config.json`.
    pub fn from_folder(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::file(dir, "not a folder"));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::file(
                &config_path,
                format!(
                    "missing: a model folder needs {}",
                    crate::hub::REQUIRED_FILES
                ),
            ));
        }
        let config = ModelConfig::from_file(&config_path)?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let chat_template = ChatTemplate::from_folder(dir)?;
        let defaults =
            GenerationDefaults::from_file_or_config(&dir.join("generation_config.json"), &config)?;
        let weights = Weights::from_folder(dir)?;
        let model = CausalLm::load(&config, &weights, dtype, device)?;
        Ok(Self::from_parts(
            model,
            tokenizer,
            chat_template,
            defaults,
            dir,
        ))
    }

    /// Assembles a model from parts built elsewhere (e.g. the GGUF loader).
    pub fn from_parts(
        model: CausalLm,
        tokenizer: TextTokenizer,
        chat_template: Option<ChatTemplate>,
        defaults: GenerationDefaults,
        origin: impl Into<PathBuf>,
    ) -> Self {
        LanguageModel {
            origin: origin.into(),
            model,
            tokenizer,
            chat_template,
            defaults,
        }
    }

    /// The folder or file the model was loaded from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The network.
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// The network, mutable (to attach LoRA adapters).
    pub fn model_mut(&mut self) -> &mut CausalLm {
        &mut self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The generation defaults (eos ids, default sampling).
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    /// The model's context length.
    pub fn context_length(&self) -> usize {
        self.config().max_position_embeddings
    }

    /// Renders `messages` with the chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }

    /// The prompt tokens of a conversation: the rendered template (with the generation prompt),
    /// tokenized without adding special tokens, as `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Answers a conversation.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        settings: &GenerationSettings,
    ) -> Result<Generation> {
        let prompt = self.encode_chat(messages)?;
        self.single(self.generate_tokens(&[prompt], settings)?)
    }

    /// Answers several conversations in one batch.
    pub fn chat_batch(
        &self,
        conversations: &[Vec<ChatMessage>],
        settings: &GenerationSettings,
    ) -> Result<Vec<Generation>> {
        let prompts = conversations
            .iter()
            .map(|messages| self.encode_chat(messages))
            .collect::<Result<Vec<_>>>()?;
        self.generate_tokens(&prompts, settings)
    }

    /// Continues raw text (no chat template; the tokenizer's special tokens are added as
    /// `tokenizer(text)` adds them).
    pub fn generate_raw(&self, prompt: &str, settings: &GenerationSettings) -> Result<Generation> {
        let ids = self.tokenizer.encode(prompt, true)?;
        self.single(self.generate_tokens(&[ids], settings)?)
    }

    /// Continues each prompt (token ids) in one left-padded batch.
    pub fn generate_tokens(
        &self,
        prompts: &[Vec<u32>],
        settings: &GenerationSettings,
    ) -> Result<Vec<Generation>> {
        generate(
            &self.model,
            &self.tokenizer,
            &self.defaults,
            prompts,
            settings,
        )
    }

    /// [`Self::generate_tokens`] reporting each new token to `on_token` as it is chosen;
    /// returning `false` from it cancels the rest (see [`generate_streaming`]).
    pub fn generate_tokens_streaming(
        &self,
        prompts: &[Vec<u32>],
        settings: &GenerationSettings,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<Vec<Generation>> {
        generate_streaming(
            &self.model,
            &self.tokenizer,
            &self.defaults,
            prompts,
            settings,
            on_token,
        )
    }

    /// Logits for every position, `[b, s, v]` in the model dtype; `attention_mask` (`[b, s]`,
    /// 1 = token, 0 = left padding) may be `None` when no row is padded.
    pub fn forward_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.model
            .forward(input_ids, attention_mask, None, LogitsOutput::All)
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_ref().ok_or_else(|| {
            ModelError::Invalid(format!(
                "{} has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja); use raw generation",
                self.origin.display()
            ))
        })
    }

    fn single(&self, mut generations: Vec<Generation>) -> Result<Generation> {
        generations
            .pop()
            .ok_or_else(|| ModelError::Invalid("generation returned no sequence".into()))
    }
}

/// Parses a dtype name: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(ModelError::Invalid(format!(
            "unknown dtype `{other}`; expected f32, bf16 or f16"
        ))),
    }
}

/// The best available device: CUDA or Metal when built with that feature and present, else CPU.
pub fn best_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return device;
    }
    #[cfg(feature = "metal")]
    if let Ok(device) = Device::new_metal(0) {
        return device;
    }
    Device::Cpu
}

/// The dtype to run in on `device` when none is asked for: bf16 on GPUs, f32 on CPU (where
/// candle's bf16 matmuls are slow).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}
