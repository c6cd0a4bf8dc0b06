//! How idle a recorded session is: its ttys and the time since its last input
//! (see "What counts as idle" in the spec, and [`crate::input`] for the
//! judgement of input itself). What the enforcer does about it is decided in
//! [`crate::lifecycle`].
//!
//! A session is found from the process that recorded it, sshd's `[priv]`
//! monitor. Its processes are told apart by what they are, never by a name
//! a user can write ([`members`]):
//! - **sshd's own**: the monitor and the children it forked right below it
//!   that run the monitor's executable (`/proc/PID/exe`); a user's process
//!   renamed `sshd`, or even running the sshd binary, is deeper in the tree.
//! - **its ptys**: those whose master side sshd's own processes hold (the
//!   ptmx fd's `tty-index`; utmp where the kernel does not say). Ptys created
//!   inside the session (script, tmux, screen, `pty.fork`) are not among them.
//! - **channels**: each non-sshd child of sshd's own processes is the command
//!   sshd started for a channel (a shell, a remote command, internal-sftp's
//!   process). One whose controlling terminal is an sshd pty is a terminal
//!   channel: it and everything below it are judged by the pty's input only.
//!   The others are commands without a terminal: they and their descendants
//!   are judged by their I/O.
//!
//! - **Terminals**: what the tty watcher of the enforcer knows of the input
//!   on sshd's ptys ([`crate::input::PtyInput`]); without it (`status`), what
//!   the enforcer saved of them while that still holds, else their
//!   timestamps ([`ptys_quiet_since`]).
//! - **Commands without a terminal**: the I/O counters of `/proc/PID/io`,
//!   judged by [`input::did_io`]: a process seen before that wrote or read is
//!   activity, credited to the moment it is seen; processes starting or
//!   exiting are not. sshd's own processes are left out: their counters move
//!   with every keepalive probe. What the enforcer saw is remembered between
//!   sweeps in an [`IoMemo`] per session, kept by the enforcer in the state
//!   directory ([`Memory`]) so `status` and `enforce --once` share it.
//! - **Neither** (`ssh -N`, a ControlMaster with no channel left): not judged
//!   here; sshd's `UnusedConnectionTimeout` covers it. `hard=` still applies.

use crate::files::Fnv;
use crate::input::{self, IoSample, PtyInput, PtySaved, PtyTimes, Stamp};
use crate::lifecycle::secs_ms;
use crate::procfs::{self, ProcTable};
use crate::state::{SessionKey, SessionRecord, StateDir, StateError};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub use crate::input::TTY_TIME_GRANULARITY;

/// The file in the state directory where the enforcer keeps its [`Memory`].
pub const MEMORY_FILE: &str = "activity";
const MEMORY_HEADER: &str = "sshidle-activity 2";
/// The format before ptys were keyed by their session too: its session
/// lines are taken up, its pty lines (keyed by the pty number alone) are not.
const MEMORY_HEADER_V1: &str = "sshidle-activity 1";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The session's terminals, as `pts/N`.
    pub ttys: Vec<String>,
    /// Whole seconds since the session became quiet (rounded down).
    pub idle_secs: u64,
    /// Unix milliseconds from which on the session has certainly been idle
    /// (later than any input it had). `None` when sshidle does not judge its
    /// idleness (no terminal and no command).
    pub quiet_since_ms: Option<i64>,
}

/// The processes of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// sshd's own processes: the monitor and the children it forked.
    pub sshd: Vec<(i32, u64)>,
    /// The commands of channels without a terminal and their descendants:
    /// their I/O is activity.
    pub commands: Vec<(i32, u64)>,
    /// The processes of terminal channels (shells and all below them): only
    /// the pty's input counts for them.
    pub on_ttys: Vec<(i32, u64)>,
    /// The ptys sshd allocated for the connection (device numbers), sorted,
    /// no duplicates.
    pub ttys: Vec<u32>,
}

/// sshd's own processes of session `key`: the monitor, and its children that
/// run the monitor's executable (the `@pts`/`@notty` child), except
/// internal-sftp's process, which is a channel's command (a root login has
/// no separate child: its channels hang right below the monitor). Only sshd
/// forks a process at that place, so there the title it set is its own.
pub fn sshd_processes(table: &ProcTable, key: SessionKey) -> Vec<(i32, u64)> {
    let Some(monitor) = table.get(key.pid).filter(|p| p.start == key.start) else { return Vec::new() };
    let mut own = vec![(monitor.pid, monitor.start)];
    let Some(exe) = procfs::exe_id(monitor.pid) else { return own };
    for child in table.children(monitor.pid) {
        if procfs::exe_id(child.pid) == Some(exe) && !is_internal_sftp(child.pid) {
            own.push((child.pid, child.start));
        }
    }
    own
}

