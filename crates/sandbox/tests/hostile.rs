//! Hostile programs: each must be contained by the sandbox.
//!
//! Every test runs inside an outer PID namespace and cgroup (see `afterburner_testkit::contained`,
//! re-exported by `support`), so a broken sandbox cannot harm the machine running the tests.

mod support;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use afterburner_sandbox::{Language, Limits, Mode, Status};
use support::{contained, run_python, run_with, sandbox_user_processes};

fn limits(seconds: f64, mib: u64) -> Limits {
    Limits::default()
        .with_time_limit_secs(seconds)
        .unwrap()
        .with_memory_limit_mib(mib)
        .unwrap()
}

fn assert_nothing_left() {
    // The namespace is torn down synchronously with the init; give the kernel a moment to reap.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = sandbox_user_processes();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the sandbox user outlived the run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_mode_follows_the_caller() {
    contained("the_mode_follows_the_caller", || {
        let sb = support::sandbox();
        let rootless = std::env::var(support::TEST_USER_ENV).is_ok();
        assert_eq!(support::is_root(), !rootless);
        let expected = if rootless { Mode::Rootless } else { Mode::Root };
        assert_eq!(sb.mode(), expected);
        let caps = sb.capabilities();
        assert_eq!(caps.mode, expected);
        assert!(
            caps.basis.iter().any(|b| b.what == "isolation"
                && b.rests_on.contains("user namespace") == rootless),
            "{:?}",
            caps.basis
        );
        println!("mode {:?}: {:#?}", caps.mode, caps.basis);
    });
}

#[test]
fn fork_bomb_is_contained() {
    contained("fork_bomb_is_contained", || {
        let t = Instant::now();
        let r = run_with(
            Language::Python,
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            b"",
            limits(2.0, 256),
        );
        assert_ne!(r.measurement.status, Status::Accepted);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        assert_nothing_left();
    });
}

#[test]
fn thread_bomb_is_contained() {
    contained("thread_bomb_is_contained", || {
        let r = run_with(
            Language::Python,
            "import threading, time\nn = 0\ntry:\n    while True:\n        \
             threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n        n += 1\n\
             except RuntimeError:\n    print('refused after', n)\n",
            b"",
            limits(5.0, 512),
        );
        let out = r.stdout_text();
        assert!(
            out.starts_with("refused after"),
            "{out} {:?}",
            r.measurement
        );
        let n: u32 = out.split_whitespace().last().unwrap().parse().unwrap();
        assert!(n < Limits::default().max_processes, "{n} threads started");
        // Refused by the process limit, not by anything else. Without a cgroup, RLIMIT_AS also
        // counts each thread's stack (glibc's default size, tens of MiB of address space), so
        // fewer threads fit in the 512 MiB.
        let at_least = if support::sandbox().capabilities().cgroup_version.is_some() {
            Limits::default().max_processes / 2
        } else {
            16
        };
        assert!(n >= at_least, "only {n} threads started: {out}");
        assert_nothing_left();
    });
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    contained("memory_bomb_hits_the_memory_limit", || {
        let r = run_with(
            Language::Python,
            "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n",
            b"",
            limits(10.0, 128),
        );
        assert_eq!(r.measurement.status, Status::MemoryLimit, "{r:?}");
        assert!(
            r.measurement.peak_rss_kb <= 140 * 1024,
            "{:?}",
            r.measurement
        );
        assert_nothing_left();
    });
}

#[test]
fn busy_loop_hits_the_time_limit() {
    contained("busy_loop_hits_the_time_limit", || {
        let mut l = limits(1.0, 256);
        l.wall_time = Duration::from_secs(20);
        let r = run_with(Language::Python, "while True:\n    pass\n", b"", l);
        let m = &r.measurement;
        assert_eq!(m.status, Status::TimeLimit);
        assert!(r.message.as_deref().unwrap().contains("CPU"), "{r:?}");
        assert!(m.cpu_ms >= 1000.0 && m.cpu_ms < 1200.0, "{m:?}");
        assert_nothing_left();
    });
}

