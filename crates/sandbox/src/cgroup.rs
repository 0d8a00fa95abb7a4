//! Control groups: per-run memory, process-count and CPU accounting, v1 or v2.
//!
//! One cgroup is made per run under the supervisor's own cgroup (so outer limits still apply),
//! and removed when the run ends. Detection happens once per [`crate::Sandbox`].

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::random_u64;
use crate::{Limits, SandboxError};

/// Where per-run cgroups are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// Separate v1 hierarchies for the controllers we use.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpuacct: PathBuf,
    },
    /// One unified v2 directory with `memory` and `pids` enabled for its children.
    V2 { parent: PathBuf },
}

/// The machine's cgroup support, detected once.
#[derive(Debug)]
pub(crate) struct Cgroups {
    hierarchy: Option<Hierarchy>,
    /// Why cgroups are not used, when they are not.
    pub(crate) unavailable_reason: Option<String>,
    counter: AtomicU64,
    /// Random per instance: PIDs repeat across PID namespaces.
    nonce: String,
}

/// A v1 or v2 mount of the cgroup file system, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub(crate) mount_point: PathBuf,
    pub(crate) root: String,
    pub(crate) version: u8,
    pub(crate) controllers: Vec<String>,
}

/// Parses the cgroup mounts out of a `mountinfo` text.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let version = match right[0] {
            "cgroup" => 1,
            "cgroup2" => 2,
            _ => continue,
        };
        let controllers = if version == 1 {
            right[2]
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(unescape_mount_path(left[4])),
            root: unescape_mount_path(left[3]),
            version,
            controllers,
        });
    }
    out
}

fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Parses `/proc/self/cgroup` into `(controllers, path)` pairs; v2 has empty controllers.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_string).collect()
            };
            Some((ctrls, path.to_string()))
        })
        .collect()
}

/// The directory of our own cgroup inside `mount`, given our path in that hierarchy.
fn own_dir(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = if mount.root != "/" && path.starts_with(&mount.root) {
        &path[mount.root.len()..]
    } else {
        path
    };
    mount.mount_point.join(rel.trim_start_matches('/'))
}

/// The leaf a v2 cgroup's processes move to so that the cgroup may delegate controllers.
const SUPERVISOR_LEAF: &str = "afterburner-supervisor";

/// Enables the `memory` and `pids` controllers for the children of `ours`, our own v2 cgroup.
///
/// cgroup v2 refuses that (`EBUSY`, "no internal processes") while `ours` holds processes,
/// which it does: this one. Then the processes move to a leaf child, [`SUPERVISOR_LEAF`], and
/// the write is retried, as container runtimes do for nested containers. Which processes move:
/// at the root of a cgroup namespace (`ns_root`: a container that owns its cgroup subtree) all
/// of them, as the container is ours; elsewhere only this one, never another program's.
fn enable_below(ours: &Path, ns_root: bool) -> io::Result<()> {
    let control = ours.join("cgroup.subtree_control");
    match fs::write(&control, "+memory +pids") {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        other => return other,
    }
    let leaf = ours.join(SUPERVISOR_LEAF);
    match fs::create_dir(&leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let members = fs::read_to_string(ours.join("cgroup.procs"))?;
    let leaf_procs = leaf.join("cgroup.procs");
    for pid in processes_to_move(&members, ns_root, std::process::id()) {
        // A process may exit meanwhile (ESRCH); the retry below says whether enough moved.
        let _ = fs::write(&leaf_procs, pid.to_string());
    }
    fs::write(&control, "+memory +pids").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{e}, even after moving {} to {}",
                if ns_root {
                    "the cgroup's processes"
                } else {
                    "this process"
                },
                leaf.display()
            ),
        )
    })
}

/// The processes to move out of a v2 cgroup listing `members` (its `cgroup.procs`): all of
/// them at the root of a cgroup namespace, otherwise only `own` (when it is a member).
fn processes_to_move(members: &str, ns_root: bool, own: u32) -> Vec<u32> {
    let listed = members
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok());
    if ns_root {
        listed.collect()
    } else {
        listed.filter(|&p| p == own).collect()
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|e| SandboxError::io("write cgroup file", path, e))
}

