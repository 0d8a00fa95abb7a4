//! Differentiability: a cross-entropy loss backpropagates into every weight through the whole
//! forward pass (no forward-only kernel in the graph), for tied and untied models; LoRA adapters.

use std::path::PathBuf;

use afterburner_model::{
    Architecture, CausalLm, DType, Device, LogitsOutput, LoraAdapter, ModelConfig, Tensor, Weights,
};
use candle_core::{D, Var};
use candle_nn::VarMap;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_trainable(name: &str) -> (CausalLm, VarMap) {
    let dir = fixture(name);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_folder(&dir).unwrap();
    let varmap = VarMap::new();
    let model =
        CausalLm::load_trainable(&config, &weights, DType::F32, &Device::Cpu, &varmap).unwrap();
    (model, varmap)
}

/// Mean cross-entropy of logits[:-1] against ids[1:] (transformers' shifted loss).
fn loss(model: &CausalLm, ids: &[u32]) -> Tensor {
    let n = ids.len();
    let input = Tensor::from_vec(ids.to_vec(), (1, n), &Device::Cpu).unwrap();
    let logits = model
        .forward(&input, None, None, LogitsOutput::All)
        .unwrap(); // [1, n, v]
    let logits = logits.squeeze(0).unwrap().narrow(0, 0, n - 1).unwrap();
    let targets = Tensor::from_vec(ids[1..].to_vec(), n - 1, &Device::Cpu).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let picked = log_probs.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
    picked.mean_all().unwrap().neg().unwrap()
}

fn norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_every_weight_gets_a_gradient(model: &CausalLm, ids: &[u32]) -> (f32, Vec<(String, f32)>) {
    let loss = loss(model, ids);
    let grads = loss.backward().unwrap();
    let mut norms = Vec::new();
    for (name, weight) in model.named_parameters().unwrap() {
        let grad = grads
            .get(&weight)
            .unwrap_or_else(|| panic!("{name} received no gradient"));
        let n = norm(grad);
        assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm {n}");
        norms.push((name, n));
    }
    (loss.to_scalar::<f32>().unwrap(), norms)
}

#[test]
fn loss_backpropagates_into_every_weight_of_the_tied_qwen2_with_transformers_gradients() {
    let (model, varmap) = load_trainable("tiny-qwen2");
    let parity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("parity.json")).unwrap()).unwrap();
    let check = &parity["models"]["tiny-qwen2"]["loss_check"];
    let ids: Vec<u32> = serde_json::from_value(check["input_ids"].clone()).unwrap();
    let (loss, norms) = assert_every_weight_gets_a_gradient(&model, &ids);
    assert_eq!(norms.len(), varmap.all_vars().len());
    let expected_loss = check["loss"].as_f64().unwrap() as f32;
    assert!(
        (loss - expected_loss).abs() < 1e-4,
        "loss {loss} vs transformers {expected_loss}"
    );
    let expected = check["grad_norms"].as_object().unwrap();
    assert_eq!(expected.len(), norms.len());
    for (name, n) in &norms {
        let want = expected[name].as_f64().unwrap() as f32;
        assert!(
            (n - want).abs() <= 1e-3 * want.max(1.0),
            "{name}: gradient norm {n} vs transformers {want}"
        );
    }
}

#[test]
fn loss_backpropagates_into_every_weight_of_the_untied_llama() {
    let (model, _varmap) = load_trainable("tiny-llama");
    assert!(!model.config().tie_word_embeddings);
    let (_, norms) =
        assert_every_weight_gets_a_gradient(&model, &[5, 80, 17, 230, 99, 4, 61, 300, 12]);
    assert!(norms.iter().any(|(n, _)| n == "lm_head.weight"));
}

#[test]
fn a_random_qwen3_model_built_in_code_is_differentiable_and_its_cache_matches_the_full_forward() {
    let config = ModelConfig {
        architecture: Architecture::Qwen3,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        head_dim: 16,
        vocab_size: 50,
        max_position_embeddings: 64,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: true,
        bos_token_id: None,
        eos_token_ids: vec![0],
        torch_dtype: None,
    };
    let varmap = VarMap::new();
    let model = CausalLm::random(&config, 11, DType::F32, &Device::Cpu, &varmap).unwrap();
    let ids = [3u32, 9, 27, 4, 41, 8, 15];
    let (_, norms) = assert_every_weight_gets_a_gradient(&model, &ids);
    assert!(norms.iter().any(|(n, _)| n.ends_with("q_norm.weight")));

    // Prefill 4 tokens, then decode 3 one at a time: the same logits as one full forward.
    let full = model
        .forward(
            &Tensor::new(&[ids], &Device::Cpu).unwrap(),
            None,
            None,
            LogitsOutput::All,
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut cache = model.new_cache(1, 10).unwrap();
    let prefill = Tensor::new(&ids[..4], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut last = model
        .forward(&prefill, None, Some(&mut cache), LogitsOutput::Last)
        .unwrap();
    for (step, &token) in ids[4..].iter().enumerate() {
        let got = last.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let want = &full[3 + step];
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "step {step}: cached logits differ by {diff}");
        last = model
            .forward(
                &Tensor::new(&[[token]], &Device::Cpu).unwrap(),
                None,
                Some(&mut cache),
                LogitsOutput::Last,
            )
            .unwrap();
    }
    assert_eq!(cache.len(), ids.len());
    cache.reset();
    assert!(cache.is_empty());
}

fn logits(model: &CausalLm, ids: &[u32]) -> Vec<f32> {
    model
        .forward(
            &Tensor::new(ids, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
            None,
            LogitsOutput::All,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_zero_lora_adapter_leaves_logits_unchanged_and_a_nonzero_one_changes_them_and_learns() {
    let dir = fixture("tiny-qwen2");
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let mut model = CausalLm::load(
        &config,
        &Weights::from_folder(&dir).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids = [275u32, 69, 313, 62, 79, 81];
    let before = logits(&model, &ids);
    let rank = 4;
    let mut adapters = Vec::new();
    for (name, linear) in model.linears_mut() {
        if !name.ends_with("q_proj") && !name.ends_with("v_proj") {
            continue;
        }
        let (out, inp) = linear.dims().unwrap();
        let a = Var::from_tensor(
            &(Tensor::randn(0f32, 1.0, (rank, inp), &Device::Cpu).unwrap() * 0.1).unwrap(),
        )
        .unwrap();
        let b = Var::zeros((out, rank), DType::F32, &Device::Cpu).unwrap();
        linear.lora = Some(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scaling: 2.0,
            dropout: None,
        });
        adapters.push((name, a, b));
    }
    assert_eq!(adapters.len(), 4, "q_proj and v_proj of both layers");
    assert!(adapters[0].0 == "model.layers.0.self_attn.q_proj");
    // A zero B leaves the logits unchanged, up to rounding: adapters that track gradients send
    // the pass through the fused training kernels, the plain model through candle's composite.
    let worst = logits(&model, &ids)
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "a zero B moved the logits by {worst}");

    let loss_value = loss(&model, &ids);
    let grads = loss_value.backward().unwrap();
    for (name, _, b) in &adapters {
        let g = grads
            .get(b.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for B"));
        assert!(norm(g) > 0.0, "{name}: zero gradient for B");
    }
    for (_, _, b) in &adapters {
        b.set(&(Tensor::ones(b.shape(), DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap())
            .unwrap();
    }
    let after = logits(&model, &ids);
    let diff = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 1e-3,
        "a non-zero adapter changes the logits (max change {diff})"
    );
}
