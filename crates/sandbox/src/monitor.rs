//! Supervising one started sandbox: sampling memory, enforcing limits, collecting output, and
//! turning what happened into a [`RunResult`].
//!
//! One thread does all of it in a single `ppoll` loop, pinned to the supervisor's core so that it
//! never competes with the measured program. Memory is the resident set of every process in the
//! run's cgroup, read through descriptors of `/proc/PID/statm` kept open and re-read with `pread`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::cgroup::RunCgroup;
use crate::jail::{
    self, Jail, Report, TAG_DONE, TAG_EXEC_AT, TAG_EXIT, TAG_EXIT_RSS, TAG_EXIT_STATUS, TAG_FAIL,
    TAG_RUSAGE, monotonic_ns,
};
use crate::sys::pread_to_string;
use crate::{Limits, Measurement, MemorySample, RunResult, SandboxError, Status};

/// How the supervisor watches one run.
pub(crate) struct Supervision<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) sample_interval: Duration,
    pub(crate) supervisor_cpu: Option<usize>,
    pub(crate) keep_trace: bool,
    pub(crate) cgroup: Option<&'a RunCgroup>,
    pub(crate) count_instructions: bool,
}

/// Why the supervisor stopped a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    WallTime,
    CpuTime,
    Output,
    /// Without a cgroup: the sampled resident memory of the tree passed the limit.
    Memory,
}

/// The raw facts of a finished run, before classification.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Facts {
    pub(crate) kill: Option<KillReason>,
    pub(crate) wait_status: Option<i32>,
    pub(crate) oom_kills: u64,
    pub(crate) pids_refused: u64,
    pub(crate) cpu_ms: f64,
    pub(crate) peak_rss_kb: u64,
    /// The program reported an allocation failure (used only where no cgroup enforces memory).
    pub(crate) allocation_failed: bool,
}

/// Allocation-failure reports of the supported runtimes, as they appear on stderr.
const ALLOCATION_FAILURES: [&[u8]; 5] = [
    b"MemoryError",
    b"std::bad_alloc",
    b"java.lang.OutOfMemoryError",
    b"JavaScript heap out of memory",
    b"runtime: out of memory",
];

/// Whether `stderr` carries a runtime's report of a failed allocation.
pub(crate) fn reports_allocation_failure(stderr: &[u8]) -> bool {
    ALLOCATION_FAILURES
        .iter()
        .any(|m| stderr.windows(m.len()).any(|w| w == *m))
}

/// Decides the status, exit code, signal and explanation from the facts of a run.
pub(crate) fn classify(
    f: &Facts,
    limits: &Limits,
    memory_enforced: bool,
) -> (Status, Option<i32>, Option<i32>, Option<String>) {
    let (exit_code, signal) = match f.wait_status {
        Some(st) if libc::WIFEXITED(st) => (Some(libc::WEXITSTATUS(st)), None),
        Some(st) if libc::WIFSIGNALED(st) => (None, Some(libc::WTERMSIG(st))),
        _ => (None, Some(libc::SIGKILL)),
    };
    let limit_ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mem_mib = limits.memory_bytes / (1024 * 1024);
    let status_msg = match f.kill {
        Some(KillReason::WallTime) => (
            Status::TimeLimit,
            Some(format!(
                "wall time limit of {} ms exceeded",
                limit_ms(limits.wall_time)
            )),
        ),
        Some(KillReason::CpuTime) => (
            Status::TimeLimit,
            Some(format!(
                "CPU time limit of {} ms exceeded",
                limit_ms(limits.cpu_time)
            )),
        ),
        Some(KillReason::Output) => (
            Status::OutputLimit,
            Some(format!(
                "output exceeded the cap of {} bytes",
                limits.output_bytes
            )),
        ),
        Some(KillReason::Memory) => (
            Status::MemoryLimit,
            Some(format!(
                "memory limit of {mem_mib} MiB exceeded (the supervisor's sample of the \
                 process tree's resident memory)"
            )),
        ),
        None if f.oom_kills > 0 => (
            Status::MemoryLimit,
            Some(format!(
                "memory limit of {mem_mib} MiB exceeded ({} process(es) killed)",
                f.oom_kills
            )),
        ),
        None if signal == Some(libc::SIGXCPU) || f.cpu_ms >= limit_ms(limits.cpu_time) => (
            Status::TimeLimit,
            Some(format!(
                "CPU time limit of {} ms exceeded",
                limit_ms(limits.cpu_time)
            )),
        ),
        None if signal == Some(libc::SIGXFSZ) => (
            Status::OutputLimit,
            Some(format!(
                "file size limit of {} bytes exceeded",
                limits.file_size_bytes
            )),
        ),
        None if exit_code == Some(0) => (Status::Accepted, None),
        None if !memory_enforced
            && (f.allocation_failed
                || f.peak_rss_kb as f64 >= 0.9 * (limits.memory_bytes / 1024) as f64) =>
        {
            (
                Status::MemoryLimit,
                Some(format!(
                    "failed near the memory limit of {mem_mib} MiB (enforced by rlimit)"
                )),
            )
        }
        None => {
            let mut msg = match (exit_code, signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (_, Some(s)) => format!("killed by signal {s} ({})", signal_name(s)),
                _ => "ended abnormally".to_string(),
            };
            if f.pids_refused > 0 {
                msg.push_str(&format!(
                    "; {} fork(s) refused at the limit of {} processes",
                    f.pids_refused, limits.max_processes
                ));
            }
            (Status::RuntimeError, Some(msg))
        }
    };
    (status_msg.0, exit_code, signal, status_msg.1)
}

