//! Shared by the parity tests: the fixtures' paths and the comparison of LoRA gradients with
//! the reference implementation's.

#![allow(dead_code)]

use std::path::PathBuf;

use afterburner_model::{ChatMessage, DType, Device, LanguageModel};
use afterburner_train::Adapters;
use candle_core::backprop::GradStore;
use serde_json::Value;

/// This crate's folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny Qwen2 fixture (f32, CPU) with the sft-parity adapter (PEFT's own files) loaded.
pub fn model_with_parity_adapter() -> (LanguageModel, Adapters) {
    let mut model = LanguageModel::from_folder(
        &root().join("../model/tests/fixtures/tiny-qwen2"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let adapters = Adapters::load_peft(
        model.model_mut(),
        &root().join("tests/fixtures/sft-parity"),
        &Device::Cpu,
    )
    .unwrap();
    (model, adapters)
}

/// A parity file of `tests/fixtures`.
pub fn parity_file(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures").join(name)).unwrap(),
    )
    .unwrap()
}

/// A chat list of a parity file.
pub fn chat(value: &Value) -> Vec<ChatMessage> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// Asserts that `grads` holds, for every LoRA tensor named in `expected` (PEFT names ->
/// nested lists), a gradient within 1e-4 (relative, in norm) of the reference's.
pub fn assert_lora_grads_match(
    grads: &GradStore,
    adapters: &Adapters,
    expected: &Value,
    peer: &str,
) {
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 28);
    let ours = adapters.peft_tensors();
    for (name, want) in expected {
        let tensor = ours.get(name).unwrap_or_else(|| panic!("no {name}"));
        let got: Vec<f32> = grads
            .get(tensor)
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(
            diff <= 1e-4 * norm.max(1e-6),
            "{name}: |ours - {peer}| = {diff} against |{peer}| = {norm}"
        );
    }
}