/// The ptys sshd allocated for the connection, as `/dev/pts/N` device
/// numbers: those whose master its own processes hold. Where the kernel does
/// not name the pty of a ptmx fd (before Linux 5.x), utmp's lines of the
/// monitor are taken instead.
pub fn sshd_ptys(own: &[(i32, u64)], utmp: &dyn Fn() -> Vec<u32>) -> Vec<u32> {
    let mut indexes = Vec::new();
    let mut unnamed = false;
    for (pid, _) in own {
        let masters = procfs::pty_masters(*pid);
        unnamed |= masters.unnamed > 0;
        indexes.extend(masters.indexes);
    }
    if unnamed && indexes.is_empty() {
        indexes = utmp();
    }
    let mut devices: Vec<u32> = indexes.into_iter().filter_map(pts_device).collect();
    devices.sort_unstable();
    devices.dedup();
    devices
}

/// The device number of `/dev/pts/N`, when it is a pty slave.
pub fn pts_device(index: u32) -> Option<u32> {
    let meta = std::fs::metadata(format!("/dev/pts/{index}")).ok()?;
    let dev = meta.rdev() as u32;
    (meta.file_type().is_char_device() && procfs::pts_name(dev).is_some()).then_some(dev)
}

/// The `pts/N` lines utmp holds for the monitor `key`, as indexes: entries
/// of its PID written since it started (an older one is another process's
/// that had the PID and left its entry, e.g. killed before its logout).
pub fn utmp_ptys(key: SessionKey) -> Vec<u32> {
    let Some(started) = procfs::start_unix(key.start) else { return Vec::new() };
    crate::utmp::read(Path::new(crate::utmp::DEFAULT_UTMP))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.pid == key.pid && e.time >= started)
        .filter_map(|e| e.line.strip_prefix("pts/")?.parse().ok())
        .collect()
}

/// The processes of the session `key` in `table`; `None` when its monitor is
/// gone (or its PID now belongs to another process).
pub fn members(table: &ProcTable, key: SessionKey) -> Option<Members> {
    table.get(key.pid).filter(|p| p.start == key.start)?;
    let sshd = sshd_processes(table, key);
    let ttys = sshd_ptys(&sshd, &|| utmp_ptys(key));
    Some(classify(table, key, sshd, ttys))
}

/// Sorts the monitor's descendants into channels (see the module's notes),
/// given sshd's own processes and ptys.
pub fn classify(table: &ProcTable, key: SessionKey, sshd: Vec<(i32, u64)>, ttys: Vec<u32>) -> Members {
    let own: HashSet<i32> = sshd.iter().map(|(pid, _)| *pid).collect();
    // For each process below sshd's own: is it on a terminal channel?
    let mut on_tty: HashMap<i32, bool> = HashMap::new();
    let mut roots_on_ptys = 0;
    let mut below = Vec::new();
    for p in table.descendants(key.pid) {
        if own.contains(&p.pid) {
            continue;
        }
        let tty = if own.contains(&p.ppid) {
            let tty = ttys.contains(&p.tty_nr);
            roots_on_ptys += usize::from(tty);
            tty
        } else {
            on_tty.get(&p.ppid).copied().unwrap_or(false)
        };
        on_tty.insert(p.pid, tty);
        below.push((p.pid, p.start, own.contains(&p.ppid)));
    }
    // An sshd pty whose shell is not on it any more (it dropped its
    // controlling terminal): the channel that looks terminal-less may be
    // that shell, so none counts as a command.
    let disguised = roots_on_ptys < ttys.len();
    let mut m = Members { sshd, ttys, ..Members::default() };
    for (pid, start, _) in below {
        if disguised || on_tty[&pid] {
            m.on_ttys.push((pid, start));
        } else {
            m.commands.push((pid, start));
        }
    }
    m.commands.sort_unstable();
    m
}

