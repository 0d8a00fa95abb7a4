//! Parity with TRL and PEFT (`python/parity/make_train_parity.py`): on the tiny Qwen2 fixture
//! with PEFT's own saved adapter, our tokenization of TRL's prompt-completion rows, the SFT loss
//! over a batch and the gradient of every LoRA tensor match what TRL, transformers and PEFT
//! computed.

mod support;

use afterburner_train::PromptCompletion;
use afterburner_train::sft::{completion_nll, tokenize};
use support::*;

#[test]
fn sft_tokens_loss_and_lora_gradients_match_trl_and_peft() {
    let parity = parity_file("sft-parity/parity.json");
    let (model, adapters) = model_with_parity_adapter();
    assert_eq!(adapters.modules.len(), 14);
    assert_eq!(adapters.config.r, 4);

    let rows = parity["rows"].as_array().unwrap();
    let mut examples = Vec::new();
    for (row, expected) in rows.iter().zip(parity["tokenized"].as_array().unwrap()) {
        let example = PromptCompletion::Conversational {
            prompt: chat(&row["prompt"]),
            completion: chat(&row["completion"]),
        };
        let t = tokenize(&model, &example, 4096).unwrap().unwrap();
        let ids: Vec<u32> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
        assert_eq!(t.ids, ids, "TRL's input ids");
        assert_eq!(
            t.completion_start,
            expected["completion_start"].as_u64().unwrap() as usize,
            "TRL's completion mask"
        );
        examples.push(t);
    }
    // The batch's loss: summed completion NLL over the batch's completion tokens.
    let tokens: usize = examples.iter().map(|t| t.completion_tokens()).sum();
    let nlls: Vec<afterburner_model::Tensor> = examples
        .iter()
        .map(|t| completion_nll(&model, t).unwrap())
        .collect();
    let total = afterburner_model::Tensor::stack(&nlls, 0)
        .unwrap()
        .sum_all()
        .unwrap();
    let loss = (total / tokens as f64).unwrap();
    let value = loss.to_scalar::<f32>().unwrap() as f64;
    let want = parity["loss"].as_f64().unwrap();
    assert!(
        ((value - want) / want).abs() < 1e-4,
        "loss {value} vs TRL {want}"
    );
    let grads = loss.backward().unwrap();
    assert_lora_grads_match(&grads, &adapters, &parity["grads"], "PEFT");
}
