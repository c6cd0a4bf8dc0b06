//! The enforcer's watch on the ptys sshd allocated: one inotify watch per
//! `/dev/pts/N` for `IN_ACCESS` (a read that returned data) and `IN_ATTRIB`
//! (an attribute change), judged by [`PtyInput`] (see `sshidle::input`), so
//! the last input is known to the moment it was read, not to the kernel's
//! 8-second block. A watch on `/dev/pts` itself tells when a pty appears, so
//! a new session's pty is watched from its first key, and when one is
//! removed (closed).
//!
//! Events are read as they come, so the timestamps read after them are
//! those of the moment: a key read right after a `touch`/`chmod` of the same
//! pty falls into the same look and is not counted (the ctime moved), so the
//! look comes as soon as it can. Only when events come faster than every
//! [`BUSY`] (hundreds of typing sessions) does the inotify fd rest for
//! [`BATCH`] between reads (the kernel queues meanwhile): a few dozen reads a
//! second instead of thousands of wake-ups.
//!
//! Each watched pty is also held by an `O_PATH` descriptor (it opens nothing
//! of the tty itself): its timestamps after an event are one `fstat(2)`, with
//! no path to build or look up, and always of that very pty. Events are read
//! into one buffer kept for the purpose, and looked up by their raw watch
//! number, so a batch of keystrokes allocates nothing.
//!
//! **One allocation, one history.** The kernel gives a new pty the lowest
//! free number, and devpts gives `/dev/pts/N` the same inode number at every
//! allocation: neither tells one login's pty from the next one's. What does:
//! a closed pty's inode lives on while a descriptor (ours) holds it, with no
//! link left (`devpts_pty_kill`); its own watch then hears nothing of its
//! end, but `/dev/pts` gets `IN_DELETE` for its name. So a pty is forgotten
//! when its name is removed (or its watch ends, when no handle is held), a
//! kept handle whose link count is 0 is a closed pty, and each pty is bound
//! to the session whose sshd opened it: a look on behalf of another session,
//! or of the same one from a list of its ptys older than the pty, is told to
//! read the session's processes again ([`PtyLook::Stale`]) and inherits
//! nothing.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use sshidle::activity::pty_times;
use sshidle::activity::SavedPtys;
use sshidle::input::PtyInput;
use sshidle::input::{PtyTimes, Stamp};
use sshidle::procfs::{self, KeptFd};
use sshidle::state::SessionKey;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

/// How long events are left to gather when they come faster than [`BUSY`].
pub const BATCH: Duration = Duration::from_millis(50);
/// Reads closer together than this mean many typing sessions.
pub const BUSY: Duration = Duration::from_millis(20);

/// A watch descriptor of the tty watch's inotify instance.
type Wd = i32;

struct Pty {
    /// The session whose sshd opened the pty (it held the master when the
    /// pty was first watched).
    owner: SessionKey,
    wd: Option<Wd>,
    /// The inode number watched (the same at every allocation of the number:
    /// only the last resort, when no handle could be kept).
    ino: u64,
    input: PtyInput,
    /// `O_PATH` on the pty slave; `None` when it could not be opened (then
    /// the timestamps are read by path).
    fd: Option<KeptFd>,
    /// Events of the batch being read: `Some(true)` when one was IN_ACCESS.
    pending: Option<bool>,
}

impl Pty {
    /// Still the allocation first watched: its kept handle still has its link
    /// (a closed pty's inode has none, and only a live pty has the name), or,
    /// without a handle, the name's inode is the one watched.
    fn is_open(&self, dev: u32) -> bool {
        match &self.fd {
            Some(fd) => fstat(fd).is_some_and(|st| st.st_nlink > 0 && st.st_rdev as u32 == dev),
            None => procfs::pts_name(dev)
                .and_then(|name| std::fs::metadata(format!("/dev/{name}")).ok())
                .is_some_and(|meta| meta.ino() == self.ino && meta.rdev() as u32 == dev),
        }
    }

    /// The pty's timestamps now; `None` when it is gone (a closed pty's
    /// handle still answers, with its last timestamps: not taken).
    fn times(&self, dev: u32) -> Option<PtyTimes> {
        let Some(fd) = &self.fd else { return self.is_open(dev).then(|| pty_times(dev)).flatten() };
        let st = fstat(fd).filter(|st| st.st_nlink > 0)?;
        Some(PtyTimes {
            atime: Stamp::new(st.st_atime, st.st_atime_nsec),
            ctime: Stamp::new(st.st_ctime, st.st_ctime_nsec),
        })
    }
}

