//! Running a test body inside an *outer* PID namespace and cgroup, so that a test of hostile
//! behaviour stays harmless to the machine even if the sandbox under test is broken.
//!
//! `contained("name", || ...)` re-executes the current test binary for that one test under
//! `unshare --pid --fork --kill-child --mount-proc`, inside a fresh cgroup with memory and process
//! limits. When the re-executed test ends, its PID namespace dies with everything in it. Inside,
//! `/proc` shows only the namespace's processes, and the sandbox's cgroups sit under the outer
//! one ([`own_cgroup_dirs`]), so a test can count what it leaves behind.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "AFTERBURNER_CONTAINED_TEST";

/// The outer cgroup directories (one per v1 hierarchy, or one v2 directory).
struct Outer {
    dirs: Vec<PathBuf>,
}

fn own_path(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let _ = it.next()?;
        let ctrls = it.next()?;
        let path = it.next()?;
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

impl Outer {
    fn create(name: &str) -> io::Result<Outer> {
        let leaf = format!("afterburner-test-{}-{name}", std::process::id());
        let mut dirs = Vec::new();
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let own = own_path("").unwrap_or_else(|| "/".into());
            let d = Path::new("/sys/fs/cgroup")
                .join(own.trim_start_matches('/'))
                .join(leaf);
            fs::create_dir_all(&d)?;
            fs::write(d.join("memory.max"), "3221225472")?;
            fs::write(d.join("pids.max"), "1024")?;
            dirs.push(d);
        } else {
            for (ctrl, file, value) in [
                ("memory", "memory.limit_in_bytes", "3221225472"),
                ("pids", "pids.max", "1024"),
            ] {
                let own = own_path(ctrl).unwrap_or_else(|| "/".into());
                let d = Path::new("/sys/fs/cgroup")
                    .join(ctrl)
                    .join(own.trim_start_matches('/'))
                    .join(&leaf);
                fs::create_dir_all(&d)?;
                fs::write(d.join(file), value)?;
                dirs.push(d);
            }
        }
        Ok(Outer { dirs })
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn kill_all(&self) {
        for _ in 0..1000 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                // SAFETY: kill takes no pointers; a PID that has gone meanwhile only makes it fail (ESRCH).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Outer {
    fn drop(&mut self) {
        self.kill_all();
        for d in &self.dirs {
            // Children left by the sandbox (its `afterburner` parent) go first.
            if let Ok(entries) = fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            let _ = fs::remove_dir(d);
        }
    }
}

/// Runs `body` inside an outer PID namespace and cgroup (memory 3 GiB, 1024 processes), killed
/// after 180 s.
///
/// `name` must be the test function's name: the test binary is re-executed with it as filter.
pub fn contained(name: &str, body: impl FnOnce()) {
    contained_within(name, Duration::from_secs(180), body);
}

/// [`contained`], killed after `limit` instead of 180 s (a soak runs for minutes).
pub fn contained_within(name: &str, limit: Duration, body: impl FnOnce()) {
    if std::env::var(ENV).as_deref() == Ok(name) {
        body();
        return;
    }
    let outer = Outer::create(name).unwrap_or_else(|e| {
        panic!("cannot create the outer cgroup that makes this hostile test safe: {e}")
    });
    let procs: Vec<fs::File> = outer
        .dirs
        .iter()
        .map(|d| {
            fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .expect("open outer cgroup.procs")
        })
        .collect();
    let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let exe = std::env::current_exe().expect("current test executable");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the pre_exec hook only calls write, which is async-signal-safe, on descriptors opened before the fork and a static byte.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn the contained test under unshare");
    drop(procs);
    let pid = child.id() as i32;
    let start = Instant::now();
    let watchdog_dirs = outer.dirs.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        while !done2.load(std::sync::atomic::Ordering::Relaxed) {
            if start.elapsed() > limit {
                // Kill everything in the outer cgroup: the test hung.
                let procs = watchdog_dirs[0].join("cgroup.procs");
                for p in fs::read_to_string(procs).unwrap_or_default().lines() {
                    if let Ok(p) = p.trim().parse::<i32>() {
                        // SAFETY: kill takes no pointers; a PID that has gone meanwhile only makes it fail (ESRCH).
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
                // SAFETY: kill takes no pointers; `pid` is our child, which `child` has not reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let out = child
        .wait_with_output()
        .expect("wait for the contained test");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let timed_out = watchdog.join().unwrap_or(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What the contained run printed (its figures, say); the test harness shows it with
    // --nocapture or when the test fails.
    print!("{stdout}");
    assert!(
        !timed_out,
        "contained test `{name}` hung and was killed\n{stdout}\n{stderr}"
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "contained test `{name}` failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
}

/// Whether this process is the re-executed, contained run of a test.
pub fn is_contained() -> bool {
    std::env::var_os(ENV).is_some()
}

/// This process's own cgroup directories (one per v1 hierarchy of `controllers`, or the v2
/// one); inside [`contained`] they are the outer cgroup, under which the sandbox makes its own.
pub fn own_cgroup_dirs(controllers: &[&str]) -> Vec<PathBuf> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let own = own_path("").unwrap_or_else(|| "/".into());
        return vec![Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'))];
    }
    controllers
        .iter()
        .filter_map(|c| {
            let own = own_path(c)?;
            Some(
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(own.trim_start_matches('/')),
            )
        })
        .collect()
}
