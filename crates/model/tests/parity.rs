//! Parity with transformers on the tiny fixture models (`tests/fixtures/parity.json`, written by
//! `python/parity/make_model_fixtures.py`): logits within 1e-4 at every non-padded position,
//! greedy tokens, tokenizer ids and chat template renders exactly.

use std::path::PathBuf;

use afterburner_model::{DType, Device, GenerationSettings, LanguageModel, Tensor};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn parity_text() -> String {
    std::fs::read_to_string(fixtures().join("parity.json")).unwrap()
}

fn parity() -> Value {
    serde_json::from_str(&parity_text()).unwrap()
}

fn load(name: &str) -> LanguageModel {
    LanguageModel::from_folder(&fixtures().join(name), DType::F32, &Device::Cpu).unwrap()
}

fn ids_2d(value: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn check_logits(model_name: &str, expected_model: &str) {
    let model = load(model_name);
    let parity = parity();
    let cases = parity["models"][expected_model]["logit_cases"]
        .as_array()
        .unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let ids = ids_2d(&case["input_ids"]);
        let mask = ids_2d(&case["attention_mask"]);
        let positions: Vec<usize> = serde_json::from_value(case["positions"].clone()).unwrap();
        let expected: Vec<Vec<Vec<f32>>> = serde_json::from_value(case["logits"].clone()).unwrap();
        let (b, s) = (ids.len(), ids[0].len());
        let input = Tensor::from_vec(ids.concat(), (b, s), &Device::Cpu).unwrap();
        let mask_t = Tensor::from_vec(mask.concat(), (b, s), &Device::Cpu).unwrap();
        let logits: Vec<Vec<Vec<f32>>> = model
            .forward_logits(&input, Some(&mask_t))
            .unwrap()
            .to_vec3()
            .unwrap();
        let mut compared = 0;
        let mut worst = 0f32;
        for row in 0..b {
            for (j, &pos) in positions.iter().enumerate() {
                if mask[row][pos] == 0 {
                    continue;
                }
                for (got, want) in logits[row][pos].iter().zip(&expected[row][j]) {
                    worst = worst.max((got - want).abs());
                }
                compared += 1;
            }
        }
        assert!(compared > 0, "{model_name}/{name}: nothing compared");
        assert!(
            worst <= 1e-4,
            "{model_name}/{name}: largest logit difference {worst} > 1e-4"
        );
    }
}

#[test]
fn tiny_qwen2_logits_match_transformers_at_every_unpadded_position() {
    check_logits("tiny-qwen2", "tiny-qwen2");
}

#[test]
fn sharded_tiny_qwen2_logits_match_transformers_and_the_unsharded_model() {
    check_logits("tiny-qwen2-sharded", "tiny-qwen2-sharded");
    check_logits("tiny-qwen2-sharded", "tiny-qwen2");
}

#[test]
fn tiny_llama_logits_match_transformers_at_every_unpadded_position() {
    check_logits("tiny-llama", "tiny-llama");
}

fn check_greedy(model_name: &str) {
    let model = load(model_name);
    let parity = parity();
    let cases = parity["models"][model_name]["greedy"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let prompt: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["output_ids"].clone()).unwrap();
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            model.tokenizer().encode(text, true).unwrap(),
            prompt,
            "{model_name}: prompt ids of {text:?}"
        );
        let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
        let out = model
            .generate_tokens(&[prompt], &GenerationSettings::greedy(max_new))
            .unwrap()
            .remove(0);
        assert_eq!(
            out.token_ids, expected,
            "{model_name}: greedy continuation of {text:?}"
        );
    }
}

#[test]
fn tiny_qwen2_greedy_continuations_match_transformers_generate() {
    check_greedy("tiny-qwen2");
}

#[test]
fn tiny_llama_greedy_continuations_match_transformers_generate() {
    check_greedy("tiny-llama");
}

#[test]
fn tokenizer_ids_and_decoded_text_match_transformers() {
    let parity = parity();
    for name in ["tiny-qwen2", "tiny-llama"] {
        let model = load(name);
        let cases = parity["models"][name]["tokenize"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(
                model.tokenizer().encode(text, true).unwrap(),
                ids,
                "{name}: ids of {text:?}"
            );
            if let Some(decoded) = case.get("decoded").and_then(Value::as_str) {
                assert_eq!(
                    model.tokenizer().decode(&ids, false).unwrap(),
                    decoded,
                    "{name}: decode of {text:?}"
                );
            }
        }
    }
}

#[test]
fn chat_templates_render_exactly_as_apply_chat_template() {
    // Parsed into template values directly so that object keys keep their order (tools JSON).
    let parity: minijinja::Value = serde_json::from_str(&parity_text()).unwrap();
    for name in ["tiny-qwen2", "tiny-llama"] {
        let model = load(name);
        let template = model.chat_template().unwrap();
        let cases = parity
            .get_attr("models")
            .and_then(|m| m.get_attr(name))
            .and_then(|m| m.get_attr("chat"))
            .unwrap();
        let mut count = 0;
        for case in cases.try_iter().unwrap() {
            let case_name = case.get_attr("name").unwrap().to_string();
            let tools = case.get_attr("tools").unwrap();
            let tools = (!tools.is_undefined()).then_some(tools);
            let add = case.get_attr("add_generation_prompt").unwrap().is_true();
            let rendered = template
                .render_values(case.get_attr("messages").unwrap(), tools, add)
                .unwrap();
            assert_eq!(
                rendered,
                case.get_attr("text").unwrap().as_str().unwrap(),
                "{name}/{case_name}"
            );
            count += 1;
        }
        assert!(count >= 5, "{name}: only {count} chat cases");
    }
}
