//! The chat client against a scripted OpenAI-compatible server on loopback: retries, what is not
//! retried, timeouts, the concurrency limit, what it sends, and the response cache.

use std::time::{Duration, Instant};

use afterburner_optimize::ResponseCache;
use afterburner_optimize::client::{ChatClient, ClientConfig};
use afterburner_optimize::{ChatModel, LlmError, Message};
use afterburner_testkit::scripted::{Received, Reply, ScriptedServer};

/// A client with fast retries (10 ms backoff) for `server`.
fn client(base_url: &str, retries: u32) -> ChatClient {
    let mut config = ClientConfig::new(base_url, "scripted-model");
    config.max_retries = retries;
    config.backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_secs(3);
    config.timeout = Duration::from_secs(5);
    ChatClient::new(config, None).unwrap()
}

fn ask(client: &ChatClient) -> Result<afterburner_optimize::Completion, LlmError> {
    client.complete(&[Message::user("write code")], "p/0", 0)
}

#[test]
fn server_errors_are_retried_until_an_answer_comes() {
    let server = ScriptedServer::start(vec![
        Reply::status(500),
        Reply::status(503),
        Reply::content("hello"),
    ])
    .unwrap();
    let c = ask(&client(&server.base_url(), 4)).unwrap();
    assert_eq!(c.content, "hello");
    assert_eq!(c.attempts, 3);
    assert!(!c.from_cache);
    assert_eq!(server.received().len(), 3);
}

