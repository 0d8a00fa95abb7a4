//! cgroup v2 exercised, not only v1: the sandbox asked for v2 (`AFTERBURNER_CGROUP=v2`) limits
//! memory and processes and accounts CPU time through `memory.max`, `pids.max` and `cpu.stat`.
//!
//! Where the machine mounts cgroup v1 (a "hybrid" layout: v1 controllers under
//! `/sys/fs/cgroup/<controller>`, an empty v2 at `/sys/fs/cgroup/unified`), v2 cannot offer the
//! memory and pids controllers: a controller serves exactly one hierarchy, and v1 holds them.
//! There is a single v2 hierarchy per kernel, so a fresh `cgroup2` mount in a private mount
//! namespace, or a cgroup namespace, shows the same controllers (the test demonstrates it), and
//! moving a controller to v2 would need every v1 hierarchy of it unmounted and empty, which a
//! test cannot do to a machine it shares (booting with `systemd.unified_cgroup_hierarchy=1` or
//! `cgroup_no_v1=memory,pids` does it). There the test prints exactly that, and checks that the
//! sandbox, asked for v2, refuses it with the same reason instead of silently using v1.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use afterburner_sandbox::{Language, Limits, RunRequest, Sandbox, SandboxConfig, Status};
use support::contained;

/// Our own cgroup v2 directory and the controllers it offers, or why there is none.
fn own_v2() -> Result<(PathBuf, Vec<String>), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .ok_or("no cgroup v2 is mounted")?;
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process has no cgroup v2 path")?;
    let dir = Path::new(mount).join(path.trim_start_matches('/'));
    let controllers = fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Ok((dir, controllers))
}

/// The controllers of a fresh cgroup2 mount made in a private mount namespace (as root).
fn fresh_mount_controllers() -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let out = Command::new("unshare")
        .args(["--mount", "--cgroup", "sh", "-c"])
        .arg(format!(
            "mount -t cgroup2 none {0} && cat {0}/cgroup.controllers",
            dir.path().display()
        ))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether this process may write to the cgroup directory `dir` (it was delegated to us).
fn writable(dir: &Path) -> bool {
    let c = std::ffi::CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn sandbox() -> Sandbox {
    // SAFETY: the contained test runs alone in its own process, before any other thread reads
    // the environment.
    unsafe { std::env::set_var("AFTERBURNER_CGROUP", "v2") };
    Sandbox::with_config(SandboxConfig::default()).expect("sandbox")
}

fn run(sb: &Sandbox, source: &str, limits: Limits) -> afterburner_sandbox::RunResult {
    let program = sb.build(Language::Python, source).expect("build");
    sb.run(
        &program,
        &RunRequest {
            limits,
            ..RunRequest::default()
        },
    )
    .expect("run")
}

#[test]
fn the_sandbox_limits_and_accounts_through_cgroup_v2() {
    contained("the_sandbox_limits_and_accounts_through_cgroup_v2", || {
        let (dir, controllers) = match own_v2() {
            Ok(found) => found,
            Err(why) => {
                println!("note: cgroup v2 cannot be tested on this machine: {why}");
                let caps = sandbox().capabilities();
                assert_eq!(caps.cgroup_version, None, "{caps:?}");
                return;
            }
        };
        let missing: Vec<&str> = ["memory", "pids"]
            .into_iter()
            .filter(|c| !controllers.iter().any(|have| have == c))
            .collect();
        if !missing.is_empty() {
            let v1: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(" - cgroup cgroup "))
                .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
                .collect();
            let fresh = if support::is_root() {
                fresh_mount_controllers()
                    .map(|c| format!("a fresh cgroup2 mount in a private mount and cgroup namespace offers [{c}] too"))
                    .unwrap_or_else(|| "a fresh cgroup2 mount could not be made".into())
            } else {
                "an ordinary user cannot mount cgroup2".into()
            };
            println!(
                "note: cgroup v2 cannot be tested on this machine: v2 at {} offers [{}], not {}; cgroup \
                 v1 holds them (mounted at {}), a controller serves one hierarchy, and {fresh}. \
                 Boot with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=memory,pids) to \
                 run this test.",
                dir.display(),
                controllers.join(" "),
                missing.join(" and "),
                v1.join(", ")
            );
            // Asked for v2, the sandbox refuses it with the reason, rather than using v1.
            let caps = sandbox().capabilities();
            assert_eq!(caps.cgroup_version, None, "{caps:?}");
            let warnings = caps.warnings.join("\n");
            assert!(
                warnings.contains(&format!("`{}`", missing[0])) || warnings.contains(missing[0]),
                "{warnings}"
            );
            return;
        }
        if !support::is_root() && !writable(&dir) {
            println!(
                "note: cgroup v2 limits cannot be tested rootless here: {} is not delegated to \
                 this user",
                dir.display()
            );
            // The sandbox falls back to rlimits and names the fix.
            let caps = sandbox().capabilities();
            assert_eq!(caps.cgroup_version, None, "{caps:?}");
            assert!(
                caps.warnings.join("\n").contains("Delegate=yes"),
                "{caps:?}"
            );
            return;
        }
        // The sandbox enables controllers below its own cgroup, which v2 allows only once no
        // other process is in it: as root, give this process a cgroup of its own beside the one
        // `contained` put it in (beside the `unshare` that started it).
        if support::is_root() {
            // `contained` puts the test in the leaf `test` of its outer cgroup; a sibling leaf
            // stays inside the outer limits.
            assert_eq!(
                dir.file_name().and_then(|n| n.to_str()),
                Some("test"),
                "the outer cgroup could not get a leaf (controllers not enabled in it)"
            );
            let parent = dir.parent().expect("a cgroup below the root");
            let mine = parent.join(format!("sandbox-{}", std::process::id()));
            fs::create_dir_all(&mine).unwrap();
            fs::write(mine.join("cgroup.procs"), std::process::id().to_string())
                .unwrap_or_else(|e| panic!("move into {}: {e}", mine.display()));
        }
        let sb = sandbox();
        let caps = sb.capabilities();
        assert_eq!(caps.cgroup_version, Some(2), "{caps:?}");
        let memory = caps
            .basis
            .iter()
            .find(|b| b.what == "memory limit")
            .unwrap();
        assert!(memory.rests_on.contains("memory.max"), "{memory:?}");
        // memory.max: the kernel's OOM killer stops the tree at the limit.
        let r = run(
            &sb,
            "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n",
            Limits::default().with_memory_limit_mib(128).unwrap(),
        );
        assert_eq!(r.measurement.status, Status::MemoryLimit, "{r:?}");
        assert!(r.measurement.peak_rss_kb <= 140 * 1024, "{r:?}");
        // pids.max: threads beyond the limit are refused.
        let r = run(
            &sb,
            "import threading, time\nn = 0\ntry:\n    while True:\n        \
             threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n\
             except RuntimeError:\n    print('refused after', n)\n",
            Limits::default(),
        );
        assert!(r.stdout_text().starts_with("refused after"), "{r:?}");
        // cpu.stat: CPU time of the tree, and the CPU time limit.
        let mut l = Limits::default().with_time_limit_secs(1.0).unwrap();
        l.wall_time = std::time::Duration::from_secs(20);
        let r = run(&sb, "while True:\n    pass\n", l);
        assert_eq!(r.measurement.status, Status::TimeLimit, "{r:?}");
        assert!(
            r.measurement.cpu_ms >= 1000.0 && r.measurement.cpu_ms < 1200.0,
            "{r:?}"
        );
    });
}
