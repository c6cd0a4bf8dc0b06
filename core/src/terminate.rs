//! Ending a session cleanly, and only the session.
//!
//! sshd's `[priv]` monitor gets SIGTERM: it forwards it to its child, runs
//! `close_session` and writes the wtmp logout, and the client sees the
//! connection closed. The session's other processes get SIGHUP and SIGTERM
//! (and SIGCONT, so a stopped one can act on them): commands of sessions
//! without a terminal run in a session of their own and would survive the
//! connection. Whatever still runs after a grace period gets SIGKILL.
//!
//! Who is the session's: the monitor's descendants (the tree), plus the
//! processes of the login's audit session (`/proc/PID/sessionid`, set by
//! `pam_loginuid`), which catches commands that daemonized away from the
//! tree. The audit session is only trusted when it is the login's own: set,
//! owned by the user's login uid, not shared with the monitor's parent and
//! holding no process older than the monitor. The audit session survives
//! `sudo` and `su`, so it also holds what an admin started as root from the
//! session (`sudo service x restart`): a process that left the tree is ended
//! only when it runs as the session's user (real uid). In the tree, a process
//! of another user (`sudo -s`) gets only what a logout gives it, the hangup
//! (SIGHUP + SIGCONT), never SIGTERM or SIGKILL.
//!
//! Every signal goes through a pidfd opened while the process's start time
//! matched, so a PID reused by another process is never signalled (with a
//! fallback to `kill` right after a start time check on kernels before 5.3).

use crate::procfs::{self, ProcTable};
use crate::state::SessionKey;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long the session's processes get to exit before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// sshd's `[priv]` monitor, which recorded the session.
    Monitor,
    /// Another sshd process of the connection (the `@pts`/`@notty` child).
    Sshd,
    /// A process of the session's user: hangup, SIGTERM, then SIGKILL.
    User,
    /// A process in the monitor's tree running as another user (`sudo -s`):
    /// the hangup a logout gives it (SIGHUP + SIGCONT), nothing more.
    HangupOnly,
}

/// Where a process was found, for [`role_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A descendant of the monitor.
    Tree,
    /// Outside the tree, in the login's audit session.
    AuditSession,
}

