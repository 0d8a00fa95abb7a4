//! Ctrl-C: the first press raises the measurement's [`StopFlag`] (runs in progress finish and
//! every run made is kept), the second exits at once.

use std::sync::OnceLock;

use afterburner_benchmarks::StopFlag;

/// The process's stop flag, with the Ctrl-C handler installed on first use.
pub fn stop_flag() -> StopFlag {
    static FLAG: OnceLock<StopFlag> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = StopFlag::new();
        let raised = flag.clone();
        let result = ctrlc::set_handler(move || {
            if raised.stop() {
                eprintln!("\ninterrupted again: exiting now");
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: finishing the runs in progress (results so far are saved); \
                 press Ctrl-C again to quit at once"
            );
        });
        if let Err(e) = result {
            eprintln!(
                "warning: cannot handle Ctrl-C ({e}); interrupting may lose the run in progress"
            );
        }
        flag
    })
    .clone()
}
