//! The container deployment (`Dockerfile`, `deploy/`, `docs/docker.md`), simulated on this
//! machine: the sandbox works with exactly what the documented `docker run` flags grant, and each
//! grant is needed.
//!
//! The simulation: fresh PID and mount namespaces (`unshare`), the cgroup mounts read-only as a
//! container sees them, Docker's default capability set plus `SYS_ADMIN` (`setpriv`), the
//! seccomp profile `deploy/seccomp.json` (loaded through the system's libseccomp by a small
//! helper), and `deploy/docker-entrypoint.sh` as the entry point. Not simulated: Docker itself
//! (CI has no daemon; docs/docker.md says what was run in one), AppArmor, an overlay root file
//! system and cgroup v2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Docker's default capabilities (moby `oci/caps/defaults.go`; containerd's are the same).
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "net_bind_service",
    "net_raw",
    "sys_chroot",
    "mknod",
    "audit_write",
    "setfcap",
];

/// A scratch folder with the seccomp helper, `afterburner` on a PATH, and two programs.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("temporary folder");
        let helper = dir.path().join("seccomp-exec");
        let built = Command::new("gcc")
            .arg("-O1")
            .arg("-o")
            .arg(&helper)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/container/seccomp-exec.c"))
            .arg("-l:libseccomp.so.2")
            .output()
            .expect("run gcc");
        assert!(
            built.status.success(),
            "cannot build the seccomp helper against the system's libseccomp.so.2 (Debian \
             package libseccomp2): {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin folder");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_afterburner"), bin.join("afterburner"))
            .expect("link afterburner");
        std::fs::write(
            dir.path().join("hello.c"),
            "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        )
        .expect("write hello.c");
        std::fs::write(dir.path().join("hello.py"), "print('hello')\n").expect("write hello.py");
        Scene { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs `command` (a shell command) in the simulated container: fresh PID and mount
    /// namespaces with the cgroup mounts read-only, the given denied system calls and the given
    /// capability bounding set (the filter is loaded first, with every capability, as the
    /// container runtime does).
    fn contained(&self, caps: &[&str], denied: &[String], command: &str) -> Output {
        self.contained_with(true, caps, denied, command)
    }

    /// As [`Scene::contained`], with the cgroup mounts left writable unless `read_only_cgroups`.
    fn contained_with(
        &self,
        read_only_cgroups: bool,
        caps: &[&str],
        denied: &[String],
        command: &str,
    ) -> Output {
        let bounding = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let script = format!(
            "set -e\n\
             if [ {read_only_cgroups} = true ]; then\n\
               for m in $(awk '$0 ~ / - cgroup2? / {{print $5}}' /proc/self/mountinfo); do\n\
                 mount -o remount,bind,ro \"$m\"\n\
               done\n\
             fi\n\
             export PATH=\"{bin}:$PATH\"\n\
             exec {helper} {denied} setpriv --bounding-set {bounding} --inh-caps=-all -- {command}",
            bin = self.path("bin"),
            helper = self.path("seccomp-exec"),
            denied = if denied.is_empty() {
                "none".to_string()
            } else {
                denied.join(",")
            },
        );
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--mount", "sh", "-c"])
            .arg(script)
            .current_dir(self.dir.path())
            .output()
            .expect("run unshare")
    }
}

/// The system calls `deploy/seccomp.json` denies; the profile must keep the shape the helper
/// reproduces (allow by default, deny a list with EPERM).
fn profile_denies() -> Vec<String> {
    let path = repo().join("deploy/seccomp.json");
    let text = std::fs::read_to_string(&path).expect("read deploy/seccomp.json");
    let v: Value = serde_json::from_str(&text).expect("deploy/seccomp.json is JSON");
    assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW", "{v}");
    let mut names = Vec::new();
    for rule in v["syscalls"].as_array().expect("a syscalls list") {
        assert_eq!(rule["action"], "SCMP_ACT_ERRNO", "{rule}");
        assert!(
            rule.get("args").is_none(),
            "rules without arguments: {rule}"
        );
        for n in rule["names"].as_array().expect("names") {
            names.push(n.as_str().expect("a name").to_string());
        }
    }
    names
}

fn docker_caps_and(extra: &[&'static str]) -> Vec<&'static str> {
    DOCKER_DEFAULT_CAPS.iter().chain(extra).copied().collect()
}

fn json_run(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_sandbox_runs_with_what_the_container_is_granted() {
    let scene = Scene::new();
    let entry = repo()
        .join("deploy/docker-entrypoint.sh")
        .display()
        .to_string();
    let caps = docker_caps_and(&["sys_admin"]);
    let denied = profile_denies();
    for program in ["hello.c", "hello.py"] {
        let out = scene.contained(
            &caps,
            &denied,
            &format!("{entry} run --json {}", scene.path(program)),
        );
        let v = json_run(&out);
        assert_eq!(v["status"], "accepted", "{program}: {v}");
        assert_eq!(v["stdout"], "hello\n", "{program}: {v}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("cgroups unavailable") && !stderr.contains("cannot make"),
            "the entry point made the cgroup mounts writable: {stderr}"
        );
    }
    let out = scene.contained(&caps, &denied, &format!("{entry} doctor --json"));
    let v = json_run(&out);
    assert!(
        v["capabilities"]["cgroup_version"].is_u64(),
        "cgroups in use: {v}"
    );
}

#[test]
fn each_grant_is_needed() {
    let scene = Scene::new();
    let entry = repo()
        .join("deploy/docker-entrypoint.sh")
        .display()
        .to_string();
    let run_c = format!("{entry} run --json {}", scene.path("hello.c"));
    let denied = profile_denies();

    // Docker's default capabilities alone: the cgroup mounts stay read-only, and no
    // namespaces can be made (whichever the sandbox meets first).
    let out = scene.contained(&docker_caps_and(&[]), &denied, &run_c);
    let v = json_run(&out);
    assert_eq!(v["status"], "sandbox_error", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("clone") || message.contains("Read-only file system"),
        "{v}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot make"), "{stderr}");
    // Even with writable cgroups, namespaces need SYS_ADMIN.
    let v = json_run(&scene.contained_with(false, &docker_caps_and(&[]), &denied, &run_c));
    assert_eq!(v["status"], "sandbox_error", "{v}");
    assert!(v["message"].as_str().unwrap().contains("clone"), "{v}");

    // Docker's default seccomp profile has no pivot_root.
    let mut without_pivot_root = denied.clone();
    without_pivot_root.push("pivot_root".into());
    let v = json_run(&scene.contained(
        &docker_caps_and(&["sys_admin"]),
        &without_pivot_root,
        &run_c,
    ));
    assert_eq!(v["status"], "sandbox_error", "{v}");
    assert!(v["message"].as_str().unwrap().contains("pivot_root"), "{v}");

    // Without the entry point the cgroup mounts stay read-only: per-run cgroups cannot be made
    // (or, where the sandbox's folder does not exist yet, it falls back to rlimits and says so).
    let out = scene.contained(
        &docker_caps_and(&["sys_admin"]),
        &denied,
        &format!("afterburner run --json {}", scene.path("hello.c")),
    );
    let v = json_run(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refused = v["status"] == "sandbox_error"
        && v["message"]
            .as_str()
            .unwrap()
            .contains("Read-only file system");
    assert!(
        refused || stderr.contains("cgroups unavailable"),
        "{v}\n{stderr}"
    );
}
