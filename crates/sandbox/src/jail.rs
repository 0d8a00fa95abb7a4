//! Starting a program inside its own namespaces, file system view, cgroup and privileges.
//!
//! The supervisor `clone`s a child into new PID, mount, network, IPC and UTS namespaces. That
//! child is PID 1 of its namespace (the *init*): it builds the file system view, forks the
//! *program* process, reaps everything, and when the program exits it reports the exit status and
//! exits itself, which makes the kernel kill every process left in the namespace. Nothing outlives
//! a run.
//!
//! Between `clone` and `execve` the children are copies of a multithreaded process, so they only
//! make raw system calls on data prepared before the `clone` (no allocation, no locks, and no libc
//! wrapper that coordinates threads, such as `setresuid`).

use std::ffi::{CString, c_char};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::SandboxError;

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindMount {
    /// Path on the host.
    pub(crate) source: PathBuf,
    /// Absolute path inside the sandbox.
    pub(crate) target: PathBuf,
    /// Whether the program may write through it.
    pub(crate) writable: bool,
}

/// The caller's ids, mapped onto the sandbox user inside a new user namespace (rootless mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserNamespace {
    /// The caller's uid outside, which becomes `JailSpec::uid` inside.
    pub(crate) outside_uid: u32,
    /// The caller's gid outside, which becomes `JailSpec::gid` inside.
    pub(crate) outside_gid: u32,
}

/// Everything needed to start one sandboxed process.
pub(crate) struct JailSpec<'a> {
    pub(crate) root: &'a Path,
    pub(crate) binds: &'a [BindMount],
    pub(crate) scratch_bytes: u64,
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a [String],
    pub(crate) cwd: &'a str,
    pub(crate) stdin: Option<&'a [u8]>,
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    pub(crate) cpu: Option<usize>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub(crate) seccomp: &'a [libc::sock_filter],
    pub(crate) landlock_abi: i64,
    /// Whether `/box` is writable (compilation), for Landlock.
    pub(crate) box_writable: bool,
    /// `Some` in rootless mode: start in a new user namespace with this single-id mapping.
    pub(crate) userns: Option<UserNamespace>,
}

/// A started sandbox: the init's host PID and the supervisor's ends of the pipes.
pub(crate) struct Jail {
    pub(crate) init_pid: libc::pid_t,
    pub(crate) program_pid: libc::pid_t,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    pub(crate) report: OwnedFd,
    go: Option<OwnedFd>,
    reaped: bool,
}

/// A message from the init or program process to the supervisor (16 bytes, written atomically).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Report {
    pub(crate) tag: u32,
    pub(crate) step: u32,
    pub(crate) value: u64,
}

/// The program process is set up and waits for the go signal.
pub(crate) const TAG_READY: u32 = 1;
/// The program process is about to `execve`; value = CLOCK_MONOTONIC ns.
pub(crate) const TAG_EXEC_AT: u32 = 2;
/// A setup step failed; step = which, value = errno | (index << 32).
pub(crate) const TAG_FAIL: u32 = 3;
/// The program exited; step = wait status, value = CLOCK_MONOTONIC ns at reaping.
pub(crate) const TAG_DONE: u32 = 4;
/// CPU time of the program and its reaped descendants, microseconds.
pub(crate) const TAG_RUSAGE: u32 = 5;
/// The program is exiting (its memory still mapped); step = its exact resident high-water mark
/// in KiB (`VmHWM`), value = CLOCK_MONOTONIC ns.
pub(crate) const TAG_EXIT: u32 = 6;
/// Follows [`TAG_EXIT`]: step = the program's wait status, known at its exit stop.
pub(crate) const TAG_EXIT_STATUS: u32 = 7;
/// Precedes [`TAG_EXIT`]: step = the program's resident memory at its exit stop, KiB.
pub(crate) const TAG_EXIT_RSS: u32 = 8;

const STEPS: &[&str] = &[
    "none",
    "prctl(PR_SET_PDEATHSIG)",
    "make mounts private",
    "bind the new root",
    "bind mount",
    "remount read-only",
    "mount tmpfs",
    "mount /proc",
    "pivot_root",
    "detach old root",
    "remount root read-only",
    "sethostname",
    "fork program process",
    "join cgroup",
    "sched_setaffinity",
    "redirect stdio",
    "chdir",
    "setrlimit",
    "wait for go",
    "setgroups",
    "setgid",
    "setuid",
    "prctl(PR_SET_NO_NEW_PRIVS)",
    "landlock",
    "seccomp",
    "execve",
    "close descriptors",
    "write the user namespace's id maps",
    "drop capabilities",
];

