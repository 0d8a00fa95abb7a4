//! Every kind of bad input gets its status and a JSON message saying what, where and why; the
//! server stays healthy afterwards.

mod support;

use serde_json::json;
use support::*;

#[test]
fn bad_requests_get_clear_errors_and_the_server_stays_healthy() {
    let server = start(afterburner_server::ServerConfig {
        max_body_bytes: 64 * 1024,
        ..config()
    });
    let addr = server.addr();
    let tests = json!([{"input": "1", "expected": "1"}]);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", "/execute", b"{\"code\": \"print(1)\", ".to_vec(), 400, "malformed JSON"),
        ("not an object", "/run_code", b"[1, 2]".to_vec(), 400, "invalid type"),
        ("empty body", "/v1/evaluate", Vec::new(), 400, "empty"),
        (
            "unknown language",
            "/execute",
            json!({"code": "x", "language": "cobol"}).to_string().into_bytes(),
            400,
            "unknown language `cobol`",
        ),
        (
            "unknown language (SandboxFusion)",
            "/run_code",
            json!({"code": "x", "language": "php"}).to_string().into_bytes(),
            400,
            "`language`",
        ),
        (
            "missing code",
            "/run_code",
            json!({"language": "python"}).to_string().into_bytes(),
            400,
            "missing field `code`",
        ),
        (
            "empty code",
            "/execute",
            json!({"code": "  ", "language": "python"}).to_string().into_bytes(),
            400,
            "`code` is empty",
        ),
        (
            "wrong type",
            "/execute",
            json!({"code": "print(1)", "language": "python", "timeout": "soon"}).to_string().into_bytes(),
            400,
            "`timeout`",
        ),
        (
            "negative limit",
            "/run_code",
            json!({"code": "print(1)", "language": "python", "run_timeout": -2}).to_string().into_bytes(),
            400,
            "positive number of seconds",
        ),
        (
            "libraries",
            "/execute",
            json!({"code": "print(1)", "language": "python", "libraries": ["numpy"]}).to_string().into_bytes(),
            400,
            "`libraries`",
        ),
        (
            "files",
            "/run_code",
            json!({"code": "print(1)", "language": "python", "files": {"a.txt": "aGk="}}).to_string().into_bytes(),
            400,
            "`files`",
        ),
        (
            "no problem",
            "/v1/evaluate",
            json!({"code": "print(1)", "language": "python"}).to_string().into_bytes(),
            400,
            "no problem",
        ),
        (
            "unknown problem id",
            "/v1/evaluate",
            json!({"code": "print(1)", "language": "python", "problem_id": "two-sum"}).to_string().into_bytes(),
            400,
            "no problem `two-sum`",
        ),
        (
            "problem id and tests",
            "/v1/evaluate",
            json!({"code": "print(1)", "language": "python", "problem_id": "x", "tests": tests}).to_string().into_bytes(),
            400,
            "not both",
        ),
        (
            "empty tests",
            "/v1/evaluate",
            json!({"code": "print(1)", "language": "python", "tests": []}).to_string().into_bytes(),
            400,
            "`tests` is empty",
        ),
        (
            "a method problem in C",
            "/v1/evaluate",
            json!({"code": "int main(){}", "language": "c", "tests": tests,
                   "entry": {"function": {"name": "f"}}}).to_string().into_bytes(),
            400,
            "only Python",
        ),
        (
            "zero repeats",
            "/v1/evaluate",
            json!({"code": "print(1)", "language": "python", "tests": tests, "repeats": 0}).to_string().into_bytes(),
            400,
            "`repeats`",
        ),
        (
            "empty batch",
            "/v1/reward",
            json!({"items": []}).to_string().into_bytes(),
            400,
            "`items` is empty",
        ),
        (
            "bad instruction, named by item",
            "/v1/reward",
            json!({"items": [
                {"response": "x", "tests": tests, "instruction": "time"},
                {"response": "x", "tests": tests, "instruction": "speed"},
            ]}).to_string().into_bytes(),
            400,
            "`items[1].instruction`: unknown instruction `speed`",
        ),
        (
            "bad language, named by item",
            "/v1/reward",
            json!({"items": [{"response": "x", "tests": tests, "instruction": "time", "language": "brainfuck"}]})
                .to_string().into_bytes(),
            400,
            "`items[0].language`",
        ),
        (
            "labels missing",
            "/get_reward",
            json!({"query": ["a", "b"], "labels": [""]}).to_string().into_bytes(),
            400,
            "1 labels for 2 queries",
        ),
        (
            "label not JSON",
            "/get_reward",
            json!({"query": ["a"], "labels": ["{problem"]}).to_string().into_bytes(),
            400,
            "`labels[0]`",
        ),
        (
            "body over the limit",
            "/execute",
            json!({"code": format!("print('{}')", "x".repeat(100 * 1024)), "language": "python"})
                .to_string().into_bytes(),
            413,
            "larger than the server's limit of 65536 bytes",
        ),
    ];
    for (what, path, body, status, needle) in &cases {
        let r = post_raw(addr, path, body);
        let message = error_with(&r, *status);
        assert!(
            message.contains(needle),
            "{what}: expected `{needle}` in the message, got: {message}"
        );
    }
    let e = error_with(&get(addr, "/v2/evaluate"), 404);
    assert!(e.contains("/v2/evaluate"), "{e}");
    let e = error_with(&get(addr, "/execute"), 405);
    assert!(e.contains("GET"), "{e}");

    assert_eq!(json_with(&get(addr, "/healthz"), 200)["status"], "ok");
    let ok = json_with(
        &post(
            addr,
            "/execute",
            &json!({"code": "print(6 * 7)", "language": "python"}),
        ),
        200,
    );
    assert_eq!(
        ok["output_dict"]["stdout"], "42\n",
        "still serving after bad input"
    );
    let status = json_with(&get(addr, "/status"), 200);
    assert_eq!(
        status["queue"]["depth"], 0,
        "no bad request left a job behind"
    );
}
