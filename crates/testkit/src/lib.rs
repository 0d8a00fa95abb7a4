//! Test doubles shared by the workspace's tests, examples and demos; never a dependency of a
//! library (only a `dev-dependency`), so none of it is part of a public API.
//!
//! - [`client`]: a minimal blocking HTTP/1.1 client for talking to `afterburner serve` on
//!   loopback (the server's tests, its load example, the CLI's `serve` tests).
//! - [`contained`]: running a test inside an outer PID namespace and cgroup, so that tests of
//!   hostile programs are harmless even if the sandbox were broken (the sandbox's and the
//!   server's hostile and soak tests).
//! - [`scripted`]: a scripted OpenAI-compatible server on loopback that plays a model (the
//!   optimisation loop's tests, the CLI's `optimize` tests, `scripts/optimize-demo` through the
//!   `scripted_server` example of `afterburner-optimize`).

#![warn(missing_docs)]

pub mod client;
pub mod contained;
pub mod scripted;

/// The first of `headers` (names lowercased) named `name`, compared case-insensitively.
fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// A `Name: value` header line as (lowercased name, trimmed value); `None` without a colon.
fn header_line(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_whatever_the_case_of_the_name_asked_for() {
        let headers = vec![header_line("Retry-After: 3 ").unwrap()];
        assert_eq!(headers[0], ("retry-after".to_string(), "3".to_string()));
        assert_eq!(find_header(&headers, "RETRY-after"), Some("3"));
        assert_eq!(find_header(&headers, "content-length"), None);
        assert_eq!(header_line("no colon"), None);
    }
}
