"""The container deployment files agree with the code and with each other (standard library,
plus PyYAML when it is installed): the Dockerfile installs a toolchain for every language the
sandbox supports, the Kubernetes manifest grants what docs/docker.md's `docker run` grants, and
the seccomp profile allows what the sandbox needs. No Docker daemon or cluster is needed; the
sandbox itself is run under these grants by `cargo test -p afterburner-cli --test container`.

    python3 -m unittest discover -s python/tests -p test_deploy.py
"""

import json
import os
import re
import shlex
import unittest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

try:
    import yaml  # PyYAML
except ImportError:  # pragma: no cover - depends on the machine
    yaml = None

# The package (or, for Rust, the binary the image links) that provides each language's toolchain.
TOOLCHAIN = {
    "python": "python3",
    "c": "gcc",
    "cpp": "g++",
    "java": "openjdk-17-jdk-headless",
    "javascript": "nodejs",
    "go": "golang-go",
    "rust": "rustc",
}

# System calls the sandbox's supervisor makes (or the entry point, for mount): the profile must
# not deny them. ptrace: each run's init seizes the program to read its exact peak memory at exit.
NEEDED_SYSCALLS = {"ptrace",
    "clone", "clone3", "mount", "umount2", "pivot_root", "sethostname", "setresuid", "setresgid",
    "setgroups", "prctl", "seccomp", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self", "execve", "wait4", "waitid", "close_range", "memfd_create",
    "sched_setaffinity", "perf_event_open", "pipe2", "ppoll", "pread64", "kill", "chown",
    "lchown", "fchown",
}


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def sandbox_languages():
    """Names of the languages in `Language::ALL` (crates/sandbox/src/language.rs)."""
    text = read("crates", "sandbox", "src", "language.rs")
    block = re.search(r"pub const ALL: \[Language; \d+\] = \[(.*?)\];", text, re.S)
    if block is None:
        raise AssertionError("Language::ALL not found in language.rs")
    variants = re.findall(r"Language::(\w+)", block.group(1))
    names = dict(re.findall(r'Language::(\w+) => "([a-z]+)",', text))
    return [names[v] for v in variants]


def dockerfile_instructions():
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    lines, current = [], ""
    for raw in read("Dockerfile").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        lines.append((keyword.upper(), args.strip()))
        current = ""
    return lines


def apt_packages():
    packages = set()
    for keyword, args in dockerfile_instructions():
        if keyword != "RUN" or "apt-get install" not in args:
            continue
        for command in args.split("&&"):
            words = command.split()
            if "install" in words and "apt-get" in words:
                after = words[words.index("install") + 1:]
                packages.update(w for w in after if not w.startswith("-"))
    return packages


def documented_docker_run():
    """The flags of the first `docker run -d` command in docs/docker.md."""
    text = read("docs", "docker.md")
    match = re.search(r"^docker run -d (.*?)^\s*afterburner\s*$", text, re.S | re.M)
    if match is None:
        raise AssertionError("no `docker run -d ... afterburner` in docs/docker.md")
    return shlex.split(match.group(1).replace("\\\n", " "), comments=False)


def flag_values(words, flag):
    return [words[i + 1] for i, w in enumerate(words) if w == flag]


def manifest():
    text = read("deploy", "kubernetes", "afterburner.yaml")
    if yaml is None:
        return None, text
    return list(yaml.safe_load_all(text)), text


class DockerfileTest(unittest.TestCase):
    def test_every_sandbox_language_has_its_toolchain(self):
        languages = sandbox_languages()
        self.assertEqual(len(languages), 7, languages)
        packages = apt_packages()
        for language in languages:
            self.assertIn(
                language, TOOLCHAIN,
                f"`{language}` is new in language.rs: install its toolchain in the Dockerfile "
                "and add it to TOOLCHAIN here")
            tool = TOOLCHAIN[language]
            if tool == "rustc":
                text = read("Dockerfile")
                self.assertIn("COPY --from=builder /out/rust /usr/local/rust", text)
                self.assertIn("/usr/local/rust/bin/rustc /usr/local/bin/rustc", text)
            else:
                self.assertIn(tool, packages, f"{language}: `{tool}` is not installed")

    def test_the_image_installs_what_scripts_setup_installs(self):
        setup = read("scripts", "setup")
        wanted = set(re.findall(r"need\+=\(([\w.+-]+)\)", setup))
        self.assertGreaterEqual(len(wanted), 7, wanted)
        self.assertEqual(wanted - apt_packages(), set())

    def test_build_entry_point_and_health(self):
        instructions = dockerfile_instructions()
        runs = " ".join(a for k, a in instructions if k == "RUN")
        self.assertIn("cargo build --release --locked -p afterburner-cli", runs)
        entry = [a for k, a in instructions if k == "ENTRYPOINT"]
        self.assertEqual(entry, ['["/usr/local/bin/docker-entrypoint.sh"]'])
        self.assertIn(
            "COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh",
            [f"{k} {a}" for k, a in instructions])
        self.assertTrue(os.access(os.path.join(ROOT, "deploy", "docker-entrypoint.sh"), os.X_OK))
        cmd = [json.loads(a) for k, a in instructions if k == "CMD"]
        self.assertEqual(cmd, [["serve", "--addr", "0.0.0.0:8080"]])
        self.assertIn(("EXPOSE", "8080"), instructions)
        health = [a for k, a in instructions if k == "HEALTHCHECK"]
        self.assertEqual(len(health), 1)
        self.assertIn("http://127.0.0.1:8080/healthz", health[0])
        app = read("crates", "server", "src", "app.rs")
        self.assertIn('.route("/healthz", get(healthz))', app)
        ignored = read(".dockerignore").split()
        self.assertIn("target", ignored)

    def test_the_dockerfile_header_shows_the_documented_flags(self):
        header = "\n".join(
            line[1:].strip() for line in read("Dockerfile").splitlines() if line.startswith("#"))
        documented = documented_docker_run()
        for flag in ("--cap-add", "--security-opt", "--cgroupns"):
            for value in flag_values(documented, flag):
                self.assertIn(f"{flag} {value}", header)


