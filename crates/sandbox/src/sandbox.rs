//! The public entry point: build a program once, then run it on inputs, isolated and measured.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroups;
use crate::jail::{BindMount, Jail, JailSpec, UserNamespace};
use crate::monitor::{Supervision, supervise};
use crate::sys::random_u64;
use crate::toolchain::{BOX, SYSTEM_DIRS, Toolchain};
use crate::{Language, Limits, Measurement, RunResult, SandboxError, Status};

/// The unprivileged user and group programs run as (`nobody`).
const NOBODY: u32 = 65534;

/// Settings of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Directory for the sandbox's root template and programs (a fresh temporary one if `None`).
    pub state_dir: Option<PathBuf>,
    /// Time between two memory samples.
    pub sample_interval: Duration,
    /// Core the supervisor (sampler) thread is pinned to; `None` picks the first allowed core
    /// when there are at least two.
    pub supervisor_cpu: Option<usize>,
    /// Whether to read hardware instruction counters where they exist.
    pub count_instructions: bool,
    /// Limits of every compilation (and syntax check) [`Sandbox::build`] runs; the supervisor
    /// enforces them while the compiler runs, killing its whole process tree at the limit.
    pub compile_limits: Limits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            state_dir: None,
            sample_interval: Duration::from_micros(50),
            supervisor_cpu: None,
            count_instructions: true,
            compile_limits: Limits::for_compilation(),
        }
    }
}

/// How the sandbox gets its isolation: chosen automatically from the caller's privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Run by root: namespaces, mounts and cgroups directly; programs run as uid 65534.
    Root,
    /// Run by an ordinary user: everything inside an unprivileged user namespace in which the
    /// caller is mapped to uid 65534; limits through a delegated cgroup v2 subtree or rlimits.
    Rootless,
}

impl Mode {
    /// The mode a sandbox created by this process gets (root when the effective uid is 0).
    pub fn current() -> Mode {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            Mode::Root
        } else {
            Mode::Rootless
        }
    }

    /// `root` or `rootless`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::Rootless => "rootless",
        }
    }
}

/// What one limit or measurement rests on in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basis {
    /// The limit or measurement (`memory limit`, `peak memory`, ...).
    pub what: String,
    /// The kernel mechanism behind it on this machine.
    pub rests_on: String,
}

/// What the sandbox can do on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Root or rootless.
    pub mode: Mode,
    /// What isolation, each limit and each measurement rests on.
    pub basis: Vec<Basis>,
    /// cgroup version used for limits and accounting (1 or 2), or `None` for the rlimit fallback.
    pub cgroup_version: Option<u8>,
    /// Whether the kernel's cgroups favour dynamic modifications (cheap per-run cgroup joins).
    pub cgroup_favordynmods: bool,
    /// Landlock ABI version (0: absent).
    pub landlock_abi: i64,
    /// Cores programs may be pinned to.
    pub cpus: Vec<usize>,
    /// Core of the supervisor thread, if pinned.
    pub supervisor_cpu: Option<usize>,
    /// Degradations the user should know about.
    pub warnings: Vec<String>,
    /// valgrind, which counts instructions in runs that ask for it; `None`: not installed.
    pub valgrind: Option<PathBuf>,
}

/// How one compilation went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compilation {
    /// `accepted` when an artefact was produced; otherwise why not.
    pub status: Status,
    /// Wall time of the compiler, ms (never counted as run time).
    pub compile_ms: f64,
    /// The compiler's diagnostics (stderr then stdout), followed by `message` when the
    /// compilation was stopped at a limit.
    pub output: String,
    /// Why the compilation was stopped, when a limit stopped it (e.g. `compilation exceeded its
    /// time limit of 60 s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The compiler's full measurement.
    pub measurement: Measurement,
}

/// A program built and ready to run any number of times.
#[derive(Debug)]
pub struct Program {
    language: Language,
    dir: ProgramDir,
    toolchain: Arc<Toolchain>,
    compilation: Option<Compilation>,
}

