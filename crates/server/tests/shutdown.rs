//! Graceful shutdown: stop accepting, answer queued programs with 503 (never run), finish the
//! running one and answer it, tear the sandbox down, leave no process behind.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Whether any process on the machine has `marker` in its command line.
fn process_with(marker: &str) -> Option<String> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return Some(format!("{pid}: {}", String::from_utf8_lossy(&cmdline)));
        }
    }
    None
}

#[test]
fn shutdown_finishes_the_running_program_refuses_the_queued_and_leaves_nothing() {
    let server = start(config());
    let addr = server.addr();
    let marker = format!(
        "afterburner-shutdown-marker-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    // The running program re-executes itself with the marker in its command line, so that
    // it can be looked for afterwards.
    let running = json!({
        "code": format!(
            "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', \
             'import time; time.sleep(1.5); print(\"finished\")', '{marker}'])"
        ),
        "language": "python",
    });
    let queued = json!({"code": "print('never')", "language": "python"});
    let (first, others, shutdown_took) = std::thread::scope(|s| {
        let first = s.spawn(|| post(addr, "/execute", &running));
        let deadline = Instant::now() + Duration::from_secs(20);
        while process_with(&marker).is_none() {
            assert!(Instant::now() < deadline, "the long program never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let others: Vec<_> = (0..2)
            .map(|_| s.spawn(|| post(addr, "/execute", &queued)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while json_with(&get(addr, "/status"), 200)["queue"]["depth"] != 2 {
            assert!(
                Instant::now() < deadline,
                "the two requests were never queued"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = Instant::now();
        server.shutdown().expect("a clean shutdown");
        let took = start.elapsed();
        (
            first.join().unwrap(),
            others
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>(),
            took,
        )
    });
    let v = json_with(&first, 200);
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["output_dict"]["stdout"], "finished\n");
    for r in &others {
        let e = error_with(r, 503);
        assert!(e.contains("shutting down"), "{e}");
        assert!(r.header("retry-after").is_some());
    }
    assert!(
        shutdown_took < Duration::from_secs(30),
        "shutdown waited only for the running program: {shutdown_took:?}"
    );
    assert_eq!(
        process_with(&marker),
        None,
        "no process outlived the server"
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the server no longer accepts connections"
    );
}
