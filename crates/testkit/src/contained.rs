//! Running a test body inside an *outer* PID namespace and cgroup, so that a test of hostile
//! behaviour stays harmless to the machine even if the sandbox under test is broken.
//!
//! `contained("name", || ...)` re-executes the current test binary for that one test under
//! `unshare --pid --fork --kill-child --mount-proc`, inside a fresh cgroup with memory and process
//! limits and under a watchdog. When the re-executed test ends, its PID namespace dies with
//! everything in it. Inside, `/proc` shows only the namespace's processes, and the sandbox's
//! cgroups sit under the outer one ([`own_cgroup_dirs`]), so a test can count what it leaves
//! behind. On cgroup v2 the test goes into a leaf `test` of the outer cgroup (v2 puts processes
//! in leaves only), so that cgroups below the outer one may get controllers. When the test ends,
//! the outer cgroup and every cgroup left below it are emptied and removed.
//!
//! Rootless mode: with `AFTERBURNER_TEST_USER=<user>` ([`TEST_USER_ENV`]; run as root), the
//! re-executed test drops to that ordinary user inside the outer PID namespace and cgroup
//! (`setpriv`), with a clean environment and a TMPDIR the user owns, so the sandbox under test
//! runs rootless, behind the same guard rails. `scripts/test-rootless` does this.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "AFTERBURNER_CONTAINED_TEST";
/// Names the ordinary user contained tests run as (rootless mode); unset: as the caller.
pub const TEST_USER_ENV: &str = "AFTERBURNER_TEST_USER";
/// How outer cgroups are named: `afterburner-test-<pid>-<test name>`.
const OUTER_PREFIX: &str = "afterburner-test-";

/// Whether this process is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of `user`, from `id`.
fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .expect("run `id`");
        assert!(
            out.status.success(),
            "{TEST_USER_ENV}={user}: no such user (create it: `useradd -m {user}`)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// A scratch directory the test user owns (its TMPDIR), removed on drop.
struct UserTmp(PathBuf);

impl UserTmp {
    fn create(name: &str, uid: u32, gid: u32) -> UserTmp {
        let d = std::env::temp_dir().join(format!(
            "afterburner-rootless-{}-{name}",
            std::process::id()
        ));
        fs::create_dir_all(&d).expect("create the test user's TMPDIR");
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown the test user's TMPDIR");
        UserTmp(d)
    }
}

impl Drop for UserTmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The outer cgroup directories (one per v1 hierarchy, or one v2 directory).
struct Outer {
    dirs: Vec<PathBuf>,
    /// Where the test process goes: `dirs`, or on v2 a leaf below it, so that cgroups below the
    /// outer one may get controllers (v2 puts processes in leaves only).
    join: Vec<PathBuf>,
}

/// Every process in the cgroup directory `dir` and below it.
fn tree_pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Removes the cgroup directory `dir` and every cgroup below it, deepest first.
fn remove_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// This process's cgroup path in the v1 hierarchy of `controller`, or the v2 one for `""`.
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
        let leaf = format!("{OUTER_PREFIX}{}-{name}", std::process::id());
        let mut dirs = Vec::new();
        let mut join = Vec::new();
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let own = own_path("").unwrap_or_else(|| "/".into());
            let d = Path::new("/sys/fs/cgroup")
                .join(own.trim_start_matches('/'))
                .join(leaf);
            fs::create_dir_all(&d)?;
            fs::write(d.join("memory.max"), "3221225472")?;
            fs::write(d.join("pids.max"), "1024")?;
            let leaf = d.join("test");
            let enabled = fs::write(d.join("cgroup.subtree_control"), "+memory +pids").is_ok();
            join.push(if enabled && fs::create_dir(&leaf).is_ok() {
                leaf
            } else {
                d.clone()
            });
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
                join.push(d.clone());
                dirs.push(d);
            }
        }
        Ok(Outer { dirs, join })
    }

    fn pids(&self) -> Vec<i32> {
        tree_pids(&self.dirs[0])
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
            // Cgroups left below it (the sandbox's `afterburner` parent, v2 leaves) go first.
            remove_tree(d);
        }
    }
}

/// Runs `body` inside an outer PID namespace and cgroup (memory 3 GiB, 1024 processes), killed
/// after 180 s; as the user [`TEST_USER_ENV`] names, if set.
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
        .join
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
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"]);
    let mut _user_tmp = None;
    if let Ok(user) = std::env::var(TEST_USER_ENV) {
        assert!(
            is_root(),
            "{TEST_USER_ENV} needs the tests to start as root (they drop to {user} inside the \
             outer PID namespace and cgroup)"
        );
        let (uid, gid) = user_ids(&user);
        let tmp = UserTmp::create(name, uid, gid);
        // A clean environment: the user's PATH finds system toolchains, not root's shims.
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &tmp.0)
            .env("TMPDIR", &tmp.0)
            .env(TEST_USER_ENV, &user)
            .arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--"]);
        if let Ok(v) = std::env::var("RUST_BACKTRACE") {
            cmd.env("RUST_BACKTRACE", v);
        }
        _user_tmp = Some(tmp);
    }
    cmd.arg(exe)
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
                for p in tree_pids(&watchdog_dirs[0]) {
                    // SAFETY: kill takes no pointers; a PID that has gone meanwhile only makes it fail (ESRCH).
                    unsafe { libc::kill(p, libc::SIGKILL) };
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
    // Lines the test marks `note: ` (e.g. why part of it cannot run here) reach the terminal
    // even when the harness captures output: written to the descriptor, not through print!.
    for line in stdout.lines() {
        if let Some(at) = line.find("note: ") {
            use std::io::Write;
            let _ = writeln!(io::stderr(), "{name}: {}", &line[at..]);
        }
    }
}

/// Whether this process is the re-executed, contained run of a test.
pub fn is_contained() -> bool {
    std::env::var_os(ENV).is_some()
}

/// The outer cgroup directories (one per v1 hierarchy of `controllers`, or the v2 one) when
/// inside [`contained`], under which the sandbox makes its own; elsewhere this process's own.
///
/// On v2 the contained test starts in a leaf of the outer cgroup and may move to a sibling (the
/// cgroup v2 test does), so the nearest `afterburner-test-*` ancestor is taken.
pub fn own_cgroup_dirs(controllers: &[&str]) -> Vec<PathBuf> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let own = own_path("").unwrap_or_else(|| "/".into());
        let dir = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
        let outer = is_contained()
            .then(|| {
                dir.ancestors().find(|a| {
                    a.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(OUTER_PREFIX))
                })
            })
            .flatten()
            .map(Path::to_path_buf);
        return vec![outer.unwrap_or(dir)];
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