/// sshd runs `internal-sftp` in a process of its own, titled
/// `sshd: USER@internal-sftp`: its I/O is the user's file transfer, never
/// keepalives (those are the `@notty` parent's), so it is a channel's command.
fn is_internal_sftp(pid: i32) -> bool {
    procfs::title(pid).is_some_and(|t| t.ends_with("@internal-sftp"))
}

/// The I/O counters of the session's commands now.
pub fn io_sample(commands: &[(i32, u64)]) -> IoSample {
    commands.iter().filter_map(|(pid, start)| Some(((*pid, *start), procfs::io_counters(*pid, *start)?))).collect()
}

/// A digest of an I/O sample, kept across restarts of the enforcer: when it
/// differs from the one saved, something may have happened while nobody
/// looked.
pub fn io_fingerprint(sample: &IoSample) -> u64 {
    let mut hash = Fnv::default();
    for ((pid, start), c) in sample {
        hash = hash.u64(*pid as u64).u64(*start).u64(c.rchar).u64(c.wchar);
    }
    hash.0
}

/// What the enforcer last saw of a session's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoMemo {
    /// [`io_fingerprint`] of the last sample (what is saved across restarts).
    pub fingerprint: u64,
    /// When I/O was last seen (unix seconds).
    pub last_active: i64,
    /// When the counters were last read.
    pub sampled_at: i64,
    /// The last sample itself; `None` when the memo was read from the saved
    /// memory (the enforcer restarted).
    pub sample: Option<IoSample>,
}

impl IoMemo {
    /// A memo as saved (without the sample).
    pub fn new(fingerprint: u64, last_active: i64, sampled_at: i64) -> IoMemo {
        IoMemo { fingerprint, last_active, sampled_at, sample: None }
    }
}

/// The enforcer's probes of the session's commands' counters, kept open
/// between samples ([`procfs::IoProbe`]): a sample of an idle command is one
/// `pread(2)` of its `/proc/PID/io`. A command whose probe cannot be opened
/// (no descriptor left) is read by path, as [`io_sample`] does.
#[derive(Debug, Default)]
pub struct IoProbes(HashMap<(i32, u64), Option<procfs::IoProbe>>);

impl IoProbes {
    /// The counters of `commands` now, judged against `before` (the previous
    /// sample); probes of processes no longer among them are closed.
    pub fn sample(&mut self, commands: &[(i32, u64)], before: Option<&IoSample>) -> IoSample {
        self.0.retain(|id, _| commands.contains(id));
        let mut out = IoSample::new();
        for &(pid, start) in commands {
            let probe = self.0.entry((pid, start)).or_insert_with(|| procfs::IoProbe::open(pid, start));
            let counters = match probe {
                Some(p) => p.sample(before.and_then(|b| b.get(&(pid, start)))),
                None => procfs::io_counters(pid, start),
            };
            if let Some(c) = counters {
                out.insert((pid, start), c);
            }
        }
        out
    }
}

/// Judges a session from its members, updating `memo` with what is seen now
/// (the enforcer's view: I/O seen is activity now, to the second).
/// `tty_quiet_ms`: what the tty watcher says of the session's ptys; `now_ms`:
/// unix ms.
pub fn assess(
    record: &SessionRecord,
    members: &Members,
    memo: &mut Option<IoMemo>,
    tty_quiet_ms: Option<i64>,
    now_ms: i64,
) -> Activity {
    assess_sampled(record, members, memo, |commands, _| io_sample(commands), tty_quiet_ms, now_ms)
}

/// [`assess`], with the commands' counters read by `sample` (given the
/// commands and the previous sample), e.g. [`IoProbes::sample`].
pub fn assess_sampled(
    record: &SessionRecord,
    members: &Members,
    memo: &mut Option<IoMemo>,
    sample: impl FnOnce(&[(i32, u64)], Option<&IoSample>) -> IoSample,
    tty_quiet_ms: Option<i64>,
    now_ms: i64,
) -> Activity {
    // Commands are sampled on whole seconds: their memo keeps seconds.
    let now = now_ms.div_euclid(1000);
    if !members.commands.is_empty() || memo.is_some() {
        let sample = sample(&members.commands, memo.as_ref().and_then(|m| m.sample.as_ref()));
        let fingerprint = io_fingerprint(&sample);
        match memo {
            Some(m) => {
                let active = match &m.sample {
                    Some(before) => input::did_io(before, &sample),
                    // The enforcer restarted: what happened meanwhile is not
                    // known unless nothing at all changed.
                    None => m.fingerprint != fingerprint,
                };
                if active {
                    m.last_active = now;
                }
                m.fingerprint = fingerprint;
                m.sampled_at = now;
                m.sample = Some(sample);
            }
            // First sight: activity now (nothing better is known).
            None => *memo = Some(IoMemo { fingerprint, last_active: now, sampled_at: now, sample: Some(sample) }),
        }
    }
    combine(record, members, tty_quiet_ms, memo.as_ref().map(|m| m.last_active), now_ms)
}

