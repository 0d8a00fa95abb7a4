//! DPO parity with TRL and PEFT (`python/parity/make_dpo_parity.py`): TRL's tokenization of
//! preference rows, the sigmoid loss with the adapter-off reference, its logged rewards, and
//! every LoRA gradient.

mod support;

use afterburner_model::Tensor;
use afterburner_train::dpo::{Preference, pair_loss, reference_logps, tokenize_pair};
use afterburner_train::sft::PromptCompletion;
use serde_json::Value;
use support::*;

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn dpo_tokens_loss_rewards_and_lora_gradients_match_trl_and_peft() {
    let parity = parity_file("dpo-parity.json");
    let (mut model, adapters) = model_with_parity_adapter();
    let beta = parity["beta"].as_f64().unwrap();
    let mut losses = Vec::new();
    let (mut chosen_rewards, mut rejected_rewards) = (0.0, 0.0);
    let rows = parity["rows"].as_array().unwrap();
    for (row, expected) in rows.iter().zip(parity["tokenized"].as_array().unwrap()) {
        let prompt = chat(&row["prompt"]);
        let pair = Preference {
            chosen: PromptCompletion::Conversational {
                prompt: prompt.clone(),
                completion: chat(&row["chosen"]),
            },
            rejected: PromptCompletion::Conversational {
                prompt,
                completion: chat(&row["rejected"]),
            },
        };
        let t = tokenize_pair(&model, &pair, 4096).unwrap().unwrap();
        let prompt_ids = ids(&expected["prompt_ids"]);
        let mut chosen = prompt_ids.clone();
        chosen.extend(ids(&expected["chosen_ids"]));
        let mut rejected = prompt_ids.clone();
        rejected.extend(ids(&expected["rejected_ids"]));
        assert_eq!(t.chosen.ids, chosen, "TRL's prompt + chosen ids");
        assert_eq!(t.rejected.ids, rejected, "TRL's prompt + rejected ids");
        assert_eq!(t.chosen.completion_start, prompt_ids.len());
        assert_eq!(t.rejected.completion_start, prompt_ids.len());
        let reference = reference_logps(&mut model, &adapters, &t).unwrap();
        let l = pair_loss(&model, &t, reference, beta).unwrap();
        chosen_rewards += l.chosen_reward;
        rejected_rewards += l.rejected_reward;
        losses.push(l.loss);
    }
    let n = losses.len() as f64;
    let loss = (Tensor::stack(&losses, 0).unwrap().sum_all().unwrap() / n).unwrap();
    let value = loss.to_scalar::<f32>().unwrap() as f64;
    let want = parity["loss"].as_f64().unwrap();
    assert!(
        ((value - want) / want).abs() < 1e-4,
        "loss {value} vs TRL {want}"
    );
    let metrics = &parity["metrics"];
    for (key, ours) in [
        ("rewards/chosen", chosen_rewards / n),
        ("rewards/rejected", rejected_rewards / n),
    ] {
        if let Some(theirs) = metrics[key].as_f64() {
            assert!(
                (ours - theirs).abs() <= 1e-4 * theirs.abs().max(1e-3),
                "{key}: {ours} vs TRL {theirs}"
            );
        }
    }
    let grads = loss.backward().unwrap();
    assert_lora_grads_match(&grads, &adapters, &parity["grads"], "PEFT");
}

#[test]
fn preference_rows_that_do_not_fit_name_the_file_the_row_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dpo.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"chosen\": \"a\"}\n",
    )
    .unwrap();
    let e = afterburner_train::dpo::read_preferences(&path).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("dpo.jsonl: row 2: no `rejected` (a preference row is needed)"),
        "{e}"
    );
    std::fs::write(
        &path,
        "{\"prompt\": [{\"role\": \"user\", \"content\": \"p\"}], \"chosen\": [], \"rejected\": [{\"role\": \"assistant\", \"content\": \"b\"}]}\n",
    )
    .unwrap();
    let e = afterburner_train::dpo::read_preferences(&path).unwrap_err();
    assert!(
        e.to_string()
            .contains("row 1: `chosen` or `rejected` has no message"),
        "{e}"
    );
}
