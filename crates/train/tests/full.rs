//! Full fine-tuning (`--finetuning-type full`) on the tiny Qwen2 fixture: every weight trains,
//! the result is a Hugging Face folder that loads back to the trained logits, DPO's reference
//! is the frozen starting model, and a run resumes exactly.

use std::path::PathBuf;

use afterburner_model::{ChatMessage, DType, Device, LanguageModel, LogitsOutput, Tensor};
use afterburner_train::dpo::Preference;
use afterburner_train::{
    FinetuningType, OptimConfig, PromptCompletion, RunControl, SftConfig, train_dpo, train_sft,
};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-qwen2")
}

fn model() -> LanguageModel {
    LanguageModel::from_folder(&fixture(), DType::F32, &Device::Cpu).unwrap()
}

const IDS: [u32; 6] = [5, 80, 17, 230, 99, 4];

fn logits(model: &LanguageModel) -> Vec<f32> {
    let input = Tensor::from_vec(IDS.to_vec(), (1, IDS.len()), &Device::Cpu).unwrap();
    model
        .model()
        .forward(&input, None, None, LogitsOutput::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn examples() -> Vec<PromptCompletion> {
    let row = |task: &str, code: &str| PromptCompletion::Conversational {
        prompt: vec![ChatMessage::user(task)],
        completion: vec![ChatMessage::assistant(code)],
    };
    vec![
        row("add two numbers", "print(a+b)"),
        row("print hello", "print('hi')"),
    ]
}

fn full(max_steps: usize) -> SftConfig {
    SftConfig {
        finetuning: FinetuningType::Full,
        optim: OptimConfig {
            learning_rate: 3e-3,
            ..OptimConfig::default()
        },
        max_steps: Some(max_steps),
        per_device_train_batch_size: 2,
        seed: 4,
        ..SftConfig::default()
    }
}

#[test]
fn full_sft_trains_every_weight_and_saves_a_folder_that_loads_to_the_same_logits() {
    let before = model();
    let mut m = model();
    let out = tempfile::tempdir().unwrap();
    let summary = train_sft(
        &mut m,
        &examples(),
        &full(25),
        out.path(),
        &RunControl::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        summary.last_loss < 0.2 * summary.first_loss,
        "{} -> {}",
        summary.first_loss,
        summary.last_loss
    );
    assert_eq!(summary.adapter, out.path().join("model"));
    // Every weight moved: the embedding, a norm, an attention projection.
    let trained: std::collections::HashMap<String, Tensor> =
        m.model().named_parameters().unwrap().into_iter().collect();
    for (name, original) in before.model().named_parameters().unwrap() {
        let diff = (&trained[&name] - &original)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff > 0.0, "`{name}` was not trained");
    }
    // A Hugging Face folder: the weights, the base's config and tokenizer.
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(summary.adapter.join(file).is_file(), "{file}");
    }
    let reloaded = LanguageModel::from_folder(&summary.adapter, DType::F32, &Device::Cpu).unwrap();
    let worst = max_diff(&logits(&reloaded), &logits(&m));
    assert!(worst < 1e-5, "max |diff| {worst}");
    assert!(max_diff(&logits(&reloaded), &logits(&before)) > 1e-2);
}

#[test]
fn full_dpo_starts_at_log_2_against_the_frozen_start_and_learns() {
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
    let mut steps = Vec::new();
    let summary = train_dpo(
        &mut m,
        &pairs,
        &full(15),
        0.1,
        out.path(),
        &RunControl::default(),
        &mut |s| steps.push(s.preference.unwrap()),
    )
    .unwrap();
    assert!((summary.first_loss - std::f64::consts::LN_2).abs() < 1e-4);
    // Equal up to rounding: the policy's pass runs the fused training kernels, the frozen
    // reference's candle's composite operations.
    assert!(steps[0].margin.abs() < 1e-5, "{:?}", steps[0]);
    let last = steps.last().unwrap();
    assert_eq!(last.accuracy, 1.0, "{last:?}");
    assert!(last.margin > 0.1, "{last:?}");
    assert!(summary.last_loss < summary.first_loss);
}

#[test]
fn a_full_run_resumes_exactly_and_refuses_a_gguf_base() {
    let whole = tempfile::tempdir().unwrap();
    let mut straight = model();
    train_sft(
        &mut straight,
        &examples(),
        &full(4),
        whole.path(),
        &RunControl::default(),
        &mut |_| {},
    )
    .unwrap();

    let parts = tempfile::tempdir().unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let stop = || done.load(std::sync::atomic::Ordering::SeqCst) >= 2;
    let interrupted = train_sft(
        &mut model(),
        &examples(),
        &full(4),
        parts.path(),
        &RunControl {
            stop: Some(&stop),
            ..RunControl::default()
        },
        &mut |_| {
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    )
    .unwrap();
    let checkpoint = interrupted.checkpoint.unwrap();
    assert!(checkpoint.join("model/model.safetensors").is_file());
    assert!(checkpoint.join("optimizer.safetensors").is_file());
    let mut resumed = model();
    train_sft(
        &mut resumed,
        &examples(),
        &full(4),
        parts.path(),
        &RunControl {
            resume_from: Some(checkpoint),
            ..RunControl::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(logits(&resumed), logits(&straight));

    // A model loaded from a GGUF file has no Hugging Face folder to write the result into.
    let gguf_dir = tempfile::tempdir().unwrap();
    let fake_origin = gguf_dir.path().join("model.gguf");
    std::fs::write(&fake_origin, b"GGUF").unwrap();
    let m = model();
    let mut not_a_folder = LanguageModel::from_parts(
        m.model().clone(),
        m.tokenizer().clone(),
        None,
        m.generation_defaults().clone(),
        &fake_origin,
    );
    let plain = vec![PromptCompletion::Standard {
        prompt: "add".into(),
        completion: " a+b".into(),
    }];
    let e = train_sft(
        &mut not_a_folder,
        &plain,
        &full(1),
        tempfile::tempdir().unwrap().path(),
        &RunControl::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs one as the base"), "{e}");
}
