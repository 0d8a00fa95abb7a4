#!/bin/sh
# Entry point of the Afterburner image: makes the container's cgroup mounts writable, then runs
# `afterburner` with the container's arguments (default: `serve --addr 0.0.0.0:8080`).
#
# Docker and Kubernetes mount /sys/fs/cgroup read-only in containers that are not privileged.
# The sandbox creates one cgroup per run below its own (memory, process and CPU accounting),
# so it needs them writable; with CAP_SYS_ADMIN, no AppArmor confinement and a seccomp profile
# that allows mount (docs/docker.md), a remount makes them so. The container's cgroup
# namespace must be private (`--cgroupns private`, the default on cgroup v2 hosts): the
# container then sees only its own subtree, and that is all it can change. When the remount
# is refused, the sandbox still runs, with rlimits instead of cgroups, and says so at start-up.
set -eu

# Mount points (field 5) and per-mount options (field 6) of cgroup v1 and v2 mounts.
awk '{ t = ""; for (i = 7; i <= NF; i++) if ($i == "-") { t = $(i + 1); break } }
     t == "cgroup" || t == "cgroup2" { print $5, $6 }' /proc/self/mountinfo |
while read -r mount_point options; do
  case ",$options," in
    *,ro,*)
      # A bind remount changes this mount's flag only: never the cgroup hierarchy's own
      # options, which a plain remount would reset for the whole machine.
      if ! mount -o remount,bind,rw "$mount_point" 2>/dev/null; then
        echo "afterburner-entrypoint: cannot make $mount_point writable (needs CAP_SYS_ADMIN," \
          "no AppArmor confinement and a seccomp profile allowing mount, see docs/docker.md);" \
          "the sandbox will fall back to rlimits" >&2
      fi
      ;;
  esac
done

exec afterburner "$@"