fn make_dir(path: &Path) -> Result<(), SandboxError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SandboxError::io("create cgroup", path, e)),
    }
}

impl Cgroups {
    /// Detects the cgroup version and prepares the parent directory for per-run cgroups.
    ///
    /// `AFTERBURNER_CGROUP=none` forces the rlimit fallback (used by tests of that path).
    pub(crate) fn detect() -> Cgroups {
        let forced = std::env::var("AFTERBURNER_CGROUP").ok();
        let result = if forced.as_deref() == Some("none") {
            Err("disabled by AFTERBURNER_CGROUP=none".to_string())
        } else {
            Self::find_hierarchy(forced.as_deref())
        };
        match result {
            Ok(h) => Cgroups {
                hierarchy: Some(h),
                unavailable_reason: None,
                counter: AtomicU64::new(0),
                nonce: format!("{:08x}", random_u64() as u32),
            },
            Err(reason) => Cgroups {
                hierarchy: None,
                unavailable_reason: Some(reason),
                counter: AtomicU64::new(0),
                nonce: String::new(),
            },
        }
    }

    fn find_hierarchy(forced: Option<&str>) -> Result<Hierarchy, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mounts = parse_mountinfo(&mountinfo);
        let own = parse_proc_cgroup(&own);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            if forced == Some("v1") {
                return Err(
                    "cgroup v1 hierarchies are not delegated to ordinary users; \
                            AFTERBURNER_CGROUP=v1 needs root"
                        .into(),
                );
            }
            return delegated_v2(&mounts, &own, euid);
        }
        let v1 = || -> Result<Hierarchy, String> {
            let dir_for = |ctrl: &str| -> Result<PathBuf, String> {
                let mount = mounts
                    .iter()
                    .find(|m| m.version == 1 && m.controllers.iter().any(|c| c == ctrl))
                    .ok_or_else(|| format!("no cgroup v1 `{ctrl}` controller mounted"))?;
                let path = own
                    .iter()
                    .find(|(c, _)| c.iter().any(|c| c == ctrl))
                    .map(|(_, p)| p.as_str())
                    .unwrap_or("/");
                let parent = own_dir(mount, path).join("afterburner");
                make_dir(&parent).map_err(|e| e.to_string())?;
                Ok(parent)
            };
            Ok(Hierarchy::V1 {
                memory: dir_for("memory")?,
                pids: dir_for("pids")?,
                cpuacct: dir_for("cpuacct")?,
            })
        };
        let v2 = || -> Result<Hierarchy, String> {
            let mount = mounts
                .iter()
                .find(|m| m.version == 2)
                .ok_or("no cgroup v2 mounted")?;
            let path = own
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| p.as_str())
                .unwrap_or("/");
            let mut ours = own_dir(mount, path);
            // Moved to the supervisor leaf by an earlier sandbox of this process: its parent
            // already delegates the controllers.
            if ours.file_name() == Some(std::ffi::OsStr::new(SUPERVISOR_LEAF))
                && let Some(parent) = ours.parent()
            {
                ours = parent.to_path_buf();
            }
            let ns_root = path == "/";
            let available = fs::read_to_string(ours.join("cgroup.controllers")).unwrap_or_default();
            for needed in ["memory", "pids"] {
                if !available.split_whitespace().any(|c| c == needed) {
                    return Err(format!(
                        "cgroup v2 at {} does not offer the `{needed}` controller",
                        ours.display()
                    ));
                }
            }
            v2_parent(&ours, ns_root)
        };
        let pure_v2 = mounts
            .iter()
            .any(|m| m.version == 2 && m.mount_point == Path::new("/sys/fs/cgroup"));
        match forced {
            Some("v1") => v1(),
            Some("v2") => v2(),
            _ if pure_v2 => v2(),
            _ => v1().or_else(|e1| v2().map_err(|e2| format!("{e1}; {e2}"))),
        }
    }

    /// What the memory, process and CPU limits rest on, when cgroups are used.
    pub(crate) fn describe(&self) -> Option<CgroupBasis> {
        let basis = |kind: &str, memory: &Path, pids: &Path, cpu: String| CgroupBasis {
            memory: format!("{kind} under {} (swap off)", memory.display()),
            processes: format!("cgroup pids.max under {}", pids.display()),
            cpu,
        };
        match self.hierarchy.as_ref()? {
            Hierarchy::V1 {
                memory,
                pids,
                cpuacct,
            } => Some(basis(
                "cgroup v1 memory.limit_in_bytes",
                memory,
                pids,
                format!(
                    "cgroup v1 cpuacct.usage under {}, checked every 2 ms",
                    cpuacct.display()
                ),
            )),
            Hierarchy::V2 { parent } => Some(basis(
                "cgroup v2 memory.max",
                parent,
                parent,
                format!(
                    "cgroup v2 cpu.stat under {}, checked every 2 ms",
                    parent.display()
                ),
            )),
        }
    }

    /// Switches the kernel's cgroups to favour dynamic modifications (`favordynmods`), unless
    /// `AFTERBURNER_CGROUP_FAVORDYNMODS=0`. Returns whether the mode is on.
    ///
    /// Without it, moving a process into a cgroup (once per run) waits for an RCU grace period
    /// whenever the machine was idle for a few tens of ms: 5 to 16 ms per run. The mode is
    /// machine-wide and stays on until reboot (the kernel cannot switch it off); it makes fork and
    /// exit marginally more expensive, which is the trade the kernel documents it for.
    pub(crate) fn favor_dynamic_modifications(&self) -> Result<bool, String> {
        if std::env::var("AFTERBURNER_CGROUP_FAVORDYNMODS").as_deref() == Ok("0") {
            return Ok(false);
        }
        let Some(h) = &self.hierarchy else {
            return Ok(false);
        };
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mounts = parse_mountinfo(&mountinfo);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            let on = mountinfo
                .lines()
                .filter(|l| l.contains(" - cgroup2 "))
                .any(|l| {
                    l.rsplit(' ')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .any(|o| o == "favordynmods")
                });
            return if on {
                Ok(true)
            } else {
                Err("switching it on remounts the cgroup hierarchy, which needs root".into())
            };
        }
        match h {
            Hierarchy::V2 { .. } => {
                let text = mountinfo
                    .lines()
                    .find(|l| l.contains(" - cgroup2 "))
                    .ok_or("no cgroup2 mount")?;
                let superopts = text.rsplit(' ').next().unwrap_or("");
                if superopts.split(',').any(|o| o == "favordynmods") {
                    return Ok(true);
                }
                let m = mounts
                    .iter()
                    .find(|m| m.version == 2)
                    .ok_or("no cgroup2 mount")?;
                let opts: Vec<&str> = superopts
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro"))
                    .chain(["favordynmods"])
                    .collect();
                remount(&m.mount_point, &opts.join(","))?;
                Ok(true)
            }
            Hierarchy::V1 { .. } => {
                // A throwaway named hierarchy mounted with the option flips the machine-wide mode.
                let dir = std::env::temp_dir().join(format!(
                    "afterburner-favordynmods-{}-{}",
                    std::process::id(),
                    self.nonce
                ));
                fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let r = mount_named_v1(&dir);
                let _ = fs::remove_dir(&dir);
                r.map(|()| true)
            }
        }
    }

    /// Which cgroup version is in use, if any.
    pub(crate) fn version(&self) -> Option<u8> {
        match self.hierarchy {
            Some(Hierarchy::V1 { .. }) => Some(1),
            Some(Hierarchy::V2 { .. }) => Some(2),
            None => None,
        }
    }

    /// Creates the cgroup of one run, with its limits applied.
    pub(crate) fn create(&self, limits: &Limits) -> Result<Option<RunCgroup>, SandboxError> {
        let Some(h) = &self.hierarchy else {
            return Ok(None);
        };
        let name = format!(
            "run-{}-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed),
            self.nonce
        );
        let mem = limits.memory_bytes.to_string();
        let cg = match h {
            Hierarchy::V1 {
                memory,
                pids,
                cpuacct,
            } => {
                // Only created directories join `dirs`: a failure removes those, and only those.
                let mut cg = RunCgroup {
                    dirs: Vec::with_capacity(3),
                    version: 1,
                };
                for d in [memory.join(&name), pids.join(&name), cpuacct.join(&name)] {
                    make_dir(&d)?;
                    cg.dirs.push(d);
                }
                let m = &cg.dirs[0];
                write_file(&m.join("memory.limit_in_bytes"), &mem)?;
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &mem)?;
                }
                let _ = fs::write(m.join("memory.swappiness"), "0");
                write_file(
                    &cg.dirs[1].join("pids.max"),
                    &limits.max_processes.to_string(),
                )?;
                cg
            }
            Hierarchy::V2 { parent } => {
                let dir = parent.join(&name);
                make_dir(&dir)?;
                let cg = RunCgroup {
                    dirs: vec![dir],
                    version: 2,
                };
                write_file(&cg.dirs[0].join("memory.max"), &mem)?;
                let _ = fs::write(cg.dirs[0].join("memory.swap.max"), "0");
                write_file(
                    &cg.dirs[0].join("pids.max"),
                    &limits.max_processes.to_string(),
                )?;
                cg
            }
        };
        Ok(Some(cg))
    }
}

