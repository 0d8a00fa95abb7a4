# syntax=docker/dockerfile:1
#
# Afterburner: the `afterburner` binary and the toolchains of the sandbox's seven languages
# (python, c, cpp, java, javascript, go, rust).
#
#   docker build -t afterburner .
#   docker run -d --name afterburner -p 8080:8080 \
#     --cap-add SYS_ADMIN \
#     --security-opt seccomp=deploy/seccomp.json \
#     --security-opt apparmor=unconfined \
#     --cgroupns private \
#     afterburner
#
# Why each flag, and the Kubernetes equivalent: docs/docker.md.

# The builder's Debian release must match the runtime's: the image's rustc comes from it.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p afterburner-cli \
 && install -D -m 0755 target/release/afterburner /out/afterburner \
 && cp -a "$(rustc --print sysroot)" /out/rust

FROM ${RUNTIME_IMAGE}
# The toolchains `scripts/setup` installs, minus what only builds Afterburner itself:
#   python -> python3, c -> gcc, cpp -> g++, java -> openjdk-17-jdk-headless,
#   javascript -> nodejs, go -> golang-go, rust -> the builder's rustc (below).
# valgrind counts instructions when a run asks for it; mount and util-linux serve the entry point.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
      g++ \
      gcc \
      golang-go \
      libc6-dev \
      mount \
      nodejs \
      openjdk-17-jdk-headless \
      python3 \
      util-linux \
      valgrind \
 && rm -rf /var/lib/apt/lists/*
# Rust: the builder's toolchain (rustc and the standard library; it links with gcc's `cc`).
# Under /usr, it is visible inside every sandbox without an extra mount.
COPY --from=builder /out/rust /usr/local/rust
RUN ln -s /usr/local/rust/bin/rustc /usr/local/bin/rustc
COPY --from=builder /out/afterburner /usr/local/bin/afterburner
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# The sandbox runs as root in the container (namespaces, mounts, cgroups) and runs every
# program as `nobody`; see docs/docker.md for the capabilities it needs.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["serve", "--addr", "0.0.0.0:8080"]