class SeccompProfileTest(unittest.TestCase):
    def setUp(self):
        self.profile = json.loads(read("deploy", "seccomp.json"))
        self.denied = {n for rule in self.profile["syscalls"] for n in rule["names"]
                       if rule["action"] == "SCMP_ACT_ERRNO"}

    def test_it_is_a_valid_profile_for_docker_and_the_oci_runtimes(self):
        self.assertEqual(self.profile["defaultAction"], "SCMP_ACT_ALLOW")
        self.assertNotIn("archMap", self.profile, "OCI runtimes read `architectures` only")
        self.assertLessEqual(set(self.profile["architectures"]),
                             {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"})
        for rule in self.profile["syscalls"]:
            self.assertEqual(set(rule) - {"names", "action", "errnoRet", "args"}, set(), rule)
            self.assertEqual(rule["action"], "SCMP_ACT_ERRNO")
            self.assertEqual(rule.get("errnoRet"), 1)

    def test_it_allows_what_the_sandbox_needs(self):
        self.assertEqual(NEEDED_SYSCALLS & self.denied, set())

    def test_it_denies_what_the_sandbox_denies_its_programs(self):
        text = read("crates", "sandbox", "src", "seccomp.rs")
        body = text[text.index("fn denied()"):text.index("fn stmt(")]
        programs_denied = set(re.findall(r"libc::SYS_(\w+)", body))
        self.assertGreater(len(programs_denied), 30)
        supervisor_needs = {
            "mount", "umount2", "pivot_root", "sethostname", "perf_event_open", "ptrace"}
        self.assertEqual(programs_denied - supervisor_needs - self.denied, set())


class KubernetesTest(unittest.TestCase):
    def setUp(self):
        self.docs, self.text = manifest()

    def container(self):
        deployment = next(d for d in self.docs if d["kind"] == "Deployment")
        return deployment, deployment["spec"]["template"]["spec"]["containers"][0]

    def test_it_grants_what_docker_run_grants(self):
        documented = documented_docker_run()
        caps = flag_values(documented, "--cap-add")
        options = dict(o.split("=", 1) for o in flag_values(documented, "--security-opt"))
        self.assertEqual(caps, ["SYS_ADMIN"])
        self.assertEqual(options, {"seccomp": "deploy/seccomp.json", "apparmor": "unconfined"})
        self.assertEqual(flag_values(documented, "--cgroupns"), ["private"])
        self.assertEqual(flag_values(documented, "-p"), ["8080:8080"])
        self.assertTrue(os.path.isfile(os.path.join(ROOT, options["seccomp"])))
        if self.docs is None:
            # Without PyYAML: the same facts, as text.
            for needed in ('add: ["SYS_ADMIN"]', "type: Localhost", "type: Unconfined",
                           "containerPort: 8080", "path: /healthz"):
                self.assertIn(needed, self.text)
            return
        deployment, c = self.container()
        sc = c["securityContext"]
        self.assertEqual(sc["capabilities"]["add"], caps)
        self.assertEqual(sc["seccompProfile"]["type"], "Localhost")
        self.assertTrue(sc["seccompProfile"]["localhostProfile"].endswith(".json"))
        self.assertEqual(sc["appArmorProfile"], {"type": "Unconfined"})
        self.assertIs(sc.get("privileged", False), False)
        self.assertIsNot(sc.get("allowPrivilegeEscalation"), False,
                         "the API server refuses allowPrivilegeEscalation: false with SYS_ADMIN")
        self.assertEqual(sc.get("runAsUser"), 0)
        pod = deployment["spec"]["template"]["spec"]
        self.assertIsNot(pod.get("hostUsers", True), False, "no user namespace")
        port = c["ports"][0]
        self.assertEqual((port["name"], port["containerPort"]), ("http", 8080))

    def test_probes_command_and_service(self):
        if self.docs is None:
            self.skipTest("PyYAML is not installed; the text checks above cover the rest")
        deployment, c = self.container()
        for probe in ("readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            self.assertEqual((get["path"], get["port"]), ("/healthz", "http"), probe)
        cmd = [json.loads(a) for k, a in dockerfile_instructions() if k == "CMD"][0]
        self.assertEqual(c["args"], cmd)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(deployment["spec"]["selector"]["matchLabels"], labels)
        service = next(d for d in self.docs if d["kind"] == "Service")
        self.assertEqual(service["spec"]["selector"], labels)
        self.assertEqual(service["spec"]["ports"][0]["targetPort"], "http")
        resources = c["resources"]
        self.assertEqual(resources["requests"], resources["limits"], "Guaranteed QoS")
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.assertGreater(grace, 150, "longer than serve's --shutdown-grace")


if __name__ == "__main__":
    unittest.main()
