//! The model behind `afterburner optimize`: an OpenAI-compatible server (`--endpoint`), or the
//! embedded model (no `--endpoint`; `--model` optional, see [`crate::model_choice`]).

use std::path::Path;
use std::time::Duration;

use afterburner_optimize::trajectory::MANIFEST_FILE;
use afterburner_optimize::{
    ChatClient, ChatModel, ClientConfig, EmbeddedChat, EmbeddedSettings, ResponseCache,
};
use anyhow::{Context as _, Result, bail};

use crate::optimize::OptimizeArgs;

/// Problems optimised at once with the embedded model by default: one, so that no measurement
/// overlaps a generation (the model uses every core).
pub const EMBEDDED_CONCURRENCY: usize = 1;
/// Problems optimised at once against a server by default.
pub const HTTP_CONCURRENCY: usize = 8;

/// The chosen model backend and how the run records it.
pub struct Backend {
    /// Answers the loop's prompts.
    pub model: Box<dyn ChatModel>,
    /// The model's name for the manifest and the report.
    pub model_name: String,
    /// The manifest's endpoint: the base URL, or `embedded:<resolved model path>`.
    pub endpoint: String,
    /// Where answers come from, for the start-up line.
    pub url: String,
    /// Problems optimised at once.
    pub concurrency: usize,
}

/// Builds the backend `args` ask for, replaying from and storing to `cache` when given.
pub fn backend(args: &OptimizeArgs, cache: Option<ResponseCache>) -> Result<Backend> {
    let Some(endpoint) = &args.endpoint else {
        return embedded(args, cache);
    };
    let Some(model) = &args.model else {
        bail!("--endpoint {endpoint} needs --model: the model name the server knows");
    };
    let mut config = ClientConfig::new(endpoint.clone(), model.clone());
    config.api_key = std::env::var(&args.api_key_env)
        .ok()
        .filter(|k| !k.trim().is_empty());
    config.temperature = args.temperature;
    config.max_tokens = (args.max_tokens > 0).then_some(args.max_tokens);
    config.seed = args.seed;
    config.timeout = Duration::from_secs_f64(args.request_timeout);
    config.max_retries = args.retries;
    config.backoff = Duration::from_millis(args.retry_backoff_ms);
    config.concurrency = args.concurrency.unwrap_or(HTTP_CONCURRENCY);
    let client = ChatClient::new(config, cache).context("--endpoint")?;
    Ok(Backend {
        url: client.url().to_string(),
        concurrency: client.config().concurrency,
        model: Box::new(client),
        model_name: model.clone(),
        endpoint: endpoint.clone(),
    })
}

fn embedded(args: &OptimizeArgs, cache: Option<ResponseCache>) -> Result<Backend> {
    let (choice, model) = crate::model_choice::choose_and_load(
        args.model.as_deref(),
        args.dtype.as_deref(),
        args.adapter.as_deref(),
    )
    .context(
        "without --endpoint, optimize runs the embedded model (give --endpoint URL to use \
                 an OpenAI-compatible server instead)",
    )?;
    let max_tokens = if args.max_tokens > 0 {
        args.max_tokens as usize
    } else {
        model.context_length()
    };
    let settings = EmbeddedSettings {
        temperature: args.temperature,
        max_tokens,
        seed: args.seed.unwrap_or(0),
        top_p: None,
        top_k: None,
    };
    let chat = EmbeddedChat::new(model, choice.name.clone(), settings, cache)
        .with_context(|| format!("--model {}", choice.path.display()))?;
    let url = chat.url();
    Ok(Backend {
        model: Box::new(chat),
        model_name: choice.name,
        endpoint: url.clone(),
        url,
        concurrency: args.concurrency.unwrap_or(EMBEDDED_CONCURRENCY),
    })
}

/// Refuses to resume, in `out`, a run made with another kind of backend: an embedded run with
/// a server or another model file, or a server run with the embedded model. (A server run may
/// resume against the same model at another address.)
pub fn check_same_backend(out: &Path, endpoint: &str) -> Result<()> {
    let path = out.join(MANIFEST_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let Ok(old) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(()); // the manifest check says what is wrong with it
    };
    let Some(old) = old.get("endpoint").and_then(|e| e.as_str()) else {
        return Ok(());
    };
    let embedded = |e: &str| e.starts_with("embedded:");
    if (embedded(old) || embedded(endpoint)) && old != endpoint {
        bail!(
            "{} holds a run with endpoint `{old}`, not `{endpoint}`: resume it with the same model \
             backend, or choose another --out folder",
            path.display()
        );
    }
    Ok(())
}
