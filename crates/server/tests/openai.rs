//! The OpenAI endpoints answered by the embedded model: `/v1/chat/completions` and
//! `/v1/completions` give what the model generates for the same input (greedy), in OpenAI's
//! shapes; `/v1/models` lists the model; bad requests get OpenAI-style errors naming the field;
//! a server without a model says how to start one.

mod support;

use afterburner_model::{ChatMessage, DType, Device, GenerationSettings, LanguageModel};
use afterburner_server::{OpenAiModel, ServerConfig};
use serde_json::{Value, json};
use support::*;

const TINY_QWEN2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../model/tests/fixtures/tiny-qwen2"
);

fn tiny() -> LanguageModel {
    LanguageModel::from_folder(TINY_QWEN2.as_ref(), DType::F32, &Device::Cpu).unwrap()
}

fn with_model() -> ServerConfig {
    ServerConfig {
        model: Some(OpenAiModel::start(tiny(), "tiny-qwen2", 8).unwrap()),
        ..config()
    }
}

/// The `error` object of an OpenAI-style error response with the expected status.
fn openai_error(r: &afterburner_testkit::client::Response, status: u16) -> Value {
    let v = json_with(r, status);
    let error = v["error"].clone();
    assert!(error["message"].is_string(), "{v}");
    assert!(error["type"].is_string(), "{v}");
    error
}

#[test]
fn chat_completions_answer_what_the_model_generates_in_openai_shape() {
    let server = start(with_model());
    let addr = server.addr();
    let messages = json!([
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": [{"type": "text", "text": "def add(a, b):"}]}
    ]);
    let r = post(
        addr,
        "/v1/chat/completions",
        &json!({"model": "tiny-qwen2", "messages": messages, "temperature": 0, "max_tokens": 12}),
    );
    let v = json_with(&r, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny-qwen2");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");

    let expected = tiny()
        .chat(
            &[
                ChatMessage::system("You write Python."),
                ChatMessage::user("def add(a, b):"),
            ],
            &GenerationSettings::greedy(12),
        )
        .unwrap();
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], expected.prompt_tokens());
    assert_eq!(usage["completion_tokens"], expected.completion_tokens());
    assert_eq!(
        usage["total_tokens"],
        expected.prompt_tokens() + expected.completion_tokens()
    );

    // n samples in one request, seeded: reproducible.
    let sampled = |seed: u64| {
        json_with(
            &post(
                addr,
                "/v1/chat/completions",
                &json!({"messages": messages, "temperature": 1.0, "n": 3, "seed": seed, "max_tokens": 8}),
            ),
            200,
        )
    };
    let a = sampled(4);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    assert_eq!(a["choices"], sampled(4)["choices"]);
}

#[test]
fn text_completions_continue_each_prompt_and_models_lists_the_model() {
    let server = start(with_model());
    let addr = server.addr();
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": ["def fib(n):", "import os"], "temperature": 0, "max_tokens": 6}),
    );
    let v = json_with(&r, 200);
    assert_eq!(v["object"], "text_completion");
    let model = tiny();
    for (i, prompt) in ["def fib(n):", "import os"].iter().enumerate() {
        let expected = model
            .generate_raw(prompt, &GenerationSettings::greedy(6))
            .unwrap();
        assert_eq!(v["choices"][i]["index"], i);
        assert_eq!(v["choices"][i]["text"], expected.text.as_str(), "{prompt}");
        assert_eq!(
            v["choices"][i]["finish_reason"],
            expected.finish_reason.as_str()
        );
    }
    let models = json_with(&get(addr, "/v1/models"), 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-qwen2");
    assert_eq!(models["data"][0]["object"], "model");
}

#[test]
fn bad_requests_get_openai_errors_that_name_the_field() {
    let server = start(with_model());
    let addr = server.addr();
    let e = openai_error(
        &post_raw(addr, "/v1/chat/completions", b"{\"messages\": ["),
        400,
    );
    assert_eq!(e["type"], "invalid_request_error");
    assert!(
        e["message"].as_str().unwrap().contains("malformed JSON"),
        "{e}"
    );

    let e = openai_error(
        &post(addr, "/v1/chat/completions", &json!({"temperature": 0})),
        400,
    );
    assert!(e["message"].as_str().unwrap().contains("messages"), "{e}");

    let e = openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"content": "hi"}]}),
        ),
        400,
    );
    assert_eq!(e["param"], "messages[0].role");

    let e = openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        ),
        400,
    );
    assert_eq!(e["param"], "stream");
    assert!(
        e["message"].as_str().unwrap().contains("stream: false"),
        "{e}"
    );

    let e = openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
        ),
        400,
    );
    assert_eq!(e["param"], "temperature");

    let e = openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].as_str().unwrap().contains("tiny-qwen2"), "{e}");

    let long = "x = 1\n".repeat(300);
    let e = openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long}]}),
        ),
        400,
    );
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(e["message"].as_str().unwrap().contains("256"), "{e}");
}

#[test]
fn a_server_without_a_model_says_how_to_start_one() {
    let server = start(config());
    let addr = server.addr();
    let e = openai_error(
        &post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        ),
        404,
    );
    assert!(e["message"].as_str().unwrap().contains("--model"), "{e}");
    let models = json_with(&get(addr, "/v1/models"), 200);
    assert_eq!(models["data"], json!([]));
}
