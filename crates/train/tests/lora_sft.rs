//! LoRA on the tiny Qwen2 fixture (real model code, random weights, a real BPE and chat
//! template): PEFT's initialisation and file format, gradients only into the adapters, and a
//! supervised run that learns a short program and saves an adapter that reloads exactly.

use std::path::PathBuf;

use afterburner_model::{
    ChatMessage, DType, Device, GenerationSettings, LanguageModel, LogitsOutput, Tensor,
};
use afterburner_train::sft::{completion_nll, tokenize};
use afterburner_train::{
    Adapters, LoraConfig, OptimConfig, PromptCompletion, RunControl, SftConfig, TrainError,
    train_sft,
};
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-qwen2")
}

fn model() -> LanguageModel {
    LanguageModel::from_folder(&fixture(), DType::F32, &Device::Cpu).unwrap()
}

fn logits(model: &LanguageModel, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    model
        .model()
        .forward(&input, None, None, LogitsOutput::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

const IDS: [u32; 8] = [5, 80, 17, 230, 99, 4, 61, 300];

#[test]
fn a_fresh_adapter_changes_nothing_and_is_saved_as_peft_saves_it() {
    let mut m = model();
    let before = logits(&m, &IDS);
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let adapters = Adapters::attach(m.model_mut(), &config, 7, &Device::Cpu).unwrap();
    assert_eq!(
        adapters.modules.len(),
        2 * 7,
        "7 projections in each of 2 layers"
    );
    // B starts at zero: the same logits, up to rounding (with adapters that track gradients
    // the forward pass runs the fused training kernels, without them candle's composite ones).
    let after = logits(&m, &IDS);
    // Relative to the logit's size (at least 1). The two paths sum their products in other
    // orders and the fused kernels' exponential is within 2 ulp, not libm's half: on this
    // fixture they differ by 1e-5 (8.5e-6 with libm's exponential).
    let worst = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(
        worst < 3e-5,
        "B starts at zero, yet logits moved by {worst} of their size"
    );
    let dir = tempfile::tempdir().unwrap();
    adapters.save_peft(dir.path(), Some("tiny-qwen2")).unwrap();
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["base_model_name_or_path"], "tiny-qwen2");
    let tensors =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(tensors.len(), 28);
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!(a.dims(), [4, 64]);
    assert_eq!(b.dims(), [64, 4]);
    let down = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(down.dims(), [4, 128]);
    let bound = 1.0 / 64f32.sqrt();
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| x.abs() > bound / 2.0));
    assert!(
        b.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| *x == 0.0)
    );
    // The same seed gives the same adapter.
    let mut again = model();
    let same = Adapters::attach(again.model_mut(), &config, 7, &Device::Cpu).unwrap();
    let a0 = adapters.modules[0].1.as_tensor().to_vec2::<f32>().unwrap();
    assert_eq!(same.modules[0].1.as_tensor().to_vec2::<f32>().unwrap(), a0);
}

fn program_examples() -> Vec<PromptCompletion> {
    let row = |task: &str, code: &str| PromptCompletion::Conversational {
        prompt: vec![ChatMessage::user(task)],
        completion: vec![ChatMessage::assistant(code)],
    };
    vec![
        row("add two numbers", "print(a+b)"),
        row("print hello", "print('hi')"),
    ]
}

