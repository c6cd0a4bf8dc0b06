//! The enforcer's watch on the ptys sshd allocated: one inotify watch per
//! `/dev/pts/N` for `IN_ACCESS` (a read that returned data) and `IN_ATTRIB`
//! (an attribute change), judged by [`PtyInput`] (see `sshidle::input`), so
//! the last input is known to the moment it was read, not to the kernel's
//! 8-second block. A watch on `/dev/pts` itself tells when a pty appears, so
//! a new session's pty is watched from its first key.
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

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use sshidle::activity::pty_times;
use sshidle::input::{PtyInput, PtySaved};
use sshidle::input::{PtyTimes, Stamp};
use sshidle::procfs::{self, KeptFd};
use std::collections::{HashMap, HashSet};
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
    wd: Option<Wd>,
    /// The inode watched: `/dev/pts/N` of a closed pty is another file when
    /// the number comes back.
    ino: u64,
    input: PtyInput,
    /// `O_PATH` on the pty slave; `None` when it could not be opened (then
    /// the timestamps are read by path).
    fd: Option<KeptFd>,
    /// Events of the batch being read: `Some(true)` when one was IN_ACCESS.
    pending: Option<bool>,
}

impl Pty {
    /// The pty's timestamps now; `None` when it is gone.
    fn times(&self, dev: u32) -> Option<PtyTimes> {
        let Some(fd) = &self.fd else { return pty_times(dev) };
        let st = fstat(fd)?;
        Some(PtyTimes {
            atime: Stamp::new(st.st_atime, st.st_atime_nsec),
            ctime: Stamp::new(st.st_ctime, st.st_ctime_nsec),
        })
    }
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
    /// What the previous enforcer saved, taken up when a pty is first watched.
    saved: HashMap<u32, PtySaved>,
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
    pub fn new(events: bool, saved: HashMap<u32, PtySaved>) -> TtyWatch {
        let inotify = events.then(|| Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()).flatten();
        let pts_dir = inotify.as_ref().and_then(|i| add_watch(i, "/dev/pts", AddWatchFlags::IN_CREATE));
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

    /// Watches the pty `dev` (a `/dev/pts/N` device number) of a session
    /// logged in at `login_time` if it is not yet; returns from when on it has certainly had no input (unix seconds),
    /// `None` when it is gone. `now_ms`: unix milliseconds.
    pub fn watch(&mut self, dev: u32, now_ms: i64, login_time: i64) -> Option<i64> {
        let name = procfs::pts_name(dev)?;
        let path = format!("/dev/{name}");
        let meta = std::fs::metadata(&path).ok()?;
        if meta.rdev() as u32 != dev {
            return None;
        }
        if self.ptys.get(&dev).is_some_and(|p| p.ino == meta.ino()) {
            return self.quiet_since(dev, now_ms);
        }
        self.forget(dev);
        let times = pty_times(dev)?;
        let input = match self.saved.remove(&dev) {
            Some(saved) => PtyInput::restore(&saved, &times, now_ms, login_time),
            None => PtyInput::first_look(&times, now_ms, login_time),
        };
        let wd = self.inotify.as_ref().and_then(|i| {
            add_watch(i, &path, AddWatchFlags::IN_ACCESS | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_DELETE_SELF)
        });
        if let Some(wd) = wd {
            self.by_wd.insert(wd, dev);
        }
        let quiet = input.quiet_since();
        // Opened after the stat above: the same inode, or no handle at all.
        let fd = open_path(&path).filter(|fd| fstat(fd).is_some_and(|st| st.st_ino == meta.ino()));
        self.ptys.insert(dev, Pty { wd, ino: meta.ino(), input, fd, pending: None });
        self.dirty = true;
        Some(quiet)
    }

    /// From when on the pty has had no input, as far as the watch knows.
    /// An unwatched pty (no inotify) is looked at again.
    pub fn quiet_since(&mut self, dev: u32, now_ms: i64) -> Option<i64> {
        let p = self.ptys.get_mut(&dev)?;
        if p.wd.is_none() {
            let times = p.times(dev)?;
            p.input.events_lost(&times, now_ms);
        }
        Some(p.input.quiet_since())
    }

    /// Stops watching the ptys not in `keep`.
    pub fn retain(&mut self, keep: &HashSet<u32>) {
        let gone: Vec<u32> = self.ptys.keys().filter(|d| !keep.contains(d)).copied().collect();
        for dev in gone {
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
                        self.created.push(index);
                    }
                } else if let Some(dev) = self.by_wd.get(&wd).copied() {
                    let Some(p) = self.ptys.get_mut(&dev) else { continue };
                    if mask.intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF) {
                        // The pty was closed: its watch is gone with it.
                        self.by_wd.remove(&wd);
                        p.wd = None;
                        continue;
                    }
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
    pub fn saved(&mut self, now: Instant, now_ms: i64) -> HashMap<u32, PtySaved> {
        let times: Vec<_> = self.ptys.iter().filter_map(|(dev, p)| Some((*dev, p.times(*dev)?))).collect();
        self.read(now, wall_ms().max(now_ms));
        times.into_iter().filter_map(|(dev, t)| Some((dev, self.ptys.get(&dev)?.input.saved(&t, now_ms)))).collect()
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
