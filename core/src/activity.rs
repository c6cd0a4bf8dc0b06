//! How idle a recorded session is: its ttys and the time since its last input
//! (see "What counts as idle" in the spec). What the enforcer does about it is
//! decided in [`crate::lifecycle`].
//!
//! A session is found from the process that recorded it, sshd's `[priv]`
//! monitor: its descendants are sshd's own processes (same command name as the
//! monitor), the processes on the session's terminals, and the commands of
//! sessions without a terminal.
//!
//! - **Terminals**: the last input is the newest atime of the session's ttys
//!   (as `w` shows). The kernel only moves a tty's timestamps when they cross
//!   an 8-second boundary, so the last keystroke may be up to 7 s after the
//!   atime: the session counts as quiet only from the end of that 8-second
//!   block ([`quiet_since_tty`]), and nobody who typed within the limit is
//!   disconnected.
//! - **Commands without a terminal**: the I/O counters of `/proc/PID/io` of
//!   every non-sshd process without a controlling tty. A change (more bytes,
//!   a process started or ended) is activity, credited to the moment it is
//!   seen. sshd's own processes are left out: their counters move with every
//!   keepalive probe. The counters are remembered between sweeps in an
//!   [`IoMemo`] per session, kept by the enforcer in the state directory
//!   ([`Memory`]) so `status` and `enforce --once` share it.
//! - **Neither** (`ssh -N`, a ControlMaster with no channel left): not judged
//!   here; sshd's `UnusedConnectionTimeout` covers it. `hard=` still applies.

use crate::files::Fnv;
use crate::procfs::{self, ProcTable};
use crate::state::{SessionKey, SessionRecord, StateDir, StateError};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// The kernel updates tty timestamps only when they cross a multiple of this.
pub const TTY_TIME_GRANULARITY: i64 = 8;

/// The file in the state directory where the enforcer keeps its [`Memory`].
pub const MEMORY_FILE: &str = "activity";
const MEMORY_HEADER: &str = "sshidle-activity 1";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The session's terminals, as `pts/N`.
    pub ttys: Vec<String>,
    /// Seconds since the session's last activity (for ttys: now − atime, as
    /// `w` shows it).
    pub idle_secs: u64,
    /// Unix time from which on the session has certainly been idle (later than
    /// any input it had). `None` when sshidle does not judge its idleness (no
    /// terminal and no command).
    pub quiet_since: Option<i64>,
}

/// The end of the 8-second block holding `atime`: input after `atime` in the
/// same block does not move the timestamp, so only from here on is the tty
/// certainly quiet.
pub fn quiet_since_tty(atime: i64) -> i64 {
    // Saturating: an atime set near i64::MAX (`touch -d`) must not overflow.
    (atime.div_euclid(TTY_TIME_GRANULARITY) * TTY_TIME_GRANULARITY).saturating_add(TTY_TIME_GRANULARITY)
}

/// The processes of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// sshd's own processes: the monitor and the children it forked.
    pub sshd: Vec<(i32, u64)>,
    /// Other processes without a controlling terminal: their I/O is activity.
    pub commands: Vec<(i32, u64)>,
    /// Other processes with a controlling terminal.
    pub on_ttys: Vec<(i32, u64)>,
    /// The controlling terminals (device numbers), sorted, no duplicates.
    pub ttys: Vec<u32>,
}

/// The processes of the session `key` in `table`; `None` when its monitor is
/// gone (or its PID now belongs to another process).
pub fn members(table: &ProcTable, key: SessionKey) -> Option<Members> {
    let monitor = table.get(key.pid).filter(|p| p.start == key.start)?;
    let mut m = Members { sshd: vec![(key.pid, key.start)], ..Members::default() };
    for p in table.descendants(key.pid) {
        if p.comm == monitor.comm && !is_internal_sftp(p.pid) {
            m.sshd.push((p.pid, p.start));
        } else if p.tty_nr != 0 {
            m.on_ttys.push((p.pid, p.start));
            m.ttys.push(p.tty_nr);
        } else {
            m.commands.push((p.pid, p.start));
        }
    }
    m.ttys.sort_unstable();
    m.ttys.dedup();
    m.commands.sort_unstable();
    Some(m)
}