impl Program {
    /// The program's language.
    pub fn language(&self) -> Language {
        self.language
    }

    /// How its compilation (or, for interpreted languages, syntax check) went.
    pub fn compilation(&self) -> Option<&Compilation> {
        self.compilation.as_ref()
    }

    /// Compile (or syntax check) time in ms.
    pub fn compile_ms(&self) -> f64 {
        self.compilation.as_ref().map_or(0.0, |c| c.compile_ms)
    }

    /// Whether the program can run (it compiled, or needs no compilation).
    pub fn is_runnable(&self) -> bool {
        self.compilation
            .as_ref()
            .is_none_or(|c| c.status == Status::Accepted)
    }
}

/// A directory removed when dropped.
#[derive(Debug)]
struct ProgramDir(PathBuf);

impl Drop for ProgramDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One run: input, limits and placement.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Bytes given on standard input.
    pub stdin: Vec<u8>,
    /// Limits of the run.
    pub limits: Limits,
    /// Core to pin the program to; `None` picks the last allowed core.
    pub cpu: Option<usize>,
    /// Whether to keep the full memory trace in the result.
    pub keep_memory_trace: bool,
    /// Whether to count the instructions the program executes under valgrind (deterministic,
    /// ~35x slower; the run's time and memory are then valgrind's): see `counting.rs`.
    pub count_instructions: bool,
}

/// Isolated, measured execution of untrusted programs; share one per process.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    mode: Mode,
    userns: Option<UserNamespace>,
    basis: Vec<Basis>,
    cgroups: Cgroups,
    state: StateDir,
    root: PathBuf,
    base_binds: Vec<BindMount>,
    toolchains: Mutex<HashMap<Language, Arc<Toolchain>>>,
    seccomp: Vec<libc::sock_filter>,
    landlock_abi: i64,
    cpus: Vec<usize>,
    supervisor_cpu: Option<usize>,
    counter: AtomicU64,
    warnings: Vec<String>,
    favordynmods: bool,
    valgrind: Option<PathBuf>,
}

/// The sandbox's working directory; removed on drop when it was created by us.
#[derive(Debug)]
struct StateDir {
    path: PathBuf,
    owned: bool,
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |e| SandboxError::io(action, path, e)
}

