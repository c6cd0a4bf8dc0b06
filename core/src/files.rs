//! The file primitives every writer of sshidle uses (the module, the
//! enforcer, keepalive and install): an exclusive lock waited for with a
//! timeout, an atomic replace of a file, and the read of a small regular
//! file as a login does it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// An exclusive `flock` on a descriptor, released when dropped.
#[derive(Debug)]
pub struct Flock<F: AsFd> {
    fd: F,
}

impl<F: AsFd> Drop for Flock<F> {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor `self.fd` keeps open.
        unsafe { libc::flock(self.fd.as_fd().as_raw_fd(), libc::LOCK_UN) };
    }
}

#[derive(Debug)]
pub enum LockError {
    /// Another holder kept it for the whole timeout.
    TimedOut(Duration),
    Io(io::Error),
}

/// Takes an exclusive `flock` on `fd`, waiting at most `timeout`. `waiting`
/// is called with the time waited so far before each pause (to tell the
/// admin, say). Pauses start at 50 µs and double up to 10 ms, so an
/// uncontended lock costs one syscall and a short wait is noticed quickly.
pub fn lock_exclusive<F: AsFd>(
    fd: F,
    timeout: Duration,
    waiting: &mut dyn FnMut(Duration),
) -> Result<Flock<F>, LockError> {
    lock(fd, libc::LOCK_EX, timeout, waiting)
}

/// [`lock_exclusive`], but shared: holders of a shared lock do not wait for
/// each other (logins appending to the journal), only for an exclusive one.
pub fn lock_shared<F: AsFd>(
    fd: F,
    timeout: Duration,
    waiting: &mut dyn FnMut(Duration),
) -> Result<Flock<F>, LockError> {
    lock(fd, libc::LOCK_SH, timeout, waiting)
}