const S_PDEATHSIG: u32 = 1;
const S_PRIVATE: u32 = 2;
const S_ROOT_BIND: u32 = 3;
const S_BIND: u32 = 4;
const S_REMOUNT: u32 = 5;
const S_TMPFS: u32 = 6;
const S_PROC: u32 = 7;
const S_PIVOT: u32 = 8;
const S_UMOUNT_OLD: u32 = 9;
const S_ROOT_RO: u32 = 10;
const S_HOSTNAME: u32 = 11;
const S_FORK: u32 = 12;
const S_CGROUP: u32 = 13;
const S_AFFINITY: u32 = 14;
const S_DUP: u32 = 15;
const S_CHDIR: u32 = 16;
const S_RLIMIT: u32 = 17;
const S_GO: u32 = 18;
const S_SETGROUPS: u32 = 19;
const S_SETGID: u32 = 20;
const S_SETUID: u32 = 21;
const S_NNP: u32 = 22;
const S_LANDLOCK: u32 = 23;
const S_SECCOMP: u32 = 24;
const S_EXEC: u32 = 25;
const S_CLOSE: u32 = 26;
const S_IDMAP: u32 = 27;
const S_CAPS: u32 = 28;

/// Turns a failure report into a [`SandboxError`], naming the bind mount where relevant.
pub(crate) fn setup_error(report: Report, binds: &[BindMount]) -> SandboxError {
    let errno = (report.value & 0xffff_ffff) as i32;
    let index = (report.value >> 32) as usize;
    let mut step = STEPS
        .get(report.step as usize)
        .copied()
        .unwrap_or("unknown")
        .to_string();
    if matches!(report.step, S_BIND | S_REMOUNT)
        && let Some(b) = binds.get(index)
    {
        step = format!("{step} {} -> {}", b.source.display(), b.target.display());
    }
    SandboxError::Setup {
        step,
        source: io::Error::from_raw_os_error(errno),
    }
}

fn cstring(bytes: &[u8]) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::Sys {
        call: "prepare path",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL byte in a path or argument",
        ),
    })
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    cstring(p.as_os_str().as_bytes())
}

/// Creates a pipe whose both ends are close-on-exec.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes exactly two descriptors into the two-element array `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::last_os("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An anonymous in-memory file holding the program's standard input.
fn stdin_file(data: Option<&[u8]>) -> Result<OwnedFd, SandboxError> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create only returns a new descriptor.
    let fd = unsafe { libc::memfd_create(c"stdin".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SandboxError::last_os("memfd_create"));
    }
    // SAFETY: memfd_create returned a new descriptor (checked >= 0) that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut rest = data.unwrap_or_default();
    while !rest.is_empty() {
        // SAFETY: write reads at most `rest.len()` bytes of the live slice `rest` through the open `fd`.
        let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SandboxError::Sys {
                call: "write stdin",
                source: e,
            });
        }
        rest = &rest[n as usize..];
    }
    // SAFETY: lseek on the descriptor `fd` owns touches no memory.
    if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(SandboxError::last_os("lseek stdin"));
    }
    Ok(fd)
}

/// A mount prepared as C strings.
struct PreparedBind {
    source: CString,
    target: CString,
    writable: bool,
    device: bool,
    /// Mount flags of the source a user namespace may not clear (rootless mode; 0 as root).
    locked: libc::c_ulong,
}

/// The flags of the mount holding `path` that a bind remount inside a user namespace must keep
/// (the kernel locks them: clearing one fails with `EPERM`).
fn locked_flags(path: &CString) -> Result<libc::c_ulong, SandboxError> {
    // SAFETY: statvfs is plain data; all zeros is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a live statvfs the call writes into.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(SandboxError::Sys {
            call: "statvfs (flags of a mount to bind)",
            source: io::Error::last_os_error(),
        });
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    if st.f_flag & (libc::ST_NOATIME | libc::ST_RELATIME) == 0 {
        flags |= libc::MS_STRICTATIME;
    }
    Ok(flags)
}

/// Data the children use, all allocated before `clone`.
struct Prepared {
    root: CString,
    /// Flags the final read-only remount of the root keeps (rootless mode; 0 as root).
    root_locked: libc::c_ulong,
    /// `setgroups`, `gid_map` and `uid_map` contents (rootless mode).
    id_maps: Option<[CString; 3]>,
    binds: Vec<PreparedBind>,
    tmp_target: CString,
    tmp_options: CString,
    proc_target: CString,
    exe: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    cwd: CString,
}