#[test]
fn gradients_reach_every_adapter_tensor_and_a_step_changes_no_base_weight() {
    let mut m = model();
    let adapters = Adapters::attach(
        m.model_mut(),
        &LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        1,
        &Device::Cpu,
    )
    .unwrap();
    // B is zero at first, so A's gradient is too (as in PEFT): move B once, then check.
    for (_, _, b) in &adapters.modules {
        b.set(&(b.as_tensor().ones_like().unwrap() * 0.01).unwrap())
            .unwrap();
    }
    let example = tokenize(&m, &program_examples()[0], 512).unwrap().unwrap();
    assert!(example.completion_tokens() > 0);
    let grads = completion_nll(&m, &example).unwrap().backward().unwrap();
    for (name, a, b) in &adapters.modules {
        for (part, var) in [("A", a), ("B", b)] {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} {part}: no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name} {part}: {norm}");
        }
    }
    // Only the adapters are variables: an optimiser step leaves every base weight as it was.
    let before: Vec<(String, Vec<f32>)> = m
        .model()
        .named_parameters()
        .unwrap()
        .into_iter()
        .map(|(n, w)| (n, w.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    let mut grads = grads;
    let mut trainer =
        afterburner_train::optim::Trainer::new(adapters.vars(), OptimConfig::default(), 1).unwrap();
    let a0 = adapters.modules[0].1.as_tensor().to_vec2::<f32>().unwrap();
    trainer.step(&mut grads).unwrap();
    assert_ne!(
        adapters.modules[0].1.as_tensor().to_vec2::<f32>().unwrap(),
        a0
    );
    for ((name, w), (_, old)) in m.model().named_parameters().unwrap().iter().zip(&before) {
        assert_eq!(
            &w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            old,
            "{name} is frozen but changed"
        );
    }
}

#[test]
fn sft_learns_a_short_program_and_its_adapter_reloads_with_the_same_logits() {
    let mut m = model();
    let out = tempfile::tempdir().unwrap();
    let config = SftConfig {
        lora: LoraConfig {
            r: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 2e-2,
            ..OptimConfig::default()
        },
        max_steps: Some(60),
        per_device_train_batch_size: 2,
        seed: 3,
        ..SftConfig::default()
    };
    let mut lines = 0;
    let summary = train_sft(
        &mut m,
        &program_examples(),
        &config,
        out.path(),
        &RunControl::default(),
        &mut |_| lines += 1,
    )
    .unwrap();
    assert_eq!(summary.steps, 60);
    assert_eq!(lines, 60);
    assert!(
        summary.last_loss < 0.05 * summary.first_loss,
        "loss {} -> {}",
        summary.first_loss,
        summary.last_loss
    );
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 60);
    assert!(last["grad_norm"].as_f64().unwrap().is_finite());
    // The model now answers each prompt with its program.
    for example in program_examples() {
        let PromptCompletion::Conversational { prompt, completion } = example else {
            unreachable!()
        };
        let answer = m
            .chat(
                &prompt,
                &GenerationSettings {
                    max_new_tokens: 16,
                    temperature: Some(0.0),
                    ..GenerationSettings::default()
                },
            )
            .unwrap();
        assert_eq!(answer.text.trim(), completion[0].content, "{answer:?}");
    }
    // A fresh model with the saved adapter gives the trained model's logits.
    let trained = logits(&m, &IDS);
    let mut fresh = model();
    let loaded = Adapters::load_peft(fresh.model_mut(), &summary.adapter, &Device::Cpu).unwrap();
    assert_eq!(loaded.modules.len(), 14);
    let reloaded = logits(&fresh, &IDS);
    let worst = trained
        .iter()
        .zip(&reloaded)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "max |diff| {worst}");
}