/// A short name for common signals.
pub(crate) fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "signal",
    }
}

/// Parses the resident-pages field (the second) of a `statm` line.
pub(crate) fn statm_resident_pages(buf: &[u8]) -> u64 {
    let mut fields = buf.split(|b| *b == b' ');
    let _size = fields.next();
    let Some(res) = fields.next() else { return 0 };
    res.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'))
}

/// Parses a whitespace-separated list of pids.
fn parse_pids(buf: &[u8], out: &mut Vec<i32>) {
    out.clear();
    let mut cur: Option<i32> = None;
    for &b in buf {
        if b.is_ascii_digit() {
            cur = Some(cur.unwrap_or(0) * 10 + i32::from(b - b'0'));
        } else if let Some(p) = cur.take() {
            out.push(p);
        }
    }
    if let Some(p) = cur {
        out.push(p);
    }
}

/// Whether the program has exec'd: its name is no longer the pre-exec marker.
struct ExecWatch {
    comm: Option<File>,
    done: bool,
}

impl ExecWatch {
    fn new(pid: i32) -> ExecWatch {
        ExecWatch {
            comm: File::open(format!("/proc/{pid}/comm")).ok(),
            done: false,
        }
    }

    fn exec_done(&mut self) -> bool {
        if !self.done {
            let mut buf = [0u8; 32];
            self.done = match &self.comm {
                Some(f) => {
                    let n = pread_to_string(f, &mut buf).unwrap_or(0);
                    let marker = jail::PRE_EXEC_NAME.to_bytes();
                    n > 0 && !buf[..n].starts_with(marker)
                }
                None => true,
            };
        }
        self.done
    }
}

/// The set of processes whose memory is summed, with their `statm` files kept open.
struct Tree {
    procs: Option<File>,
    init_pid: i32,
    files: HashMap<i32, File>,
    scratch: Vec<u8>,
    pids: Vec<i32>,
    page_kb: u64,
}