impl Prepared {
    fn new(spec: &JailSpec<'_>) -> Result<Prepared, SandboxError> {
        let inside = |p: &Path| spec.root.join(p.strip_prefix("/").unwrap_or(p));
        let rootless = spec.userns.is_some();
        let binds = spec
            .binds
            .iter()
            .map(|b| {
                let source = cpath(&b.source)?;
                let locked = if rootless { locked_flags(&source)? } else { 0 };
                Ok(PreparedBind {
                    source,
                    target: cpath(&inside(&b.target))?,
                    writable: b.writable,
                    device: b.target.starts_with("/dev"),
                    locked,
                })
            })
            .collect::<Result<Vec<_>, SandboxError>>()?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let exe = argv.first().cloned().ok_or_else(|| SandboxError::Sys {
            call: "prepare argv",
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let root = cpath(spec.root)?;
        let root_locked = if rootless { locked_flags(&root)? } else { 0 };
        let id_maps = match spec.userns {
            Some(ns) => Some([
                cstring(b"deny")?,
                cstring(format!("{} {} 1\n", spec.gid, ns.outside_gid).as_bytes())?,
                cstring(format!("{} {} 1\n", spec.uid, ns.outside_uid).as_bytes())?,
            ]),
            None => None,
        };
        Ok(Prepared {
            root,
            root_locked,
            id_maps,
            binds,
            tmp_target: cpath(&spec.root.join("tmp"))?,
            tmp_options: cstring(format!("size={},mode=1777", spec.scratch_bytes).as_bytes())?,
            proc_target: cpath(&spec.root.join("proc"))?,
            exe,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            cwd: cstring(spec.cwd.as_bytes())?,
        })
    }
}

/// Everything the children need besides [`Prepared`]: raw descriptors and numbers.
struct ChildFds {
    stdin: RawFd,
    stdout_w: RawFd,
    stderr_w: RawFd,
    report_w: RawFd,
    go_r: RawFd,
    cgroup_procs: [RawFd; 4],
    cgroup_count: usize,
}

impl Jail {
    /// Starts the init and program processes; the program waits for [`Jail::go`] before exec.
    pub(crate) fn start(spec: JailSpec<'_>) -> Result<Jail, SandboxError> {
        let prepared = Prepared::new(&spec)?;
        let stdin = stdin_file(spec.stdin)?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        if spec.cgroup_procs.len() > 4 {
            return Err(SandboxError::Unsupported(
                "more than 4 cgroup hierarchies".into(),
            ));
        }
        let mut cgroup_procs = [-1; 4];
        for (i, fd) in spec.cgroup_procs.iter().enumerate() {
            cgroup_procs[i] = fd.as_raw_fd();
        }
        let fds = ChildFds {
            stdin: stdin.as_raw_fd(),
            stdout_w: stdout_w.as_raw_fd(),
            stderr_w: stderr_w.as_raw_fd(),
            report_w: report_w.as_raw_fd(),
            go_r: go_r.as_raw_fd(),
            cgroup_procs,
            cgroup_count: spec.cgroup_procs.len(),
        };
        // SAFETY: cpu_set_t is a plain bit array; all zeros is a valid, empty set.
        let mut cpu_set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if let Some(cpu) = spec.cpu {
            // SAFETY: CPU_SET sets one bit of the valid `cpu_set`, with bounds-checked indexing.
            unsafe { libc::CPU_SET(cpu, &mut cpu_set) };
        }
        let rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = spec
            .rlimits
            .iter()
            .map(|&(r, v)| {
                (
                    r,
                    libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    },
                )
            })
            .collect();
        let mut flags = libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::SIGCHLD;
        if spec.userns.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        let child = ChildContext {
            p: &prepared,
            fds: &fds,
            cpu: spec.cpu.map(|_| &cpu_set),
            rlimits: &rlimits,
            uid: spec.uid,
            gid: spec.gid,
            seccomp: spec.seccomp,
            landlock_abi: spec.landlock_abi,
            box_writable: spec.box_writable,
            rootless: spec.userns.is_some(),
        };
        // SAFETY: the child branch runs only async-signal-safe code on data prepared before the clone and never returns (it execs or exits).
        let pid = unsafe { raw_fork(flags as libc::c_ulong) };
        if pid < 0 {
            return Err(SandboxError::last_os(if spec.userns.is_some() {
                "clone (new user, PID, mount, network, IPC and UTS namespaces; \
                 `afterburner doctor` says what blocks unprivileged user namespaces)"
            } else {
                "clone (new PID, mount, network, IPC and UTS namespaces)"
            }));
        }
        if pid == 0 {
            // SAFETY: this is the child of raw_fork: init runs only async-signal-safe code on data prepared before the clone and never returns.
            unsafe { child.init() }
        }
        drop((stdin, stdout_w, stderr_w, report_w, go_r, spec.cgroup_procs));
        let mut jail = Jail {
            init_pid: pid,
            program_pid: 0,
            stdout: stdout_r,
            stderr: stderr_r,
            report: report_r,
            go: Some(go_w),
            reaped: false,
        };
        match jail.read_report(10_000)? {
            Some(r) if r.tag == TAG_READY => {}
            Some(r) if r.tag == TAG_FAIL => return Err(setup_error(r, spec.binds)),
            other => {
                return Err(SandboxError::Setup {
                    step: "start".into(),
                    source: io::Error::other(format!(
                        "sandbox init sent {other:?} instead of ready"
                    )),
                });
            }
        }
        jail.program_pid = first_child(pid).ok_or_else(|| SandboxError::Setup {
            step: "find program process".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        Ok(jail)
    }

    /// Lets the program process drop privileges and exec.
    pub(crate) fn go(&mut self) -> Result<(), SandboxError> {
        let Some(go) = self.go.take() else {
            return Ok(());
        };
        let b = [1u8];
        // SAFETY: write reads the one byte of the live buffer `b` through the open pipe `go`.
        let n = unsafe { libc::write(go.as_raw_fd(), b.as_ptr().cast(), 1) };
        if n != 1 {
            return Err(SandboxError::last_os("write go"));
        }
        Ok(())
    }

    /// Reads one report, waiting at most `timeout_ms`; `None` at end of stream.
    pub(crate) fn read_report(&self, timeout_ms: i32) -> Result<Option<Report>, SandboxError> {
        let mut pfd = libc::pollfd {
            fd: self.report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `pfd` is one valid pollfd, matching the count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if r < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SandboxError::last_os("poll report pipe"));
            }
            if r == 0 {
                return Err(SandboxError::Setup {
                    step: "wait for sandbox init".into(),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            return read_report_now(self.report.as_raw_fd());
        }
    }

    /// Kills the whole namespace by killing its init, without waiting for the teardown.
    pub(crate) fn kill(&self) {
        if !self.reaped {
            // SAFETY: kill takes no pointers, and `init_pid` is our unreaped child, so its PID cannot have been reused.
            unsafe { libc::kill(self.init_pid, libc::SIGKILL) };
        }
    }

    /// Kills the whole namespace (by killing its init) and reaps the init.
    pub(crate) fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: kill and waitpid act on our own unreaped child (its PID cannot be reused before waitpid), `st` is a live c_int and errno is thread-local.
        unsafe {
            libc::kill(self.init_pid, libc::SIGKILL);
            let mut st = 0;
            while libc::waitpid(self.init_pid, &mut st, 0) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
        }
        self.reaped = true;
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Reads one 16-byte report from a readable pipe; `None` at end of stream.
pub(crate) fn read_report_now(fd: RawFd) -> Result<Option<Report>, SandboxError> {
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 16 {
        // SAFETY: read writes at most `16 - got` bytes into `buf[got..]`, which is exactly that long.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), 16 - got) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SandboxError::Sys {
                call: "read report pipe",
                source: e,
            });
        }
        if n == 0 {
            return Ok(None);
        }
        got += n as usize;
    }
    let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut v = [0u8; 8];
    v.copy_from_slice(&buf[8..16]);
    Ok(Some(Report {
        tag: word(0),
        step: word(4),
        value: u64::from_ne_bytes(v),
    }))
}

/// Checks that this (unprivileged) process can create a user namespace, map itself onto
/// `inside` in it and make mounts there: the steps rootless mode needs. The error names what
/// blocks it and the fix.
pub(crate) fn probe_user_namespace(ns: UserNamespace, inside: u32) -> Result<(), SandboxError> {
    let maps = [
        cstring(b"deny")?,
        cstring(format!("{inside} {} 1\n", ns.outside_gid).as_bytes())?,
        cstring(format!("{inside} {} 1\n", ns.outside_uid).as_bytes())?,
    ];
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::SIGCHLD;
    // SAFETY: the child branch only makes raw system calls on the strings prepared above and ends with _exit.
    let pid = unsafe { raw_fork(flags as libc::c_ulong) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(rootless_unavailable(&format!(
            "cannot create a user namespace: {e}"
        )));
    }
    if pid == 0 {
        // SAFETY: in the child of raw_fork: open/write/close/mount on NUL-terminated strings prepared before the fork, then _exit.
        unsafe {
            let files = [
                c"/proc/self/setgroups",
                c"/proc/self/gid_map",
                c"/proc/self/uid_map",
            ];
            for (i, (file, content)) in files.iter().zip(&maps).enumerate() {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let len = content.as_bytes().len();
                if fd < 0 || libc::write(fd, content.as_ptr().cast(), len) != len as isize {
                    libc::_exit(10 + i as libc::c_int);
                }
                libc::close(fd);
            }
            let private = libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
            libc::_exit(if private == 0 { 0 } else { 20 });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child with a pointer to the live `status`.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(SandboxError::last_os("waitpid (user namespace probe)"));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    match code {
        0 => Ok(()),
        10..=12 => Err(rootless_unavailable(
            "a new user namespace refused its uid/gid map (setgroups, gid_map, uid_map)",
        )),
        20 => Err(rootless_unavailable(
            "a new user namespace has no capabilities over its mounts (mount failed)",
        )),
        _ => Err(rootless_unavailable(&format!(
            "the user namespace probe ended abnormally (wait status {status})"
        ))),
    }
}

/// Why rootless mode cannot work here, with what the machine's settings say about the cause.
fn rootless_unavailable(what: &str) -> SandboxError {
    let mut msg = format!(
        "rootless mode needs unprivileged user namespaces, and {what}; run as root, or fix: "
    );
    let blockers = rootless_blockers();
    if blockers.is_empty() {
        msg.push_str(
            "no sysctl forbids them, so a container or security module does (a container's \
             seccomp profile, e.g. `docker run --security-opt seccomp=unconfined`, or an LSM)",
        );
    } else {
        msg.push_str(&blockers.join("; "));
    }
    SandboxError::Unsupported(msg)
}

/// The machine settings that forbid unprivileged user namespaces, each with its fix.
pub(crate) fn rootless_blockers() -> Vec<String> {
    blockers_from(|p| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// [`rootless_blockers`], reading each setting (a `/proc/sys` path) through `read`.
fn blockers_from(read: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut v = Vec::new();
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        v.push(
            "kernel.unprivileged_userns_clone=0 (Debian/Arch kernels): \
             `sysctl -w kernel.unprivileged_userns_clone=1`"
                .to_string(),
        );
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        v.push("user.max_user_namespaces=0: `sysctl -w user.max_user_namespaces=15000`".into());
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        v.push(
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10 and later): give the \
             afterburner binary a profile that allows them (`abi <abi/4.0>, include \
             <tunables/global> profile afterburner /path/to/afterburner flags=(unconfined) { \
             userns, }` in /etc/apparmor.d/afterburner, then `apparmor_parser -r \
             /etc/apparmor.d/afterburner`), or `sysctl -w \
             kernel.apparmor_restrict_unprivileged_userns=0`"
                .into(),
        );
    }
    v
}

/// The first child of `pid` (the program process of an init).
fn first_child(pid: libc::pid_t) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// `fork` with extra clone flags, without running `atfork` handlers.
///
/// # Safety
/// In the child only async-signal-safe code may run.
unsafe fn raw_fork(flags: libc::c_ulong) -> libc::pid_t {
    // SAFETY: clone with a null stack acts as fork (the child runs on a copy-on-write copy of this stack); the caller keeps the child async-signal-safe.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0usize,
        ) as libc::pid_t
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock every timestamp of a run uses); async-signal-safe.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live `ts`; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `VmHWM` and `VmRSS` of `/proc/<pid>/status` in KiB (0 if unreadable); async-signal-safe.
fn read_status_memory_kb(pid: libc::pid_t) -> (u64, u64) {
    let mut path = *b"/proc/\0\0\0\0\0\0\0\0\0\0\0/status\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 11];
    let (mut n, mut v) = (0, pid.max(0) as u32);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut i = 6;
    for d in digits[..n].iter().rev() {
        path[i] = *d;
        i += 1;
    }
    for b in b"/status\0" {
        path[i] = *b;
        i += 1;
    }
    let mut buf = [0u8; 4096];
    // SAFETY: `path` is NUL-terminated within its 32 bytes (at most 24 used), read writes at most `buf.len()` bytes into `buf`, and `fd` is closed exactly once.
    let len = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return (0, 0);
        }
        let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        len
    };
    if len <= 0 {
        return (0, 0);
    }
    let text = &buf[..len as usize];
    (status_kb(text, b"VmHWM:"), status_kb(text, b"VmRSS:"))
}

/// Finds `key` (e.g. `VmHWM:`) in a `/proc/PID/status` text and returns its value in KiB.
pub(crate) fn status_kb(status: &[u8], key: &[u8]) -> u64 {
    let Some(pos) = status.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    status[pos + key.len()..]
        .iter()
        .skip_while(|b| **b == b' ' || **b == b'\t')
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'))
}

/// Empties the calling thread's bounding, ambient, permitted, effective and inheritable
/// capability sets; 0 or -1 (errno set). Async-signal-safe (raw system calls).
fn drop_capabilities() -> libc::c_int {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl takes integers only; capset reads the live `header` and the two-element `data` array (the size _LINUX_CAPABILITY_VERSION_3 expects).
    unsafe {
        for cap in 0..64 {
            // Stops at the first capability the kernel does not know (EINVAL).
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                && *libc::__errno_location() == libc::EINVAL
            {
                break;
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) as libc::c_int
    }
}

/// What the child processes read; borrowed from the supervisor's stack before `clone`.
struct ChildContext<'a> {
    p: &'a Prepared,
    fds: &'a ChildFds,
    cpu: Option<&'a libc::cpu_set_t>,
    rlimits: &'a [(libc::__rlimit_resource_t, libc::rlimit)],
    uid: u32,
    gid: u32,
    seccomp: &'a [libc::sock_filter],
    landlock_abi: i64,
    box_writable: bool,
    rootless: bool,
}

/// The program process's name between fork and exec (`/proc/PID/comm`).
pub(crate) const PRE_EXEC_NAME: &std::ffi::CStr = c"ab-pre-exec";

const LANDLOCK_WRITABLE: [&[u8]; 3] = [b"/tmp\0", b"/dev\0", b"/box\0"];

impl ChildContext<'_> {
    fn report(&self, tag: u32, step: u32, value: u64) {
        let mut buf = [0u8; 16];
        buf[0..4].copy_from_slice(&tag.to_ne_bytes());
        buf[4..8].copy_from_slice(&step.to_ne_bytes());
        buf[8..16].copy_from_slice(&value.to_ne_bytes());
        // SAFETY: write reads the 16 bytes of the live array `buf`; it is async-signal-safe.
        unsafe { libc::write(self.fds.report_w, buf.as_ptr().cast(), 16) };
    }