#[test]
fn adapters_that_do_not_fit_and_bad_settings_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = model();
    let adapters =
        Adapters::attach(m.model_mut(), &LoraConfig::default(), 1, &Device::Cpu).unwrap();
    adapters.save_peft(dir.path(), None).unwrap();

    let config_path = dir.path().join("adapter_config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut edited: Value = serde_json::from_str(&original).unwrap();
    edited["r"] = 8.into();
    std::fs::write(&config_path, edited.to_string()).unwrap();
    let e = Adapters::load_peft(model().model_mut(), dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        e.to_string()
            .contains("do not fit a [64, 64] projection at rank 8"),
        "{e}"
    );

    edited["r"] = 16.into();
    edited["use_rslora"] = true.into();
    std::fs::write(&config_path, edited.to_string()).unwrap();
    let e = Adapters::load_peft(model().model_mut(), dir.path(), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("rsLoRA"), "{e}");

    let e = Adapters::attach(
        model().model_mut(),
        &LoraConfig {
            target_modules: vec!["q_proj".into(), "c_attn".into()],
            ..LoraConfig::default()
        },
        1,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`c_attn` names no module"), "{e}");
    let e = Adapters::attach(
        model().model_mut(),
        &LoraConfig {
            r: 0,
            ..LoraConfig::default()
        },
        1,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(matches!(e, TrainError::Config(_)), "{e}");
}

#[test]
fn a_run_stopped_and_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one() {
    let config = SftConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            // With dropout, so the resumed run must also draw the same masks.
            dropout: 0.1,
            ..LoraConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 1e-2,
            warmup_ratio: 0.2,
            weight_decay: 0.01,
            ..OptimConfig::default()
        },
        max_steps: Some(6),
        seed: 11,
        ..SftConfig::default()
    };
    let whole = tempfile::tempdir().unwrap();
    let mut m = model();
    let straight = train_sft(
        &mut m,
        &program_examples(),
        &config,
        whole.path(),
        &RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    let expected = logits(&m, &IDS);

    let parts = tempfile::tempdir().unwrap();
    let stop_after_3 = std::sync::atomic::AtomicUsize::new(0);
    let stop = || stop_after_3.load(std::sync::atomic::Ordering::SeqCst) >= 3;
    let mut first = model();
    let interrupted = train_sft(
        &mut first,
        &program_examples(),
        &config,
        parts.path(),
        &RunControl {
            save_steps: Some(2),
            stop: Some(&stop),
            ..RunControl::default()
        },
        &mut |_| {
            stop_after_3.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    )
    .unwrap();
    assert!(interrupted.interrupted);
    assert_eq!(interrupted.steps, 3);
    let checkpoint = interrupted.checkpoint.unwrap();
    assert!(checkpoint.ends_with("checkpoint-3"));
    assert!(
        parts
            .path()
            .join("checkpoint-2/adapter/adapter_config.json")
            .is_file()
    );
    assert!(
        !parts.path().join("adapter").exists(),
        "no final adapter before the end"
    );

    let mut second = model();
    let resumed = train_sft(
        &mut second,
        &program_examples(),
        &config,
        parts.path(),
        &RunControl {
            resume_from: Some(checkpoint.clone()),
            ..RunControl::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(!resumed.interrupted);
    assert_eq!(resumed.steps, 6);
    assert_eq!(resumed.last_loss, straight.last_loss);
    assert_eq!(
        logits(&second, &IDS),
        expected,
        "the same adapter as without interruption"
    );
    let lines = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("tokens_per_s");
                v
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(parts.path()), lines(whole.path()));

    // Other settings cannot resume it.
    let other = SftConfig {
        seed: 12,
        ..config.clone()
    };
    let e = train_sft(
        &mut model(),
        &program_examples(),
        &other,
        parts.path(),
        &RunControl {
            resume_from: Some(checkpoint),
            ..RunControl::default()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("other settings or data"), "{e}");
}

#[test]
fn lora_dropout_acts_in_the_loss_only_and_still_learns() {
    let mut m = model();
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.5,
        ..LoraConfig::default()
    };
    let adapters = Adapters::attach(m.model_mut(), &config, 3, &Device::Cpu).unwrap();
    // A non-zero B, so the adapters' path shows in the logits.
    for (_, _, b) in &adapters.modules {
        b.set(&(Tensor::randn(0f32, 1.0, b.shape(), &Device::Cpu).unwrap() * 0.5).unwrap())
            .unwrap();
    }
    adapters.reattach(m.model_mut());
    let off = logits(&m, &IDS);
    adapters.dropout_on(m.model_mut(), 1);
    let on = logits(&m, &IDS);
    assert_ne!(on, off, "dropout changes the training forward");
    adapters.dropout_on(m.model_mut(), 1);
    assert_eq!(logits(&m, &IDS), on, "the same seed, the same masks");
    adapters.dropout_on(m.model_mut(), 2);
    assert_ne!(logits(&m, &IDS), on);
    // Switching the adapters off and on (the DPO reference) keeps the dropout on.
    adapters.detach(m.model_mut());
    assert_ne!(logits(&m, &IDS), on);
    adapters.dropout_on(m.model_mut(), 1);
    adapters.detach(m.model_mut());
    adapters.reattach(m.model_mut());
    assert_eq!(logits(&m, &IDS), on);
    adapters.dropout_off(m.model_mut());
    assert_eq!(
        logits(&m, &IDS),
        off,
        "off again: inference is deterministic"
    );

    // Out-of-range dropout is refused.
    for bad in [-0.1, 1.0] {
        let e = Adapters::attach(
            model().model_mut(),
            &LoraConfig {
                dropout: bad,
                ..LoraConfig::default()
            },
            1,
            &Device::Cpu,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--lora-dropout"), "{e}");
    }

    // A run with dropout still learns the programs, and its saved adapter (inference: no
    // dropout) gives the same logits as the trained model.
    let dir = tempfile::tempdir().unwrap();
    let mut trained = model();
    let summary = train_sft(
        &mut trained,
        &program_examples(),
        &SftConfig {
            lora: LoraConfig {
                dropout: 0.1,
                ..LoraConfig::default()
            },
            optim: OptimConfig {
                learning_rate: 2e-2,
                ..OptimConfig::default()
            },
            max_steps: Some(30),
            ..SftConfig::default()
        },
        dir.path(),
        &RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        summary.last_loss < summary.first_loss * 0.5,
        "{} -> {}",
        summary.first_loss,
        summary.last_loss
    );
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["lora_dropout"], 0.1);
    let mut reloaded = model();
    Adapters::load_peft(
        reloaded.model_mut(),
        &dir.path().join("adapter"),
        &Device::Cpu,
    )
    .unwrap();
    let worst = logits(&reloaded, &IDS)
        .iter()
        .zip(&logits(&trained, &IDS))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "max |diff| {worst}");
}

#[test]
fn dpo_learns_to_prefer_the_chosen_programs() {
    use afterburner_train::dpo::Preference;
    let pair = |task: &str, good: &str, bad: &str| Preference {
        chosen: PromptCompletion::Conversational {
            prompt: vec![ChatMessage::user(task)],
            completion: vec![ChatMessage::assistant(good)],
        },
        rejected: PromptCompletion::Conversational {
            prompt: vec![ChatMessage::user(task)],
            completion: vec![ChatMessage::assistant(bad)],
        },
    };
    let pairs = vec![
        pair("add two numbers", "print(a+b)", "print(a-b)"),
        pair("square n", "print(n*n)", "print(sum(n for _ in range(n)))"),
    ];
    let mut m = model();
    let out = tempfile::tempdir().unwrap();
    let config = SftConfig {
        lora: LoraConfig {
            r: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 1e-2,
            ..OptimConfig::default()
        },
        max_steps: Some(30),
        per_device_train_batch_size: 2,
        seed: 5,
        ..SftConfig::default()
    };
    let mut steps = Vec::new();
    let summary = afterburner_train::train_dpo(
        &mut m,
        &pairs,
        &config,
        0.1,
        out.path(),
        &RunControl::default(),
        &mut |s| steps.push(s.clone()),
    )
    .unwrap();
    let first = steps[0].preference.unwrap();
    let last = steps.last().unwrap().preference.unwrap();
    // Fresh adapters are the reference: no margin (up to rounding: the policy's pass runs the
    // fused training kernels, the reference's candle's own), loss log 2.
    assert!(first.margin.abs() < 1e-5, "{first:?}");
    assert!((summary.first_loss - std::f64::consts::LN_2).abs() < 1e-4);
    assert_eq!(last.accuracy, 1.0, "{last:?}");
    assert!(last.margin > 1.0, "{last:?}");
    assert!(summary.last_loss < 0.5 * summary.first_loss, "{summary:?}");
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(out.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["rewards/accuracies"], 1.0);
    assert!(
        out.path()
            .join("adapter/adapter_model.safetensors")
            .is_file()
    );
}

#[test]
fn grpo_raises_the_mean_reward_of_a_simple_task() {
    use afterburner_train::{GrpoPrompt, GrpoSettings, Judgement, Sampled, train_grpo};
    let prompts = vec![GrpoPrompt {
        prompt: vec![ChatMessage::user("write a call")],
        label: "(".into(),
    }];
    // Reward: the share of the completion's characters that are the label's, here "(".
    let mut reward = |samples: &[Sampled]| -> Result<Vec<Option<Judgement>>, TrainError> {
        Ok(samples
            .iter()
            .map(|s| {
                let n = s.text.chars().count().max(1) as f64;
                Some((s.text.matches(s.prompt.label.as_str()).count() as f64 / n).into())
            })
            .collect())
    };
    let mut m = model();
    let out = tempfile::tempdir().unwrap();
    let config = SftConfig {
        lora: LoraConfig {
            r: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 3e-2,
            ..OptimConfig::default()
        },
        max_steps: Some(30),
        seed: 9,
        ..SftConfig::default()
    };
    let settings = GrpoSettings {
        num_generations: 8,
        max_completion_length: 8,
        ..GrpoSettings::default()
    };
    let mut rewards = Vec::new();
    train_grpo(
        &mut m,
        &prompts,
        &config,
        &settings,
        &mut reward,
        out.path(),
        &RunControl::default(),
        &mut |s| rewards.push(s.rollouts.unwrap().reward),
    )
    .unwrap();
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let (early, late) = (mean(&rewards[..5]), mean(&rewards[rewards.len() - 5..]));
    assert!(
        late > early + 0.1,
        "mean reward {early:.3} -> {late:.3}: {rewards:?}"
    );
}

#[test]
fn grpo_reuses_each_sampled_batch_for_num_iterations_steps_and_resumes_inside_a_cycle() {
    use afterburner_train::{GrpoPrompt, GrpoSettings, Judgement, Sampled, train_grpo};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let prompts = vec![
        GrpoPrompt {
            prompt: vec![ChatMessage::user("write a call")],
            label: "(".into(),
        },
        GrpoPrompt {
            prompt: vec![ChatMessage::user("write a list")],
            label: "[".into(),
        },
    ];
    let test_thread = std::thread::current().id();
    let judged_groups = AtomicUsize::new(0);
    let reward = |samples: &[Sampled]| -> Result<Vec<Option<Judgement>>, TrainError> {
        // Judging runs beside sampling, on its own thread.
        assert_ne!(std::thread::current().id(), test_thread);
        judged_groups.fetch_add(1, Ordering::SeqCst);
        // Any reward that tells the completions apart will do: a hash of the text.
        Ok(samples
            .iter()
            .map(|s| {
                let h = s
                    .text
                    .bytes()
                    .fold(7u64, |h, b| h.wrapping_mul(31) + b as u64);
                Some(((h % 97) as f64 / 97.0).into())
            })
            .collect())
    };
    let config = SftConfig {
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        optim: OptimConfig {
            learning_rate: 5e-2,
            ..OptimConfig::default()
        },
        max_steps: Some(6),
        per_device_train_batch_size: 2,
        seed: 5,
        ..SftConfig::default()
    };
    let settings = GrpoSettings {
        num_generations: 4,
        max_completion_length: 6,
        num_iterations: 2,
        ..GrpoSettings::default()
    };
    let metrics = |dir: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("tokens_per_s");
                v
            })
            .collect()
    };

    let whole = tempfile::tempdir().unwrap();
    let mut straight = model();
    let mut judge = reward;
    train_grpo(
        &mut straight,
        &prompts,
        &config,
        &settings,
        &mut judge,
        whole.path(),
        &RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        judged_groups.load(Ordering::SeqCst),
        3 * 2,
        "6 steps at 2 iterations: 3 sampled batches of 2 groups"
    );
    let lines = metrics(whole.path());
    assert_eq!(lines.len(), 6);
    for cycle in lines.chunks(2) {
        // The second step of a cycle trains on the same rollouts with the updated policy.
        assert_eq!(cycle[0]["reward"], cycle[1]["reward"]);
        assert_eq!(cycle[0]["tokens"], cycle[1]["tokens"]);
        assert_ne!(cycle[0]["loss"], cycle[1]["loss"], "{lines:#?}");
        assert_eq!(cycle[0]["clip_ratio"], 0.0, "ratios start at 1");
    }
    assert!(
        lines
            .iter()
            .skip(1)
            .step_by(2)
            .any(|l| l["clip_ratio"].as_f64().unwrap() > 0.0),
        "a reused batch's ratios move away from 1: {lines:?}"
    );

    // Stopped after step 3 (the first step of the second cycle), resumed: the same run.
    let parts = tempfile::tempdir().unwrap();
    let done = AtomicUsize::new(0);
    let stop = || done.load(Ordering::SeqCst) >= 3;
    let mut first = model();
    let interrupted = train_grpo(
        &mut first,
        &prompts,
        &config,
        &settings,
        &mut judge,
        parts.path(),
        &RunControl {
            stop: Some(&stop),
            ..RunControl::default()
        },
        &mut |_| {
            done.fetch_add(1, Ordering::SeqCst);
        },
    )
    .unwrap();
    let checkpoint = interrupted.checkpoint.unwrap();
    assert!(checkpoint.join("rollouts.json").is_file());
    let before = judged_groups.load(Ordering::SeqCst);
    let mut second = model();
    train_grpo(
        &mut second,
        &prompts,
        &config,
        &settings,
        &mut judge,
        parts.path(),
        &RunControl {
            resume_from: Some(checkpoint),
            ..RunControl::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        judged_groups.load(Ordering::SeqCst) - before,
        2,
        "step 4 reuses the checkpoint's rollouts; only the third batch is sampled"
    );
    assert_eq!(metrics(parts.path()), lines);
    assert_eq!(logits(&second, &IDS), logits(&straight, &IDS));
}