fn make_dir_all(path: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(path).map_err(io_err("create directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(io_err("set permissions of", path))
}

/// Cores this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array (all zeros is a valid, empty set) passed with its exact size; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

impl Sandbox {
    /// A sandbox with default settings.
    pub fn new() -> Result<Sandbox, SandboxError> {
        Sandbox::with_config(SandboxConfig::default())
    }

    /// A sandbox with the given settings; checks privileges and prepares the root template.
    pub fn with_config(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.compile_limits.validate()?;
        let mode = Mode::current();
        let userns = match mode {
            Mode::Root => None,
            Mode::Rootless => {
                // SAFETY: geteuid and getegid have no preconditions and cannot fail.
                let ns = unsafe {
                    UserNamespace {
                        outside_uid: libc::geteuid(),
                        outside_gid: libc::getegid(),
                    }
                };
                crate::jail::probe_user_namespace(ns, NOBODY)?;
                Some(ns)
            }
        };
        let (state_path, owned) = match &config.state_dir {
            Some(p) => (p.clone(), false),
            None => {
                // PIDs repeat across PID namespaces (containers): add randomness to the name.
                let p = std::env::temp_dir().join(format!(
                    "afterburner-{}-{:016x}",
                    std::process::id(),
                    random_u64()
                ));
                fs::create_dir(&p).map_err(io_err("create state directory", &p))?;
                (p, true)
            }
        };
        make_dir_all(&state_path)?;
        let state = StateDir {
            path: state_path.clone(),
            owned,
        };
        let root = state_path.join("root");
        make_dir_all(&root)?;
        let mut base_binds = Vec::new();
        for dir in SYSTEM_DIRS {
            let host = Path::new(dir);
            let inside = root.join(&dir[1..]);
            match fs::symlink_metadata(host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(host).map_err(io_err("read link", host))?;
                    if fs::symlink_metadata(&inside).is_err() {
                        symlink(&target, &inside).map_err(io_err("create symlink", &inside))?;
                    }
                }
                Ok(m) if m.is_dir() => {
                    make_dir_all(&inside)?;
                    base_binds.push(BindMount {
                        source: host.to_path_buf(),
                        target: host.to_path_buf(),
                        writable: false,
                    });
                }
                _ => {}
            }
        }
        for d in ["tmp", "proc", "box", "dev"] {
            make_dir_all(&root.join(d))?;
        }
        for dev in ["null", "zero", "random", "urandom"] {
            let host = Path::new("/dev").join(dev);
            let inside = root.join("dev").join(dev);
            if !inside.exists() {
                fs::write(&inside, b"").map_err(io_err("create device mount point", &inside))?;
            }
            base_binds.push(BindMount {
                source: host.clone(),
                target: host,
                writable: true,
            });
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("shm", "/tmp"),
        ] {
            let inside = root.join("dev").join(name);
            if fs::symlink_metadata(&inside).is_err() {
                symlink(target, &inside).map_err(io_err("create symlink", &inside))?;
            }
        }
        make_dir_all(&state_path.join("programs"))?;

        let cgroups = Cgroups::detect();
        let landlock_abi = crate::landlock::abi_version();
        let mut warnings = Vec::new();
        if let Some(reason) = &cgroups.unavailable_reason {
            warnings.push(format!(
                "cgroups unavailable ({reason}): memory, process and CPU limits fall back to \
                 rlimits and the supervisor's own readings"
            ));
        }
        let favordynmods = match cgroups.favor_dynamic_modifications() {
            Ok(on) => on,
            Err(e) => {
                warnings.push(format!(
                    "cannot switch cgroups to favordynmods ({e}): each run may wait 5-16 ms for \
                     an RCU grace period when it joins its cgroup"
                ));
                false
            }
        };
        if landlock_abi == 0 {
            warnings.push("landlock unavailable: relying on mounts and seccomp only".into());
        }
        if mode == Mode::Rootless && on_noexec_mount(&state_path) {
            warnings.push(format!(
                "the state directory {} is on a noexec mount, which a user namespace cannot \
                 lift: compiled programs (C, C++, Rust, Go) will fail to start; point TMPDIR \
                 (or SandboxConfig::state_dir) at a directory on a mount without noexec",
                state_path.display()
            ));
        }
        let cpus = allowed_cpus();
        let supervisor_cpu = config
            .supervisor_cpu
            .or_else(|| (cpus.len() >= 2).then(|| cpus[0]));
        let basis = basis(mode, userns, &cgroups, landlock_abi);
        Ok(Sandbox {
            config,
            mode,
            userns,
            basis,
            cgroups,
            state,
            root,
            base_binds,
            toolchains: Mutex::new(HashMap::new()),
            seccomp: crate::seccomp::filter(),
            landlock_abi,
            cpus,
            supervisor_cpu,
            counter: AtomicU64::new(0),
            warnings,
            favordynmods,
            valgrind: crate::counting::find_valgrind(),
        })
    }

    /// What isolation and accounting this machine gives, and what was degraded.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            mode: self.mode,
            basis: self.basis.clone(),
            cgroup_version: self.cgroups.version(),
            cgroup_favordynmods: self.favordynmods,
            landlock_abi: self.landlock_abi,
            cpus: self.cpus.clone(),
            supervisor_cpu: self.supervisor_cpu,
            warnings: self.warnings.clone(),
            valgrind: self.valgrind.clone(),
        }
    }

    /// Root or rootless (see [`Mode`]); [`Sandbox::capabilities`] says what each limit rests on.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The toolchain of `language`, detected once; its mount points are added to the template.
    fn toolchain(&self, language: Language) -> Result<Arc<Toolchain>, SandboxError> {
        let mut map = self
            .toolchains
            .lock()
            .map_err(|_| SandboxError::Unsupported("toolchain cache poisoned".into()))?;
        if let Some(tc) = map.get(&language) {
            return Ok(tc.clone());
        }
        let tc = Toolchain::detect(language)?;
        for b in &tc.binds {
            make_dir_all(&self.root.join(b.strip_prefix("/").unwrap_or(b)))?;
        }
        let tc = Arc::new(tc);
        map.insert(language, tc.clone());
        Ok(tc)
    }

    /// A one-line description of the toolchain used for `language` (e.g. `Python 3.11.7`).
    pub fn toolchain_version(&self, language: Language) -> Result<String, SandboxError> {
        Ok(self.toolchain(language)?.version.clone())
    }

    /// The limits [`Sandbox::build`] compiles under.
    pub fn compile_limits(&self) -> &Limits {
        &self.config.compile_limits
    }

    /// Writes the source and, for compiled languages, compiles it in the sandbox under the
    /// configured compile limits ([`SandboxConfig::compile_limits`]).
    pub fn build(&self, language: Language, source: &str) -> Result<Program, SandboxError> {
        self.build_with_limits(language, source, &self.config.compile_limits)
    }

    /// Writes the source and, for compiled languages, compiles it in the sandbox under `limits`.
    ///
    /// The limits are enforced while the compiler runs: at the time limit its whole process
    /// tree (driver, `cc1plus`, `javac`'s threads, `go build`'s children...) is killed, and the
    /// compilation's status is `time_limit` with a message saying so.
    pub fn build_with_limits(
        &self,
        language: Language,
        source: &str,
        limits: &Limits,
    ) -> Result<Program, SandboxError> {
        limits.validate()?;
        let toolchain = self.toolchain(language)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = ProgramDir(self.state.path.join("programs").join(n.to_string()));
        make_dir_all(&dir.0)?;
        let src = dir.0.join(language.source_file_name());
        fs::write(&src, source).map_err(io_err("write source", &src))?;
        fs::set_permissions(&src, fs::Permissions::from_mode(0o644))
            .map_err(io_err("set permissions of", &src))?;
        let compilation = match toolchain.compile_argv(limits) {
            None => None,
            Some(argv) => {
                // The compiler runs as the sandbox user and writes its artefact into the box.
                // Rootless, the sandbox user is the caller, who owns the directory already.
                let chown = self.mode == Mode::Root;
                if chown {
                    chown_tree(&dir.0, NOBODY)?;
                }
                let result = self.execute(
                    &toolchain,
                    &dir.0,
                    true,
                    &argv,
                    &RunRequest {
                        limits: limits.clone(),
                        cpu: None,
                        ..RunRequest::default()
                    },
                );
                if chown {
                    chown_tree(&dir.0, 0)?;
                }
                Some(compilation_of(result?, limits))
            }
        };
        Ok(Program {
            language,
            dir,
            toolchain,
            compilation,
        })
    }

    /// Runs a built program once.
    pub fn run(&self, program: &Program, request: &RunRequest) -> Result<RunResult, SandboxError> {
        request.limits.validate()?;
        if let Some(c) = program
            .compilation
            .as_ref()
            .filter(|c| c.status != Status::Accepted)
        {
            return Ok(not_compiled(c));
        }
        let mut argv = program.toolchain.run_argv(&request.limits);
        if request.count_instructions {
            let Some(valgrind) = &self.valgrind else {
                return Err(SandboxError::Unsupported(
                    "counting instructions needs valgrind, which is not installed \
                     (apt-get install valgrind)"
                        .into(),
                ));
            };
            argv = crate::counting::counted_argv(valgrind, &argv);
        }
        let mut result = self.execute(&program.toolchain, &program.dir.0, false, &argv, request)?;
        if request.count_instructions {
            result.measurement.instructions = crate::counting::take_count(&mut result.stderr);
        }
        Ok(result)
    }

    /// Runs a built program `n` times on the same request.
    pub fn run_repeated(
        &self,
        program: &Program,
        request: &RunRequest,
        n: usize,
    ) -> Result<Vec<RunResult>, SandboxError> {
        (0..n.max(1)).map(|_| self.run(program, request)).collect()
    }

    fn execute(
        &self,
        toolchain: &Toolchain,
        program_dir: &Path,
        compiling: bool,
        argv: &[String],
        request: &RunRequest,
    ) -> Result<RunResult, SandboxError> {
        let limits = &request.limits;
        let mut binds = self.base_binds.clone();
        binds.extend(toolchain.binds.iter().map(|b| BindMount {
            source: b.clone(),
            target: b.clone(),
            writable: false,
        }));
        binds.push(BindMount {
            source: program_dir.to_path_buf(),
            target: PathBuf::from(BOX),
            writable: compiling,
        });
        let mut env: Vec<String> = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "HOME=/tmp".into(),
            "TMPDIR=/tmp".into(),
            "LANG=C.UTF-8".into(),
            "LC_ALL=C.UTF-8".into(),
        ];
        env.extend(toolchain.env.iter().cloned());
        let cgroup = self.cgroups.create(limits)?;
        let cgroup_procs = match &cgroup {
            Some(c) => c.open_procs()?,
            None => Vec::new(),
        };
        let mut rlimits = vec![
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_FSIZE, limits.file_size_bytes),
            (libc::RLIMIT_NOFILE, 1024),
            (
                libc::RLIMIT_STACK,
                limits.memory_bytes.min(256 * 1024 * 1024),
            ),
            (libc::RLIMIT_CPU, limits.cpu_time.as_secs() + 2),
        ];
        if cgroup.is_none() {
            // Rootless, RLIMIT_NPROC counts the processes of the run's own user namespace, the
            // init included; as root it counts every process of uid 65534 on the machine.
            let init = u64::from(self.mode == Mode::Rootless);
            rlimits.push((libc::RLIMIT_NPROC, u64::from(limits.max_processes) + init));
            if !toolchain.reserves_virtual_memory() && !request.count_instructions {
                rlimits.push((libc::RLIMIT_AS, limits.memory_bytes));
                // glibc gives every thread a stack of RLIMIT_STACK, which RLIMIT_AS counts in
                // full: 256 MiB each would refuse a program's second thread. An unlimited stack
                // rlimit gives threads glibc's default size, and the main stack stays bounded
                // by RLIMIT_AS.
                for (resource, value) in &mut rlimits {
                    if *resource == libc::RLIMIT_STACK {
                        *value = libc::RLIM_INFINITY;
                    }
                }
            }
        }
        if self.mode == Mode::Rootless {
            // Without CAP_SYS_RESOURCE a hard limit can only be lowered.
            for (resource, value) in &mut rlimits {
                *value = (*value).min(hard_limit(*resource));
            }
        }
        let cpu = if compiling {
            None
        } else {
            request.cpu.or_else(|| self.cpus.last().copied())
        };
        let mut jail = Jail::start(JailSpec {
            root: &self.root,
            binds: &binds,
            scratch_bytes: limits.scratch_bytes,
            argv,
            env: &env,
            cwd: "/tmp",
            stdin: Some(&request.stdin),
            cgroup_procs,
            cpu,
            uid: NOBODY,
            gid: NOBODY,
            rlimits,
            seccomp: &self.seccomp,
            landlock_abi: self.landlock_abi,
            box_writable: compiling,
            userns: self.userns,
        })?;
        // The previous run of this thread must be fully torn down before this one starts.
        reaper::wait_for_this_thread();
        let supervisor_cpu = self.supervisor_cpu.filter(|s| Some(*s) != cpu);
        let result = supervise(
            &mut jail,
            &Supervision {
                limits,
                sample_interval: if compiling {
                    Duration::from_millis(1)
                } else {
                    self.config.sample_interval
                },
                supervisor_cpu,
                keep_trace: request.keep_memory_trace,
                cgroup: cgroup.as_ref(),
                count_instructions: self.config.count_instructions && !compiling,
            },
        );
        jail.kill();
        reaper::reap_later(jail, cgroup);
        result
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        reaper::wait_for_all();
    }
}