/// What the watch says of one of a session's ptys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtyLook {
    /// From when on it has certainly had no input (unix ms).
    Quiet(i64),
    /// Not (or no longer) known as this session's: it was closed, or its
    /// number now names another allocation. The session's processes are to
    /// be looked at again before anything is judged from it.
    Stale,
    /// Gone, or not a pty.
    Gone,
}

fn fstat(fd: &impl AsRawFd) -> Option<libc::stat> {
    // SAFETY: plain data, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor we own and a writable stat.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st)
}

/// `O_PATH` on `path`: a handle on the inode, not an open of the tty.
fn open_path(path: &str) -> Option<KeptFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    KeptFd::keep(file.into())
}

fn add_watch(inotify: &Inotify, path: &str, mask: AddWatchFlags) -> Option<Wd> {
    let path = std::ffi::CString::new(path).ok()?;
    // SAFETY: a valid inotify fd and a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(inotify.as_fd().as_raw_fd(), path.as_ptr(), mask.bits()) };
    (wd >= 0).then_some(wd)
}

pub struct TtyWatch {
    inotify: Option<Inotify>,
    ptys: HashMap<u32, Pty>,
    by_wd: HashMap<Wd, u32>,
    pts_dir: Option<Wd>,
    /// What the previous enforcer saved, taken up when a pty is first watched
    /// for the session it was saved for.
    saved: SavedPtys,
    /// The ptys (`/dev/pts/N`: N) that appeared since [`TtyWatch::take_created`].
    created: Vec<u32>,
    /// The inotify fd is not read before this.
    resume: Option<Instant>,
    /// When events were last read.
    last_read: Option<Instant>,
    /// Something changed that is worth saving.
    pub dirty: bool,
    /// Where events are read into (kept: no allocation per batch).
    buf: Vec<u8>,
    /// The ptys with events in the batch being read.
    touched: Vec<u32>,
}