impl Tree {
    fn new(cgroup: Option<&RunCgroup>, init_pid: i32, program_pid: i32) -> Tree {
        // SAFETY: sysconf takes no pointers and has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let mut t = Tree {
            procs: cgroup.and_then(|c| File::open(c.procs_path()).ok()),
            init_pid,
            files: HashMap::new(),
            scratch: vec![0; 1 << 16],
            pids: Vec::new(),
            page_kb: (page.max(4096) as u64) / 1024,
        };
        t.track(program_pid);
        t
    }

    fn track(&mut self, pid: i32) {
        if let Ok(f) = File::open(format!("/proc/{pid}/statm")) {
            self.files.insert(pid, f);
        }
    }

    /// Re-reads which processes belong to the run.
    fn refresh(&mut self) {
        let mut pids = std::mem::take(&mut self.pids);
        match &self.procs {
            Some(f) => {
                let n = pread_to_string(f, &mut self.scratch).unwrap_or(0);
                parse_pids(&self.scratch[..n], &mut pids);
            }
            None => {
                pids.clear();
                descendants(self.init_pid, &mut pids);
            }
        }
        self.files.retain(|p, _| pids.contains(p));
        for &p in &pids {
            if !self.files.contains_key(&p) {
                self.track(p);
            }
        }
        self.pids = pids;
    }

    /// CPU time of the run from `/proc`, in ns: every live process's own time and what it
    /// reaped, plus what the init reaped (used where no cgroup accounts for the tree).
    fn proc_cpu_ns(&self) -> u64 {
        let mut ticks = stat_ticks(self.init_pid).map_or(0, |(_, reaped)| reaped);
        for &p in &self.pids {
            if let Some((own, reaped)) = stat_ticks(p) {
                ticks += own + reaped;
            }
        }
        ticks * 1_000_000_000 / clock_ticks_per_second()
    }

    /// Resident memory of the tree now, in KiB.
    fn rss_kb(&self) -> u64 {
        let mut buf = [0u8; 128];
        let mut pages = 0;
        for f in self.files.values() {
            let n = pread_to_string(f, &mut buf).unwrap_or(0);
            pages += statm_resident_pages(&buf[..n]);
        }
        pages * self.page_kb
    }
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes no pointers and has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// `(utime + stime, cutime + cstime)` of a process in clock ticks, from `/proc/PID/stat`.
fn stat_ticks(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text)
}

/// Parses `(utime + stime, cutime + cstime)` out of a `/proc/PID/stat` line.
pub(crate) fn parse_stat_ticks(text: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

/// Every descendant of `pid` (not `pid` itself), through `/proc/*/task/*/children`.
fn descendants(pid: i32, out: &mut Vec<i32>) {
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            if let Ok(text) = std::fs::read_to_string(path) {
                for c in text.split_whitespace().filter_map(|s| s.parse().ok()) {
                    out.push(c);
                    stack.push(c);
                }
            }
        }
    }
}

/// A hardware instruction counter following the program and its children from exec on.
struct InstructionCounter(OwnedFd);

impl InstructionCounter {
    fn open(pid: i32) -> Option<InstructionCounter> {
        // struct perf_event_attr, first published layout (PERF_ATTR_SIZE_VER0 = 64 bytes).
        #[repr(C)]
        struct Attr {
            kind: u32,
            size: u32,
            config: u64,
            sample_period: u64,
            sample_type: u64,
            read_format: u64,
            flags: u64,
            wakeup_events: u32,
            bp_type: u32,
            config1: u64,
        }
        const DISABLED: u64 = 1;
        const INHERIT: u64 = 1 << 1;
        const EXCLUDE_KERNEL: u64 = 1 << 5;
        const EXCLUDE_HV: u64 = 1 << 6;
        const ENABLE_ON_EXEC: u64 = 1 << 12;
        let attr = Attr {
            kind: 0,   // PERF_TYPE_HARDWARE
            size: 64,  // PERF_ATTR_SIZE_VER0
            config: 1, // PERF_COUNT_HW_INSTRUCTIONS
            sample_period: 0,
            sample_type: 0,
            read_format: 0,
            flags: DISABLED | INHERIT | EXCLUDE_KERNEL | EXCLUDE_HV | ENABLE_ON_EXEC,
            wakeup_events: 0,
            bp_type: 0,
            config1: 0,
        };
        // SAFETY: `attr` is a live perf_event_attr prefix of the size it declares (64, PERF_ATTR_SIZE_VER0), read only during the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const Attr,
                pid,
                -1i32,
                -1i32,
                8u64, // PERF_FLAG_FD_CLOEXEC
            )
        };
        // SAFETY: perf_event_open returned a new descriptor (checked >= 0) that nothing else owns.
        (fd >= 0).then(|| InstructionCounter(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    fn read(&self) -> Option<u64> {
        let mut v = 0u64;
        // SAFETY: read writes at most 8 bytes into the 8-byte `v`.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        (n == 8).then_some(v)
    }
}

/// Pins the current thread to one core and sharpens its timer; restores both on drop.
struct ThreadTuning {
    old_mask: Option<libc::cpu_set_t>,
    old_slack: libc::c_int,
}

impl ThreadTuning {
    fn apply(cpu: Option<usize>) -> ThreadTuning {
        // SAFETY: prctl on the calling thread's timer slack takes no pointers; the cpu_set_t values are zeroed bit arrays (valid, empty) passed with their exact size.
        unsafe {
            let old_slack = libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0);
            libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
            let mut old_mask = None;
            if let Some(cpu) = cpu {
                let mut old: libc::cpu_set_t = std::mem::zeroed();
                let size = std::mem::size_of::<libc::cpu_set_t>();
                if libc::sched_getaffinity(0, size, &mut old) == 0 {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, size, &set) == 0 {
                        old_mask = Some(old);
                    }
                }
            }
            ThreadTuning {
                old_mask,
                old_slack,
            }
        }
    }
}

