//! Landlock (where the kernel has it): writes only beneath `/tmp` and `/dev`, no TCP, and no
//! signals or abstract sockets reaching outside the sandbox. Raw system calls, so it can run
//! between fork and exec.

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

const WRITE_FILE: u64 = 1 << 1;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI version, 0 when Landlock is absent or disabled.
pub(crate) fn abi_version() -> i64 {
    // SAFETY: the version query passes a null attribute of size 0, from which the kernel reads nothing.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// Restricts the calling process; returns 0 or a negative errno. Async-signal-safe.
///
/// `writable` are NUL-terminated paths beneath which writes stay allowed.
///
/// # Safety
/// Call only after `PR_SET_NO_NEW_PRIVS`. The paths must be NUL-terminated.
pub(crate) unsafe fn restrict(abi: i64, writable: &[&[u8]]) -> i32 {
    if abi < 1 {
        return 0;
    }
    let mut fs = WRITE_FILE
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        fs |= REFER;
    }
    if abi >= 3 {
        fs |= TRUNCATE;
    }
    let attr = RulesetAttr {
        handled_access_fs: fs,
        handled_access_net: if abi >= 4 {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size = if abi >= 6 {
        24
    } else if abi >= 4 {
        16
    } else {
        8
    };
    // SAFETY: `attr` and `rule` live on this stack across the calls, the paths are NUL-terminated (the caller's contract), and every descriptor opened here is closed here.
    unsafe {
        let ruleset = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size as usize,
            0u32,
        ) as i32;
        if ruleset < 0 {
            return -*libc::__errno_location();
        }
        for path in writable {
            let fd = libc::open(
                path.as_ptr().cast(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY,
            );
            if fd < 0 {
                continue;
            }
            let rule = PathBeneathAttr {
                allowed_access: fs,
                parent_fd: fd,
            };
            let r = libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            );
            libc::close(fd);
            if r < 0 {
                let e = *libc::__errno_location();
                libc::close(ruleset);
                return -e;
            }
        }
        let r = libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32);
        let e = *libc::__errno_location();
        libc::close(ruleset);
        if r < 0 { -e } else { 0 }
    }
}