/// What the limits rest on when cgroups are used (see [`Cgroups::describe`]).
pub(crate) struct CgroupBasis {
    pub(crate) memory: String,
    pub(crate) processes: String,
    pub(crate) cpu: String,
}

/// Rootless mode: the caller's own cgroup v2 directory, when it was delegated to the caller
/// (systemd's `Delegate=yes`, or a container's own cgroup namespace) and offers the memory and
/// pids controllers; per-run cgroups go below it.
fn delegated_v2(
    mounts: &[CgroupMount],
    own: &[(Vec<String>, String)],
    euid: u32,
) -> Result<Hierarchy, String> {
    let mount = mounts
        .iter()
        .find(|m| m.version == 2)
        .ok_or("no cgroup v2 is mounted, and cgroup v1 is never delegated to ordinary users")?;
    let path = own
        .iter()
        .find(|(c, _)| c.is_empty())
        .map(|(_, p)| p.as_str())
        .unwrap_or("/");
    let ours = own_dir(mount, path);
    let available = fs::read_to_string(ours.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        let v1_holds = mounts
            .iter()
            .any(|m| m.version == 1 && m.controllers.iter().any(|c| missing.contains(&c.as_str())));
        return Err(format!(
            "cgroup v2 at {} offers [{}], not the {} controller(s){}",
            ours.display(),
            available.trim(),
            missing.join(" and "),
            if v1_holds {
                ": cgroup v1 holds them on this machine (a controller serves one hierarchy; boot \
                 with systemd.unified_cgroup_hierarchy=1 to move them to v2)"
            } else {
                ": ask for them to be delegated (`systemd-run --user --scope -p Delegate=yes \
                 afterburner ...`)"
            }
        ));
    }
    let writable = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            // SAFETY: `c` is a NUL-terminated path that lives across the call.
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
            .unwrap_or(false)
    };
    if !writable(&ours) || !writable(&ours.join("cgroup.procs")) {
        return Err(format!(
            "{} is not delegated to uid {euid}: run under `systemd-run --user --scope -p \
             Delegate=yes afterburner ...` (or a service with Delegate=yes), or in a container \
             with its own cgroup namespace",
            ours.display()
        ));
    }
    v2_parent(&ours, false)
}