/// What a process found at `place`, running with real uid `real_uid`
/// (`None`: unreadable, it is gone), gets when session of `uid` ends.
/// `None`: it is left alone.
pub fn role_for(place: Place, sshd_child: bool, real_uid: Option<u32>, uid: u32) -> Option<Role> {
    let own = real_uid == Some(uid);
    match place {
        Place::Tree if sshd_child => Some(Role::Sshd),
        Place::Tree if own => Some(Role::User),
        Place::Tree => real_uid.map(|_| Role::HangupOnly),
        Place::AuditSession => own.then_some(Role::User),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Victim {
    pub pid: i32,
    pub start: u64,
    pub role: Role,
}

/// The processes of one session, collected before signalling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub victims: Vec<Victim>,
    /// The login's audit session, when it can be trusted.
    pub audit: Option<u32>,
}

/// Collects the processes of session `key` (of user `uid`); `None` when the
/// monitor is gone or its PID belongs to another process now.
pub fn collect(table: &ProcTable, key: SessionKey, uid: u32) -> Option<Collected> {
    table.get(key.pid).filter(|p| p.start == key.start)?;
    if !procfs::is_same_process(key.pid, key.start) {
        return None;
    }
    let protected = protected_pids(table, key.pid);
    // sshd's own by what they are (executable and place), never by a name
    // the user can write.
    let sshd: HashSet<i32> = crate::activity::sshd_processes(table, key).iter().map(|(pid, _)| *pid).collect();
    let mut seen = HashSet::new();
    let mut victims = vec![Victim { pid: key.pid, start: key.start, role: Role::Monitor }];
    seen.insert(key.pid);
    for p in table.descendants(key.pid) {
        if !protected.contains(&p.pid) && seen.insert(p.pid) {
            let sshd_child = sshd.contains(&p.pid);
            if let Some(role) = role_for(Place::Tree, sshd_child, procfs::real_uid(p.pid), uid) {
                victims.push(Victim { pid: p.pid, start: p.start, role });
            }
        }
    }
    let audit = trusted_audit_session(table, key, uid);
    if let Some(sid) = audit {
        for pid in table.audit_members(sid) {
            if protected.contains(pid) || seen.contains(pid) || procfs::login_uid(*pid) != Some(uid) {
                continue;
            }
            let Some(p) = table.get(*pid) else { continue };
            if let Some(role) = role_for(Place::AuditSession, false, procfs::real_uid(p.pid), uid) {
                seen.insert(p.pid);
                victims.push(Victim { pid: p.pid, start: p.start, role });
            }
        }
    }
    Some(Collected { victims, audit })
}

/// Processes of audit session `sid` (of user `uid`) not in `known`: those
/// forked while the session was being ended.
pub fn stragglers(table: &ProcTable, sid: u32, uid: u32, monitor_start: u64, known: &[Victim]) -> Vec<Victim> {
    let protected = protected_pids(table, std::process::id() as i32);
    let known: HashSet<(i32, u64)> = known.iter().map(|v| (v.pid, v.start)).collect();
    table
        .audit_members(sid)
        .iter()
        .filter_map(|pid| table.get(*pid))
        .filter(|p| p.start >= monitor_start && !known.contains(&(p.pid, p.start)) && !protected.contains(&p.pid))
        .filter(|p| procfs::login_uid(p.pid) == Some(uid))
        .filter(|p| role_for(Place::AuditSession, false, procfs::real_uid(p.pid), uid) == Some(Role::User))
        .map(|p| Victim { pid: p.pid, start: p.start, role: Role::User })
        .collect()
}

/// PID 1, this process and its ancestors, and the ancestors of `pid` (the
/// sshd listener): never signalled.
fn protected_pids(table: &ProcTable, pid: i32) -> HashSet<i32> {
    let mut out = HashSet::from([0, 1]);
    for start in [std::process::id() as i32, pid] {
        let mut cur = if start == pid { table.get(pid).map(|p| p.ppid) } else { Some(start) };
        while let Some(p) = cur.filter(|p| *p > 1 && out.insert(*p)) {
            cur = table.get(p).map(|s| s.ppid);
        }
    }
    out
}

fn trusted_audit_session(table: &ProcTable, key: SessionKey, uid: u32) -> Option<u32> {
    let sid = procfs::audit_session(key.pid)?;
    if procfs::login_uid(key.pid) != Some(uid) {
        return None;
    }
    let parent = table.get(key.pid)?.ppid;
    if parent > 1 && procfs::audit_session(parent) == Some(sid) {
        return None;
    }
    // Inherited from elsewhere if anything in it is older than the login.
    let older = table.audit_members(sid).iter().any(|p| table.get(*p).is_some_and(|s| s.start < key.start));
    (!older).then_some(sid)
}

/// A handle on one process that cannot be confused with a later process of
/// the same PID.
#[derive(Debug)]
struct Handle {
    victim: Victim,
    pidfd: Option<OwnedFd>,
    gone: bool,
}

impl Handle {
    /// `None` when the process is not (any more) the one collected.
    fn open(victim: Victim) -> Option<Handle> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, victim.pid, 0) } as i32;
        let pidfd = if fd >= 0 {
            // SAFETY: the kernel just gave us this descriptor.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            None
        } else {
            return None; // gone
        };
        // Checked after opening: if the start time matches now, the pidfd
        // holds the process that started then.
        procfs::is_same_process(victim.pid, victim.start).then_some(Handle { victim, pidfd, gone: false })
    }

    fn signal(&mut self, sig: libc::c_int) -> bool {
        if self.gone {
            return false;
        }
        let ok = match &self.pidfd {
            // SAFETY: valid pidfd; a null siginfo means "as kill(2) would".
            Some(fd) => unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
                    == 0
            },
            None => {
                procfs::is_same_process(self.victim.pid, self.victim.start)
                    // SAFETY: plain syscall.
                    && unsafe { libc::kill(self.victim.pid, sig) } == 0
            }
        };
        if !ok {
            self.gone = true;
        }
        ok
    }

    fn alive(&mut self) -> bool {
        if self.gone {
            return false;
        }
        let alive = match &self.pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, no waiting. Readable = exited.
                let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
                ready == 0 && procfs::is_same_process(self.victim.pid, self.victim.start)
            }
            None => procfs::is_same_process(self.victim.pid, self.victim.start),
        };
        self.gone = !alive;
        alive
    }
}

