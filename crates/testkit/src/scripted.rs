//! A scripted OpenAI-compatible server on loopback: a test and demo double for a model server.
//!
//! It listens on `127.0.0.1:0` (a free port), answers `POST /v1/chat/completions` from a script
//! (replies in order, or a function of the request), and records every request it received, so
//! a test can check what the loop sent (the prompts, the headers) and what it did with each kind
//! of answer: completions, error statuses, `Retry-After`, garbage bodies, hang-ups, delays.
//! Plain HTTP/1.1, one thread per connection, `Connection: close` on every answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{find_header, header_line};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `200` with a chat completion whose message content is this text.
    Content(String),
    /// This status with this body, and a `Retry-After` header (seconds) when given.
    Status {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
        /// The `Retry-After` value, if any.
        retry_after: Option<u64>,
    },
    /// `200` with this body as it is (e.g. not JSON).
    Raw(String),
    /// Close the connection without answering.
    HangUp,
    /// Wait, then answer.
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// A completion answering `text`.
    pub fn content(text: impl Into<String>) -> Reply {
        Reply::Content(text.into())
    }

    /// An error status with a JSON error body.
    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            body: json!({"error": {"message": format!("scripted status {status}")}}).to_string(),
            retry_after: None,
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Arrival order, from 0.
    pub index: usize,
    /// `POST`, `GET`...
    pub method: String,
    /// The request path.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Received {
    /// A header's value (the name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The content of the last `user` message.
    pub fn user_prompt(&self) -> Option<&str> {
        self.body["messages"]
            .as_array()?
            .iter()
            .rev()
            .find(|m| m["role"] == "user")?["content"]
            .as_str()
    }
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    received: Mutex<Vec<Received>>,
    count: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stop: AtomicBool,
}

/// A running scripted server; stops when dropped.
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Answers with `replies` in arrival order; once they run out, with `400` (an unexpected call).
    pub fn start(replies: Vec<Reply>) -> std::io::Result<ScriptedServer> {
        let replies = Mutex::new(replies.into_iter());
        Self::with_handler(move |r: &Received| {
            replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next()
                .unwrap_or_else(|| Reply::Status {
                    status: 400,
                    body: format!("scripted server: no reply left for request {}", r.index),
                    retry_after: None,
                })
        })
    }

    /// Answers each request with `handler(request)`.
    pub fn with_handler(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<ScriptedServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            received: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let accept_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accept_shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Ok(ScriptedServer {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// The OpenAI base URL to give a client: `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        let mut r = self
            .shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        r.sort_by_key(|x| x.index);
        r
    }

    /// The last user message of every request, in arrival order.
    pub fn user_prompts(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| r.user_prompt().map(str::to_string))
            .collect()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request as read off the wire: method, path, headers, body.
type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

/// Reads one request: request line, headers, and a `Content-Length` body.
fn read_request(stream: &TcpStream) -> Option<RawRequest> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        headers.extend(header_line(h));
    }
    let len = find_header(&headers, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

fn respond(stream: &mut TcpStream, status: u16, body: &str, extra: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush());
}

fn completion_body(model: &Value, index: usize, text: &str) -> String {
    json!({
        "id": format!("chatcmpl-scripted-{index}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": text.len() / 4},
    })
    .to_string()
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((method, path, headers, body)) = read_request(&stream) else {
        return;
    };
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    let index = shared.count.fetch_add(1, Ordering::SeqCst);
    let received = Received {
        index,
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    shared
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(received.clone());
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if received.method != "POST" || received.path != "/v1/chat/completions" {
        respond(
            &mut stream,
            404,
            "{\"error\":{\"message\":\"not found\"}}",
            "",
        );
    } else {
        let mut reply = (shared.handler)(&received);
        while let Reply::Delayed(d, inner) = reply {
            std::thread::sleep(d);
            reply = *inner;
        }
        match reply {
            Reply::Content(text) => {
                let body = completion_body(&received.body["model"], index, &text);
                respond(&mut stream, 200, &body, "");
            }
            Reply::Status {
                status,
                body,
                retry_after,
            } => {
                let extra = retry_after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                respond(&mut stream, status, &body, &extra);
            }
            Reply::Raw(body) => respond(&mut stream, 200, &body, ""),
            Reply::HangUp | Reply::Delayed(..) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
}
