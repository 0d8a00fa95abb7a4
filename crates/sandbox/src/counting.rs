//! Deterministic instruction counts where the machine has no hardware counters: the program
//! runs under valgrind's cachegrind (`--cache-sim=no`: instruction counting only, children
//! followed), inside the same jail, and the count is read from valgrind's summary on stderr.
//!
//! Counts are reproducible (same binary, inputs and environment; the sandbox fixes
//! `PYTHONHASHSEED`) and independent of the machine's load, but a counted run is ~35x slower
//! than a plain one and its time and memory figures are valgrind's, not the program's. A program
//! can add lines that look like valgrind's to its stderr but cannot remove valgrind's own (they
//! go through valgrind's private copy of the descriptor), and every summary line is summed, so a
//! forged line can only make its count larger. A program that floods stderr past the capture
//! limit loses its summary and gets no count.

use std::path::{Path, PathBuf};

/// The counting tool's arguments before the program's argv.
const CACHEGRIND: [&str; 5] = [
    "--tool=cachegrind",
    "--cache-sim=no",
    "--cachegrind-out-file=/dev/null",
    "--trace-children=yes",
    "--log-fd=2",
];

/// `valgrind` on `PATH`, resolved, when it lives where the jail can see it (under `/usr`).
pub(crate) fn find_valgrind() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("valgrind"))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .filter(|p| p.starts_with("/usr"))
}

/// `argv` run under `valgrind` counting instructions.
pub(crate) fn counted_argv(valgrind: &Path, argv: &[String]) -> Vec<String> {
    let mut v = vec![valgrind.display().to_string()];
    v.extend(CACHEGRIND.iter().map(|s| s.to_string()));
    v.extend(argv.iter().cloned());
    v
}

/// Whether `line` is valgrind's (`==PID== ...` messages, `--PID-- ...` warnings): its text.
fn valgrind_line(line: &str) -> Option<&str> {
    ["==", "--"].into_iter().find_map(|mark| {
        let (pid, text) = line.strip_prefix(mark)?.split_once(mark)?;
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(text)
    })
}

/// The instructions counted in `stderr` (the sum of every process's `I refs:` summary), with
/// valgrind's lines removed from it; `None` when no summary is there.
pub(crate) fn take_count(stderr: &mut Vec<u8>) -> Option<u64> {
    let text = String::from_utf8_lossy(stderr).into_owned();
    let mut total: Option<u64> = None;
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match valgrind_line(line.trim_end_matches('\n')) {
            Some(msg) => {
                if let Some(count) = msg.trim().strip_prefix("I").map(str::trim_start)
                    && let Some(count) = count.strip_prefix("refs:")
                {
                    let digits: String = count.chars().filter(char::is_ascii_digit).collect();
                    if let Ok(n) = digits.parse::<u64>() {
                        total = Some(total.unwrap_or(0).saturating_add(n));
                    }
                }
            }
            None => kept.push_str(line),
        }
    }
    *stderr = kept.into_bytes();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_every_process_are_summed_and_valgrind_lines_removed() {
        let mut stderr = b"==12== Cachegrind, a cache and branch-prediction profiler\n\
            ==12== Command: /usr/bin/python3 /box/main.py\n\
            --12-- warning: L3 cache found, using its data for the LL simulation.\n\
            a line of the program\n\
            ==13== I   refs:      1,000\n\
            ==12== \n\
            ==12== I   refs:      594,156,965\n"
            .to_vec();
        assert_eq!(take_count(&mut stderr), Some(594_157_965));
        assert_eq!(stderr, b"a line of the program\n");
        let mut none = b"Traceback: boom\n==x== I refs: 5\n".to_vec();
        assert_eq!(
            take_count(&mut none),
            None,
            "not a pid: the program's own line"
        );
        assert_eq!(none, b"Traceback: boom\n==x== I refs: 5\n");
    }

    #[test]
    fn the_program_runs_under_cachegrind_counting_only() {
        let argv = counted_argv(Path::new("/usr/bin/valgrind"), &["/box/main".to_string()]);
        assert_eq!(argv[0], "/usr/bin/valgrind");
        assert!(argv.contains(&"--cache-sim=no".to_string()));
        assert!(argv.contains(&"--trace-children=yes".to_string()));
        assert_eq!(argv.last().map(String::as_str), Some("/box/main"));
    }
}
