//! Small syscall helpers the other modules share: randomness and positional reads.
//!
//! They depend on nothing else in the crate, so every module may use them without an import
//! circle.

use std::fs;
use std::os::fd::AsRawFd;

/// 64 random bits from the kernel (`getrandom`), or the clock's nanoseconds if that fails;
/// where uniqueness matters, callers combine it with a PID or a counter.
pub fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into the 8-byte `v` it is given a pointer to.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        v = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    v
}

/// Reads a whole small file through an open descriptor with `pread` at offset 0 into `buf`;
/// the number of bytes read, `None` on an error.
pub(crate) fn pread_to_string(file: &fs::File, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `file` keeps the descriptor open, and pread writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    (n >= 0).then_some(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn random_draws_differ() {
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn pread_reads_from_the_start_whatever_the_file_position() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"usage_usec 1500\n").unwrap();
        let mut buf = [0u8; 64];
        let n = pread_to_string(&f, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"usage_usec 1500\n");
        let n = pread_to_string(&f, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..n], b"usage");
    }
}
