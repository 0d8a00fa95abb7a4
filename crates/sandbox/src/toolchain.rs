//! Finding each language's compiler or interpreter on the host, and the commands that build
//! and run a program with it inside the sandbox.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Language, Limits, SandboxError};

/// Where the program's source and artefact live inside the sandbox.
pub(crate) const BOX: &str = "/box";

/// Host directories already visible in every sandbox (read-only).
pub(crate) const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin", "/etc",
];

/// A language's resolved tools: absolute host paths, visible at the same path in the sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Toolchain {
    pub(crate) language: Language,
    /// The compiler, or the interpreter for interpreted languages.
    tool: PathBuf,
    /// The Java launcher (`java` next to `javac`).
    runtime: Option<PathBuf>,
    /// Extra host directories to expose read-only (toolchains outside the system dirs).
    pub(crate) binds: Vec<PathBuf>,
    /// Extra environment for build and run.
    pub(crate) env: Vec<String>,
    /// Human-readable version line, for reports.
    pub(crate) version: String,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn missing(language: Language, detail: &str) -> SandboxError {
    SandboxError::MissingToolchain {
        language,
        detail: detail.to_string(),
    }
}

/// Runs a trusted host command (toolchain discovery) and returns its stdout.
fn query(language: Language, program: &Path, args: &[&str]) -> Result<String, SandboxError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| missing(language, &format!("cannot run {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(missing(
            language,
            &format!(
                "`{} {}` failed: {}",
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `p` is already visible through the system directories.
fn under_system_dirs(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| p.starts_with(d))
}

fn canonical(language: Language, p: &Path) -> Result<PathBuf, SandboxError> {
    p.canonicalize()
        .map_err(|e| missing(language, &format!("cannot resolve {}: {e}", p.display())))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

impl Toolchain {
    /// Finds the tools of `language` on this machine.
    pub(crate) fn detect(language: Language) -> Result<Toolchain, SandboxError> {
        let found = |name: &str, hint: &str| {
            which(name)
                .ok_or_else(|| missing(language, &format!("`{name}` not found on PATH; {hint}")))
        };
        let mut tc = Toolchain {
            language,
            tool: PathBuf::new(),
            runtime: None,
            binds: Vec::new(),
            env: Vec::new(),
            version: String::new(),
        };
        match language {
            Language::Python => {
                // `python3` may be a shim (pyenv): resolve the real interpreter once.
                let shim = found("python3", "install Python 3 (apt-get install python3)")?;
                let info = query(
                    language,
                    &shim,
                    &[
                        "-c",
                        "import sys; print(sys.executable); print(sys.base_prefix); \
                         print(sys.prefix); print(sys.version.split()[0])",
                    ],
                )?;
                let lines: Vec<&str> = info.lines().collect();
                if lines.len() < 4 {
                    return Err(missing(language, "python3 did not report its location"));
                }
                tc.tool = PathBuf::from(lines[0]);
                for prefix in [lines[1], lines[2]] {
                    let p = PathBuf::from(prefix);
                    if !under_system_dirs(&p) && !tc.binds.contains(&p) {
                        tc.binds.push(p);
                    }
                }
                tc.env = vec![
                    "PYTHONHASHSEED=0".into(),
                    "PYTHONDONTWRITEBYTECODE=1".into(),
                    "PYTHONNOUSERSITE=1".into(),
                ];
                tc.version = format!("Python {}", lines[3]);
            }
            Language::C | Language::Cpp => {
                let (name, pkg) = if language == Language::C {
                    ("gcc", "apt-get install gcc")
                } else {
                    ("g++", "apt-get install g++")
                };
                tc.tool = canonical(language, &found(name, pkg)?)?;
                tc.version = first_line(&query(language, &tc.tool, &["--version"])?);
            }
            Language::Rust => {
                let proxy = found("rustc", "install Rust (https://rustup.rs)")?;
                let sysroot =
                    PathBuf::from(query(language, &proxy, &["--print", "sysroot"])?.trim());
                tc.tool = sysroot.join("bin/rustc");
                if !under_system_dirs(&sysroot) {
                    tc.binds.push(sysroot);
                }
                tc.version = first_line(&query(language, &tc.tool, &["--version"])?);
            }
            Language::Java => {
                let javac = canonical(
                    language,
                    &found(
                        "javac",
                        "install a JDK (apt-get install openjdk-17-jdk-headless)",
                    )?,
                )?;
                let home = javac
                    .parent()
                    .and_then(Path::parent)
                    .ok_or_else(|| missing(language, "cannot find the JDK home"))?
                    .to_path_buf();
                let java = home.join("bin/java");
                if !java.is_file() {
                    return Err(missing(language, "the JDK has javac but no java launcher"));
                }
                if !under_system_dirs(&home) {
                    tc.binds.push(home.clone());
                }
                tc.version = first_line(&query(language, &javac, &["-version"])?);
                tc.tool = javac;
                tc.runtime = Some(java);
                tc.env = vec![format!("JAVA_HOME={}", home.display())];
            }
            Language::JavaScript => {
                tc.tool = canonical(
                    language,
                    &found("node", "install Node.js (apt-get install nodejs)")?,
                )?;
                if let Some(prefix) = tc.tool.parent().and_then(Path::parent)
                    && !under_system_dirs(prefix)
                {
                    tc.binds.push(prefix.to_path_buf());
                }
                tc.version = format!(
                    "node {}",
                    first_line(&query(language, &tc.tool, &["--version"])?)
                );
            }
            Language::Go => {
                let go = found("go", "install Go (apt-get install golang-go)")?;
                let root = PathBuf::from(query(language, &go, &["env", "GOROOT"])?.trim());
                tc.tool = root.join("bin/go");
                if !under_system_dirs(&root) {
                    tc.binds.push(root);
                }
                tc.env = vec![
                    "GOCACHE=/tmp/go-cache".into(),
                    "GOPATH=/tmp/go".into(),
                    "GO111MODULE=off".into(),
                    "GOTOOLCHAIN=local".into(),
                    "GOTELEMETRY=off".into(),
                    "CGO_ENABLED=0".into(),
                ];
                tc.version = first_line(&query(language, &tc.tool, &["version"])?);
            }
        }
        Ok(tc)
    }

    fn tool(&self) -> String {
        self.tool.display().to_string()
    }

    /// The command that compiles `/box/<source>` into an artefact in `/box` (or checks its syntax).
    pub(crate) fn compile_argv(&self, limits: &Limits) -> Option<Vec<String>> {
        let src = format!("{BOX}/{}", self.language.source_file_name());
        let out = format!("{BOX}/main");
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Some(match self.language {
            // Interpreted languages get a syntax check, so that a syntax error is a compile error.
            Language::Python => v(&[
                &self.tool(),
                "-c",
                "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')",
                &src,
            ]),
            Language::JavaScript => v(&[&self.tool(), "--check", &src]),
            Language::C => v(&[
                &self.tool(),
                "-O2",
                "-std=gnu17",
                "-pipe",
                "-o",
                &out,
                &src,
                "-lm",
            ]),
            Language::Cpp => v(&[
                &self.tool(),
                "-O2",
                "-std=gnu++17",
                "-pipe",
                "-o",
                &out,
                &src,
            ]),
            Language::Rust => v(&[&self.tool(), "-O", "--edition", "2021", "-o", &out, &src]),
            Language::Go => v(&[&self.tool(), "build", "-o", &out, &src]),
            Language::Java => v(&[
                &self.tool(),
                "-J-XX:+UseSerialGC",
                "-J-XX:TieredStopAtLevel=1",
                &format!("-J-XX:MaxRAM={}", limits.memory_bytes),
                "-encoding",
                "UTF-8",
                "-d",
                BOX,
                &src,
            ]),
        })
    }

    /// The command that runs the program.
    pub(crate) fn run_argv(&self, limits: &Limits) -> Vec<String> {
        let src = format!("{BOX}/{}", self.language.source_file_name());
        match self.language {
            Language::Python | Language::JavaScript => vec![self.tool(), src],
            Language::Java => vec![
                self.runtime
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "-XX:+UseSerialGC".into(),
                format!("-XX:MaxRAM={}", limits.memory_bytes),
                "-Xss64m".into(),
                "-XX:-UsePerfData".into(),
                "-cp".into(),
                BOX.into(),
                "Main".into(),
            ],
            Language::C | Language::Cpp | Language::Rust | Language::Go => {
                vec![format!("{BOX}/main")]
            }
        }
    }

    /// Whether the runtime reserves far more virtual memory than it uses (no `RLIMIT_AS`).
    pub(crate) fn reserves_virtual_memory(&self) -> bool {
        matches!(
            self.language,
            Language::Java | Language::Go | Language::JavaScript
        )
    }
}