#[test]
fn sleeper_hits_the_wall_time_limit() {
    contained("sleeper_hits_the_wall_time_limit", || {
        let r = run_with(
            Language::Python,
            "import time\ntime.sleep(100)\n",
            b"",
            limits(1.0, 256),
        );
        assert_eq!(r.measurement.status, Status::TimeLimit);
        let m = &r.measurement;
        assert!(m.wall_ms >= 990.0 && m.wall_ms < 1500.0, "{m:?}");
        assert!(m.cpu_ms < 500.0, "{m:?}");
        assert!(r.message.unwrap().contains("wall"));
        assert_nothing_left();
    });
}

#[test]
fn loopback_network_is_unreachable() {
    contained("loopback_network_is_unreachable", || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let source = format!(
            "import socket\nfor host in ['127.0.0.1', 'localhost', '::1']:\n    try:\n        \
             socket.create_connection((host, {port}), timeout=1)\n        print('connected', host)\n    \
             except OSError as e:\n        print('blocked', host, e.errno)\n"
        );
        let r = run_python(&source);
        let out = r.stdout_text();
        assert!(!out.contains("connected"), "{out}");
        assert_eq!(out.matches("blocked").count(), 3, "{out}");
        assert!(listener.accept().is_err(), "the listener saw a connection");
        assert_nothing_left();
    });
}

#[test]
fn writes_outside_the_sandbox_fail() {
    contained("writes_outside_the_sandbox_fail", || {
        let host_dir = tempfile::tempdir().unwrap();
        let host_file = host_dir.path().join("escaped");
        let source = format!(
            "import os\nfor p in ['/etc/escaped', '/usr/escaped', '/box/escaped', '/escaped', \
             '/root/escaped', '/proc/escaped', {host:?}]:\n    try:\n        \
             open(p, 'w').write('x')\n        print('wrote', p)\n    except OSError as e:\n        \
             print('denied', p)\nopen('/tmp/ok', 'w').write('fine')\nprint('tmp ok')\n",
            host = host_file.display().to_string()
        );
        let r = run_python(&source);
        let out = r.stdout_text();
        assert!(!out.contains("wrote"), "{out}");
        assert!(out.contains("tmp ok"), "{out}");
        assert!(!host_file.exists());
        assert!(!std::path::Path::new("/etc/escaped").exists());
        assert_nothing_left();
    });
}

#[test]
fn root_only_files_and_supervisor_environment_are_unreadable() {
    contained(
        "root_only_files_and_supervisor_environment_are_unreadable",
        || {
            // SAFETY: single-threaded at this point of the contained test.
            unsafe { std::env::set_var("AFTERBURNER_TEST_SECRET", "s3cr3t-value") };
            let source = "import os\nprint('env', sorted(os.environ))\n\
                for p in ['/etc/shadow', '/proc/1/environ', '/proc/1/mem', '/proc/1/root/etc/hostname']:\n    \
                try:\n        data = open(p, 'rb').read()\n        print('read', p, data[:200])\n    \
                except OSError as e:\n        print('denied', p)\n\
                print('pids', sorted(int(d) for d in os.listdir('/proc') if d.isdigit()))\n";
            let r = run_python(source);
            let out = r.stdout_text();
            assert!(!out.contains("s3cr3t"), "{out}");
            assert!(!out.contains("read /etc/shadow"), "{out}");
            assert!(!out.contains("read /proc/1/environ"), "{out}");
            // Only the sandbox's own init and program are visible.
            assert!(out.contains("pids [1, 2]"), "{out}");
            assert!(!out.contains("AFTERBURNER"), "{out}");
            assert_nothing_left();
        },
    );
}

