//! The embedded model runtime: loads Hugging Face model folders (and GGUF files), runs Qwen2- and
//! Llama-family causal language models on candle with differentiable operations only, tokenizes,
//! renders chat templates and generates. It knows nothing of sandboxes, benchmarks or HTTP.