/// Judges a session without changing anything (`status`): the enforcer's
/// last judgement of its commands; commands the enforcer has not seen yet
/// count from the login (nothing better is known).
pub fn peek(
    record: &SessionRecord,
    members: &Members,
    memo: Option<&IoMemo>,
    tty_quiet_ms: Option<i64>,
    now_ms: i64,
) -> Activity {
    let io_active = match memo {
        Some(m) => Some(m.last_active),
        None if members.commands.is_empty() => None,
        None => Some(record.login_time),
    };
    combine(record, members, tty_quiet_ms, io_active, now_ms)
}

/// Puts together what is known of the session's terminals (`tty_quiet_ms`:
/// from when on all its sshd ptys have had no input, unix ms) and commands
/// (`io_active`: when they last did I/O, unix seconds). The idle time is the
/// one the enforcer acts on: since the session became quiet.
fn combine(
    record: &SessionRecord,
    members: &Members,
    tty_quiet_ms: Option<i64>,
    io_active: Option<i64>,
    now_ms: i64,
) -> Activity {
    let ttys = members.ttys.iter().filter_map(|t| procfs::pts_name(*t)).collect();
    let tty_quiet_ms = tty_quiet_ms.filter(|_| !members.ttys.is_empty());
    let quiet_since_ms = if members.ttys.is_empty() && members.commands.is_empty() {
        None
    } else {
        // The login time is recorded in whole seconds, rounded down.
        let after_login = record.login_time.saturating_add(1);
        [tty_quiet_ms, io_active.map(secs_ms), Some(secs_ms(after_login))].into_iter().flatten().max()
    };
    Activity { ttys, idle_secs: idle_secs(quiet_since_ms, record.login_time, now_ms), quiet_since_ms }
}

/// Whole seconds (rounded down) from `quiet_since_ms` (else the login) to
/// `now_ms`.
pub fn idle_secs(quiet_since_ms: Option<i64>, login_time: i64, now_ms: i64) -> u64 {
    let since = quiet_since_ms.unwrap_or(secs_ms(login_time));
    (now_ms - since).max(0).div_euclid(1000) as u64
}

/// The timestamps of a pty slave now, or `None` when it is gone.
pub fn pty_times(tty_nr: u32) -> Option<PtyTimes> {
    let name = procfs::pts_name(tty_nr)?;
    let meta = std::fs::metadata(format!("/dev/{name}")).ok()?;
    Some(PtyTimes {
        atime: Stamp::new(meta.atime(), meta.atime_nsec()),
        ctime: Stamp::new(meta.ctime(), meta.ctime_nsec()),
    })
}

/// From when on (unix ms) the session's sshd ptys have certainly had no input, judged
/// without watching them: from what an enforcer saved of them where that
/// still holds, else from their timestamps ([`PtyInput::restore`]). Only
/// what was saved for this session's own pty counts: a pty number the kernel
/// gave to another login since inherits nothing.
pub fn ptys_quiet_since(ttys: &[u32], saved: &SavedPtys, key: SessionKey, now_ms: i64, login_time: i64) -> Option<i64> {
    ttys.iter()
        .filter_map(|t| {
            let times = pty_times(*t)?;
            Some(match saved.get(&(*t, key)) {
                Some(s) => PtyInput::restore(s, &times, now_ms, login_time).quiet_since_ms(),
                None => PtyInput::first_look(&times, now_ms, login_time).quiet_since_ms(),
            })
        })
        .max()
}

/// What the enforcer saved of each sshd pty, by its device number and the
/// session whose sshd opened it: the pair names one allocation of the
/// number (a session opens `/dev/pts/N` once; the saved timestamps tell a
/// second opening by the same connection, see [`PtyInput::restore`]).
pub type SavedPtys = HashMap<(u32, SessionKey), PtySaved>;

