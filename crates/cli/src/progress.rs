//! Progress on stderr: indicatif bars when stderr is a terminal, plain lines every so often
//! otherwise, drawn for the library's measurements through its [`Observer`] trait.

use std::time::{Duration, Instant};

use afterburner_benchmarks::Observer;
use indicatif::{ProgressBar, ProgressStyle};

/// Environment variable: seconds between plain progress lines when stderr is not a terminal
/// (default 60).
pub const PLAIN_PROGRESS_VAR: &str = "AFTERBURNER_PROGRESS_SECS";

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    if pb.is_hidden() && len > 0 {
        let every = std::env::var(PLAIN_PROGRESS_VAR)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(Duration::from_secs(60), Duration::from_secs_f64);
        plain_progress(&pb, every);
    }
    pb
}

/// Writes `pb`'s progress as a plain line on stderr every `every` until it is finished or
/// dropped (for logs of long runs, where the bar is not drawn).
fn plain_progress(pb: &ProgressBar, every: Duration) {
    let weak = pb.downgrade();
    std::thread::spawn(move || {
        let mut last = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(pb) = weak.upgrade() else { break };
            if pb.is_finished() {
                break;
            }
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            let (pos, len) = (pb.position(), pb.length().unwrap_or(0));
            eprintln!(
                "{}: {pos}/{len} ({:.1}%), {} elapsed, eta {} {}",
                pb.prefix(),
                100.0 * pos as f64 / len.max(1) as f64,
                indicatif::HumanDuration(pb.elapsed()),
                indicatif::HumanDuration(pb.eta()),
                pb.message()
            );
        }
    });
}

/// Prints a line above the progress bar, or plainly on stderr when the bar is not drawn
/// (stderr is not a terminal).
pub fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// Draws a library measurement's stages as progress bars, one at a time.
#[derive(Debug, Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Observer for Bars {
    fn stage(&mut self, what: &str, total: usize) {
        if let Some(old) = self.bar.replace(progress(total, what)) {
            old.finish_and_clear();
        }
    }

    fn advance(&mut self, steps: usize) {
        if let Some(pb) = &self.bar {
            pb.inc(steps as u64);
        }
    }

    fn round(&mut self, round: usize, rounds: usize) {
        if let Some(pb) = &self.bar {
            pb.set_message(format!("round {} of {rounds}", round + 1));
        }
    }

    fn say(&mut self, line: &str) {
        match &self.bar {
            Some(pb) => say(pb, line.to_string()),
            None => eprintln!("{line}"),
        }
    }

    fn stage_done(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}