fn lock<F: AsFd>(
    fd: F,
    op: libc::c_int,
    timeout: Duration,
    waiting: &mut dyn FnMut(Duration),
) -> Result<Flock<F>, LockError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(50);
    loop {
        // SAFETY: flock on a descriptor borrowed for the call.
        if unsafe { libc::flock(fd.as_fd().as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(Flock { fd });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.kind() != io::ErrorKind::Interrupted {
            return Err(LockError::Io(err));
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(LockError::TimedOut(timeout));
        }
        waiting(waited);
        // Never past the timeout: a login's bound is short.
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// How a file is replaced by [`write_atomic`] / [`write_atomic_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replace {
    pub mode: u32,
    /// Owner and group to give the new file; `None`: the writer's.
    pub owner: Option<(u32, u32)>,
    /// fsync the file and the directory (configuration files; not the
    /// state on tmpfs, which a reboot clears anyway).
    pub sync: bool,
}

impl Replace {
    /// A private file (0600, the writer's), not synced: the state directory.
    pub const PRIVATE: Replace = Replace { mode: 0o600, owner: None, sync: false };

    /// A configuration file: `mode`, `owner`, synced to disk.
    pub fn synced(mode: u32, owner: Option<(u32, u32)>) -> Replace {
        Replace { mode, owner, sync: true }
    }
}

/// Replaces `name` in the directory `dir` with `bytes`, atomically: a
/// temporary file beside it (a dot name ending in `.tmp`, so no
/// `Include *.conf` glob picks it up; created O_EXCL|O_NOFOLLOW), owner then
/// mode set (in that order, so chown cannot clear mode bits), optionally
/// synced, renamed over `name`. A symlink named `name` is replaced, not
/// followed. The temporary file is removed on every error path.
pub fn write_atomic_at(dir: BorrowedFd<'_>, name: &str, bytes: &[u8], how: &Replace) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in file name"));
    let (cname, ctemp) = (c(name)?, c(&format!(".{name}.sshidle-{}.tmp", std::process::id()))?);
    // SAFETY: valid directory descriptor and C string (a stale temp of ours).
    unsafe { libc::unlinkat(dir.as_raw_fd(), ctemp.as_ptr(), 0) };
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid directory descriptor and C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), ctemp.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let result = (|| {
        file.write_all(bytes)?;
        if let Some((uid, gid)) = how.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        // SAFETY: valid descriptor.
        if unsafe { libc::fchmod(file.as_raw_fd(), how.mode as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if how.sync {
            file.sync_all()?;
        }
        // SAFETY: valid directory descriptor and C strings.
        if unsafe { libc::renameat(dir.as_raw_fd(), ctemp.as_ptr(), dir.as_raw_fd(), cname.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if how.sync {
            // SAFETY: valid directory descriptor.
            unsafe { libc::fsync(dir.as_raw_fd()) };
        }
        Ok(())
    })();
    if result.is_err() {
        // SAFETY: valid directory descriptor and C string.
        unsafe { libc::unlinkat(dir.as_raw_fd(), ctemp.as_ptr(), 0) };
    }
    result
}

/// [`write_atomic_at`] for a path: the file in its parent directory. A
/// symlink at `path` is replaced by the file, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8], how: &Replace) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let name = std::str::from_utf8(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file name is not UTF-8"))?;
    let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir)?;
    write_atomic_at(dir.as_fd(), name, bytes, how)
}

/// 64-bit FNV-1a, for fingerprints that only need to tell a change (not
/// resist an adversary).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(mut self, bytes: &[u8]) -> Fnv {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn u64(self, value: u64) -> Fnv {
        self.bytes(&value.to_le_bytes())
    }
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    Fnv::default().bytes(bytes).0
}

/// Reads a regular file of at most `max` bytes, as a login reads the policy
/// and nsswitch.conf: open, fstat, and one `read(2)` when the file is as
/// long as fstat said (a read that stops short at that length is its end),
/// where `read_to_end` would ask again to see the end.
pub fn read_regular_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, format!("larger than {} KiB", max / 1024));
    if meta.len() > max {
        return Err(too_large());
    }
    let expected = meta.len() as usize;
    let mut bytes = vec![0u8; expected + 1];
    let mut filled = 0;
    loop {
        let n = match (&file).read(&mut bytes[filled..]) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        filled += n;
        if n == 0 || filled == expected {
            break;
        }
        if filled == bytes.len() {
            // It grew since the fstat.
            if filled as u64 > max {
                return Err(too_large());
            }
            bytes.resize((bytes.len() * 2).min(max as usize + 1), 0);
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sshidle-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_regular_file_whole_and_refuses_others() {
        let dir = temp_dir("read");
        for len in [0usize, 1, 4095, 4096, 70_000] {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let path = dir.join(format!("f{len}"));
            std::fs::write(&path, &text).unwrap();
            assert_eq!(read_regular_file(&path, 1 << 20).unwrap(), text, "{len} bytes");
        }
        let path = dir.join("f70000");
        let err = read_regular_file(&path, 65_536).unwrap_err();
        assert_eq!((err.kind(), err.to_string()), (io::ErrorKind::InvalidInput, "larger than 64 KiB".to_string()));
        let err = read_regular_file(&dir, 1 << 20).unwrap_err();
        assert_eq!((err.kind(), err.to_string()), (io::ErrorKind::InvalidInput, "not a regular file".to_string()));
        assert_eq!(read_regular_file(&dir.join("missing"), 1).unwrap_err().kind(), io::ErrorKind::NotFound);
        // A file that is not what fstat said (procfs: size 0) is read to its end.
        let status = read_regular_file(Path::new("/proc/self/status"), 1 << 20).unwrap();
        assert!(String::from_utf8_lossy(&status).contains("\nPid:\t"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_atomically_with_mode_and_no_leftover() {
        let dir = temp_dir("write");
        let path = dir.join("f.conf");
        write_atomic(&path, b"one\n", &Replace { mode: 0o644, owner: None, sync: true }).unwrap();
        write_atomic(&path, b"two\n", &Replace { mode: 0o640, owner: Some((0, 0)), sync: false }).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.uid(), 0);
        // A symlink is replaced, its target untouched.
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new", &Replace::PRIVATE).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // A failure (no such directory) leaves nothing behind.
        assert!(write_atomic(&dir.join("none/x"), b"x", &Replace::PRIVATE).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_times_out_while_held_and_is_released_on_drop() {
        let dir = temp_dir("lock");
        let a = File::open(&dir).unwrap();
        let b = File::open(&dir).unwrap();
        let held = lock_exclusive(&a, Duration::from_secs(1), &mut |_| {}).unwrap();
        let mut waits = 0;
        let started = Instant::now();
        let err = lock_exclusive(&b, Duration::from_millis(100), &mut |_| waits += 1).unwrap_err();
        assert!(matches!(err, LockError::TimedOut(_)), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(100) && waits > 1);
        drop(held);
        assert!(lock_exclusive(&b, Duration::ZERO, &mut |_| {}).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv::default().u64(1).0, fnv1a(&1u64.to_le_bytes()));
    }
}
