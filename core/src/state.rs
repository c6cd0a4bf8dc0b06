//! The shared session state file, `/run/sshidle/sessions`.
//!
//! It is a journal of text lines, one per event, after a versioned header:
//! ```text
//! (fields are separated by tabs)
//! sshidle-state 1 base=000000000000
//! open pid=4242 start=881234 uid=1000 user=alice rhost=10.0.0.5 service=sshd login=1764270000 idle=900 warn=60 hard=- rule=/etc/security/sshidle.conf:5: *
//! warned pid=4242 start=881234 at=1764270840 at_ms=1764270840412
//! close pid=4242 start=881234
//! ```
//! An `open` line of a session whose rule says `end=session` ends with
//! `end=session` (and `warned=AT warned_ms=AT_MS` once warned); without it,
//! `end=logout`. A warning's moment is kept to the millisecond (`at_ms`,
//! `warned_ms`), and in whole seconds (`at`, `warned`) for readers that
//! know only those; a line with seconds alone (an older writer) is read as
//! the start of that second, which can only make the warning count for
//! less (given early, or before the last input), never for more.
//! Why a journal: the login path only appends one line (O(1), whatever the
//! number of sessions), and a single `write(2)` of a short line is never torn
//! by `kill -9`. Each line starts with a newline of its own, so one cut short
//! (ENOSPC) never swallows the next; empty lines are skipped.
//!
//! Appenders share an `flock` on the state directory (`LOCK_SH`: logins never
//! wait for each other) and wait for it at most [`LOGIN_LOCK_WAIT`] at login;
//! `O_APPEND` keeps concurrent lines whole. Only the enforcer compacts
//! ([`StateDir::compact`]): it parses the journal without the lock, then
//! holds `LOCK_EX` only to copy what was appended meanwhile behind the
//! compacted records and `rename` the result into place, so no append is lost
//! and a login waits at most for that copy. The file is capped at
//! [`JOURNAL_CAP`] bytes; a login that cannot be written (cap, ENOSPC, lock)
//! is logged and goes on, and the enforcer finds it from sshd's processes.
//! Readers need no lock: they see either the old or the new file, and skip a
//! line they cannot parse. Unknown keys and unknown event kinds are ignored,
//! so a newer writer does not break an older reader.
//!
//! A session is keyed by the PID of the process that opened it (sshd's
//! privileged monitor) and that process's start time, which detects PID reuse.

use crate::files::{self, Flock, LockError, Replace};
use crate::policy::{End, Limits};
use crate::procfs;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_STATE_DIR: &str = "/run/sshidle";
pub const STATE_FILE: &str = "sessions";
/// Sessions sshidle has ended since boot, by cause: `CAUSE COUNT` lines,
/// for `sshidlectl status --format prometheus`.
pub const DISCONNECTS_FILE: &str = "disconnects";
const HEADER_PREFIX: &str = "sshidle-state 1 base=";
const BASE_DIGITS: usize = 12;
const HEADER_LEN: usize = HEADER_PREFIX.len() + BASE_DIGITS + 1;
/// The enforcer compacts the journal when it grows past twice its last
/// compacted size plus this much, which keeps compaction amortised O(1).
const COMPACT_SLACK: u64 = 64 * 1024;
/// The enforcer and sshidlectl wait this long for the state lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// A login waits at most this long for the (shared) state lock, which only a
/// compaction's final copy or a stuck writer holds exclusively.
pub const LOGIN_LOCK_WAIT: Duration = Duration::from_millis(50);
/// The journal never grows past this (about 380,000 open records): a login
/// beyond it is not written (and is found by the enforcer instead).
pub const JOURNAL_CAP: u64 = 64 << 20;

#[derive(Debug)]
pub enum StateError {
    /// The directory or file is not safe to use (symlink, wrong owner, ...).
    Unsafe(String),
    Io(String, io::Error),
    /// The lock could not be had in time.
    Busy(PathBuf, Duration),
    /// The journal reached [`JOURNAL_CAP`].
    Full(PathBuf),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Unsafe(msg) => write!(f, "refusing to use state: {msg}"),
            StateError::Io(what, err) => write!(f, "{what}: {err}"),
            StateError::Busy(path, wait) => write!(f, "{}: lock not obtained within {wait:?}", path.display()),
            StateError::Full(path) => {
                write!(f, "{}: journal full ({JOURNAL_CAP} bytes); is the enforcer running?", path.display())
            }
        }
    }
}

impl std::error::Error for StateError {}

pub type Result<T> = std::result::Result<T, StateError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StateError {
    let what = what.into();
    move |err| StateError::Io(what, err)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot.
    pub start: u64,
}

impl SessionKey {
    /// The calling process, as the PAM module records it.
    pub fn current_process() -> Option<SessionKey> {
        let pid = std::process::id() as i32;
        procfs::start_time(pid).map(|start| SessionKey { pid, start })
    }

    /// True while the recorded process still runs (same PID and start time).
    pub fn is_alive(&self) -> bool {
        procfs::is_same_process(self.pid, self.start)
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: SessionKey,
    pub uid: u32,
    pub user: String,
    pub rhost: String,
    pub service: String,
    /// Unix seconds.
    pub login_time: i64,
    pub limits: Limits,
    /// `FILE:LINE: selector` of the rule that gave the limits, or `none`.
    pub rule: String,
    /// When the enforcer last warned this session (unix milliseconds).
    pub warned_at_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Open sessions in the order they were opened.
    pub sessions: Vec<SessionRecord>,
    /// Lines that could not be parsed (torn or corrupt); they are skipped.
    pub bad_lines: usize,
    /// Fields of kept lines that could not be parsed (their default was
    /// used), for the reader to log.
    pub bad_fields: Vec<String>,
    /// The file exists but is not a state file of this version.
    pub corrupt: bool,
}

/// A handle on the state directory, checked to be safe to write.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    dir: OwnedFd,
    /// Who must own the directory and its files: this process's euid, asked once.
    owner: u32,
}

