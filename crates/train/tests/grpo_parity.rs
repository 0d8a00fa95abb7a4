//! GRPO parity with TRL (`python/parity/make_grpo_parity.py`): on fixed rollouts with fixed
//! advantages, old and reference log-probabilities, the loss of `GRPOTrainer._compute_loss`
//! (dapo: clipped ratio with epsilon 0.2 / 0.28, KL with beta 0.04, token normalisation) and
//! every LoRA gradient; and the group advantages.

mod support;

use afterburner_model::Tensor;
use afterburner_train::grpo::{GrpoLoss, Rollout, group_advantages, rollout_loss};
use afterburner_train::sft::Tokenized;
use serde_json::Value;
use support::*;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn grpo_loss_and_lora_gradients_match_trl() {
    let parity = parity_file("grpo-parity.json");
    let (model, adapters) = model_with_parity_adapter();
    let settings = GrpoLoss {
        epsilon_low: parity["epsilon"].as_f64().unwrap(),
        epsilon_high: parity["epsilon_high"].as_f64().unwrap(),
        beta: parity["beta"].as_f64().unwrap(),
        bias_correction_kl: true,
    };
    let mut losses = Vec::new();
    let mut tokens = 0;
    let mut clipped = 0;
    for r in parity["rollouts"].as_array().unwrap() {
        let rollout = Rollout {
            tokens: Tokenized {
                ids: serde_json::from_value(r["ids"].clone()).unwrap(),
                completion_start: r["completion_start"].as_u64().unwrap() as usize,
            },
            advantage: r["advantage"].as_f64().unwrap(),
            old_logps: Some(floats(&r["old_logps"])),
            ref_logps: Some(floats(&r["ref_logps"])),
        };
        let (loss, stats) = rollout_loss(&model, &rollout, &settings).unwrap();
        tokens += stats.tokens;
        clipped += stats.clipped;
        losses.push(loss);
    }
    assert!(clipped > 0, "the fixture clips some ratios");
    let loss = (Tensor::stack(&losses, 0).unwrap().sum_all().unwrap() / tokens as f64).unwrap();
    let value = loss.to_scalar::<f32>().unwrap() as f64;
    let want = parity["loss"].as_f64().unwrap();
    assert!(
        ((value - want) / want).abs() < 1e-4,
        "loss {value} vs TRL {want}"
    );
    let grads = loss.backward().unwrap();
    assert_lora_grads_match(&grads, &adapters, &parity["grads"], "TRL");
}

#[test]
fn group_advantages_are_normalised_within_each_group() {
    let a = group_advantages(&[1.0, 0.0, 1.0, 0.0, 2.0, 2.0], 2, true).unwrap();
    // Group 1: mean 0.5, unbiased std 0.7071.
    assert!((a[0] - 0.5 / (0.5f64.sqrt() + 1e-4)).abs() < 1e-12);
    assert!((a[0] + a[1]).abs() < 1e-12);
    // A group whose rewards are all equal has no advantage.
    assert_eq!(&a[4..], &[0.0, 0.0]);
    let unscaled = group_advantages(&[3.0, 1.0], 2, false).unwrap();
    assert_eq!(unscaled, vec![1.0, -1.0]);
    assert!(group_advantages(&[1.0, 2.0, 3.0], 2, true).is_err());
}