impl TtyWatch {
    /// A watch; without inotify (`--once`, or it failed) ptys are judged from
    /// their timestamps only.
    pub fn new(events: bool, saved: SavedPtys) -> TtyWatch {
        let inotify = events.then(|| Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()).flatten();
        let pts_dir = inotify
            .as_ref()
            .and_then(|i| add_watch(i, "/dev/pts", AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE));
        TtyWatch {
            inotify,
            ptys: HashMap::new(),
            by_wd: HashMap::new(),
            pts_dir,
            saved,
            created: Vec::new(),
            resume: None,
            last_read: None,
            dirty: false,
            buf: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// The fd to poll, and whether to poll it now (not while a batch gathers).
    pub fn poll_fd(&self, now: Instant) -> Option<BorrowedFd<'_>> {
        let fd = self.inotify.as_ref()?.as_fd();
        self.resume.is_none_or(|at| at <= now).then_some(fd)
    }

    /// When the fd is to be polled again, if it is resting.
    pub fn resume_at(&self) -> Option<Instant> {
        self.resume
    }

    /// Watches the pty `dev` (a `/dev/pts/N` device number) of the session
    /// `owner`, logged in at `login_time`, if it is not yet, and says from
    /// when on it has certainly had no input. `fresh`: the session's sshd was
    /// just seen holding the pty's master (its processes were read now), so
    /// the pty now under that number is the session's; otherwise the
    /// session's list of ptys may be older than the pty, and a pty not known
    /// as this very allocation of this session's is [`PtyLook::Stale`].
    /// `now_ms`: unix milliseconds.
    pub fn watch(&mut self, dev: u32, owner: SessionKey, now_ms: i64, login_time: i64, fresh: bool) -> PtyLook {
        if let Some(p) = self.ptys.get(&dev) {
            if p.owner == owner && p.is_open(dev) {
                return self.quiet_since(dev, now_ms).map_or(PtyLook::Gone, PtyLook::Quiet);
            }
            if !fresh {
                // Closed: forgotten. Another session's: left to it.
                if !p.is_open(dev) {
                    self.forget(dev);
                }
                return PtyLook::Stale;
            }
            // Just seen as this session's: what was known is another
            // allocation's, or another session's (that session's list is old).
            self.forget(dev);
        } else if !fresh {
            return PtyLook::Stale;
        }
        let Some(name) = procfs::pts_name(dev) else { return PtyLook::Gone };
        let path = format!("/dev/{name}");
        let Ok(meta) = std::fs::metadata(&path) else { return PtyLook::Gone };
        if meta.rdev() as u32 != dev {
            return PtyLook::Gone;
        }
        let Some(times) = pty_times(dev) else { return PtyLook::Gone };
        let input = match self.saved.remove(&(dev, owner)) {
            Some(saved) => PtyInput::restore(&saved, &times, now_ms, login_time),
            None => PtyInput::first_look(&times, now_ms, login_time),
        };
        let wd = self.inotify.as_ref().and_then(|i| {
            add_watch(i, &path, AddWatchFlags::IN_ACCESS | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_DELETE_SELF)
        });
        if let Some(wd) = wd {
            self.by_wd.insert(wd, dev);
        }
        let quiet = input.quiet_since_ms();
        // Opened after the stat above: the same inode, or no handle at all.
        let fd = open_path(&path).filter(|fd| fstat(fd).is_some_and(|st| st.st_ino == meta.ino()));
        self.ptys.insert(dev, Pty { owner, wd, ino: meta.ino(), input, fd, pending: None });
        self.dirty = true;
        PtyLook::Quiet(quiet)
    }

    /// From when on (unix ms) the pty has had no input, as far as the watch
    /// knows.
    /// An unwatched pty (no inotify) is looked at again.
    fn quiet_since(&mut self, dev: u32, now_ms: i64) -> Option<i64> {
        let p = self.ptys.get_mut(&dev)?;
        if p.wd.is_none() {
            let times = p.times(dev)?;
            p.input.events_lost(&times, now_ms);
        }
        Some(p.input.quiet_since_ms())
    }

    /// Stops watching the ptys that are closed or that `keep` (given the pty
    /// and the session that opened it) does not keep, and drops what was
    /// saved for sessions `keep` does not know.
    pub fn retain(&mut self, keep: impl Fn(u32, SessionKey) -> bool) {
        let gone: Vec<u32> =
            self.ptys.iter().filter(|(d, p)| !keep(**d, p.owner) || !p.is_open(**d)).map(|(d, _)| *d).collect();
        for dev in gone {
            self.forget(dev);
        }
        self.saved.retain(|(dev, key), _| keep(*dev, *key));
    }

    /// `/dev/pts/N` was removed: the pty of that number is closed. (While
    /// its `O_PATH` handle is held, the kernel sends the pty's own watch
    /// nothing at its end: the directory's `IN_DELETE` is what says it.)
    fn deleted(&mut self, index: u32) {
        let closed: Vec<u32> = self
            .ptys
            .iter()
            // Without a handle the inode number is all there is, and the
            // same number may already name the next pty: forgotten too (a
            // pty just watched is then looked at afresh).
            .filter(|(dev, p)| {
                procfs::pts_name(**dev).is_some_and(|n| n == format!("pts/{index}"))
                    && (p.fd.is_none() || !p.is_open(**dev))
            })
            .map(|(dev, _)| *dev)
            .collect();
        for dev in closed {
            self.forget(dev);
        }
    }

    fn forget(&mut self, dev: u32) {
        if let Some(p) = self.ptys.remove(&dev) {
            if let (Some(wd), Some(inotify)) = (p.wd, &self.inotify) {
                self.by_wd.remove(&wd);
                // SAFETY: a watch of this inotify fd (an old one only fails).
                unsafe { libc::inotify_rm_watch(inotify.as_fd().as_raw_fd(), wd) };
            }
            self.dirty = true;
        }
    }

    /// No pty is watched.
    pub fn is_empty(&self) -> bool {
        self.ptys.is_empty()
    }

    /// A pty appeared in `/dev/pts` since [`TtyWatch::take_created`].
    pub fn has_created(&self) -> bool {
        !self.created.is_empty()
    }

    /// The ptys (their N) that appeared in `/dev/pts` since the last call.
    pub fn take_created(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.created)
    }

