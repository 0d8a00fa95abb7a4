//! The `afterburner serve` contract: it serves on the address it prints, stops on SIGTERM after
//! answering the request in flight, and refuses bad flags with exit code 2.

mod support;

use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use afterburner_testkit::client;
use serde_json::json;
use support::{command, serve};

fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for afterburner serve") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("afterburner serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_stops_the_server_after_answering_the_request_in_flight() {
    let (mut child, addr) = serve(&["--addr", "127.0.0.1:0", "--workers", "1"]);
    let health = client::get(addr, "/healthz", Duration::from_secs(10)).unwrap();
    assert_eq!(health.status, 200, "{}", health.text());
    let in_flight = std::thread::spawn(move || {
        client::post_json(
            addr,
            "/execute",
            &json!({"code": "import time\ntime.sleep(1)\nprint('done')", "language": "python"}),
            Duration::from_secs(60),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = wait_for_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}");
    let answer = in_flight
        .join()
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let v = answer.json().unwrap();
    assert_eq!(v["output_dict"]["stdout"], "done\n", "{v}");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "nothing listens after exit"
    );
}

#[test]
fn bad_flags_are_refused_with_exit_code_2_and_a_message() {
    for (args, needle) in [
        (vec!["--queue", "0"], "queue"),
        (vec!["--dataset", "bogus"], "--dataset bogus"),
        (
            vec!["--time-limit", "100", "--max-time-limit", "10"],
            "exceeds",
        ),
        (vec!["--workers", "0"], "worker"),
        (vec!["--header-timeout", "0"], "--header-timeout"),
        (vec!["--body-timeout", "nan"], "--body-timeout"),
        (vec!["--max-connections", "0"], "--max-connections"),
    ] {
        let out = command()
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run afterburner serve");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