    fn fail(&self, step: u32, index: usize) -> ! {
        // SAFETY: __errno_location returns this thread's errno slot, always valid to read.
        let errno = unsafe { *libc::__errno_location() } as u32 as u64;
        self.report(TAG_FAIL, step, errno | ((index as u64) << 32));
        // SAFETY: _exit is async-signal-safe and ends the child without running any destructor of the parent's copy.
        unsafe { libc::_exit(127) }
    }

    fn check(&self, r: libc::c_int, step: u32) {
        if r < 0 {
            self.fail(step, 0);
        }
    }

    /// PID 1 of the new namespaces: builds the file system view, forks the program, reaps.
    ///
    /// # Safety
    /// Call only in the child of `raw_fork`, in new namespaces, as their PID 1.
    unsafe fn init(&self) -> ! {
        // SAFETY: runs only in the child of raw_fork: raw syscalls and async-signal-safe libc calls on NUL-terminated strings and descriptors prepared before the clone.
        unsafe {
            use libc::*;
            let p = self.p;
            self.check(
                prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong, 0, 0, 0),
                S_PDEATHSIG,
            );
            if let Some(maps) = &p.id_maps {
                let files = [
                    c"/proc/self/setgroups",
                    c"/proc/self/gid_map",
                    c"/proc/self/uid_map",
                ];
                for (file, content) in files.iter().zip(maps) {
                    let fd = open(file.as_ptr(), O_WRONLY | O_CLOEXEC);
                    if fd < 0 {
                        self.fail(S_IDMAP, 0);
                    }
                    let len = content.as_bytes().len();
                    if write(fd, content.as_ptr().cast(), len) != len as isize {
                        self.fail(S_IDMAP, 0);
                    }
                    close(fd);
                }
                // Rootless: the init runs as the same user as the program; no program may read
                // or write its memory (a copy of the supervisor's) through /proc/1. (After the
                // maps: a non-dumpable process's /proc/self files belong to root.)
                prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
            }
            let none = c"none".as_ptr();
            self.check(
                mount(
                    none,
                    c"/".as_ptr(),
                    std::ptr::null(),
                    MS_REC | MS_PRIVATE,
                    std::ptr::null(),
                ),
                S_PRIVATE,
            );
            self.check(
                mount(
                    p.root.as_ptr(),
                    p.root.as_ptr(),
                    std::ptr::null(),
                    MS_BIND | MS_REC,
                    std::ptr::null(),
                ),
                S_ROOT_BIND,
            );
            for (i, b) in p.binds.iter().enumerate() {
                if mount(
                    b.source.as_ptr(),
                    b.target.as_ptr(),
                    std::ptr::null(),
                    MS_BIND,
                    std::ptr::null(),
                ) < 0
                {
                    self.fail(S_BIND, i);
                }
                let mut flags = MS_BIND | MS_REMOUNT | MS_NOSUID | b.locked;
                if !b.device {
                    flags |= MS_NODEV;
                }
                if !b.writable {
                    flags |= MS_RDONLY;
                }
                if mount(
                    none,
                    b.target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) < 0
                {
                    self.fail(S_REMOUNT, i);
                }
            }
            self.check(
                mount(
                    c"tmpfs".as_ptr(),
                    p.tmp_target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    MS_NOSUID | MS_NODEV,
                    p.tmp_options.as_ptr().cast(),
                ),
                S_TMPFS,
            );
            self.check(
                mount(
                    c"proc".as_ptr(),
                    p.proc_target.as_ptr(),
                    c"proc".as_ptr(),
                    MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    std::ptr::null(),
                ),
                S_PROC,
            );
            self.check(chdir(p.root.as_ptr()), S_PIVOT);
            self.check(
                syscall(SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int,
                S_PIVOT,
            );
            self.check(umount2(c".".as_ptr(), MNT_DETACH), S_UMOUNT_OLD);
            self.check(chdir(c"/".as_ptr()), S_PIVOT);
            self.check(
                mount(
                    none,
                    c"/".as_ptr(),
                    std::ptr::null(),
                    MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | p.root_locked,
                    std::ptr::null(),
                ),
                S_ROOT_RO,
            );
            self.check(sethostname(c"sandbox".as_ptr(), 7), S_HOSTNAME);

            let program = raw_fork(SIGCHLD as c_ulong);
            if program < 0 {
                self.fail(S_FORK, 0);
            }
            if program == 0 {
                self.program();
            }
            // Init: watch the program's exit (see `exit_stop`), keep only the report pipe, then
            // reap until the program exits. Failing to attach only loses the exact exit peak.
            ptrace(
                PTRACE_SEIZE,
                program,
                std::ptr::null_mut::<c_void>(),
                PTRACE_O_TRACEEXIT as usize as *mut c_void,
            );
            let keep = self.fds.report_w as c_uint;
            if keep > 0 {
                syscall(SYS_close_range, 0u32, keep - 1, 0u32);
            }
            syscall(SYS_close_range, keep + 1, c_uint::MAX, 0u32);
            loop {
                let mut status: c_int = 0;
                let mut usage: rusage = std::mem::zeroed();
                let r = wait4(-1, &mut status, 0, &mut usage);
                if r == program && WIFSTOPPED(status) {
                    self.exit_stop(program, status);
                    continue;
                }
                if r == program {
                    let now = monotonic_ns();
                    let cpu_us = (usage.ru_utime.tv_sec as u64 * 1_000_000
                        + usage.ru_utime.tv_usec as u64)
                        + (usage.ru_stime.tv_sec as u64 * 1_000_000
                            + usage.ru_stime.tv_usec as u64);
                    self.report(TAG_RUSAGE, 0, cpu_us);
                    self.report(TAG_DONE, status as u32, now);
                    _exit(0);
                }
                if r < 0 && *__errno_location() != EINTR {
                    _exit(1);
                }
            }
        }
    }