#[test]
fn persistent_server_errors_give_up_after_the_retries_with_the_status_and_body() {
    let server = ScriptedServer::with_handler(|_| Reply::status(500)).unwrap();
    let e = ask(&client(&server.base_url(), 2)).unwrap_err();
    match &e {
        LlmError::Status {
            status, attempts, ..
        } => assert_eq!((*status, *attempts), (500, 3)),
        other => panic!("{other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("HTTP 500 after 3 attempt(s)"), "{text}");
    assert!(text.contains("scripted status 500"), "{text}");
    assert!(text.contains("/v1/chat/completions"), "{text}");
    assert_eq!(server.received().len(), 3);
}

#[test]
fn too_many_requests_waits_for_retry_after_then_retries() {
    let server = ScriptedServer::start(vec![
        Reply::Status {
            status: 429,
            body: "slow down".into(),
            retry_after: Some(1),
        },
        Reply::content("ok"),
    ])
    .unwrap();
    let start = Instant::now();
    let c = ask(&client(&server.base_url(), 3)).unwrap();
    assert_eq!(c.content, "ok");
    assert_eq!(c.attempts, 2);
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({:?})",
        start.elapsed()
    );
}

#[test]
fn garbage_json_fails_at_once_and_says_what_came_back() {
    let server =
        ScriptedServer::start(vec![Reply::Raw("<html>proxy error</html>".into())]).unwrap();
    let e = ask(&client(&server.base_url(), 4)).unwrap_err();
    assert!(matches!(e, LlmError::BadResponse { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("not JSON"), "{text}");
    assert!(text.contains("<html>proxy error</html>"), "{text}");
    assert_eq!(
        server.received().len(),
        1,
        "a malformed answer is not retried"
    );

    let server =
        ScriptedServer::start(vec![Reply::Raw(r#"{"object":"list","data":[]}"#.into())]).unwrap();
    let text = ask(&client(&server.base_url(), 4)).unwrap_err().to_string();
    assert!(text.contains("no `choices[0]`"), "{text}");
}

#[test]
fn client_errors_are_not_retried() {
    let server = ScriptedServer::with_handler(|_| Reply::Status {
        status: 401,
        body: r#"{"error":{"message":"invalid api key"}}"#.into(),
        retry_after: None,
    })
    .unwrap();
    let e = ask(&client(&server.base_url(), 4)).unwrap_err();
    assert!(e.to_string().contains("HTTP 401 after 1 attempt(s)"), "{e}");
    assert!(e.to_string().contains("invalid api key"), "{e}");
    assert_eq!(server.received().len(), 1);
}

#[test]
fn an_endpoint_that_is_down_is_unreachable_after_the_retries() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = ask(&client(&format!("http://127.0.0.1:{port}/v1"), 2)).unwrap_err();
    match &e {
        LlmError::Unreachable { attempts, url, .. } => {
            assert_eq!(*attempts, 3);
            assert!(url.contains(&port.to_string()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hang_ups_and_timeouts_are_retried() {
    let server = ScriptedServer::start(vec![
        Reply::HangUp,
        Reply::Delayed(Duration::from_secs(3), Box::new(Reply::content("late"))),
        Reply::content("in time"),
    ])
    .unwrap();
    let mut config = ClientConfig::new(server.base_url(), "m");
    config.backoff = Duration::from_millis(10);
    config.timeout = Duration::from_millis(1500);
    let client = ChatClient::new(config, None).unwrap();
    let c = ask(&client).unwrap();
    assert_eq!(c.content, "in time");
    assert_eq!(c.attempts, 3);

    let server = ScriptedServer::with_handler(|_| {
        Reply::Delayed(Duration::from_secs(2), Box::new(Reply::content("late")))
    })
    .unwrap();
    let mut config = ClientConfig::new(server.base_url(), "m");
    config.backoff = Duration::from_millis(10);
    config.max_retries = 1;
    config.timeout = Duration::from_millis(300);
    let e = ask(&ChatClient::new(config, None).unwrap()).unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(e.to_string().contains("2 attempt(s)"), "{e}");
}

#[test]
fn requests_carry_the_model_settings_and_the_api_key() {
    let server = ScriptedServer::start(vec![Reply::content("x")]).unwrap();
    let mut config = ClientConfig::new(server.base_url(), "qwen-coder");
    config.api_key = Some("sk-test".into());
    config.temperature = 0.25;
    config.max_tokens = Some(123);
    config.seed = Some(7);
    let client = ChatClient::new(config, None).unwrap();
    client
        .complete(&[Message::system("sys"), Message::user("usr")], "p/2", 2)
        .unwrap();
    let r: Received = server.received().remove(0);
    assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body["model"], "qwen-coder");
    assert_eq!(r.body["temperature"], 0.25);
    assert_eq!(r.body["max_tokens"], 123);
    assert_eq!(r.body["seed"], 9);
    assert_eq!(r.body["messages"][0]["role"], "system");
    assert_eq!(r.user_prompt(), Some("usr"));
}

#[test]
fn the_concurrency_limit_caps_requests_in_flight() {
    let server = ScriptedServer::with_handler(|_| {
        Reply::Delayed(Duration::from_millis(150), Box::new(Reply::content("ok")))
    })
    .unwrap();
    let mut config = ClientConfig::new(server.base_url(), "m");
    config.concurrency = 2;
    let client = ChatClient::new(config, None).unwrap();
    std::thread::scope(|s| {
        for k in 0..6 {
            let client = &client;
            s.spawn(move || {
                client
                    .complete(&[Message::user("go")], &format!("p/{k}"), k)
                    .unwrap()
            });
        }
    });
    assert_eq!(server.received().len(), 6);
    assert_eq!(server.max_in_flight(), 2);
}

#[test]
fn cached_answers_are_replayed_without_a_request_and_each_draw_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ScriptedServer::start(vec![Reply::content("first"), Reply::content("second")]).unwrap();
    let mut config = ClientConfig::new(server.base_url(), "m");
    config.backoff = Duration::from_millis(10);
    let cached = |config: &ClientConfig| {
        ChatClient::new(config.clone(), Some(ResponseCache::new(dir.path()))).unwrap()
    };
    let client = cached(&config);
    let messages = [Message::user("same prompt")];
    assert_eq!(
        client.complete(&messages, "p/1", 1).unwrap().content,
        "first"
    );
    // The same prompt at another iteration is a new draw, not a replay.
    assert_eq!(
        client.complete(&messages, "p/2", 2).unwrap().content,
        "second"
    );
    assert_eq!(server.received().len(), 2);

    // A new client (a re-run) replays both without the server.
    drop(server);
    let again = cached(&config);
    let c = again.complete(&messages, "p/1", 1).unwrap();
    assert_eq!(c.content, "first");
    assert!(c.from_cache);
    assert_eq!(c.attempts, 0);
    assert_eq!(
        again.complete(&messages, "p/2", 2).unwrap().content,
        "second"
    );
    // A changed setting is a different request.
    config.temperature = 0.1;
    config.max_retries = 0;
    assert!(cached(&config).complete(&messages, "p/1", 1).is_err());
}