/// The enforcer's memory, persisted in the state directory (`activity`):
/// per session, what it saw of its commands
/// (`PID START FINGERPRINT LAST_ACTIVE SAMPLED_AT`), and per sshd pty of a
/// session, what it knew of its input (`pty DEV PID START ATIME CTIME
/// QUIET_SINCE_MS SAVED_MS`, times as `SEC.NSEC`), so that `status` and the
/// next enforcer take it up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub entries: HashMap<SessionKey, IoMemo>,
    pub ptys: SavedPtys,
}

fn parse_stamp(text: &str) -> Option<Stamp> {
    let (sec, nsec) = text.split_once('.')?;
    Some(Stamp::new(sec.parse().ok()?, nsec.parse().ok()?))
}

fn parse_pty(fields: &mut std::str::Split<'_, char>) -> Option<((u32, SessionKey), PtySaved)> {
    let dev = fields.next()?.parse().ok()?;
    let key = SessionKey { pid: fields.next()?.parse().ok()?, start: fields.next()?.parse().ok()? };
    let times = PtyTimes { atime: parse_stamp(fields.next()?)?, ctime: parse_stamp(fields.next()?)? };
    let saved =
        PtySaved { times, quiet_since_ms: fields.next()?.parse().ok()?, saved_ms: fields.next()?.parse().ok()? };
    Some(((dev, key), saved))
}

impl Memory {
    /// Reads the memory kept in the state directory; empty when there is
    /// none (or it cannot be read).
    pub fn load(state: &StateDir) -> Memory {
        match state.read_file(MEMORY_FILE, 64 << 20) {
            Ok(Some(text)) => Memory::parse(&text),
            _ => Memory::default(),
        }
    }

    pub fn parse(text: &str) -> Memory {
        let mut lines = text.lines();
        let mut memory = Memory::default();
        let v1 = match lines.next() {
            Some(MEMORY_HEADER) => false,
            Some(MEMORY_HEADER_V1) => true,
            _ => return memory,
        };
        for line in lines {
            let mut f = line.split(' ');
            if line.starts_with("pty ") {
                f.next();
                if let Some((id, saved)) = parse_pty(&mut f).filter(|_| !v1) {
                    memory.ptys.insert(id, saved);
                }
                continue;
            }
            let entry = (|| {
                let key = SessionKey { pid: f.next()?.parse().ok()?, start: f.next()?.parse().ok()? };
                let memo = IoMemo::new(
                    u64::from_str_radix(f.next()?, 16).ok()?,
                    f.next()?.parse().ok()?,
                    f.next()?.parse().ok()?,
                );
                Some((key, memo))
            })();
            if let Some((key, memo)) = entry {
                memory.entries.insert(key, memo);
            }
        }
        memory
    }

    pub fn render(&self) -> String {
        let mut keys: Vec<_> = self.entries.keys().collect();
        keys.sort();
        let mut out = format!("{MEMORY_HEADER}\n");
        for key in keys {
            let m = &self.entries[key];
            out.push_str(&format!(
                "{} {} {:x} {} {}\n",
                key.pid, key.start, m.fingerprint, m.last_active, m.sampled_at
            ));
        }
        let mut ids: Vec<_> = self.ptys.keys().collect();
        ids.sort();
        for id in ids {
            let p = &self.ptys[id];
            let ((dev, key), a, c) = (id, p.times.atime, p.times.ctime);
            out.push_str(&format!(
                "pty {dev} {} {} {}.{} {}.{} {} {}\n",
                key.pid, key.start, a.sec, a.nsec, c.sec, c.nsec, p.quiet_since_ms, p.saved_ms
            ));
        }
        out
    }

    /// Writes the memory atomically (temp file + rename, mode 0600, no
    /// symlinks followed).
    pub fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.write_file(MEMORY_FILE, self.render().as_bytes())
    }
}

/// Looks at sessions without changing anything: one process table and the
/// enforcer's memory, shared by all the sessions of one `status`.
pub struct Observer {
    table: ProcTable,
    memory: Memory,
}

impl Observer {
    /// `state`: where the enforcer's memory is (none: nothing remembered).
    pub fn new(state: Option<&StateDir>) -> Observer {
        Observer { table: ProcTable::scan(), memory: state.map(Memory::load).unwrap_or_default() }
    }