    /// Handles a ptrace stop of the program: at its exit, reports the exact high-water mark of its
    /// resident memory (readable only while its memory is still mapped), then lets it go on.
    ///
    /// # Safety
    /// Call only in the init process, for `program`, its traced child, stopped in `status`.
    unsafe fn exit_stop(&self, program: libc::pid_t, status: libc::c_int) {
        // SAFETY: ptrace acts on our traced, stopped child with a pointer to the live local `status`; read_status_memory_kb and report are async-signal-safe.
        unsafe {
            use libc::*;
            let event = (status >> 16) & 0xff;
            let mut deliver = 0;
            if event == PTRACE_EVENT_EXIT {
                let now = monotonic_ns();
                let (hwm, rss) = read_status_memory_kb(program);
                self.report(TAG_EXIT_RSS, rss.min(u32::MAX as u64) as u32, now);
                self.report(TAG_EXIT, hwm.min(u32::MAX as u64) as u32, now);
                let mut status: c_ulong = 0;
                if ptrace(
                    PTRACE_GETEVENTMSG,
                    program,
                    std::ptr::null_mut::<c_void>(),
                    &mut status as *mut c_ulong as *mut c_void,
                ) == 0
                {
                    self.report(TAG_EXIT_STATUS, status as u32, now);
                }
            } else if event == 0 {
                // A signal-delivery stop: pass the signal on untouched.
                deliver = WSTOPSIG(status);
            }
            ptrace(
                PTRACE_CONT,
                program,
                std::ptr::null_mut::<c_void>(),
                deliver as usize as *mut c_void,
            );
        }
    }