/// Tearing down finished runs off the measured path: waiting for a killed namespace to die and
/// removing its cgroup take milliseconds that belong to no program.
mod reaper {
    use std::cell::RefCell;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Condvar, Mutex, OnceLock};
    use std::time::Duration;

    use crate::cgroup::RunCgroup;
    use crate::jail::Jail;

    type Work = (Jail, Option<RunCgroup>, Sender<()>);

    static QUEUE: OnceLock<Mutex<Sender<Work>>> = OnceLock::new();
    static PENDING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

    thread_local! {
        static MINE: RefCell<Vec<Receiver<()>>> = const { RefCell::new(Vec::new()) };
    }

    fn queue() -> &'static Mutex<Sender<Work>> {
        QUEUE.get_or_init(|| {
            let (tx, rx) = channel::<Work>();
            let spawned = std::thread::Builder::new()
                .name("afterburner-reaper".into())
                .spawn(move || {
                    for (jail, cgroup, done) in rx {
                        drop(jail);
                        drop(cgroup);
                        finish();
                        let _ = done.send(());
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the reaper thread ({e}); tearing down inline");
            }
            Mutex::new(tx)
        })
    }

    fn finish() {
        let (count, cv) = &PENDING;
        if let Ok(mut n) = count.lock() {
            *n = n.saturating_sub(1);
            cv.notify_all();
        }
    }

    /// Hands a killed run to the reaper thread (or tears it down here if that is impossible).
    pub(super) fn reap_later(jail: Jail, cgroup: Option<RunCgroup>) {
        let (tx, rx) = channel();
        if let Ok(mut n) = PENDING.0.lock() {
            *n += 1;
        }
        let sent = queue()
            .lock()
            .map(|q| q.send((jail, cgroup, tx)))
            .map_err(|_| ());
        match sent {
            Ok(Ok(())) => MINE.with(|m| m.borrow_mut().push(rx)),
            Ok(Err(std::sync::mpsc::SendError((jail, cgroup, _)))) => {
                drop(jail);
                drop(cgroup);
                finish();
            }
            Err(()) => finish(),
        }
    }

    /// Waits until the runs this thread handed over are torn down.
    pub(super) fn wait_for_this_thread() {
        MINE.with(|m| {
            for rx in m.borrow_mut().drain(..) {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
        });
    }

    /// Waits until every handed-over run is torn down.
    pub(super) fn wait_for_all() {
        let (count, cv) = &PENDING;
        if let Ok(n) = count.lock() {
            let _ = cv.wait_timeout_while(n, Duration::from_secs(10), |n| *n > 0);
        }
    }
}

/// How a compilation went, from the supervised run of the compiler under `limits`.
fn compilation_of(r: RunResult, limits: &Limits) -> Compilation {
    let mut output = r.stderr_text();
    output.push_str(&r.stdout_text());
    let (m, reason) = (r.measurement, r.message);
    let (status, message) = match m.status {
        Status::Accepted => (Status::Accepted, None),
        Status::RuntimeError => (Status::CompileError, None),
        Status::TimeLimit => {
            let why = reason.as_deref().unwrap_or_default();
            let limit = if why.starts_with("CPU") {
                limits.cpu_time
            } else {
                limits.wall_time
            };
            (
                Status::TimeLimit,
                Some(format!(
                    "compilation exceeded its time limit of {} s ({why}); the compiler was killed",
                    limit.as_secs_f64()
                )),
            )
        }
        Status::MemoryLimit => (
            Status::MemoryLimit,
            Some(format!(
                "compilation exceeded its memory limit of {} MiB",
                limits.memory_bytes / (1024 * 1024)
            )),
        ),
        other => (
            other,
            Some(format!(
                "compilation stopped: {}",
                reason.as_deref().unwrap_or(other.as_str())
            )),
        ),
    };
    if status == Status::CompileError && output.is_empty() {
        output = reason.unwrap_or_default();
    }
    if let Some(why) = &message {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(why);
    }
    Compilation {
        status,
        compile_ms: m.wall_ms,
        output,
        message,
        measurement: m,
    }
}

/// Whether `path` lies on a mount with `noexec`.
fn on_noexec_mount(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statvfs is plain data; all zeros is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a live statvfs the call writes into.
    unsafe { libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_NOEXEC != 0 }
}

/// The current hard limit of `resource` for this process (`RLIM_INFINITY` if unreadable).
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes one rlimit into the live `r`.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return libc::RLIM_INFINITY;
    }
    r.rlim_max
}