/// sshd runs `internal-sftp` in a process of its own, titled
/// `sshd: USER@internal-sftp`: its I/O is the user's file transfer, never
/// keepalives (those are the `@notty` parent's), so it counts as a command.
fn is_internal_sftp(pid: i32) -> bool {
    procfs::title(pid).is_some_and(|t| t.ends_with("@internal-sftp"))
}

/// The atime (unix seconds) of a pty, or `None` when it is gone.
pub fn tty_atime(tty_nr: u32) -> Option<i64> {
    let name = procfs::pts_name(tty_nr)?;
    let meta = std::fs::metadata(format!("/dev/{name}")).ok()?;
    Some(meta.atime())
}

/// A digest of the session's commands and their I/O byte counts: any change
/// is activity. A process that cannot be read counts as changed.
pub fn io_fingerprint(commands: &[(i32, u64)]) -> u64 {
    let mut hash = Fnv::default();
    for (pid, start) in commands {
        let bytes = if procfs::is_same_process(*pid, *start) { procfs::io_bytes(*pid) } else { None };
        hash = hash.u64(*pid as u64).u64(*start).u64(bytes.unwrap_or(u64::MAX));
    }
    hash.0
}

/// What the enforcer last saw of a session's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMemo {
    pub fingerprint: u64,
    /// When a change was last seen (unix seconds).
    pub last_active: i64,
    /// When the counters were last read.
    pub sampled_at: i64,
}

/// Judges a session from its members, updating `memo` with what is seen now
/// (the enforcer's view: a change is activity now).
pub fn assess(record: &SessionRecord, members: &Members, memo: &mut Option<IoMemo>, now: i64) -> Activity {
    if !members.commands.is_empty() || memo.is_some() {
        let fingerprint = io_fingerprint(&members.commands);
        match memo {
            Some(m) if m.fingerprint == fingerprint => m.sampled_at = now,
            _ => *memo = Some(IoMemo { fingerprint, last_active: now, sampled_at: now }),
        }
    }
    combine(record, members, memo.map(|m| m.last_active), now)
}

/// Judges a session without changing anything (`status`): counters that moved
/// since the enforcer's last look mean activity now; commands the enforcer has
/// not seen yet count from the login (nothing better is known).
pub fn peek(record: &SessionRecord, members: &Members, memo: Option<&IoMemo>, now: i64) -> Activity {
    let io_active = match memo {
        Some(m) if io_fingerprint(&members.commands) != m.fingerprint => Some(now),
        Some(m) => Some(m.last_active),
        None if members.commands.is_empty() => None,
        None => Some(record.login_time),
    };
    combine(record, members, io_active, now)
}

fn combine(record: &SessionRecord, members: &Members, io_active: Option<i64>, now: i64) -> Activity {
    let newest_input = members.ttys.iter().filter_map(|t| tty_atime(*t)).max();
    let ttys = members.ttys.iter().filter_map(|t| procfs::pts_name(*t)).collect();
    let last = [newest_input, io_active, Some(record.login_time)].into_iter().flatten().max().unwrap_or(now);
    let quiet_since = if members.ttys.is_empty() && members.commands.is_empty() {
        None
    } else {
        // The login time is recorded in whole seconds, rounded down.
        [newest_input.map(quiet_since_tty), io_active, Some(record.login_time.saturating_add(1))]
            .into_iter()
            .flatten()
            .max()
    };
    Activity { ttys, idle_secs: (now - last).max(0) as u64, quiet_since }
}

/// The enforcer's memory of every session's commands, persisted in the state
/// directory (`activity`), one line per session:
/// `PID START FINGERPRINT LAST_ACTIVE SAMPLED_AT`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub entries: HashMap<SessionKey, IoMemo>,
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
        if lines.next() != Some(MEMORY_HEADER) {
            return Memory::default();
        }
        let entries = lines
            .filter_map(|line| {
                let mut f = line.split(' ');
                let key = SessionKey { pid: f.next()?.parse().ok()?, start: f.next()?.parse().ok()? };
                let memo = IoMemo {
                    fingerprint: u64::from_str_radix(f.next()?, 16).ok()?,
                    last_active: f.next()?.parse().ok()?,
                    sampled_at: f.next()?.parse().ok()?,
                };
                Some((key, memo))
            })
            .collect();
        Memory { entries }
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

    pub fn observe(&self, record: &SessionRecord, now: i64) -> Activity {
        match members(&self.table, record.key) {
            Some(m) => peek(record, &m, self.memory.entries.get(&record.key), now),
            None => {
                Activity { ttys: Vec::new(), idle_secs: (now - record.login_time).max(0) as u64, quiet_since: None }
            }
        }
    }
}

