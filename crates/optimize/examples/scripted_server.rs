//! Serves canned chat completions on loopback, one file per answer, in order: a stand-in for a
//! model server in demos (`scripts/optimize-demo`).
//!
//! ```sh
//! cargo run -p afterburner-optimize --example scripted_server -- reply0.md reply1.md ...
//! ```
//!
//! Prints the OpenAI base URL (`http://127.0.0.1:<port>/v1`) on its first line and runs until
//! killed, noting each request on stderr. After the last file, requests get HTTP 400.

use std::io::Write;

use afterburner_testkit::scripted::{Reply, ScriptedServer};

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: scripted_server REPLY_FILE...");
        std::process::exit(2);
    }
    let mut replies = Vec::new();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => replies.push(Reply::content(text)),
            Err(e) => {
                eprintln!("scripted_server: cannot read {f}: {e}");
                std::process::exit(2);
            }
        }
    }
    let server = match ScriptedServer::start(replies) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scripted_server: cannot listen on loopback: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", server.base_url());
    let _ = std::io::stdout().flush();
    let mut seen = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let received = server.received();
        for r in &received[seen..] {
            let answer = files.get(r.index).map_or("HTTP 400", String::as_str);
            eprintln!(
                "scripted_server: request {} answered with {answer}",
                r.index
            );
        }
        seen = received.len();
    }
}