    /// The session as it is at `now_ms` (unix ms: what the enforcer saved
    /// within the current second is not from the future).
    pub fn observe(&self, record: &SessionRecord, now_ms: i64) -> Activity {
        match members(&self.table, record.key) {
            Some(m) => {
                let ttys = ptys_quiet_since(&m.ttys, &self.memory.ptys, record.key, now_ms, record.login_time);
                peek(record, &m, self.memory.entries.get(&record.key), ttys, now_ms)
            }
            None => Activity {
                ttys: Vec::new(),
                idle_secs: idle_secs(None, record.login_time, now_ms),
                quiet_since_ms: None,
            },
        }
    }
}

/// Observes one session now (scans `/proc`; use an [`Observer`] for many).
pub fn observe(record: &SessionRecord, now_ms: i64) -> Activity {
    Observer { table: ProcTable::scan(), memory: Memory::default() }.observe(record, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn memory_round_trip() {
        let mut memory = Memory::default();
        memory.entries.insert(SessionKey { pid: 42, start: 7 }, IoMemo::new(0xdead_beef, 100, 120));
        memory.entries.insert(SessionKey { pid: 1, start: 2 }, IoMemo::new(0, 3, 4));
        let times = PtyTimes { atime: Stamp::new(1000, 0), ctime: Stamp::new(990, 123_456_789) };
        let key = SessionKey { pid: 42, start: 7 };
        memory.ptys.insert((34816, key), PtySaved { times, quiet_since_ms: 1_002_300, saved_ms: 1_030_000 });
        assert_eq!(Memory::parse(&memory.render()), memory);
        let line = "\npty 34816 42 7 1000.0 990.123456789 1002300 1030000\n";
        assert!(memory.render().contains(line), "{}", memory.render());
        // The first format keyed a pty by its number alone: its pty lines are
        // not taken up (a later login on that number would inherit them).
        let v1 = "sshidle-activity 1\n42 7 deadbeef 100 120\npty 34816 1000.0 990.123456789 1002300 1030000\n";
        let old = Memory::parse(v1);
        assert_eq!((old.entries.len(), old.ptys.len()), (1, 0));
        assert_eq!(Memory::parse("garbage\n1 2 3 4 5\n"), Memory::default());
        let dir = std::env::temp_dir().join(format!("sshidle-activity-{}", std::process::id()));
        let state = StateDir::open(&dir, true).unwrap();
        memory.save(&state).unwrap();
        assert_eq!(Memory::load(&state), memory);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn record(key: SessionKey, login: i64) -> SessionRecord {
        SessionRecord {
            key,
            uid: 0,
            user: "root".into(),
            rhost: String::new(),
            service: "sshd".into(),
            login_time: login,
            limits: crate::policy::Limits::default(),
            rule: "none".into(),
            warned_at_ms: None,
        }
    }

    #[test]
    fn commands_io_is_activity() {
        // This test process plays the monitor; a child shell without a tty
        // plays the command.
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("sh");
        // SAFETY: setsid is async-signal-safe. It drops any controlling tty.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        // It stays alive after its I/O (the second read waits), so what the
        // test sees is the I/O, not a process exiting.
        let mut child = command
            .args(["-c", "read x; echo $x; read y"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let key = SessionKey::current_process().unwrap();
        let pid = child.id() as i32;
        // Until sh waits in its first read of stdin, so its I/O counters stay
        // still until the test writes.
        procfs::wait_in_syscall(pid, &format!("{} 0x0 ", libc::SYS_read));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut m = members(&ProcTable::scan(), key).unwrap();
        assert!(m.commands.iter().any(|(p, _)| *p == pid), "{m:?}");
        // Other tests of this process start children too: judge this one only.
        m.commands.retain(|(p, _)| *p == pid);
        let start = m.commands[0].1;
        let before = procfs::io_bytes(pid).expect("io");
        let rec = record(key, 500);
        let mut memo = None;
        let (mut probes, mut probed) = (IoProbes::default(), None);
        let mut by_probe = |memo: &mut Option<IoMemo>, now: i64| {
            assess_sampled(&rec, &m, memo, |c, before| probes.sample(c, before), None, secs_ms(now)).quiet_since_ms
        };
        // First sight: activity now (conservative).
        assert_eq!(assess(&rec, &m, &mut memo, None, secs_ms(1000)).quiet_since_ms, Some(secs_ms(1000)));
        assert_eq!(by_probe(&mut probed, 1000), Some(secs_ms(1000)));
        assert_eq!(by_probe(&mut probed, 1010), Some(secs_ms(1000)));
        // Nothing moved: quiet since then.
        let a = assess(&rec, &m, &mut memo, None, secs_ms(1010));
        assert_eq!((a.quiet_since_ms, a.idle_secs), (Some(secs_ms(1000)), 10));
        assert_eq!(peek(&rec, &m, memo.as_ref(), None, secs_ms(1015)).idle_secs, 15);
        // The command reads and writes: activity, with the same processes.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").unwrap();
        while procfs::io_bytes(pid) < Some(before + 12) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(procfs::io_bytes(pid) >= Some(before + 12), "the command did not read and write");
        assert!(procfs::is_same_process(pid, start), "the command exited: its I/O must be what counts");
        // Read and written: the probe sees it as the path reading does.
        assert_eq!(by_probe(&mut probed, 1020), Some(secs_ms(1020)));
        assert_eq!(by_probe(&mut probed, 1030), Some(secs_ms(1020)));
        // `status` shows the enforcer's judgement, not its own.
        assert_eq!(peek(&rec, &m, memo.as_ref(), None, secs_ms(1020)).idle_secs, 20);
        assert_eq!(assess(&rec, &m, &mut memo, None, secs_ms(1020)).quiet_since_ms, Some(secs_ms(1020)));
        assert_eq!(peek(&rec, &m, memo.as_ref(), None, secs_ms(1020)).idle_secs, 0);
        // Nothing moved since: quiet again from then on.
        assert_eq!(assess(&rec, &m, &mut memo, None, secs_ms(1030)).quiet_since_ms, Some(secs_ms(1020)));
        drop(stdin);
        child.wait().unwrap();
        // It exited: that is not activity either.
        assert_eq!(assess(&rec, &m, &mut memo, None, secs_ms(1040)).quiet_since_ms, Some(secs_ms(1020)));
        // A restarted enforcer (the memo without its sample): a change while
        // nobody looked counts from now, no change keeps the judgement.
        let restored = |m: &Option<IoMemo>, flip: u64| {
            m.as_ref().map(|m| IoMemo::new(m.fingerprint ^ flip, m.last_active, m.sampled_at))
        };
        assert_eq!(assess(&rec, &m, &mut restored(&memo, 0), None, secs_ms(1050)).quiet_since_ms, Some(secs_ms(1020)));
        assert_eq!(assess(&rec, &m, &mut restored(&memo, 1), None, secs_ms(1050)).quiet_since_ms, Some(secs_ms(1050)));
        // A PID that is not the recorded process has no members.
        assert_eq!(members(&ProcTable::scan(), SessionKey { pid: key.pid, start: key.start + 1 }), None);
    }

    /// A child of this test process (which plays the monitor) in a session
    /// of its own, without a tty: a channel's command.
    fn command(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("sh");
        // SAFETY: setsid is async-signal-safe. It drops any controlling tty.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        command
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Kills the children even when the test fails.
    struct Reap(Vec<std::process::Child>);

    impl Drop for Reap {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn processes_starting_and_exiting_are_not_io() {
        let churn = command("while sleep 0.1; do :; done");
        let pid = churn.id() as i32;
        let _reap = Reap(vec![churn]);
        // Until sh waits for its first sleep: what it reads to start is done.
        procfs::wait_in_syscall(pid, &format!("{} ", libc::SYS_wait4));
        let key = SessionKey::current_process().unwrap();
        let mut m = members(&ProcTable::scan(), key).unwrap();
        m.commands.retain(|(p, _)| *p == pid);
        assert_eq!(m.commands.len(), 1, "{m:?}");
        let rec = record(key, 500);
        let mut memo = None;
        // The enforcer's way: probes kept open, stat read only when needed.
        let (mut probes, mut probed) = (IoProbes::default(), None);
        let mut by_probe = |memo: &mut Option<IoMemo>, now: i64| {
            assess_sampled(&rec, &m, memo, |c, before| probes.sample(c, before), None, secs_ms(now)).quiet_since_ms
        };
        assert_eq!(assess(&rec, &m, &mut memo, None, secs_ms(1000)).quiet_since_ms, Some(secs_ms(1000)));
        assert_eq!(by_probe(&mut probed, 1000), Some(secs_ms(1000)));
        // Children start, read their libraries, exit and are reaped below it
        // ten times a second.
        for now in 1001..1006 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let quiet = assess(&rec, &m, &mut memo, None, secs_ms(now)).quiet_since_ms;
            assert_eq!(quiet, Some(secs_ms(1000)), "at {now}: {memo:?}");
            assert_eq!(by_probe(&mut probed, now), Some(secs_ms(1000)), "probed, at {now}: {probed:?}");
        }
    }

    fn proc(pid: i32, ppid: i32, tty_nr: u32) -> procfs::ProcStat {
        procfs::ProcStat { pid, comm: "sshd".into(), ppid, session: pid, tty_nr, start: pid as u64 }
    }

    #[test]
    fn channels_by_place_not_by_name() {
        const PTS0: u32 = 136 << 8;
        const INNER: u32 = (136 << 8) | 9;
        let key = SessionKey { pid: 100, start: 100 };
        // Every process is called "sshd": names decide nothing.
        let table = ProcTable::from_procs([
            proc(1, 0, 0),
            proc(100, 1, 0),       // the monitor
            proc(101, 100, 0),     // its @pts child
            proc(102, 101, PTS0),  // the login shell on sshd's pty
            proc(103, 102, 0),     // setsid -w sh -c 'while sleep 2; ...' &
            proc(104, 103, 0),     // ... and its sleep
            proc(105, 102, INNER), // script -qfc: a pty of the session's own
            proc(106, 101, 0),     // a remote command (multiplexed)
            proc(107, 106, INNER), // below it, on a pty of its own
            proc(108, 1, 0),       // another user's process
        ]);
        let m = classify(&table, key, vec![(100, 100), (101, 101)], vec![PTS0]);
        assert_eq!(m.commands, vec![(106, 106), (107, 107)]);
        let mut on_ttys = m.on_ttys.clone();
        on_ttys.sort_unstable();
        assert_eq!(on_ttys, vec![(102, 102), (103, 103), (104, 104), (105, 105)]);
        assert_eq!(m.ttys, vec![PTS0]);
        // The shell dropped its controlling terminal (TIOCNOTTY): sshd's pty
        // has no shell on it, so no channel counts as a command.
        let mut procs: Vec<_> = table.procs.values().cloned().collect();
        procs.iter_mut().filter(|p| p.pid == 102).for_each(|p| p.tty_nr = 0);
        let m = classify(&ProcTable::from_procs(procs), key, vec![(100, 100), (101, 101)], vec![PTS0]);
        assert!(m.commands.is_empty(), "{m:?}");
        // A root login: the channels hang right below the monitor.
        let table = ProcTable::from_procs([proc(100, 1, 0), proc(102, 100, PTS0), proc(103, 100, 0)]);
        let m = classify(&table, key, vec![(100, 100)], vec![PTS0]);
        assert_eq!((m.on_ttys, m.commands), (vec![(102, 102)], vec![(103, 103)]));
    }

    #[test]
    fn no_channel_is_not_judged() {
        let key = SessionKey::current_process().unwrap();
        let m = Members { sshd: vec![(key.pid, key.start)], ..Members::default() };
        let mut memo = None;
        let a = assess(&record(key, 900), &m, &mut memo, None, secs_ms(1000));
        assert_eq!((a.quiet_since_ms, a.idle_secs, memo), (None, 100, None));
    }

    #[test]
    fn a_ttys_last_input_counts_to_the_millisecond() {
        let key = SessionKey { pid: 100, start: 100 };
        let m = Members { sshd: vec![(100, 100)], ttys: vec![136 << 8], ..Members::default() };
        // The last key read at 1002.300: quiet from then, not from 1003.
        let a = peek(&record(key, 990), &m, None, Some(1_002_300), 1_012_299);
        assert_eq!((a.quiet_since_ms, a.idle_secs, a.ttys), (Some(1_002_300), 9, vec!["pts/0".to_string()]));
        assert_eq!(peek(&record(key, 990), &m, None, Some(1_002_300), 1_012_300).idle_secs, 10);
        // Never before the second after the login (recorded rounded down).
        assert_eq!(peek(&record(key, 1002), &m, None, Some(1_002_300), 1_012_300).quiet_since_ms, Some(1_003_000));
        // Commands' I/O is known to the second it was sampled in.
        let cmd = Members { commands: vec![(101, 101)], ..m };
        let memo = IoMemo::new(0, 1005, 1005);
        assert_eq!(
            peek(&record(key, 990), &cmd, Some(&memo), Some(1_002_300), 1_012_300).quiet_since_ms,
            Some(1_005_000)
        );
    }
}