    /// Reads what inotify has (call when the fd is readable). Returns how many
    /// ptys had input.
    pub fn read(&mut self, now: Instant, now_ms: i64) -> usize {
        let Some(inotify) = &self.inotify else { return 0 };
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        // Room for thousands of events (those of a pty watch have no name):
        // one read(2) takes a whole batch.
        if self.buf.is_empty() {
            self.buf = vec![0u8; 64 << 10];
        }
        let fd = inotify.as_fd().as_raw_fd();
        let mut overflow = false;
        let mut any = false;
        let mut deleted = Vec::new();
        loop {
            // SAFETY: the buffer is writable for its length.
            let n = unsafe { libc::read(fd, self.buf.as_mut_ptr().cast(), self.buf.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            any = true;
            let mut at = 0;
            while at + HEADER <= n {
                let word = |i: usize| {
                    let b = &self.buf[at + i..at + i + 4];
                    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
                };
                // struct inotify_event: wd, mask, cookie, len, name[len].
                let (wd, mask, len) = (word(0) as Wd, AddWatchFlags::from_bits_truncate(word(4)), word(12) as usize);
                let name = &self.buf[(at + HEADER).min(n)..(at + HEADER + len).min(n)];
                at += HEADER + len;
                if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    overflow = true;
                } else if Some(wd) == self.pts_dir {
                    // The name, NUL-padded: "N" (or "ptmx", which is no pty).
                    let name = name.split(|b| *b == 0).next().unwrap_or_default();
                    if let Some(index) = std::str::from_utf8(name).ok().and_then(|n| n.parse().ok()) {
                        if mask.contains(AddWatchFlags::IN_DELETE) {
                            deleted.push(index);
                        } else {
                            self.created.push(index);
                        }
                    }
                } else if let Some(dev) = self.by_wd.get(&wd).copied() {
                    if mask.intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF) {
                        // The pty was closed (its watch is gone with it): the
                        // next pty of that number is another one.
                        self.by_wd.remove(&wd);
                        if self.ptys.remove(&dev).is_some() {
                            self.dirty = true;
                        }
                        continue;
                    }
                    let Some(p) = self.ptys.get_mut(&dev) else { continue };
                    if p.pending.is_none() {
                        self.touched.push(dev);
                    }
                    p.pending = Some(p.pending.unwrap_or(false) | mask.contains(AddWatchFlags::IN_ACCESS));
                }
            }
        }
        if any {
            if self.last_read.is_some_and(|at| now.saturating_duration_since(at) < BUSY) {
                self.resume = Some(now + BATCH);
            }
            self.last_read = Some(now);
        }
        for index in deleted {
            self.deleted(index);
        }
        let mut inputs = 0;
        if overflow {
            // Events were lost: only what the timestamps prove is credited.
            for (dev, p) in &mut self.ptys {
                if let Some(times) = p.times(*dev) {
                    p.input.events_lost(&times, now_ms);
                }
            }
            self.dirty = true;
        }
        for dev in self.touched.drain(..) {
            let Some(p) = self.ptys.get_mut(&dev) else { continue };
            let Some(access) = p.pending.take() else { continue };
            let Some(times) = p.times(dev) else { continue };
            if p.input.events(access, &times, now_ms) {
                inputs += 1;
            }
            self.dirty = true;
        }
        inputs
    }

    /// Lets the fd be polled again once the batch time is over.
    pub fn rest_over(&mut self, now: Instant) {
        if self.resume.is_some_and(|at| at <= now) {
            self.resume = None;
        }
    }