impl Drop for ThreadTuning {
    fn drop(&mut self) {
        // SAFETY: restores the calling thread's own settings; `m` is a valid cpu_set_t saved by `apply`, passed with its exact size.
        unsafe {
            if self.old_slack > 0 {
                libc::prctl(
                    libc::PR_SET_TIMERSLACK,
                    self.old_slack as libc::c_ulong,
                    0,
                    0,
                    0,
                );
            }
            if let Some(m) = &self.old_mask {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), m);
            }
        }
    }
}

/// Output captured from one stream, up to a cap.
struct Capture {
    fd: RawFd,
    data: Vec<u8>,
    cap: usize,
    truncated: bool,
    open: bool,
}

impl Capture {
    fn new(fd: RawFd, cap: u64) -> Capture {
        Capture {
            fd,
            data: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            truncated: false,
            open: true,
        }
    }

    /// Reads what is available; returns true when the cap was exceeded.
    fn read_some(&mut self, buf: &mut [u8]) -> bool {
        // SAFETY: read writes at most `buf.len()` bytes into the exclusively borrowed `buf`; `self.fd` is a pipe end the jail keeps open while it is captured.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted && e.kind() != io::ErrorKind::WouldBlock {
                self.open = false;
            }
            return false;
        }
        if n == 0 {
            self.open = false;
            return false;
        }
        let n = n as usize;
        let room = self.cap.saturating_sub(self.data.len());
        self.data.extend_from_slice(&buf[..n.min(room)]);
        if n > room {
            self.truncated = true;
        }
        self.truncated
    }
}