impl StateDir {
    /// Opens the state directory, creating it (0700) when `create` is set.
    /// Refuses a symlink, a non-directory, or one owned by another user.
    pub fn open(path: &Path, create: bool) -> Result<StateDir> {
        let cpath = c_path(path)?;
        // O_NOFOLLOW makes a symlinked directory fail with ELOOP/ENOTDIR.
        let open_dir = || {
            // SAFETY: cpath is a valid C string.
            unsafe {
                libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            }
        };
        let mut fd = open_dir();
        // Created only when missing (once per boot): every other login is
        // spared the mkdir.
        if fd < 0 && create && io::Error::last_os_error().kind() == io::ErrorKind::NotFound {
            // SAFETY: cpath is a valid C string.
            if unsafe { libc::mkdir(cpath.as_ptr(), 0o700) } != 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::AlreadyExists {
                    return Err(StateError::Io(format!("creating {}", path.display()), err));
                }
            }
            fd = open_dir();
        }
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                    StateError::Unsafe(format!("{} is a symlink or not a directory", path.display()))
                }
                _ => StateError::Io(format!("opening {}", path.display()), err),
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a File view of the descriptor that `dir` keeps owning (never closed here).
        let view = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(dir.as_raw_fd()) });
        let meta = view.metadata().map_err(io_err("fstat"))?;
        // SAFETY: geteuid cannot fail.
        let owner = unsafe { libc::geteuid() };
        check_owner(meta.uid(), owner, || path.to_path_buf())?;
        if meta.mode() & 0o077 != 0 {
            // Ours, but too open: tighten rather than refuse.
            // SAFETY: valid fd.
            unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) };
        }
        Ok(StateDir { path: path.to_path_buf(), dir, owner })
    }

    /// Opens an existing state directory for reading; `None` when there is
    /// none (no login since boot).
    pub fn open_existing(path: &Path) -> Result<Option<StateDir>> {
        match StateDir::open(path, false) {
            Ok(state) => Ok(Some(state)),
            Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    /// Records a new session. Returns the name a corrupt file was moved to,
    /// if one had to be.
    pub fn record_open(&self, record: &SessionRecord) -> Result<Option<PathBuf>> {
        self.append(&encode_open(record), LOCK_TIMEOUT)
    }

    pub fn record_close(&self, key: SessionKey) -> Result<Option<PathBuf>> {
        self.append(&encode_close(key), LOCK_TIMEOUT)
    }

    /// [`record_open`](Self::record_open) as a login does it: one bounded
    /// append, waiting at most [`LOGIN_LOCK_WAIT`] for the lock.
    pub fn record_login(&self, record: &SessionRecord) -> Result<Option<PathBuf>> {
        self.append(&encode_open(record), LOGIN_LOCK_WAIT)
    }

    /// [`record_close`](Self::record_close) as a logout does it.
    pub fn record_logout(&self, key: SessionKey) -> Result<Option<PathBuf>> {
        self.append(&encode_close(key), LOGIN_LOCK_WAIT)
    }

    /// Notes that the session was warned at `at_ms` (unix ms).
    pub fn record_warned(&self, key: SessionKey, at_ms: i64) -> Result<Option<PathBuf>> {
        let at = at_ms.div_euclid(1000);
        self.append(&format!("warned\tpid={}\tstart={}\tat={at}\tat_ms={at_ms}\n", key.pid, key.start), LOCK_TIMEOUT)
    }

    /// True when the journal has grown enough since its last compaction that
    /// the enforcer should compact it.
    pub fn compaction_due(&self) -> bool {
        let Ok((file, size)) = self.open_checked(STATE_FILE, libc::O_RDONLY, 0) else { return false };
        match read_header(&file) {
            Some(base) => size > 2 * base + COMPACT_SLACK,
            None => size > 0,
        }
    }

    /// Reads the open sessions. Takes no lock.
    pub fn load(&self) -> Result<Snapshot> {
        let file = match self.open_file(libc::O_RDONLY) {
            Ok(file) => file,
            Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => return Ok(Snapshot::default()),
            Err(err) => return Err(err),
        };
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(io_err(format!("reading {}", self.file_path().display())))?;
        Ok(parse_journal(&bytes))
    }

    /// Rewrites the journal with only the open sessions for which `keep` is
    /// true. Returns the sessions dropped.
    ///
    /// The journal is parsed without the lock; the exclusive lock is held
    /// only to append what was written meanwhile and rename, so logins are
    /// not kept waiting by a large journal.
    pub fn compact(&self, keep: &dyn Fn(&SessionRecord) -> bool) -> Result<Vec<SessionRecord>> {
        let (inode, cut, snapshot) = match self.open_checked(STATE_FILE, libc::O_RDONLY, 0) {
            Ok((file, _)) => {
                let inode = file.metadata().map_err(io_err("fstat"))?.ino();
                let mut bytes = Vec::new();
                (&file).read_to_end(&mut bytes).map_err(io_err("reading state"))?;
                // Up to the last whole line: a line being appended right now
                // is copied with the tail.
                let cut = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                (Some(inode), cut as u64, parse_journal(&bytes[..cut]))
            }
            Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => (None, 0, Snapshot::default()),
            Err(err) => return Err(err),
        };
        let _lock = self.lock(LockKind::Exclusive, LOCK_TIMEOUT)?;
        let (file, size) = match self.open_checked(STATE_FILE, libc::O_RDONLY, 0) {
            Ok((file, size)) => (Some(file), size),
            Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(err) => return Err(err),
        };
        let same_file = match &file {
            Some(f) => Some(f.metadata().map_err(io_err("fstat"))?.ino()) == inode && size >= cut,
            None => inode.is_none(),
        };
        if !same_file || snapshot.corrupt {
            // Replaced meanwhile (or not a journal): redo it all under the lock.
            return self.compact_locked(keep);
        }
        let mut tail = Vec::new();
        if let Some(file) = &file {
            let mut buf = vec![0u8; (size - cut) as usize];
            file.read_exact_at(&mut buf, cut).map_err(io_err("reading state"))?;
            tail = buf;
        }
        self.write_compacted(snapshot, keep, &tail)
    }

    /// Notes why sshidle is ending a session (`reason`, for `close_session`
    /// to log), and counts the disconnect (once per session) by `cause` in
    /// `DISCONNECTS_FILE`.
    pub fn mark_ending(&self, key: SessionKey, cause: EndCause, reason: &str) -> Result<()> {
        let name = ending_name(key);
        let first = self.openat(&name, libc::O_RDONLY, 0).is_err();
        let file = self.create_file(&name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)?;
        (&file).write_all(reason.as_bytes()).map_err(io_err(format!("writing {name}")))?;
        if first {
            // A counter that cannot be written must not stop the disconnect.
            let _ = self.count_disconnect(cause.as_str());
        }
        Ok(())
    }

    fn count_disconnect(&self, cause: &str) -> Result<()> {
        let _lock = self.lock(LockKind::Exclusive, LOCK_TIMEOUT)?;
        let mut counts = self.disconnect_counts();
        *counts.entry(cause.to_string()).or_insert(0) += 1;
        let text = counts.iter().fold(String::new(), |mut text, (cause, n)| {
            let _ = writeln!(text, "{cause} {n}");
            text
        });
        self.replace(DISCONNECTS_FILE, text.as_bytes())
    }

    /// Disconnects counted by `mark_ending` since the directory was made.
    pub fn disconnect_counts(&self) -> BTreeMap<String, u64> {
        let Ok(Some(text)) = self.read_file(DISCONNECTS_FILE, 64 * 1024) else { return BTreeMap::new() };
        text.lines()
            .filter_map(|line| {
                let (cause, n) = line.split_once(' ')?;
                Some((cause.to_string(), n.trim().parse().ok()?))
            })
            .collect()
    }

    /// Takes (reads and removes) the reason noted by `mark_ending`.
    pub fn take_ending(&self, key: SessionKey) -> Option<String> {
        let name = ending_name(key);
        let file = self.open_file_named(&name, libc::O_RDONLY).ok()?;
        let mut reason = String::new();
        (&file).take(4096).read_to_string(&mut reason).ok()?;
        self.unlink(&name);
        Some(reason)
    }

    /// Appends one event line: under the shared lock, one `write(2)`, no
    /// reading beyond the header. A missing, empty or corrupt file is
    /// (re)started under the exclusive lock.
    fn append(&self, line: &str, wait: Duration) -> Result<Option<PathBuf>> {
        {
            let _lock = self.lock(LockKind::Shared, wait)?;
            match self.open_checked(STATE_FILE, libc::O_RDWR | libc::O_APPEND, 0) {
                Ok((file, size)) if size > 0 && read_header(&file).is_some() => {
                    let mut out = String::with_capacity(line.len() + 1);
                    out.push('\n');
                    out.push_str(line);
                    if size + out.len() as u64 > JOURNAL_CAP {
                        return Err(StateError::Full(self.file_path()));
                    }
                    // One write(2): appends of this size are not torn by kill -9.
                    (&file)
                        .write_all(out.as_bytes())
                        .map_err(io_err(format!("appending to {}", self.file_path().display())))?;
                    return Ok(None);
                }
                Ok(_) => {}
                Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        // Rare: first line since boot, or a corrupt file.
        let _lock = self.lock(LockKind::Exclusive, wait)?;
        let append = libc::O_RDWR | libc::O_APPEND | libc::O_CREAT;
        let (mut file, mut size) = self.open_checked(STATE_FILE, append, 0o600)?;
        let mut moved_aside = None;
        if size > 0 && read_header(&file).is_none() {
            moved_aside = Some(self.move_aside()?);
            (file, size) = self.open_checked(STATE_FILE, append, 0o600)?;
        }
        let mut out = if size == 0 { header(0) } else { String::new() };
        out.push('\n');
        out.push_str(line);
        (&file).write_all(out.as_bytes()).map_err(io_err(format!("appending to {}", self.file_path().display())))?;
        Ok(moved_aside)
    }

    fn compact_locked(&self, keep: &dyn Fn(&SessionRecord) -> bool) -> Result<Vec<SessionRecord>> {
        let snapshot = match self.open_file(libc::O_RDONLY) {
            Ok(file) => {
                let mut bytes = Vec::new();
                (&file).read_to_end(&mut bytes).map_err(io_err("reading state"))?;
                parse_journal(&bytes)
            }
            Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => Snapshot::default(),
            Err(err) => return Err(err),
        };
        if snapshot.corrupt {
            self.move_aside()?;
        }
        self.write_compacted(snapshot, keep, &[])
    }

    /// Replaces the journal with the records of `snapshot` that `keep`
    /// keeps, followed by `tail` (lines appended after the snapshot).
    /// Called with the exclusive lock held.
    fn write_compacted(
        &self,
        snapshot: Snapshot,
        keep: &dyn Fn(&SessionRecord) -> bool,
        tail: &[u8],
    ) -> Result<Vec<SessionRecord>> {
        let (kept, dropped): (Vec<_>, Vec<_>) = snapshot.sessions.into_iter().partition(|r| keep(r));
        let mut body = String::new();
        for record in &kept {
            body.push_str(&encode_open(record));
        }
        let mut contents = header(HEADER_LEN as u64 + body.len() as u64).into_bytes();
        contents.extend_from_slice(body.as_bytes());
        contents.extend_from_slice(tail);
        self.replace(STATE_FILE, &contents)?;
        Ok(dropped)
    }

    fn move_aside(&self) -> Result<PathBuf> {
        let now = crate::now_unix();
        let name = format!("{STATE_FILE}.corrupt.{now}");
        self.rename(STATE_FILE, &name)?;
        Ok(self.path.join(name))
    }

    /// An flock on the directory, waited for at most `wait`.
    fn lock(&self, kind: LockKind, wait: Duration) -> Result<Flock<&OwnedFd>> {
        let lock = match kind {
            LockKind::Shared => files::lock_shared,
            LockKind::Exclusive => files::lock_exclusive,
        };
        lock(&self.dir, wait, &mut |_| {}).map_err(|err| match err {
            LockError::TimedOut(_) => StateError::Busy(self.path.clone(), wait),
            LockError::Io(err) => StateError::Io("flock".into(), err),
        })
    }

    /// Replaces `name` in the directory atomically (0600, no symlink
    /// followed).
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
        files::write_atomic_at(self.dir.as_fd(), name, bytes, &Replace::PRIVATE)
            .map_err(io_err(format!("writing {}", self.path.join(name).display())))
    }

    /// Reads a file of the state directory (at most `limit` bytes), refusing
    /// a symlink or another's file. `None` when it does not exist.
    pub fn read_file(&self, name: &str, limit: u64) -> Result<Option<String>> {
        let file = match self.open_file_named(name, libc::O_RDONLY) {
            Ok(file) => file,
            Err(StateError::Io(_, err)) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut text = String::new();
        (&file).take(limit).read_to_string(&mut text).map_err(io_err(format!("reading {name}")))?;
        Ok(Some(text))
    }

    /// Replaces a file of the state directory other than the journal (the
    /// enforcer's activity memory) atomically.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if name == STATE_FILE {
            return Err(StateError::Unsafe(format!("{name} is written through its journal only")));
        }
        self.replace(name, bytes)
    }

    fn open_file(&self, flags: libc::c_int) -> Result<File> {
        if flags & libc::O_CREAT != 0 {
            self.create_file(STATE_FILE, flags)
        } else {
            self.open_file_named(STATE_FILE, flags)
        }
    }

    fn open_file_named(&self, name: &str, flags: libc::c_int) -> Result<File> {
        Ok(self.open_checked(name, flags, 0)?.0)
    }

    /// Creates (or opens) `name` with mode 0600, refusing a symlink or a file
    /// that belongs to someone else.
    fn create_file(&self, name: &str, flags: libc::c_int) -> Result<File> {
        Ok(self.open_checked(name, flags | libc::O_CREAT, 0o600)?.0)
    }

    /// Opens `name` (O_NOFOLLOW) and checks it is a regular file of ours,
    /// tightening its mode if needed. Returns it with its size, from the same
    /// fstat, so the login path stats the file once.
    fn open_checked(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> Result<(File, u64)> {
        let file = self.openat(name, flags, mode)?;
        let meta = file.metadata().map_err(io_err("fstat"))?;
        if !meta.is_file() {
            return Err(StateError::Unsafe(format!("{} is not a regular file", self.path.join(name).display())));
        }
        check_owner(meta.uid(), self.owner, || self.path.join(name))?;
        if meta.mode() & 0o077 != 0 {
            // SAFETY: valid fd.
            unsafe { libc::fchmod(file.as_raw_fd(), 0o600) };
        }
        Ok((file, meta.len()))
    }

    fn openat(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> Result<File> {
        let cname = CString::new(name).map_err(|_| StateError::Unsafe(format!("bad file name {name:?}")))?;
        // SAFETY: valid dir fd and C string.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                cname.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            let path = self.path.join(name);
            return Err(if err.raw_os_error() == Some(libc::ELOOP) {
                StateError::Unsafe(format!("{} is a symlink", path.display()))
            } else {
                StateError::Io(format!("opening {}", path.display()), err)
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (cfrom, cto) = (CString::new(from).unwrap_or_default(), CString::new(to).unwrap_or_default());
        let dir = self.dir.as_raw_fd();
        // SAFETY: valid dir fd and C strings.
        if unsafe { libc::renameat(dir, cfrom.as_ptr(), dir, cto.as_ptr()) } != 0 {
            return Err(StateError::Io(
                format!("renaming {from} to {to} in {}", self.path.display()),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn unlink(&self, name: &str) {
        if let Ok(cname) = CString::new(name) {
            // SAFETY: valid dir fd and C string.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), cname.as_ptr(), 0) };
        }
    }
}

#[derive(Clone, Copy)]
enum LockKind {
    Shared,
    Exclusive,
}

/// Refuses a file owned by `uid` when it must be `me`'s; its path (built
/// only for the error) names it.
fn check_owner(uid: u32, me: u32, path: impl FnOnce() -> PathBuf) -> Result<()> {
    if uid != me {
        return Err(StateError::Unsafe(format!("{} is owned by uid {uid}, not {me}", path().display())));
    }
    Ok(())
}

/// Tells the enforcer that a login went unrecorded, so that it looks for
/// sshd's connections now instead of at its next periodic search: touches
/// the state directory's timestamps (`utimensat`, which needs no free space
/// and no lock), an `IN_ATTRIB` on the directory the enforcer watches.
/// Nothing happens when the directory is missing or a symlink.
pub fn nudge_enforcer(dir: &Path) {
    if let Ok(cpath) = c_path(dir) {
        // SAFETY: a valid C string; NULL times mean "now".
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath.as_ptr(), std::ptr::null(), libc::AT_SYMLINK_NOFOLLOW) };
    }
}

fn c_path(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| StateError::Unsafe(format!("bad path {}", path.display())))
}

/// Why sshidle ended a session, as counted in `DISCONNECTS_FILE` (`other`
/// there: a cause this version does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// Past `idle=`.
    Idle,
    /// Past `hard=`.
    Hard,
    /// `sshidlectl disconnect`.
    Admin,
}

impl EndCause {
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Idle => "idle",
            EndCause::Hard => "hard",
            EndCause::Admin => "admin",
        }
    }
}

fn ending_name(key: SessionKey) -> String {
    format!("ending.{}.{}", key.pid, key.start)
}

fn header(base: u64) -> String {
    format!("{HEADER_PREFIX}{base:0width$}\n", width = BASE_DIGITS)
}

fn read_header(file: &File) -> Option<u64> {
    let mut buf = [0u8; HEADER_LEN];
    file.read_exact_at(&mut buf, 0).ok()?;
    parse_header(&buf)
}

fn parse_header(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes.get(..HEADER_LEN)?).ok()?;
    let digits = text.strip_prefix(HEADER_PREFIX)?.strip_suffix('\n')?;
    if digits.len() != BASE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A compacted journal holding `sessions` (what the enforcer writes), for
/// the round-trip properties of `crate::props`.
#[doc(hidden)]
pub fn encode_sessions(sessions: &[SessionRecord]) -> Vec<u8> {
    let mut out = header(0);
    for record in sessions {
        out.push_str(&encode_open(record));
    }
    out.into_bytes()
}

/// Replays a journal into the set of open sessions.
pub fn parse_journal(bytes: &[u8]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    if bytes.is_empty() {
        return snapshot;
    }
    if parse_header(bytes).is_none() {
        snapshot.corrupt = true;
        return snapshot;
    }
    let mut index: HashMap<SessionKey, usize> = HashMap::new();
    let mut slots: Vec<Option<SessionRecord>> = Vec::new();
    let body = &bytes[HEADER_LEN..];
    let mut lines = body.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        if lines.peek().is_none() {
            // No newline after it: a torn append. Skip it.
            snapshot.bad_lines += 1;
            break;
        }
        match std::str::from_utf8(line).ok().and_then(|l| parse_entry(l, &mut snapshot.bad_fields)) {
            Some(Entry::Open(record)) => {
                if let Some(old) = index.insert(record.key, slots.len()) {
                    slots[old] = None;
                }
                slots.push(Some(record));
            }
            Some(Entry::Close(key)) => {
                if let Some(i) = index.remove(&key) {
                    slots[i] = None;
                }
            }
            Some(Entry::Warned(key, at_ms)) => {
                if let Some(record) = index.get(&key).and_then(|i| slots[*i].as_mut()) {
                    record.warned_at_ms = Some(at_ms);
                }
            }
            Some(Entry::Unknown) => {}
            None => snapshot.bad_lines += 1,
        }
    }
    snapshot.sessions = slots.into_iter().flatten().collect();
    snapshot
}

enum Entry {
    Open(SessionRecord),
    Close(SessionKey),
    /// Warned at (unix ms).
    Warned(SessionKey, i64),
    Unknown,
}

/// Parses one journal line. Fields are read independently, like logind's
/// `session_load`: an `open` line is kept when what identifies and judges
/// the session (pid, start, uid, user, login) is sound; another bad field
/// falls back to its default (the enforcer re-applies the policy to the
/// limits anyway) and is named in `bad_fields`.
fn parse_entry(line: &str, bad_fields: &mut Vec<String>) -> Option<Entry> {
    let mut fields = line.split('\t');
    let kind = fields.next()?;
    let mut map: HashMap<&str, Option<String>> = HashMap::new();
    for field in fields {
        match field.split_once('=') {
            Some((k, v)) => {
                map.insert(k, unescape(v));
            }
            None => bad_fields.push(format!("{kind}: field without '=': {field:?}")),
        }
    }
    let text = |k: &str| map.get(k).and_then(|v| v.as_deref());
    let num = |k: &str| text(k).and_then(|v| v.parse::<i64>().ok());
    let key = SessionKey { pid: i32::try_from(num("pid")?).ok()?, start: text("start")?.parse().ok()? };
    // An optional field: absent is `None`; present but bad is `None` and named.
    let mut optional = |k: &str, parse: &dyn Fn(&str) -> Option<Option<String>>| match map.get(k) {
        None => None,
        Some(value) => {
            let parsed = value.as_deref().and_then(parse);
            if parsed.is_none() {
                bad_fields.push(format!("{kind} pid={}: bad {k}", key.pid));
            }
            parsed.flatten()
        }
    };
    Some(match kind {
        "open" => {
            let (uid, user, login_time) = (text("uid")?.parse().ok()?, text("user")?.to_string(), num("login")?);
            let any = |v: &str| Some(Some(v.to_string()));
            let limit =
                |v: &str| if v == "-" { Some(None) } else { v.parse::<u64>().ok().map(|_| Some(v.to_string())) };
            let number = |v: &str| v.parse::<i64>().ok().map(|_| Some(v.to_string()));
            let secs = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
            let (rhost, service, rule) = (optional("rhost", &any), optional("service", &any), optional("rule", &any));
            let limits = Limits {
                idle: secs(optional("idle", &limit)),
                warn: secs(optional("warn", &limit)),
                hard: secs(optional("hard", &limit)),
                end: optional("end", &|v| End::parse(v).map(|_| Some(v.to_string())))
                    .and_then(|v| End::parse(&v))
                    .unwrap_or_default(),
            };
            // To the millisecond; an older writer's whole seconds from their start.
            let warned_at_ms = match optional("warned_ms", &number) {
                Some(ms) => ms.parse().ok(),
                None => optional("warned", &number).and_then(|v| v.parse::<i64>().ok()?.checked_mul(1000)),
            };
            Entry::Open(SessionRecord {
                key,
                uid,
                user,
                rhost: rhost.unwrap_or_default(),
                service: service.unwrap_or_default(),
                login_time,
                limits,
                rule: rule.unwrap_or_else(|| "none".into()),
                warned_at_ms,
            })
        }
        "close" => Entry::Close(key),
        "warned" => Entry::Warned(key, num("at_ms").or_else(|| num("at")?.checked_mul(1000))?),
        _ => Entry::Unknown,
    })
}

fn encode_close(key: SessionKey) -> String {
    format!("close\tpid={}\tstart={}\n", key.pid, key.start)
}

fn encode_open(r: &SessionRecord) -> String {
    let limit = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |s| s.to_string());
    let mut line = format!(
        "open\tpid={}\tstart={}\tuid={}\tuser={}\trhost={}\tservice={}\tlogin={}\tidle={}\twarn={}\thard={}\trule={}",
        r.key.pid,
        r.key.start,
        r.uid,
        escape(&r.user),
        escape(&r.rhost),
        escape(&r.service),
        r.login_time,
        limit(r.limits.idle),
        limit(r.limits.warn),
        limit(r.limits.hard),
        escape(&r.rule),
    );
    if r.limits.end != End::default() {
        line.push_str(&format!("\tend={}", r.limits.end));
    }
    if let Some(at_ms) = r.warned_at_ms {
        line.push_str(&format!("\twarned={}\twarned_ms={at_ms}", at_ms.div_euclid(1000)));
    }
    line.push('\n');
    line
}

/// Percent-escapes `%`, control characters (tab, newline) and DEL, so a value
/// from the network (a remote host name) cannot forge fields or lines.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '%' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(value: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_string());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sshidle-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(pid: i32, user: &str) -> SessionRecord {
        SessionRecord {
            key: SessionKey { pid, start: 1000 + pid as u64 },
            uid: 1000,
            user: user.into(),
            rhost: "10.0.0.5".into(),
            service: "sshd".into(),
            login_time: 1_764_270_000,
            limits: Limits { idle: Some(900), warn: Some(60), hard: None, ..Default::default() },
            rule: "/etc/security/sshidle.conf:5: *".into(),
            warned_at_ms: None,
        }
    }

    #[test]
    fn a_nudge_touches_the_directory_and_never_a_symlinks_target() {
        use std::os::unix::fs::MetadataExt;
        let dir = temp_dir("nudge");
        std::fs::create_dir_all(&dir).unwrap();
        let (state, target) = (dir.join("state"), dir.join("target"));
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
        let old = [libc::timespec { tv_sec: 1000, tv_nsec: 0 }; 2];
        for path in [&state, &target] {
            let cpath = c_path(path).unwrap();
            // SAFETY: a valid C string and two timespecs.
            assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cpath.as_ptr(), old.as_ptr(), 0) }, 0);
        }
        nudge_enforcer(&state);
        nudge_enforcer(&dir.join("link"));
        nudge_enforcer(&dir.join("missing"));
        assert!(std::fs::metadata(&state).unwrap().mtime() > crate::now_unix() - 60);
        assert_eq!(std::fs::metadata(&target).unwrap().mtime(), 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_close_and_reload() {
        let path = temp_dir("basic");
        let state = StateDir::open(&path, true).unwrap();
        assert_eq!(state.load().unwrap().sessions, vec![]);
        state.record_open(&record(1, "alice")).unwrap();
        state.record_open(&record(2, "bob")).unwrap();
        state.record_warned(SessionKey { pid: 2, start: 1002 }, 77_412).unwrap();
        state.record_close(SessionKey { pid: 1, start: 1001 }).unwrap();
        // A close for a different start time (PID reuse) closes nothing.
        state.record_close(SessionKey { pid: 2, start: 9 }).unwrap();
        let snap = state.load().unwrap();
        let mut expected = record(2, "bob");
        expected.warned_at_ms = Some(77_412);
        assert_eq!(snap.sessions, vec![expected.clone()]);
        assert_eq!(snap.bad_lines, 0);
        // Compaction keeps the warning and drops closed records.
        state.compact(&|_| true).unwrap();
        let text = std::fs::read_to_string(state.file_path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("\twarned=77\twarned_ms=77412"), "{text}");
        assert_eq!(state.load().unwrap().sessions, vec![expected]);
        let dropped = state.compact(&|r| r.user != "bob").unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(state.load().unwrap().sessions, vec![]);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn modes_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_dir("modes");
        let state = StateDir::open(&path, true).unwrap();
        state.record_open(&record(1, "alice")).unwrap();
        let dir_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let file_mode = std::fs::metadata(state.file_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!((dir_mode, file_mode), (0o700, 0o600));
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn hostile_values_cannot_forge_lines() {
        let path = temp_dir("escape");
        let state = StateDir::open(&path, true).unwrap();
        let mut r = record(3, "carol");
        r.rhost = "evil\nclose\tpid=3\tstart=1003\t%41".into();
        state.record_open(&r).unwrap();
        assert_eq!(state.load().unwrap().sessions, vec![r]);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn torn_and_garbage_lines_are_skipped() {
        let path = temp_dir("torn");
        let state = StateDir::open(&path, true).unwrap();
        state.record_open(&record(1, "alice")).unwrap();
        // Simulate a writer killed mid-line, then garbage.
        let mut f = std::fs::OpenOptions::new().append(true).open(state.file_path()).unwrap();
        f.write_all(b"open\tpid=9\tsta").unwrap();
        drop(f);
        state.record_open(&record(2, "bob")).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(state.file_path()).unwrap();
        f.write_all(b"\xff\xfe garbage\nfuture\tpid=1\tstart=1\tx=y\n").unwrap();
        drop(f);
        let snap = state.load().unwrap();
        let users: Vec<_> = snap.sessions.iter().map(|r| r.user.as_str()).collect();
        assert_eq!(users, vec!["alice", "bob"]);
        assert_eq!(snap.bad_lines, 2);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_warning_is_kept_to_the_millisecond_and_seconds_alone_are_read() {
        let key = SessionKey { pid: 1, start: 2 };
        let open = "open\tpid=1\tstart=2\tuid=1000\tuser=alice\tlogin=100\tidle=60\twarn=10\thard=-\trule=x:1: *\n";
        let read = |lines: &[&str]| {
            let mut journal = header(0);
            journal.push_str(open);
            lines.iter().for_each(|l| journal.push_str(l));
            parse_journal(journal.as_bytes()).sessions[0].warned_at_ms
        };
        // What this version writes: seconds for older readers, and ms.
        assert_eq!(read(&["warned\tpid=1\tstart=2\tat=150\tat_ms=150999\n"]), Some(150_999));
        // An older writer's whole seconds: the start of that second.
        assert_eq!(read(&["warned\tpid=1\tstart=2\tat=150\n"]), Some(150_000));
        let mut r = parse_journal(format!("{}{open}", header(0)).as_bytes()).sessions.remove(0);
        assert_eq!((r.key, r.warned_at_ms), (key, None));
        r.warned_at_ms = Some(150_999);
        let line = encode_open(&r);
        assert!(line.contains("\twarned=150\twarned_ms=150999"), "{line}");
        assert_eq!(read(&[&line]), Some(150_999));
        assert_eq!(read(&[&line.replace("\twarned_ms=150999", "")]), Some(150_000));
    }

    #[test]
    fn fields_are_parsed_independently() {
        let mut journal = header(0);
        // A bad limit, a bad escape and a bad warning time: the session is
        // kept (the enforcer resolves its limits again), the fields named.
        journal.push_str("open\tpid=1\tstart=2\tuid=1000\tuser=alice\trhost=%zz\tlogin=100\tidle=12x\twarn=60\thard=-\twarned=soon\trule=x:1: *\n");
        // Without a sound uid, user or login the record cannot be judged.
        journal.push_str("open\tpid=3\tstart=4\tuid=bob\tuser=bob\tlogin=100\n");
        journal.push_str("open\tpid=5\tstart=6\tuid=1\tuser=carol\tlogin=later\n");
        let snap = parse_journal(journal.as_bytes());
        assert_eq!(snap.sessions.len(), 1, "{snap:?}");
        let r = &snap.sessions[0];
        assert_eq!((r.user.as_str(), r.rhost.as_str(), r.login_time), ("alice", "", 100));
        assert_eq!(r.limits, Limits { idle: None, warn: Some(60), hard: None, ..Default::default() });
        assert_eq!((r.warned_at_ms, r.rule.as_str()), (None, "x:1: *"));
        assert_eq!(snap.bad_fields, vec!["open pid=1: bad rhost", "open pid=1: bad idle", "open pid=1: bad warned"]);
        assert_eq!(snap.bad_lines, 2);
    }

    #[test]
    fn end_session_is_written_and_read_back_and_absent_means_logout() {
        let mut r = record(7, "alice");
        assert!(!encode_open(&r).contains("end="), "the default is not written");
        r.limits.end = End::Session;
        let line = encode_open(&r);
        assert!(line.ends_with("\tend=session\n"), "{line}");
        let mut journal = header(0);
        journal.push_str(&line);
        journal.push_str("open\tpid=8\tstart=9\tuid=1\tuser=bob\tlogin=100\tend=kill\n");
        let snap = parse_journal(journal.as_bytes());
        assert_eq!(snap.sessions[0].limits.end, End::Session);
        assert_eq!(snap.sessions[1].limits.end, End::Logout, "a bad value falls back to the default");
        assert_eq!(snap.bad_fields, vec!["open pid=8: bad end"]);
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let path = temp_dir("corrupt");
        let state = StateDir::open(&path, true).unwrap();
        std::fs::write(state.file_path(), b"\x00\x01 not a state file").unwrap();
        assert!(state.load().unwrap().corrupt);
        let moved = state.record_open(&record(1, "alice")).unwrap().expect("moved aside");
        assert_eq!(std::fs::read(&moved).unwrap(), b"\x00\x01 not a state file");
        assert_eq!(state.load().unwrap().sessions.len(), 1);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn symlinks_are_refused() {
        let path = temp_dir("symlink");
        std::fs::create_dir_all(&path).unwrap();
        let target = temp_dir("symlink-target");
        std::fs::create_dir_all(&target).unwrap();
        let link = path.join("state");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(StateDir::open(&link, true), Err(StateError::Unsafe(_))));
        // A symlinked state file is refused too.
        let real = path.join("real");
        let state = StateDir::open(&real, true).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", state.file_path()).unwrap();
        assert!(matches!(state.record_open(&record(1, "a")), Err(StateError::Unsafe(_))));
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::remove_dir_all(&target).unwrap();
    }

    #[test]
    fn logins_only_append_and_the_enforcer_compacts_when_due() {
        let path = temp_dir("grow");
        let state = StateDir::open(&path, true).unwrap();
        assert!(!state.compaction_due());
        for i in 0..3000 {
            state.record_login(&record(i, "alice")).unwrap();
            state.record_logout(SessionKey { pid: i, start: 1000 + i as u64 }).unwrap();
        }
        state.record_login(&record(5, "last")).unwrap();
        let size = std::fs::metadata(state.file_path()).unwrap().len();
        assert!(size > 2 * COMPACT_SLACK, "a login compacted: {size} bytes");
        assert!(state.compaction_due());
        state.compact(&|_| true).unwrap();
        assert!(!state.compaction_due());
        let size = std::fs::metadata(state.file_path()).unwrap().len();
        assert!(size < 1024, "compacted to {size} bytes");
        assert_eq!(state.load().unwrap().sessions.len(), 1);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_full_journal_refuses_the_append_and_keeps_the_file() {
        let path = temp_dir("cap");
        let state = StateDir::open(&path, true).unwrap();
        state.record_login(&record(1, "alice")).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(state.file_path()).unwrap();
        let before = file.metadata().unwrap().len();
        file.set_len(JOURNAL_CAP - 10).unwrap();
        drop(file);
        let err = state.record_login(&record(2, "bob")).unwrap_err();
        assert!(matches!(err, StateError::Full(_)), "{err}");
        assert_eq!(std::fs::metadata(state.file_path()).unwrap().len(), JOURNAL_CAP - 10);
        std::fs::OpenOptions::new().write(true).open(state.file_path()).unwrap().set_len(before).unwrap();
        state.record_login(&record(2, "bob")).unwrap();
        assert_eq!(state.load().unwrap().sessions.len(), 2);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_stuck_lock_holder_delays_a_login_by_the_bound_only() {
        let path = temp_dir("stuck");
        let state = StateDir::open(&path, true).unwrap();
        state.record_login(&record(1, "alice")).unwrap();
        // Another process (here: another open file description) holds it.
        let holder = File::open(&path).unwrap();
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
        let started = std::time::Instant::now();
        let err = state.record_login(&record(2, "bob")).unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(err, StateError::Busy(..)), "{err}");
        // Its own bound, not the others' 2 s (other tests of this binary keep
        // the cores busy: no tighter upper bound).
        assert!(waited >= LOGIN_LOCK_WAIT && waited < LOCK_TIMEOUT / 2, "waited {waited:?}");
        drop(holder);
        // Logins share the lock: one holding it does not stop another.
        let reader = File::open(&path).unwrap();
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::flock(reader.as_raw_fd(), libc::LOCK_SH) }, 0);
        state.record_login(&record(2, "bob")).unwrap();
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn compacting_while_logins_arrive_loses_none() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        const WRITERS: i32 = 4;
        const EACH: i32 = 1500;
        let path = temp_dir("race");
        let state = StateDir::open(&path, true).unwrap();
        state.record_login(&record(0, "seed")).unwrap();
        let (stop, compactions) = (AtomicBool::new(false), AtomicUsize::new(0));
        /// Stops the compactor even when a writer panics (or the scope hangs).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let during = std::thread::scope(|scope| {
            let _stop = Stop(&stop);
            let compactor = scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    state.compact(&|_| true).unwrap();
                    compactions.fetch_add(1, Ordering::Relaxed);
                }
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (path, compactions) = (&path, &compactions);
                    scope.spawn(move || {
                        while compactions.load(Ordering::Relaxed) == 0 {
                            std::thread::yield_now();
                        }
                        // Each writer its own descriptor, as each sshd process has.
                        let state = StateDir::open(path, false).unwrap();
                        // The same append as a login's, with the enforcer's
                        // longer wait: a compactor descheduled on a loaded
                        // machine must not fail the test (a login would go
                        // unrecorded and be discovered instead).
                        for i in 0..EACH {
                            let pid = 1 + w * 10_000 + i;
                            state.record_open(&record(pid, "alice")).unwrap();
                            if i % 2 == 0 {
                                state.record_close(SessionKey { pid, start: 1000 + pid as u64 }).unwrap();
                            }
                            // Thousands of logins a second, not a lock held
                            // shared without a gap (which would starve LOCK_EX).
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            let during = compactions.load(Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            compactor.join().unwrap();
            during
        });
        assert!(during > 3, "only {during} compactions ran beside the logins");
        let snapshot = state.load().unwrap();
        let mut pids: Vec<i32> = snapshot.sessions.iter().map(|r| r.key.pid).collect();
        pids.sort();
        let mut expected: Vec<i32> =
            (0..WRITERS).flat_map(|w| (0..EACH).filter(|i| i % 2 == 1).map(move |i| 1 + w * 10_000 + i)).collect();
        expected.push(0);
        expected.sort();
        assert_eq!(pids.len(), expected.len());
        assert_eq!(pids, expected);
        assert_eq!(snapshot.bad_lines, 0);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn ending_reason_round_trip() {
        let path = temp_dir("ending");
        let state = StateDir::open(&path, true).unwrap();
        let key = SessionKey { pid: 7, start: 8 };
        assert_eq!(state.take_ending(key), None);
        state.mark_ending(key, EndCause::Idle, "idle 15m (rule x)").unwrap();
        assert_eq!(state.take_ending(key).as_deref(), Some("idle 15m (rule x)"));
        assert_eq!(state.take_ending(key), None);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn disconnects_are_counted_once_per_session_by_cause() {
        let path = temp_dir("counts");
        let state = StateDir::open(&path, true).unwrap();
        assert!(state.disconnect_counts().is_empty());
        let (a, b, c) =
            (SessionKey { pid: 1, start: 2 }, SessionKey { pid: 3, start: 4 }, SessionKey { pid: 5, start: 6 });
        state.mark_ending(a, EndCause::Idle, "idle 15m (limit idle=15m, rule x)").unwrap();
        state.mark_ending(a, EndCause::Idle, "idle 16m (limit idle=15m, rule x)").unwrap();
        state.mark_ending(b, EndCause::Hard, "logged in for 8h (limit hard=8h, rule y)").unwrap();
        state.mark_ending(c, EndCause::Admin, "disconnected by the administrator (idle 3s)").unwrap();
        let counts = state.disconnect_counts();
        assert_eq!(counts.get("idle"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("hard"), Some(&1));
        assert_eq!(counts.get("admin"), Some(&1));
        // Taken endings do not uncount; a new ending of the same key counts.
        state.take_ending(a);
        state.mark_ending(a, EndCause::Idle, "idle 1m").unwrap();
        assert_eq!(state.disconnect_counts().get("idle"), Some(&2));
        let mode = std::fs::metadata(path.join(DISCONNECTS_FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn escape_round_trip() {
        for s in ["", "plain", "a%b", "tab\there", "new\nline", "100%"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
        }
        assert_eq!(unescape("%4"), None);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Deterministic xorshift, so a failure can be replayed.
    fn bytes(seed: &mut u64, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                alphabet[(*seed % alphabet.len() as u64) as usize]
            })
            .collect()
    }

    #[test]
    fn random_journals_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let all: Vec<u8> = (0..=255).collect();
        let fieldish = b"openclosewarnedpid=start=uid=user=login=idle=warn=hard=rule=%0A\t\n-0123456789";
        for round in 0..3000 {
            let alphabet: &[u8] = if round % 2 == 0 { &all } else { fieldish };
            let mut journal = header(0).into_bytes();
            journal.extend(bytes(&mut seed, (round % 400) + 1, alphabet));
            let snapshot = parse_journal(&journal);
            assert!(!snapshot.corrupt);
            let _ = parse_journal(&journal[..journal.len() / 2]);
        }
    }
}