    /// The program process: joins the cgroup, applies limits, waits for go, drops privileges, execs.
    ///
    /// # Safety
    /// Call only in the program child of `init`, between its `raw_fork` and `execve`.
    unsafe fn program(&self) -> ! {
        // SAFETY: runs only between raw_fork and execve: raw syscalls and async-signal-safe libc calls on data prepared before the clone (argv and env arrays NULL-terminated, in `Prepared`).
        unsafe {
            use libc::*;
            let f = self.fds;
            for &fd in &f.cgroup_procs[..f.cgroup_count] {
                if write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    self.fail(S_CGROUP, 0);
                }
            }
            if let Some(set) = self.cpu {
                self.check(
                    sched_setaffinity(0, std::mem::size_of::<cpu_set_t>(), set),
                    S_AFFINITY,
                );
            }
            self.check(dup2(f.stdin, 0), S_DUP);
            self.check(dup2(f.stdout_w, 1), S_DUP);
            self.check(dup2(f.stderr_w, 2), S_DUP);
            self.check(chdir(self.p.cwd.as_ptr()), S_CHDIR);
            for (res, lim) in self.rlimits {
                self.check(setrlimit(*res, lim), S_RLIMIT);
            }
            // Keep 0-2 and the two pipes to the supervisor (both close-on-exec).
            let (a, b) = if f.report_w < f.go_r {
                (f.report_w as c_uint, f.go_r as c_uint)
            } else {
                (f.go_r as c_uint, f.report_w as c_uint)
            };
            let ranges = [
                (3, a.saturating_sub(1)),
                (a + 1, b - 1),
                (b + 1, c_uint::MAX),
            ];
            for (lo, hi) in ranges {
                if lo <= hi && syscall(SYS_close_range, lo, hi, 0u32) < 0 {
                    self.fail(S_CLOSE, 0);
                }
            }
            self.report(TAG_READY, 0, 0);
            let mut byte = 0u8;
            if read(f.go_r, (&mut byte as *mut u8).cast(), 1) != 1 {
                self.fail(S_GO, 0);
            }
            // Raw system calls: glibc's wrappers broadcast to every thread of a multithreaded
            // process under a lock that another (absent) thread may hold in this copy.
            // Rootless, `setgroups` is denied in the user namespace (an unprivileged user cannot
            // shed its supplementary groups).
            if !self.rootless {
                self.check(
                    syscall(SYS_setgroups, 0usize, std::ptr::null::<gid_t>()) as c_int,
                    S_SETGROUPS,
                );
            }
            self.check(
                syscall(SYS_setresgid, self.gid, self.gid, self.gid) as c_int,
                S_SETGID,
            );
            self.check(
                syscall(SYS_setresuid, self.uid, self.uid, self.uid) as c_int,
                S_SETUID,
            );
            if self.rootless {
                // The creator of a user namespace holds every capability in it, and keeps them
                // through a `setresuid` to the id it already has: drop them all explicitly.
                self.check(drop_capabilities(), S_CAPS);
            }
            self.check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), S_NNP);
            let writable = if self.box_writable {
                &LANDLOCK_WRITABLE[..]
            } else {
                &LANDLOCK_WRITABLE[..2]
            };
            let r = crate::landlock::restrict(self.landlock_abi, writable);
            if r < 0 {
                *__errno_location() = -r;
                self.fail(S_LANDLOCK, 0);
            }
            if crate::seccomp::install(self.seccomp) < 0 {
                self.fail(S_SECCOMP, 0);
            }
            // A name `execve` replaces: until it changes, /proc shows this copy of the supervisor.
            prctl(PR_SET_NAME, PRE_EXEC_NAME.as_ptr() as c_ulong, 0, 0, 0);
            self.report(TAG_EXEC_AT, 0, monotonic_ns());
            execve(
                self.p.exe.as_ptr(),
                self.p.argv_ptrs.as_ptr(),
                self.p.env_ptrs.as_ptr(),
            );
            self.fail(S_EXEC, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_parsed_from_status() {
        let status = b"Name:\tpython3\nVmPeak:\t  20000 kB\nVmHWM:\t   13516 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(status_kb(status, b"VmHWM:"), 13516);
        assert_eq!(status_kb(status, b"VmRSS:"), 100);
        assert_eq!(status_kb(b"Name: x\n", b"VmHWM:"), 0);
    }

    #[test]
    fn each_setting_that_forbids_user_namespaces_is_named_with_its_fix() {
        let settings = |values: &[(&str, &str)]| {
            let values: Vec<(String, String)> = values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            blockers_from(move |p| {
                values
                    .iter()
                    .find(|(k, _)| p.ends_with(k.as_str()))
                    .map(|(_, v)| v.clone())
            })
        };
        assert!(settings(&[("max_user_namespaces", "15000")]).is_empty());
        let v = settings(&[("unprivileged_userns_clone", "0")]);
        assert!(
            v[0].contains("sysctl -w kernel.unprivileged_userns_clone=1"),
            "{v:?}"
        );
        let v = settings(&[("max_user_namespaces", "0")]);
        assert!(
            v[0].contains("sysctl -w user.max_user_namespaces="),
            "{v:?}"
        );
        let v = settings(&[("apparmor_restrict_unprivileged_userns", "1")]);
        assert!(
            v[0].contains("AppArmor") && v[0].contains("userns,"),
            "{v:?}"
        );
        assert_eq!(
            settings(&[
                ("unprivileged_userns_clone", "0"),
                ("apparmor_restrict_unprivileged_userns", "1"),
            ])
            .len(),
            2
        );
    }

    #[test]
    fn own_memory_is_readable() {
        // SAFETY: getpid has no preconditions.
        let (hwm, rss) = read_status_memory_kb(unsafe { libc::getpid() });
        assert!(hwm >= rss && rss > 0);
    }
}