#[test]
fn kill_all_cannot_reach_a_sibling() {
    contained("kill_all_cannot_reach_a_sibling", || {
        // A sibling running as the same unprivileged user, outside the sandbox (rootless: the
        // caller, whom the sandboxed program is outside its user namespace).
        let mut sibling = std::process::Command::new("sleep");
        sibling.arg("30");
        if support::is_root() {
            sibling.uid(65534).gid(65534);
        }
        let mut sibling = sibling.spawn().unwrap();
        let r = run_python(
            "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n    print('sent')\n\
             except ProcessLookupError:\n    print('nothing to signal')\nprint('survived')\n",
        );
        assert!(
            sibling.try_wait().unwrap().is_none(),
            "the sibling was killed from inside the sandbox"
        );
        // kill(-1) spares the caller and the init: nothing else is in the namespace.
        assert_eq!(r.stdout_text(), "nothing to signal\nsurvived\n");
        sibling.kill().unwrap();
        sibling.wait().unwrap();
        assert_nothing_left();
    });
}

#[test]
fn output_flood_is_cut_at_the_cap() {
    contained("output_flood_is_cut_at_the_cap", || {
        let mut l = limits(10.0, 256);
        l.output_bytes = 1024 * 1024;
        let r = run_with(
            Language::Python,
            "import sys\nline = 'x' * 1023 + '\\n'\nwhile True:\n    sys.stdout.write(line)\n",
            b"",
            l,
        );
        assert_eq!(r.measurement.status, Status::OutputLimit);
        assert!(r.stdout_truncated);
        assert_eq!(r.stdout.len(), 1024 * 1024);
        assert!(r.measurement.wall_ms < 5000.0);
        assert_nothing_left();
    });
}

#[test]
fn disk_fill_stops_at_the_scratch_cap() {
    contained("disk_fill_stops_at_the_scratch_cap", || {
        let mut l = limits(10.0, 512);
        l.scratch_bytes = 16 * 1024 * 1024;
        let r = run_with(
            Language::Python,
            "import os\nn = 0\ntry:\n    with open('/tmp/fill', 'wb') as f:\n        while True:\n            \
             f.write(b'x' * 65536)\n            f.flush()\n            n += 65536\nexcept OSError as e:\n    \
             print('stopped', n, e.errno)\n",
            b"",
            l,
        );
        let out = r.stdout_text();
        assert!(out.starts_with("stopped"), "{out} {:?}", r.measurement);
        let n: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(n <= 16 * 1024 * 1024, "{n}");
        assert_nothing_left();
    });
}

#[test]
fn file_size_limit_applies() {
    contained("file_size_limit_applies", || {
        let mut l = limits(10.0, 512);
        l.file_size_bytes = 1024 * 1024;
        let r = run_with(
            Language::Python,
            "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n\
             f = open('/tmp/big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)\n    f.flush()\n",
            b"",
            l,
        );
        assert_eq!(r.measurement.status, Status::OutputLimit, "{r:?}");
        assert_nothing_left();
    });
}

#[test]
fn no_descriptors_are_inherited() {
    contained("no_descriptors_are_inherited", || {
        // A descriptor deliberately opened without close-on-exec in the supervisor.
        // SAFETY: a NUL-terminated literal path; the descriptor is closed below.
        let fd = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0);
        let r = run_python(
            "import os\nfds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\nprint(fds)\n",
        );
        // 0-2, plus the descriptor listdir itself holds open.
        let out = r.stdout_text();
        let fds: Vec<i32> = out
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .split(", ")
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(&fds[..3], &[0, 1, 2], "{out}");
        assert!(fds.len() <= 4, "{out}");
        // SAFETY: `fd` was opened above and is closed exactly once.
        unsafe { libc::close(fd) };
        assert_nothing_left();
    });
}