#[test]
fn the_bench_step_timer_runs_full_steps_on_raw_ids() {
    let mut m = model();
    let mut step = afterburner_train::BenchStep::sft(
        &mut m,
        &IDS,
        &LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
    )
    .unwrap();
    let times: Vec<f64> = (0..2).map(|_| step.step().unwrap()).collect();
    assert_eq!(times.len(), 2);
    assert!(times.iter().all(|t| *t > 0.0 && t.is_finite()));
    assert!(
        afterburner_train::BenchStep::sft(&mut model(), &IDS[..1], &LoraConfig::default()).is_err()
    );
}

#[test]
fn batched_right_padded_log_probs_and_gradients_equal_each_sequence_alone() {
    use afterburner_train::Tokenized;
    use afterburner_train::sft::{batch_completion_logps, completion_logps};
    let mut m = model();
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let adapters = Adapters::attach(m.model_mut(), &config, 3, &Device::Cpu).unwrap();
    // B = 0 gives no gradient to A: move B off zero so that every tensor gets one.
    for var in adapters.vars() {
        let t = var.as_tensor();
        let bumped = (t + Tensor::ones_like(t).unwrap() * 0.01).unwrap();
        var.set(&bumped).unwrap();
    }
    let examples = [
        Tokenized {
            ids: vec![5, 80, 17, 230, 99, 4, 61, 300],
            completion_start: 3,
        },
        Tokenized {
            ids: vec![7, 8, 9, 10],
            completion_start: 1,
        },
        Tokenized {
            ids: vec![11, 200, 13, 140, 15, 16],
            completion_start: 5,
        },
    ];
    let refs: Vec<&Tokenized> = examples.iter().collect();
    let batched = batch_completion_logps(&m, &refs).unwrap();
    let weights = [1.0, -2.0, 0.5];
    let mut total_alone: Option<Tensor> = None;
    for ((example, together), w) in examples.iter().zip(&batched).zip(weights) {
        let alone = completion_logps(&m, example).unwrap();
        let (a, b) = (
            alone.to_vec1::<f32>().unwrap(),
            together.to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), example.ids.len() - example.completion_start);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        let term = (alone.sum_all().unwrap() * w).unwrap();
        total_alone = Some(match total_alone {
            None => term,
            Some(t) => (t + term).unwrap(),
        });
    }
    let total_batched = batched
        .iter()
        .zip(weights)
        .map(|(t, w)| (t.sum_all().unwrap() * w).unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let (ga, gb) = (
        total_alone.unwrap().backward().unwrap(),
        total_batched.backward().unwrap(),
    );
    for var in adapters.vars() {
        let a = ga.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let b = gb.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        assert!(a.iter().any(|v| *v != 0.0));
        for (x, y) in a.iter().zip(&b) {
            // f32 sums in another order (one batch against three passes).
            assert!((x - y).abs() <= 1e-3 * y.abs().max(1e-2), "{x} vs {y}");
        }
    }
}