    /// What to save of every watched pty (for `status` and the next
    /// enforcer). The time saved is taken before the timestamps and the
    /// events pending are read after them, so a read the save does not
    /// credit shows in the timestamps, or falls in the atime's block.
    pub fn saved(&mut self, now: Instant, now_ms: i64) -> SavedPtys {
        let times: Vec<_> = self.ptys.iter().filter_map(|(dev, p)| Some((*dev, p.owner, p.times(*dev)?))).collect();
        self.read(now, wall_ms().max(now_ms));
        times
            .into_iter()
            .filter_map(|(dev, owner, t)| {
                let p = self.ptys.get(&dev).filter(|p| p.owner == owner)?;
                Some(((dev, owner), p.input.saved(&t, now_ms)))
            })
            .collect()
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A new pty: its master and its number.
    fn open_pty() -> (OwnedFd, u32) {
        // SAFETY: a path literal; the fd returned is owned below.
        let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "/dev/ptmx: {}", std::io::Error::last_os_error());
        // SAFETY: just opened, owned from here on.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut index: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes an unsigned int; unlockpt takes the fd.
        unsafe {
            assert_eq!(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        }
        (master, index)
    }

    fn device(n: u32) -> u32 {
        std::fs::metadata(format!("/dev/pts/{n}")).expect("pty").rdev() as u32
    }

    /// Input read on the slave of `master` (`/dev/pts/n`), as a shell reads a key.
    fn type_key(master: &OwnedFd, n: u32) {
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(format!("/dev/pts/{n}"))
            .expect("slave");
        // SAFETY: writes 2 bytes from a literal; reads into a local buffer.
        unsafe {
            assert_eq!(libc::write(master.as_raw_fd(), c"k\n".as_ptr().cast(), 2), 2);
            let mut buf = [0u8; 8];
            assert!(libc::read(slave.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0);
        }
    }

    /// The pty `pts/n` again, if the kernel hands that number out within a
    /// few tries (the lowest free number: the ptys below it are held).
    fn reopen(n: u32) -> Option<OwnedFd> {
        let mut held = Vec::new();
        for _ in 0..64 {
            let (master, index) = open_pty();
            if index == n {
                return Some(master);
            }
            if index > n {
                return None;
            }
            held.push(master);
        }
        None
    }

    #[test]
    fn a_closed_pty_and_its_number_given_again_inherit_nothing() {
        let (a, b) = (SessionKey { pid: 10, start: 1 }, SessionKey { pid: 20, start: 2 });
        for events in [true, false] {
            let mut w = TtyWatch::new(events, SavedPtys::new());
            let (master, n) = open_pty();
            let dev = device(n);
            let login = wall_ms() / 1000 - 100;
            assert!(matches!(w.watch(dev, a, wall_ms(), login, true), PtyLook::Quiet(_)));
            // A key, read as it happens (with inotify) or once the watch is
            // looked at (without).
            type_key(&master, n);
            std::thread::sleep(Duration::from_millis(20));
            w.read(Instant::now(), wall_ms());
            let PtyLook::Quiet(quiet) = w.watch(dev, a, wall_ms(), login, false) else { panic!("not watched") };
            assert!(quiet > (login + 50) * 1000, "events {events}: no input credited ({quiet})");
            assert_eq!(w.ptys[&dev].input.last_input_ms().is_some(), events, "the key seen as it happened");
            assert_eq!(w.watch(dev, b, wall_ms(), login, false), PtyLook::Stale, "another session's pty");
            drop(master);
            std::thread::sleep(Duration::from_millis(20));
            w.read(Instant::now(), wall_ms());
            // Its name's removal from /dev/pts (its own watch hears nothing
            // while our handle holds the inode) forgets it; without inotify,
            // the next retain does.
            if !events {
                assert_eq!(w.ptys.len(), 1);
                w.retain(|_, _| true);
            }
            assert!(w.ptys.is_empty() && w.by_wd.is_empty(), "events {events}: a closed pty is still watched");
            // Closed: its history is not the session's quiet time any more.
            assert_eq!(w.watch(dev, a, wall_ms(), login, false), PtyLook::Stale, "events {events}: closed pty");
            let Some(again) = reopen(n) else {
                eprintln!("pts/{n} was not handed out again (another process took it): reuse not tried");
                continue;
            };
            assert_eq!(device(n), dev);
            // Seen by session B's fresh look: a first look, nothing
            // inherited (a new pty, untouched since its creation: quiet from
            // the end of its creation's 8-s block at the latest, never the
            // old key's time).
            let login_b = wall_ms() / 1000;
            let PtyLook::Quiet(q) = w.watch(dev, b, wall_ms(), login_b, true) else { panic!("new pty not watched") };
            assert!(q <= (login_b + 8) * 1000, "events {events}: the new pty's quiet time {q} (login {login_b})");
            assert_eq!((w.ptys[&dev].owner, w.ptys[&dev].input.last_input_ms()), (b, None), "history inherited");
            // Session A's old list of ptys still names the number: stale.
            assert_eq!(w.watch(dev, a, wall_ms(), login, false), PtyLook::Stale);
            assert_eq!(w.ptys.len(), 1);
            drop(again);
        }
    }
}