#[test]
fn privilege_gain_is_refused() {
    contained("privilege_gain_is_refused", || {
        let source = r#"
import ctypes, os, resource
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, ok):
    print(name, 'ALLOWED' if ok else 'refused')
print('uid', os.getuid(), os.geteuid())
try:
    os.setuid(0); attempt('setuid', True)
except OSError:
    attempt('setuid', False)
attempt('mount', libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None) == 0)
attempt('unshare', libc.unshare(0x10000000) == 0)
attempt('chroot', libc.chroot(b'/tmp') == 0)
attempt('ptrace', libc.ptrace(16, 1, 0, 0) == 0)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 2, hard * 2)); attempt('rlimit', True)
except (ValueError, OSError):
    attempt('rlimit', False)
for line in open('/proc/self/status'):
    if line.startswith('Cap'):
        print(line.split()[0], line.split()[1])
"#;
        let r = run_python(source);
        let out = r.stdout_text();
        assert!(out.contains("uid 65534 65534"), "{out}");
        for what in ["setuid", "mount", "unshare", "chroot", "ptrace", "rlimit"] {
            assert!(out.contains(&format!("{what} refused")), "{what}: {out}");
        }
        assert!(!out.contains("ALLOWED"), "{out}");
        // No capability is held or can be regained; rootless, where the program's user
        // namespace was created holding all of them, the bounding set is empty too.
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert!(
                out.contains(&format!("{set} 0000000000000000")),
                "{set} {out}"
            );
        }
        if !support::is_root() {
            assert!(out.contains("CapBnd: 0000000000000000"), "{out}");
        }
        assert_nothing_left();
    });
}

#[test]
fn orphaned_grandchild_does_not_outlive_the_run() {
    contained("orphaned_grandchild_does_not_outlive_the_run", || {
        let source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        \
                      time.sleep(60)\n    os._exit(0)\nprint('parent done')\n";
        let t = Instant::now();
        let r = run_python(source);
        assert_eq!(r.measurement.status, Status::Accepted);
        assert_eq!(r.stdout_text(), "parent done\n");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_nothing_left();
    });
}

/// Runs `source` (Python) with its instructions counted under valgrind.
fn counted(source: &str) -> afterburner_sandbox::RunResult {
    let sb = support::sandbox();
    assert!(
        sb.capabilities().valgrind.is_some(),
        "valgrind is not installed (scripts/setup installs it)"
    );
    let program = sb.build(Language::Python, source).expect("build");
    sb.run(
        &program,
        &afterburner_sandbox::RunRequest {
            limits: limits(60.0, 1024),
            count_instructions: true,
            ..Default::default()
        },
    )
    .expect("run")
}

const LOOP: &str = "total = 0\nfor i in range(30000):\n    total += i * i % 7\nprint(total)\n";

#[test]
fn instruction_counts_are_exact_and_a_program_cannot_hide_or_shrink_its_own() {
    contained(
        "instruction_counts_are_exact_and_a_program_cannot_hide_or_shrink_its_own",
        || {
            let a = counted(LOOP);
            let b = counted(LOOP);
            assert_eq!(a.measurement.status, Status::Accepted, "{a:?}");
            let count = a.measurement.instructions.expect("counted");
            assert!(count > 10_000_000, "{count}");
            assert_eq!(
                Some(count),
                b.measurement.instructions,
                "the same count twice"
            );
            assert!(
                a.stderr.is_empty(),
                "valgrind's lines are removed: {:?}",
                a.stderr
            );
            // Closing or redirecting stderr (and every other descriptor) does not silence the
            // count: valgrind writes through its own copy.
            let hiding = counted(&format!(
                "import os\nos.dup2(os.open('/dev/null', os.O_WRONLY), 2)\nos.close(2)\n\
                 for fd in range(3, 1100):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n{LOOP}"
            ));
            assert!(hiding.measurement.instructions.expect("still counted") > count);
            // A forged summary line adds to the count, never replaces it.
            let forging = counted(&format!(
                "import sys\nsys.stderr.write('==1== I   refs:      5\\n')\n{LOOP}"
            ));
            assert!(forging.measurement.instructions.expect("counted") > count);
            assert_nothing_left();
        },
    );
}