/// Enables the memory and pids controllers below `ours` (our own cgroup v2 directory; at the
/// root of a cgroup namespace when `ns_root`), moving processes into a leaf where v2 requires
/// it, and returns the parent of per-run cgroups, `ours/afterburner`.
fn v2_parent(ours: &Path, ns_root: bool) -> Result<Hierarchy, String> {
    enable_below(ours, ns_root).map_err(|e| {
        format!(
            "cannot enable memory and pids controllers below {} ({e}); run under a delegated \
             cgroup, e.g. `systemd-run --scope -p Delegate=yes`, or in a container with a \
             private, writable cgroup namespace (docs/docker.md)",
            ours.display()
        )
    })?;
    let parent = ours.join("afterburner");
    make_dir(&parent).map_err(|e| e.to_string())?;
    fs::write(parent.join("cgroup.subtree_control"), "+memory +pids")
        .map_err(|e| format!("cannot enable controllers in {}: {e}", parent.display()))?;
    Ok(Hierarchy::V2 { parent })
}

/// The cgroup(s) of one run; removed on drop.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dirs: Vec<PathBuf>,
    version: u8,
}

impl RunCgroup {
    /// Opens the `cgroup.procs` files a child writes `0` to in order to join.
    pub(crate) fn open_procs(&self) -> Result<Vec<OwnedFd>, SandboxError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                    SandboxError::io("open", &p, io::ErrorKind::InvalidInput.into())
                })?;
                // SAFETY: `c` is a NUL-terminated path that lives across the call.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(SandboxError::io("open", &p, io::Error::last_os_error()));
                }
                // SAFETY: open returned a new descriptor (checked >= 0) that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect()
    }

    fn memory_dir(&self) -> &Path {
        &self.dirs[0]
    }

    /// The file listing the member processes (opened once by the sampler).
    pub(crate) fn procs_path(&self) -> PathBuf {
        self.memory_dir().join("cgroup.procs")
    }

    /// CPU time of every process that was ever in the cgroup, in nanoseconds.
    pub(crate) fn cpu_ns(&self) -> Option<u64> {
        if self.version == 1 {
            fs::read_to_string(self.dirs[2].join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
        } else {
            let stat = fs::read_to_string(self.dirs[0].join("cpu.stat")).ok()?;
            keyed_value(&stat, "usage_usec").map(|us| us * 1000)
        }
    }

    /// Opens the CPU usage file for cheap repeated reads.
    pub(crate) fn open_cpu(&self) -> Option<fs::File> {
        let p = if self.version == 1 {
            self.dirs[2].join("cpuacct.usage")
        } else {
            self.dirs[0].join("cpu.stat")
        };
        fs::File::open(p).ok()
    }

    /// Parses the content of the file opened by [`RunCgroup::open_cpu`] into nanoseconds.
    pub(crate) fn parse_cpu(&self, text: &str) -> Option<u64> {
        if self.version == 1 {
            text.trim().parse().ok()
        } else {
            keyed_value(text, "usage_usec").map(|us| us * 1000)
        }
    }

    /// How many processes the kernel OOM-killed in this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let file = if self.version == 1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        fs::read_to_string(self.memory_dir().join(file))
            .ok()
            .and_then(|t| keyed_value(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// How many times a fork was refused because of the process limit.
    pub(crate) fn pids_refused(&self) -> u64 {
        let dir = if self.version == 1 {
            &self.dirs[1]
        } else {
            &self.dirs[0]
        };
        fs::read_to_string(dir.join("pids.events"))
            .ok()
            .and_then(|t| keyed_value(&t, "max"))
            .unwrap_or(0)
    }

    /// The pids in the cgroup.
    pub(crate) fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_path())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills every process in the cgroup and waits (bounded) until it is empty.
    pub(crate) fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        if self.version == 2 {
            let _ = fs::write(self.dirs[0].join("cgroup.kill"), "1");
        }
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: kill takes no pointers; a PID that has gone meanwhile only makes it fail (ESRCH).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // A cgroup whose first directory could not be made holds nothing to kill or remove.
        if self.dirs.is_empty() {
            return;
        }
        self.kill_all();
        for d in &self.dirs {
            for attempt in 0..200 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if attempt == 199 {
                            tracing::warn!("cannot remove cgroup {}: {e}", d.display());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("NUL in {}", p.display()))
}

fn remount(target: &Path, options: &str) -> Result<(), String> {
    let t = c_path(target)?;
    let o = CString::new(options).map_err(|_| "NUL in options".to_string())?;
    // SAFETY: `t` and `o` are NUL-terminated CStrings that live across the call; MS_REMOUNT takes null source and type.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT,
            o.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "remount {} with {options}: {}",
            target.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mount_named_v1(dir: &Path) -> Result<(), String> {
    let d = c_path(dir)?;
    // SAFETY: every string is a NUL-terminated literal or the CString `d`, which lives across the call.
    let r = unsafe {
        libc::mount(
            c"cgroup".as_ptr(),
            d.as_ptr(),
            c"cgroup".as_ptr(),
            0,
            c"none,name=afterburner-favordynmods,favordynmods"
                .as_ptr()
                .cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount a cgroup v1 hierarchy with favordynmods: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `d` is a NUL-terminated CString that lives across the call.
    unsafe { libc::umount2(d.as_ptr(), libc::MNT_DETACH) };
    Ok(())
}

/// Reads `key value` lines (as in `memory.events`, `cpu.stat`, `oom_control`).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_moves_every_process_out_a_host_only_its_own() {
        let members = "1\n17\n42\n";
        assert_eq!(processes_to_move(members, true, 17), vec![1, 17, 42]);
        assert_eq!(processes_to_move(members, false, 17), vec![17]);
        assert!(processes_to_move(members, false, 99).is_empty());
        assert!(processes_to_move("", true, 1).is_empty());
    }

    const MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
37 30 0:33 /outer /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn mountinfo_yields_v1_controllers_and_v2_mounts() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].version, 2);
        assert_eq!(m[1].controllers, vec!["memory"]);
        assert_eq!(m[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[3].root, "/outer");
    }

    #[test]
    fn own_dir_strips_the_mount_root() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            own_dir(&m[3], "/outer/job"),
            PathBuf::from("/sys/fs/cgroup/pids/job")
        );
        assert_eq!(
            own_dir(&m[1], "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
    }

    #[test]
    fn proc_cgroup_lines_parse_for_both_versions() {
        let p = parse_proc_cgroup("4:memory:/process_api/x\n0::/user.slice\n");
        assert_eq!(p[0], (vec!["memory".to_string()], "/process_api/x".into()));
        assert_eq!(p[1], (vec![], "/user.slice".into()));
    }

    /// A directory tree shaped like a cgroup v2 mount (plain files: no kernel rules apply).
    fn fake_v2(controllers: &str) -> (tempfile::TempDir, Vec<CgroupMount>, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("user.slice/u.scope");
        fs::create_dir_all(&ours).unwrap();
        fs::write(ours.join("cgroup.controllers"), controllers).unwrap();
        fs::write(ours.join("cgroup.procs"), "").unwrap();
        fs::write(ours.join("cgroup.subtree_control"), "").unwrap();
        let mounts = vec![CgroupMount {
            mount_point: tmp.path().to_path_buf(),
            root: "/".into(),
            version: 2,
            controllers: Vec::new(),
        }];
        (tmp, mounts, ours)
    }

    #[test]
    fn a_delegated_v2_subtree_gets_its_controllers_enabled_below_it() {
        let (_tmp, mounts, ours) = fake_v2("cpu memory pids\n");
        let own = vec![(Vec::new(), "/user.slice/u.scope".to_string())];
        let h = delegated_v2(&mounts, &own, 1000).unwrap();
        let parent = ours.join("afterburner");
        assert_eq!(
            h,
            Hierarchy::V2 {
                parent: parent.clone()
            }
        );
        for dir in [&ours, &parent] {
            let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
            assert_eq!(enabled, "+memory +pids", "{}", dir.display());
        }
    }

    #[test]
    fn a_v2_subtree_without_memory_and_pids_is_refused_with_the_fix() {
        let (_tmp, mut mounts, _ours) = fake_v2("cpu\n");
        let own = vec![(Vec::new(), "/user.slice/u.scope".to_string())];
        let e = delegated_v2(&mounts, &own, 1000).unwrap_err();
        assert!(e.contains("offers [cpu], not the memory and pids"), "{e}");
        assert!(e.contains("Delegate=yes"), "{e}");
        // Where cgroup v1 holds the controllers, the fix is a v2 boot instead.
        mounts.push(CgroupMount {
            mount_point: PathBuf::from("/sys/fs/cgroup/memory"),
            root: "/".into(),
            version: 1,
            controllers: vec!["memory".into()],
        });
        let e = delegated_v2(&mounts, &own, 1000).unwrap_err();
        assert!(e.contains("cgroup v1 holds them"), "{e}");
        assert!(e.contains("systemd.unified_cgroup_hierarchy=1"), "{e}");
        let e = delegated_v2(&[], &own, 1000).unwrap_err();
        assert!(e.contains("no cgroup v2 is mounted"), "{e}");
    }

    #[test]
    fn keyed_values_are_found() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(t, "oom_kill"), Some(3));
        assert_eq!(keyed_value("usage_usec 1500\n", "usage_usec"), Some(1500));
        assert_eq!(keyed_value(t, "missing"), None);
    }
}