/// A session being ended: signalled, waiting for its processes to exit.
#[derive(Debug)]
pub struct Termination {
    pub key: SessionKey,
    pub uid: u32,
    pub audit: Option<u32>,
    pub started: Instant,
    handles: Vec<Handle>,
    /// Victims that received SIGKILL.
    pub killed: Vec<Victim>,
}

impl Termination {
    /// Signals the collected processes politely: SIGTERM to the monitor,
    /// SIGHUP + SIGTERM + SIGCONT to the user's processes (sshd's other
    /// processes hear from the monitor).
    pub fn begin(key: SessionKey, uid: u32, collected: Collected) -> Termination {
        let mut handles: Vec<Handle> = collected.victims.into_iter().filter_map(Handle::open).collect();
        for h in &mut handles {
            match h.victim.role {
                Role::Monitor => {
                    h.signal(libc::SIGTERM);
                }
                Role::User => {
                    for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGCONT] {
                        h.signal(sig);
                    }
                }
                Role::HangupOnly => {
                    for sig in [libc::SIGHUP, libc::SIGCONT] {
                        h.signal(sig);
                    }
                }
                Role::Sshd => {}
            }
        }
        Termination { key, uid, audit: collected.audit, started: Instant::now(), handles, killed: Vec::new() }
    }

    /// The collected processes still running.
    pub fn survivors(&mut self) -> Vec<Victim> {
        self.handles
            .iter_mut()
            .filter(|h| h.victim.role != Role::HangupOnly)
            .filter_map(|h| h.alive().then_some(h.victim))
            .collect()
    }

    /// SIGKILL for every survivor, and for processes of the login's audit
    /// session that were forked meanwhile. Returns who got it.
    pub fn kill_survivors(&mut self) -> Vec<Victim> {
        let mut killed = Vec::new();
        let uid = self.uid;
        for h in &mut self.handles {
            if h.victim.role == Role::HangupOnly {
                continue;
            }
            // A user's process that became another user's meanwhile (it ran
            // `sudo`) is not the session's any more.
            if h.victim.role == Role::User && procfs::real_uid(h.victim.pid) != Some(uid) {
                continue;
            }
            if h.alive() && h.signal(libc::SIGKILL) {
                killed.push(h.victim);
            }
        }
        if let Some(sid) = self.audit {
            let known: Vec<Victim> = self.handles.iter().map(|h| h.victim).collect();
            for _ in 0..3 {
                let table = ProcTable::scan();
                let late: Vec<Handle> = stragglers(&table, sid, self.uid, self.key.start, &known)
                    .into_iter()
                    .filter_map(Handle::open)
                    .collect();
                if late.is_empty() {
                    break;
                }
                for mut h in late {
                    if h.signal(libc::SIGKILL) {
                        killed.push(h.victim);
                    }
                }
            }
        }
        self.killed.extend(&killed);
        killed
    }

    /// Waits until every process exited or `grace` passed since `begin`, then
    /// kills the survivors. Returns who had to be killed.
    pub fn finish(&mut self, grace: Duration) -> Vec<Victim> {
        let deadline = self.started + grace;
        while !self.survivors().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_survivors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn spawn(script: &str) -> std::process::Child {
        Command::new("sh").args(["-c", script]).stdout(Stdio::null()).spawn().unwrap()
    }

    #[test]
    fn wrong_start_time_is_never_signalled() {
        let mut child = spawn("sleep 30");
        let pid = child.id() as i32;
        let start = procfs::start_time(pid).unwrap();
        let mut t = Termination::begin(
            SessionKey { pid, start: start + 1 },
            0,
            Collected { victims: vec![Victim { pid, start: start + 1, role: Role::User }], audit: None },
        );
        assert!(t.survivors().is_empty());
        assert!(t.kill_survivors().is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "the process was signalled");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn polite_then_kill() {
        // A "monitor" that exits on SIGTERM, with a child that ignores it.
        let mut monitor = spawn("trap '' HUP; sh -c 'trap \"\" TERM HUP; sleep 30' & sleep 30");
        let pid = monitor.id() as i32;
        let key = SessionKey { pid, start: procfs::start_time(pid).unwrap() };
        // Until the tree is complete: the monitor, its child shell, and the
        // two sleeps (polled: a loaded machine forks slowly).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut collected = collect(&ProcTable::scan(), key, 0).unwrap();
        while collected.victims.len() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            collected = collect(&ProcTable::scan(), key, 0).unwrap();
        }
        assert!(collected.victims.len() >= 4, "{collected:?}");
        assert_eq!(collected.victims[0].role, Role::Monitor);
        assert!(!collected.victims.iter().any(|v| v.pid == std::process::id() as i32));
        let mut t = Termination::begin(key, 0, collected);
        monitor.wait().unwrap();
        let killed = t.finish(Duration::from_millis(500));
        assert!(!killed.is_empty(), "the TERM-ignoring child should have needed SIGKILL");
        let deadline = Instant::now() + Duration::from_secs(2);
        while !t.survivors().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(t.survivors(), vec![]);
    }

    #[test]
    fn only_the_sessions_user_is_ended_outside_the_tree() {
        use Place::*;
        // The tree: the user's processes fully, another user's only hung up.
        assert_eq!(role_for(Tree, true, Some(1000), 1000), Some(Role::Sshd));
        assert_eq!(role_for(Tree, false, Some(1000), 1000), Some(Role::User));
        assert_eq!(role_for(Tree, false, Some(0), 1000), Some(Role::HangupOnly));
        assert_eq!(role_for(Tree, false, None, 1000), None);
        // Outside it: a root daemon started with sudo survives.
        assert_eq!(role_for(AuditSession, false, Some(1000), 1000), Some(Role::User));
        assert_eq!(role_for(AuditSession, false, Some(0), 1000), None);
        assert_eq!(role_for(AuditSession, false, Some(1001), 1000), None);
        assert_eq!(role_for(AuditSession, false, None, 1000), None);
        // A root login's own processes are the session's.
        assert_eq!(role_for(AuditSession, false, Some(0), 0), Some(Role::User));
    }

    #[test]
    fn real_uid_is_the_first_uid_field() {
        let status = "Name:\tsudo\nUmask:\t0022\nUid:\t0\t1000\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(procfs::parse_real_uid(status), Some(0));
        assert_eq!(procfs::parse_real_uid("Uid:\t1000\t0\t0\t0\n"), Some(1000));
        assert_eq!(procfs::parse_real_uid("Name: x\n"), None);
        // SAFETY: getuid cannot fail.
        assert_eq!(procfs::real_uid(std::process::id() as i32), Some(unsafe { libc::getuid() }));
    }

    #[test]
    fn another_users_process_in_the_tree_only_gets_the_hangup() {
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return; // needs root to run a child as another user
        }
        // A "monitor" of root's session with a child running as nobody that
        // ignores SIGHUP: like a `nohup` under `sudo -u`, a logout leaves it.
        let mut monitor = spawn(
            "setpriv --reuid 65534 --regid 65534 --clear-groups sh -c 'trap \"\" HUP; exec sleep 30' & \
             trap '' HUP; sleep 30",
        );
        let pid = monitor.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let other = loop {
            let table = ProcTable::scan();
            let found = table.descendants(pid).iter().map(|p| p.pid).find(|p| procfs::real_uid(*p) == Some(65534));
            if let Some(found) = found.filter(|p| procfs::read_stat(*p).is_some_and(|s| s.comm == "sleep")) {
                break found;
            }
            assert!(Instant::now() < deadline, "the nobody child did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let key = SessionKey { pid, start: procfs::start_time(pid).unwrap() };
        let collected = collect(&ProcTable::scan(), key, 0).unwrap();
        let role = collected.victims.iter().find(|v| v.pid == other).map(|v| v.role);
        assert_eq!(role, Some(Role::HangupOnly), "{collected:?}");
        let other_start = procfs::start_time(other).unwrap();
        let mut t = Termination::begin(key, 0, collected);
        monitor.wait().unwrap();
        t.finish(Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(100));
        assert!(procfs::is_same_process(other, other_start), "another user's process was killed");
        // SAFETY: plain kill of the process we checked just now.
        unsafe { libc::kill(other, libc::SIGKILL) };
    }

    #[test]
    fn gone_monitor_collects_nothing() {
        let table = ProcTable::scan();
        let me = SessionKey::current_process().unwrap();
        assert_eq!(collect(&table, SessionKey { pid: me.pid, start: me.start + 1 }, 0), None);
    }
}
