//! The seccomp filter installed in every sandboxed process: escape-class system calls fail.
//!
//! Built by hand as a classic BPF program so that it can (a) reject the x32 ABI, (b) inspect
//! `clone` flags for namespace creation and (c) answer `clone3` with `ENOSYS`, which makes libc
//! fall back to `clone`, whose flags can be inspected.

use libc::sock_filter;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

/// Namespace-creating `clone` flags.
const CLONE_NS_MASK: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32
    | 0x0000_0080; // CLONE_NEWTIME

/// System calls that can only serve to escape, spy or disturb the machine: they fail with EPERM.
fn denied() -> Vec<i64> {
    #[allow(unused_mut)]
    let mut v = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_lookup_dcookie,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_vhangup,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_setdomainname,
        libc::SYS_sethostname,
        libc::SYS_fanotify_init,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_modify_ldt,
    ]);
    v
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Builds the filter program.
pub(crate) fn filter() -> Vec<sock_filter> {
    let denied = denied();
    let mut p = Vec::with_capacity(denied.len() + 16);
    // Wrong architecture (e.g. the i386 ABI through int 0x80): kill.
    p.push(stmt(BPF_LD_W_ABS, OFF_ARCH));
    p.push(jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0));
    p.push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    p.push(stmt(BPF_LD_W_ABS, OFF_NR));
    // Jumps to the shared return blocks are patched once their position is known.
    let mut to_eperm = Vec::new();
    let mut to_enosys = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        // x32 ABI system call numbers carry bit 30.
        to_eperm.push(p.len());
        p.push(jump(BPF_JGE_K, 0x4000_0000, 0, 0));
    }
    for nr in &denied {
        to_eperm.push(p.len());
        p.push(jump(BPF_JEQ_K, *nr as u32, 0, 0));
    }
    to_enosys.push(p.len());
    p.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 0));
    let clone_check = p.len();
    p.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 1, 0));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    // clone: namespace flags are refused.
    p.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LOW));
    to_eperm.push(p.len());
    p.push(jump(BPF_JSET_K, CLONE_NS_MASK, 0, 0));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    let eperm = p.len();
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32));
    let enosys = p.len();
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32));
    debug_assert!(clone_check < eperm);
    for (targets, dest) in [(to_eperm, eperm), (to_enosys, enosys)] {
        for i in targets {
            let off = dest - i - 1;
            p[i].jt = u8::try_from(off).unwrap_or(u8::MAX);
            debug_assert!(off <= u8::MAX as usize, "seccomp jump too long");
        }
    }
    p
}

/// Installs a filter in the calling process; async-signal-safe (no allocation).
///
/// # Safety
/// `prog` must stay valid for the duration of the call. `PR_SET_NO_NEW_PRIVS` must be set.
pub(crate) unsafe fn install(prog: &[sock_filter]) -> libc::c_int {
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut sock_filter,
    };
    // SAFETY: `fprog` points into `prog`, which the caller keeps alive across the call (the kernel copies the filter); the caller has set PR_SET_NO_NEW_PRIVS.
    unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions the filter uses.
    fn eval(p: &[sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = p[pc];
            match ins.code {
                BPF_LD_W_ABS => {
                    acc = match ins.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LOW => arg0,
                        _ => panic!("unexpected load"),
                    };
                    pc += 1;
                }
                BPF_RET_K => return ins.k,
                code => {
                    let hit = match code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        BPF_JSET_K => acc & ins.k != 0,
                        _ => panic!("unexpected opcode"),
                    };
                    pc += 1 + if hit { ins.jt } else { ins.jf } as usize;
                }
            }
        }
    }

    #[test]
    fn ordinary_calls_are_allowed_and_escapes_denied() {
        let p = filter();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        assert_eq!(eval(&p, AUDIT_ARCH, libc::SYS_read as u32, 0), RET_ALLOW);
        assert_eq!(eval(&p, AUDIT_ARCH, libc::SYS_mount as u32, 0), eperm);
        assert_eq!(eval(&p, AUDIT_ARCH, libc::SYS_ptrace as u32, 0), eperm);
        assert_eq!(
            eval(&p, AUDIT_ARCH, libc::SYS_fanotify_init as u32, 0),
            eperm
        );
        assert_eq!(
            eval(&p, 0x4000_0003, libc::SYS_read as u32, 0),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn clone_is_checked_for_namespace_flags_and_clone3_falls_back() {
        let p = filter();
        let clone = libc::SYS_clone as u32;
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u32;
        assert_eq!(eval(&p, AUDIT_ARCH, clone, thread_flags), RET_ALLOW);
        assert_eq!(
            eval(&p, AUDIT_ARCH, clone, libc::CLONE_NEWUSER as u32),
            RET_ERRNO | libc::EPERM as u32
        );
        assert_eq!(
            eval(&p, AUDIT_ARCH, libc::SYS_clone3 as u32, 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_abi_numbers_are_denied() {
        let p = filter();
        let x32_mount = 0x4000_0000 | libc::SYS_mount as u32;
        assert_eq!(
            eval(&p, AUDIT_ARCH, x32_mount, 0),
            RET_ERRNO | libc::EPERM as u32
        );
    }
}