/// Runs the loop for a started jail until the program exits or is stopped.
pub(crate) fn supervise(jail: &mut Jail, s: &Supervision<'_>) -> Result<RunResult, SandboxError> {
    let _tuning = ThreadTuning::apply(s.supervisor_cpu);
    let counter = if s.count_instructions {
        InstructionCounter::open(jail.program_pid)
    } else {
        None
    };
    jail.go()?;
    let t0 = match jail.read_report(10_000)? {
        Some(Report { tag, value, .. }) if tag == TAG_EXEC_AT => value,
        Some(r) if r.tag == TAG_FAIL => return Err(jail::setup_error(r, &[])),
        other => {
            return Err(SandboxError::Setup {
                step: "privilege drop".into(),
                source: io::Error::other(format!("unexpected report {other:?}")),
            });
        }
    };
    let limits = s.limits;
    let wall_deadline = t0 + limits.wall_time.as_nanos() as u64;
    let cpu_limit_ns = limits.cpu_time.as_nanos() as u64;
    let interval = s.sample_interval.as_nanos().max(1_000) as u64;
    let mut tree = Tree::new(s.cgroup, jail.init_pid, jail.program_pid);
    let mut exec = ExecWatch::new(jail.program_pid);
    let cpu_file = s.cgroup.and_then(|c| c.open_cpu());
    let mut cpu_buf = [0u8; 512];
    let mut io_buf = vec![0u8; 1 << 16];
    let mut out = Capture::new(jail.stdout.as_raw_fd(), limits.output_bytes);
    let mut err = Capture::new(jail.stderr.as_raw_fd(), limits.output_bytes);

    let mut trace = Vec::new();
    let (mut samples, mut peak, mut integral_kb_ns) = (0u64, 0u64, 0f64);
    let mut last_t = t0;
    let mut last_rss = 0u64;
    let mut next_refresh = t0;
    let mut next_tick = t0;
    let mut next_cpu_check = t0 + 2_000_000;
    let mut kill: Option<KillReason> = None;
    let mut done: Option<(i32, u64)> = None;
    let mut rusage_cpu_us: Option<u64> = None;
    let mut exit_stop: Option<(u64, u64)> = None;
    let mut exited_early = false;
    let mut exit_rss: Option<u64> = None;
    let mut setup_failure: Option<Report> = None;
    let mut end_t = t0;
    // Without a cgroup, the supervisor enforces memory and CPU time from its own readings.
    let memory_limit_kb = limits.memory_bytes / 1024;
    let mut proc_cpu_ns: Option<u64> = None;

    'run: loop {
        let now = monotonic_ns();
        if now >= next_refresh {
            tree.refresh();
            next_refresh = now + 1_000_000;
        }
        // Before exec completes, /proc shows the fork of the supervisor; a tree with nothing
        // resident has exited. Neither is a sample of the program.
        let rss = if exec.exec_done() { tree.rss_kb() } else { 0 };
        if rss > 0 {
            samples += 1;
            integral_kb_ns += rss as f64 * (now - last_t) as f64;
            peak = peak.max(rss);
            if s.keep_trace && trace.len() < 2_000_000 {
                trace.push(MemorySample {
                    t_ns: now - t0,
                    rss_kb: rss,
                });
            }
            (last_t, last_rss) = (now, rss);
            if s.cgroup.is_none() && rss > memory_limit_kb {
                kill = Some(KillReason::Memory);
            }
        }

        if kill.is_none() && now >= wall_deadline {
            kill = Some(KillReason::WallTime);
        } else if kill.is_none() && now >= next_cpu_check {
            next_cpu_check = now + 2_000_000;
            if let (Some(f), Some(cg)) = (&cpu_file, s.cgroup) {
                let n = pread_to_string(f, &mut cpu_buf).unwrap_or(0);
                let text = std::str::from_utf8(&cpu_buf[..n]).unwrap_or("");
                if cg.parse_cpu(text).is_some_and(|c| c >= cpu_limit_ns) {
                    kill = Some(KillReason::CpuTime);
                }
            } else if s.cgroup.is_none() {
                let cpu = tree.proc_cpu_ns();
                proc_cpu_ns = Some(cpu);
                if cpu >= cpu_limit_ns {
                    kill = Some(KillReason::CpuTime);
                }
            }
        }
        if kill.is_some() {
            end_t = monotonic_ns();
            if s.cgroup.is_none() {
                proc_cpu_ns = Some(tree.proc_cpu_ns());
            }
            jail.kill_and_reap();
            break 'run;
        }

        // An absolute schedule: wake-up latency does not stretch the period. After a stall
        // (the supervisor descheduled), resume from now instead of sampling in a burst.
        next_tick += interval;
        let after = monotonic_ns();
        if next_tick < after {
            next_tick = after;
        }
        let wait = next_tick.min(wall_deadline).saturating_sub(after);
        let ts = libc::timespec {
            tv_sec: (wait / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait % 1_000_000_000) as libc::c_long,
        };
        let mut fds = [
            libc::pollfd {
                fd: jail.report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if out.open { out.fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if err.open { err.fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` holds 3 valid pollfds (the count given), `ts` is a live timespec and a null signal mask is allowed.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
        if r <= 0 {
            continue;
        }
        for (i, cap) in [(1, &mut out), (2, &mut err)] {
            if fds[i].revents != 0 && cap.read_some(&mut io_buf) && kill.is_none() {
                kill = Some(KillReason::Output);
            }
        }
        if kill == Some(KillReason::Output) {
            end_t = monotonic_ns();
            jail.kill_and_reap();
            break 'run;
        }
        if fds[0].revents != 0 {
            match jail::read_report_now(jail.report.as_raw_fd())? {
                Some(r) if r.tag == TAG_RUSAGE => rusage_cpu_us = Some(r.value),
                Some(r) if r.tag == TAG_EXIT_RSS => exit_rss = Some(u64::from(r.step)),
                Some(r) if r.tag == TAG_EXIT => exit_stop = Some((u64::from(r.step), r.value)),
                // The exit status is known at the exit stop: the run is over for measurement;
                // the teardown that follows is not the program's time.
                Some(r) if r.tag == TAG_EXIT_STATUS => {
                    done = Some((r.step as i32, r.value));
                    exited_early = true;
                    break 'run;
                }
                Some(r) if r.tag == TAG_DONE => {
                    done = Some((r.step as i32, r.value));
                    break 'run;
                }
                Some(r) if r.tag == TAG_FAIL => setup_failure = Some(r),
                Some(_) => {}
                None => {
                    end_t = monotonic_ns();
                    break 'run;
                }
            }
        }
    }
    // The exit stop (memory still mapped) is the precise end; reaping is the fallback.
    if let Some((_, t)) = done {
        end_t = exit_stop.map_or(t, |(_, te)| te).max(t0);
    }
    if let Some((hwm_kb, _)) = exit_stop {
        peak = peak.max(hwm_kb);
    }
    // The exit stop is a last, exact sample (right-endpoint rule, as for every sample); without
    // it the final stretch is held at the last sampled value.
    match (exit_rss, exit_stop) {
        (Some(rss), Some((_, t))) if t >= last_t => {
            integral_kb_ns += rss as f64 * (t - last_t) as f64;
            samples += 1;
            peak = peak.max(rss);
            if s.keep_trace && trace.len() < 2_000_000 {
                trace.push(MemorySample {
                    t_ns: t - t0,
                    rss_kb: rss,
                });
            }
        }
        _ => integral_kb_ns += last_rss as f64 * end_t.saturating_sub(last_t) as f64,
    }
    if exited_early && s.cgroup.is_none() {
        // Without a cgroup the exact CPU time is the init's `wait4` of the program, reported as
        // soon as its exit completes (a wait for the exit, not part of the measured time).
        let deadline = monotonic_ns() + 2_000_000_000;
        while rusage_cpu_us.is_none() {
            let left_ms = deadline.saturating_sub(monotonic_ns()) / 1_000_000;
            if left_ms == 0 {
                break;
            }
            match jail.read_report(left_ms as i32) {
                Ok(Some(r)) if r.tag == TAG_RUSAGE => rusage_cpu_us = Some(r.value),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    if exited_early {
        // Everything the program wrote is in the pipes already; the namespace is killed and
        // reaped by the caller, off the measured path.
        drain(&mut out, &mut err, &mut io_buf, false);
    } else {
        jail.kill_and_reap();
        drain(&mut out, &mut err, &mut io_buf, true);
    }
    if let Some(r) = setup_failure {
        return Err(jail::setup_error(r, &[]));
    }

    let cpu_ns = s
        .cgroup
        .and_then(|c| c.cpu_ns())
        .or(rusage_cpu_us.map(|us| us * 1000))
        .or(proc_cpu_ns)
        .unwrap_or(0);
    let wall_ns = end_t.saturating_sub(t0);
    let facts = Facts {
        kill,
        wait_status: done.map(|(st, _)| st),
        oom_kills: s.cgroup.map(|c| c.oom_kills()).unwrap_or(0),
        pids_refused: s.cgroup.map(|c| c.pids_refused()).unwrap_or(0),
        cpu_ms: cpu_ns as f64 / 1e6,
        peak_rss_kb: peak,
        allocation_failed: reports_allocation_failure(&err.data),
    };
    let (status, exit_code, signal, message) = classify(&facts, limits, s.cgroup.is_some());
    let wall_ms = wall_ns as f64 / 1e6;
    Ok(RunResult {
        measurement: Measurement {
            status,
            exit_code,
            signal,
            wall_ms,
            cpu_ms: facts.cpu_ms,
            peak_rss_kb: peak,
            integral_kb_ms: integral_kb_ns / 1e6,
            samples,
            sample_hz: if wall_ns > 0 {
                samples as f64 / (wall_ns as f64 / 1e9)
            } else {
                0.0
            },
            instructions: counter.and_then(|c| c.read()),
        },
        stdout: out.data,
        stderr: err.data,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        message,
        memory_trace: trace,
    })
}

/// Reads both streams: with `wait`, to their end (every writer is dead once the namespace is
/// gone, bounded by 2 s); without, only what they hold now.
fn drain(out: &mut Capture, err: &mut Capture, buf: &mut [u8], wait: bool) {
    let deadline = monotonic_ns() + 2_000_000_000;
    while (out.open || err.open) && monotonic_ns() < deadline {
        let mut fds = [&*out, &*err].map(|c| libc::pollfd {
            fd: if c.open { c.fd } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` holds 2 valid pollfds, matching the count 2.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, if wait { 100 } else { 0 }) };
        if ready <= 0 {
            if wait {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            out.read_some(buf);
        }
        if fds[1].revents != 0 {
            err.read_some(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Option<i32> {
        Some(code << 8)
    }

    #[test]
    fn statm_resident_field_is_parsed() {
        assert_eq!(statm_resident_pages(b"2345 678 90 1 0 300 0\n"), 678);
        assert_eq!(statm_resident_pages(b"0 0 0 0 0 0 0\n"), 0);
        assert_eq!(statm_resident_pages(b""), 0);
    }

    #[test]
    fn allocation_failures_are_recognised() {
        assert!(reports_allocation_failure(b"Traceback...\nMemoryError\n"));
        assert!(reports_allocation_failure(
            b"terminate called after throwing an instance of 'std::bad_alloc'"
        ));
        assert!(!reports_allocation_failure(b"ValueError: boom"));
    }

    #[test]
    fn stat_times_are_parsed_after_the_command_name() {
        let line = "42 (a) b (c)) R 1 42 42 0 -1 4194304 100 0 0 0 150 30 7 3 20 0 1 0 5 0 0\n";
        assert_eq!(parse_stat_ticks(line), Some((180, 10)));
        assert_eq!(parse_stat_ticks("42 (x) R 1"), None);
    }

    #[test]
    fn pid_lists_parse() {
        let mut v = Vec::new();
        parse_pids(b"12\n345\n6", &mut v);
        assert_eq!(v, vec![12, 345, 6]);
    }

    #[test]
    fn statuses_follow_the_taxonomy() {
        let l = Limits::default();
        let base = Facts {
            wait_status: exited(0),
            ..Facts::default()
        };
        assert_eq!(classify(&base, &l, true).0, Status::Accepted);
        let f = Facts {
            wait_status: exited(3),
            ..base.clone()
        };
        let (s, code, sig, msg) = classify(&f, &l, true);
        assert_eq!((s, code, sig), (Status::RuntimeError, Some(3), None));
        assert!(msg.unwrap().contains("code 3"));
        let f = Facts {
            kill: Some(KillReason::WallTime),
            wait_status: None,
            ..base.clone()
        };
        assert_eq!(classify(&f, &l, true).0, Status::TimeLimit);
        let f = Facts {
            oom_kills: 1,
            wait_status: Some(libc::SIGKILL),
            ..base.clone()
        };
        assert_eq!(classify(&f, &l, true).0, Status::MemoryLimit);
        let f = Facts {
            kill: Some(KillReason::Output),
            ..base.clone()
        };
        assert_eq!(classify(&f, &l, true).0, Status::OutputLimit);
        let f = Facts {
            wait_status: Some(libc::SIGXFSZ),
            ..base.clone()
        };
        assert_eq!(classify(&f, &l, true).0, Status::OutputLimit);
        let f = Facts {
            wait_status: exited(1),
            allocation_failed: true,
            ..base.clone()
        };
        assert_eq!(classify(&f, &l, false).0, Status::MemoryLimit);
        assert_eq!(classify(&f, &l, true).0, Status::RuntimeError);
        let f = Facts {
            wait_status: Some(libc::SIGSEGV),
            ..base
        };
        let (s, _, sig, msg) = classify(&f, &l, true);
        assert_eq!((s, sig), (Status::RuntimeError, Some(libc::SIGSEGV)));
        assert!(msg.unwrap().contains("SIGSEGV"));
    }
}