/// What isolation, limits and measurements rest on, for [`Capabilities::basis`].
fn basis(
    mode: Mode,
    userns: Option<UserNamespace>,
    cgroups: &Cgroups,
    landlock_abi: i64,
) -> Vec<Basis> {
    let b = |what: &str, rests_on: String| Basis {
        what: what.into(),
        rests_on,
    };
    let isolation = match userns {
        None => "PID, mount, network, IPC and UTS namespaces; programs run as uid 65534".into(),
        Some(ns) => format!(
            "an unprivileged user namespace (uid {NOBODY} inside is uid {} outside, no \
             capabilities) with PID, mount, network, IPC and UTS namespaces",
            ns.outside_uid
        ),
    };
    let confinement = format!(
        "read-only bind mounts, a size-capped tmpfs /tmp, seccomp, no_new_privs{}",
        if landlock_abi > 0 {
            format!(", Landlock ABI {landlock_abi}")
        } else {
            String::new()
        }
    );
    let mut v = vec![
        b("isolation", isolation),
        b("file system and system calls", confinement),
    ];
    match cgroups.describe() {
        Some(cg) => {
            v.push(b("memory limit", cg.memory));
            v.push(b("process limit", cg.processes));
            v.push(b("CPU time limit", cg.cpu));
        }
        None => {
            v.push(b(
                "memory limit",
                "RLIMIT_AS (C, C++, Rust, Python), and for every language the supervisor \
                 killing the run when its sampled resident memory passes the limit"
                    .into(),
            ));
            v.push(b(
                "process limit",
                match mode {
                    Mode::Root => "RLIMIT_NPROC of uid 65534 (counted across the machine)".into(),
                    Mode::Rootless => "RLIMIT_NPROC, counted per user namespace: only the \
                                       run's own processes"
                        .into(),
                },
            ));
            v.push(b(
                "CPU time limit",
                "the supervisor summing /proc/PID/stat of the run's processes every 2 ms, and \
                 RLIMIT_CPU"
                    .into(),
            ));
        }
    }
    v.push(b(
        "wall time limit",
        "the supervisor's monotonic clock".into(),
    ));
    v.push(b(
        "peak memory",
        format!(
            "VmHWM at the program's exit stop (ptrace, PTRACE_O_TRACEEXIT) and the sampler \
             reading /proc/PID/statm of every process in the run's {}",
            if cgroups.version().is_some() {
                "cgroup"
            } else {
                "process tree"
            }
        ),
    ));
    v.push(b(
        "CPU time",
        if cgroups.version().is_some() {
            "the run's cgroup (every process that was ever in it)".into()
        } else {
            "wait4's rusage of the program and every process it reaped".into()
        },
    ));
    v
}

/// The result of running a program that did not compile.
fn not_compiled(c: &Compilation) -> RunResult {
    let message = match &c.message {
        Some(why) => format!("the program did not compile: {why}"),
        None => "the program did not compile".into(),
    };
    RunResult {
        measurement: Measurement::not_run(Status::CompileError),
        stdout: Vec::new(),
        stderr: c.output.clone().into_bytes(),
        stdout_truncated: false,
        stderr_truncated: false,
        message: Some(message),
        memory_trace: Vec::new(),
    }
}

/// Changes the owner of a directory and everything in it (no symlinks are followed).
fn chown_tree(dir: &Path, uid: u32) -> Result<(), SandboxError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).map_err(io_err("chown", dir))?;
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err("stat", &path))?;
        if ft.is_dir() {
            chown_tree(&path, uid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))
                .map_err(io_err("chown", &path))?;
        }
    }
    Ok(())
}