/// Observes one session now (scans `/proc`; use an [`Observer`] for many).
pub fn observe(record: &SessionRecord, now: i64) -> Activity {
    Observer { table: ProcTable::scan(), memory: Memory::default() }.observe(record, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tty_granularity() {
        assert_eq!(quiet_since_tty(800), 808);
        assert_eq!(quiet_since_tty(807), 808);
        assert_eq!(quiet_since_tty(808), 816);
        // Whatever second in the block the last key was typed, the computed
        // quiet start is never before it.
        for atime in 800..808 {
            for typed in atime..808 {
                assert!(quiet_since_tty(atime) > typed);
                assert!(quiet_since_tty(atime) - atime <= TTY_TIME_GRANULARITY);
            }
        }
        // An atime pushed to the end of time (`touch -a -d @...`) saturates.
        assert_eq!(quiet_since_tty(i64::MAX), i64::MAX);
        assert_eq!(quiet_since_tty(i64::MAX - 3), i64::MAX);
        assert_eq!(quiet_since_tty(i64::MIN), i64::MIN + TTY_TIME_GRANULARITY);
    }

    #[test]
    fn memory_round_trip() {
        let mut memory = Memory::default();
        memory.entries.insert(
            SessionKey { pid: 42, start: 7 },
            IoMemo { fingerprint: 0xdead_beef, last_active: 100, sampled_at: 120 },
        );
        memory
            .entries
            .insert(SessionKey { pid: 1, start: 2 }, IoMemo { fingerprint: 0, last_active: 3, sampled_at: 4 });
        assert_eq!(Memory::parse(&memory.render()), memory);
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
            warned_at: None,
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut m = members(&ProcTable::scan(), key).unwrap();
        // Until the child has exec'd sh (its command name changes).
        while procfs::read_stat(pid).is_none_or(|s| s.comm != "sh") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            m = members(&ProcTable::scan(), key).unwrap();
        }
        assert!(m.commands.iter().any(|(p, _)| *p == pid), "{m:?}");
        // Other tests of this process start children too: judge this one only.
        m.commands.retain(|(p, _)| *p == pid);
        let start = m.commands[0].1;
        let before = procfs::io_bytes(pid).expect("io");
        let rec = record(key, 500);
        let mut memo = None;
        // First sight: activity now (conservative).
        assert_eq!(assess(&rec, &m, &mut memo, 1000).quiet_since, Some(1000));
        // Nothing moved: quiet since then.
        let a = assess(&rec, &m, &mut memo, 1010);
        assert_eq!((a.quiet_since, a.idle_secs), (Some(1000), 10));
        assert_eq!(peek(&rec, &m, memo.as_ref(), 1015).idle_secs, 15);
        // The command reads and writes: activity, with the same processes.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").unwrap();
        while procfs::io_bytes(pid) < Some(before + 12) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(procfs::io_bytes(pid) >= Some(before + 12), "the command did not read and write");
        assert!(procfs::is_same_process(pid, start), "the command exited: its I/O must be what counts");
        assert_eq!(peek(&rec, &m, memo.as_ref(), 1020).idle_secs, 0);
        assert_eq!(assess(&rec, &m, &mut memo, 1020).quiet_since, Some(1020));
        // Nothing moved since: quiet again from then on.
        assert_eq!(assess(&rec, &m, &mut memo, 1030).quiet_since, Some(1020));
        drop(stdin);
        child.wait().unwrap();
        // A PID that is not the recorded process has no members.
        assert_eq!(members(&ProcTable::scan(), SessionKey { pid: key.pid, start: key.start + 1 }), None);
    }

    #[test]
    fn no_channel_is_not_judged() {
        let key = SessionKey::current_process().unwrap();
        let m = Members { sshd: vec![(key.pid, key.start)], ..Members::default() };
        let mut memo = None;
        let a = assess(&record(key, 900), &m, &mut memo, 1000);
        assert_eq!((a.quiet_since, a.idle_secs, memo), (None, 100, None));
    }
}
