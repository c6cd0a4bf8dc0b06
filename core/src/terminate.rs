//! Ending a session cleanly, and only the session.
//!
//! sshd must see an ordinary end of the connection, as at a logout or when
//! the client goes away: a signal to sshd's `[priv]` monitor or to its user
//! child makes OpenSSH 10 log `error: mm_reap: child terminated by signal
//! 15`, and on 9.2 the monitor then logs nothing of the session's close. So:
//!
//! 1. **Hangup.** The session's processes get the hangup a logout gives them
//!    (SIGHUP + SIGCONT): in a session with a terminal, what the kernel
//!    signals when the terminal hangs up (the session leader, the foreground
//!    process group: a shell then hangs up its own jobs); every process
//!    without a terminal (a channel's command, which sshd alone would leave
//!    running, and its descendants). With `end=session`, every process of the
//!    user's also gets SIGTERM, wherever it went (below).
//! 2. **Close the connection.** A shell that exits makes sshd close its
//!    channel and a responsive client disconnect by itself. Whatever still
//!    holds the connection [`CLOSE_AFTER`] later (a command that ignores the
//!    hangup, a client that does not answer, a ControlMaster kept open) has
//!    its TCP connection shut down for reading (`shutdown(2)`, `SHUT_RD`, on
//!    sshd's socket, taken with `pidfd_getfd(2)`): sshd reads the end of the
//!    stream as when the client closes it, logs `Connection closed by ...`
//!    at INFO, closes the connection and exits with a status, and the
//!    monitor runs `close_session` and writes the logout. The client sees
//!    the connection closed by the remote host. Until sshd's processes have
//!    exited they may still start a channel's command (an exec request read
//!    before the end of the stream, a ControlMaster's new channel): the tree
//!    is read again at every step, and once they have exited, a command
//!    they forked after the last reading, reparented since, is found by what
//!    sshd gave it (see [`LateWatch`]) and hung up too.
//! 3. **Last resort.** A monitor still running [`GRACE`] after the hangup
//!    (no pidfds, `pidfd_getfd` refused) gets SIGTERM, which it forwards to
//!    its child; at twice the grace, SIGKILL. Both are logged as warnings.
//!
//! Who is the session's: the monitor's descendants (the tree). With
//! `end=session` also the processes of the login's audit session
//! (`/proc/PID/sessionid`, set by `pam_loginuid`), which catches what
//! daemonized away from the tree (nohup, setsid, tmux and screen servers).
//! The audit session is only trusted when it is the login's own: set, owned
//! by the user's login uid, not shared with the monitor's parent and holding
//! no process older than the monitor. The audit session survives `sudo` and
//! `su`, so it also holds what an admin started as root from the session
//! (`sudo service x restart`): a process that left the tree is ended only
//! when it runs as the session's user (real uid). In the tree, a process of
//! another user (`sudo -s`) gets only what a logout gives it, the hangup,
//! never SIGTERM or SIGKILL.
//!
//! Every signal goes through a pidfd opened while the process's start time
//! matched, so a PID reused by another process is never signalled (with a
//! fallback to `kill` right after a start time check on kernels before 5.3).

use crate::policy::End;
use crate::procfs::{self, ProcStat, ProcTable};
use crate::state::SessionKey;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long the session's processes get to exit before the last resort.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long after the hangup sshd's connection is closed, if it is still
/// open: time for a shell that exited to close its channel and for the
/// client to disconnect by itself, as at a logout.
pub const CLOSE_AFTER: Duration = Duration::from_millis(300);

/// How long a channel's command that sshd forked as its processes exited
/// is given to exec its command (and show the environment sshd gave it).
/// A fork execs at once, but on a loaded machine 250 ms was seen not to be
/// enough (the unit test of the sweep failed twice at load 4); the wait
/// ends as soon as every suspect has exec'ed.
const EXEC_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// sshd's `[priv]` monitor, which recorded the session.
    Monitor,
    /// Another sshd process of the connection (the `@pts`/`@notty` child).
    Sshd,
    /// A process of the session's user: the hangup; with `end=session` also
    /// SIGTERM, then SIGKILL.
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
    /// The login's audit session, when it can be trusted and `end=session`
    /// asks for what left the tree.
    pub audit: Option<u32>,
    /// When the processes were read (clock ticks since boot): a command sshd
    /// starts for a channel later is looked for (see [`LateWatch`]).
    pub scanned: u64,
}

/// Collects the processes of session `key` (of user `uid`) that ending it
/// with `end` reaches; `None` when the monitor is gone or its PID belongs to
/// another process now.
pub fn collect(table: &ProcTable, key: SessionKey, uid: u32, end: End) -> Option<Collected> {
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
    // What left the tree is the session's only for end=session: a logout
    // leaves it running.
    let audit = if end == End::Session { trusted_audit_session(table, key, uid) } else { None };
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
    Some(Collected { victims, audit, scanned: table.scanned() })
}

/// What tells a command that sshd started for one of the session's channels
/// after the session's processes were last read. sshd's user child serves
/// the exec requests it has read, or that still arrive, until it reads the
/// end of the connection; the command it forks runs in a session of its own
/// and, once that child exits a moment later, is reparented: nothing in the
/// tree leads to it any more, and a logout's hangup would miss it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateWatch {
    /// Clock ticks since boot when the tree was last read whole while sshd's
    /// processes ran throughout: what they forked later started no earlier.
    pub since: u64,
    /// sshd's processes of the connection (PID, start): the monitor and its
    /// user child, which fork the channels' commands.
    pub sshd: Vec<(i32, u64)>,
    /// Where an orphan of theirs goes: PID 1 and the monitor's ancestors (a
    /// subreaper among them).
    pub reapers: HashSet<i32>,
    /// The login's audit session (the monitor's; `None` when unset): what
    /// sshd starts for the login inherits it.
    pub audit: Option<u32>,
    /// The connection (client, server), which sshd writes into the
    /// commands' `SSH_CONNECTION`, when its socket could be read.
    pub connection: Option<(SocketAddr, SocketAddr)>,
    /// sshd's executable: a command not exec'ed yet still runs it, in sshd's
    /// own environment.
    pub sshd_exe: Option<(u64, u64)>,
}

/// What is read of a process that may be such a late command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suspect {
    /// It leads a session of its own, as sshd makes a channel's command.
    pub session_leader: bool,
    pub real_uid: Option<u32>,
    pub audit: Option<u32>,
    pub exe: Option<(u64, u64)>,
    pub ssh_connection: Option<String>,
}

/// What a suspect is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A command sshd started for one of the session's channels.
    Late,
    /// It may be one but has not exec'ed its command yet (it still runs
    /// sshd's executable, in sshd's environment): look again in a moment.
    NotYet,
    /// Not the session's.
    No,
}

/// The processes that may be commands sshd's processes of `watch` started
/// for the session's channels since `watch.since`, once those processes
/// have exited (or got SIGKILL): started since then, reparented to where
/// sshd's orphans go, or still a child of sshd. A job that a shell of the
/// session setsid'ed before is older; one it setsid'ed meanwhile is a child
/// of that shell, unless it left the shell too.
pub fn late_suspects<'a>(table: &'a ProcTable, watch: &LateWatch) -> Vec<&'a ProcStat> {
    let sshd_child = |p: &ProcStat| {
        watch.sshd.iter().any(|(pid, start)| *pid == p.ppid && table.get(*pid).is_some_and(|s| s.start == *start))
    };
    let mut out: Vec<&ProcStat> = table
        .procs
        .values()
        .filter(|p| p.start >= watch.since)
        .filter(|p| watch.reapers.contains(&p.ppid) || sshd_child(p))
        .filter(|p| table.in_own_namespace(p.pid))
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Whether a suspect of [`late_suspects`] is a channel's command of the
/// session of user `uid`: running as the user, in the login's audit session,
/// a session leader with the `SSH_CONNECTION` sshd gives the commands of
/// this connection (proof that sshd started it for this connection, not
/// another login's or a daemon; none can be had when the connection was not
/// read). One still running sshd's executable has not exec'ed its command
/// (nor, maybe, called `setsid`) yet.
pub fn judge_late(s: &Suspect, watch: &LateWatch, uid: u32) -> Verdict {
    if s.real_uid != Some(uid) || s.audit != watch.audit {
        return Verdict::No;
    }
    let Some(connection) = &watch.connection else { return Verdict::No };
    match &s.ssh_connection {
        _ if s.exe.is_some() && s.exe == watch.sshd_exe => Verdict::NotYet,
        Some(env) if s.session_leader && names_connection(env, connection) => Verdict::Late,
        _ => Verdict::No,
    }
}

/// Whether `SSH_CONNECTION` text ("CLIENT_IP CLIENT_PORT SERVER_IP
/// SERVER_PORT", as sshd writes it) names `connection` (client, server).
fn names_connection(env: &str, connection: &(SocketAddr, SocketAddr)) -> bool {
    let addr = |ip: &str, port: &str| -> Option<SocketAddr> {
        let ip: IpAddr = ip.split('%').next()?.parse().ok()?;
        Some(SocketAddr::new(ip.to_canonical(), port.parse().ok()?))
    };
    let canonical = |a: &SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    match env.split_ascii_whitespace().collect::<Vec<_>>()[..] {
        [client_ip, client_port, server_ip, server_port] => {
            addr(client_ip, client_port) == Some(canonical(&connection.0))
                && addr(server_ip, server_port) == Some(canonical(&connection.1))
        }
        _ => false,
    }
}

/// PID 1 and the ancestors of `pid`.
fn ancestors(pid: i32) -> HashSet<i32> {
    let mut out = HashSet::from([1]);
    let mut cur = procfs::parent_pid(pid);
    while let Some(p) = cur.filter(|p| *p > 1 && out.insert(*p)) {
        cur = procfs::parent_pid(p);
    }
    out
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

/// Whether a terminal's hangup reaches a process whose `/proc/PID/stat` is
/// `stat`: without a controlling terminal (a command of a channel without
/// one, or what dropped its terminal), or as what the kernel signals when a
/// terminal hangs up: its session leader and its foreground process group.
/// A background job hears of it from its shell, as at a logout.
pub fn hangup_reaches(pid: i32, stat: &str) -> bool {
    let field = |n| procfs::stat_field(stat, n).and_then(|v| v.parse::<i64>().ok());
    let (Some(pgrp), Some(session), Some(tty_nr), Some(tpgid)) = (field(5), field(6), field(7), field(8)) else {
        return false;
    };
    tty_nr == 0 || session == i64::from(pid) || (tpgid > 0 && pgrp == tpgid)
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

    /// What the hangup gives this process under `end`: SIGHUP + SIGCONT
    /// where a terminal's hangup reaches (`end=logout`), SIGHUP + SIGTERM +
    /// SIGCONT to every process of the user's (`end=session`); sshd's own
    /// processes nothing (they see its effects, or the connection closed).
    fn hang_up(&mut self, end: End) {
        let signals: &[libc::c_int] = match (self.victim.role, end) {
            (Role::Monitor | Role::Sshd, _) => &[],
            (Role::User, End::Session) => &[libc::SIGHUP, libc::SIGTERM, libc::SIGCONT],
            (Role::HangupOnly, End::Session) => &[libc::SIGHUP, libc::SIGCONT],
            (Role::User | Role::HangupOnly, End::Logout) if self.hangup_reaches() => &[libc::SIGHUP, libc::SIGCONT],
            (Role::User | Role::HangupOnly, End::Logout) => &[],
        };
        for sig in signals {
            self.signal(*sig);
        }
    }

    /// Whether the hangup of a terminal reaches this process (read now,
    /// while the pidfd holds it).
    fn hangup_reaches(&self) -> bool {
        let pid = self.victim.pid;
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| hangup_reaches(pid, &stat))
    }

    /// Shuts down the connected TCP sockets this process holds (for sshd's
    /// monitor: its connection). Returns how many.
    fn shut_down_connections(&self) -> Result<usize, String> {
        let mut shut = 0;
        for fd in self.connected_sockets()? {
            // Only the reading side: sshd reads the end of the stream,
            // as when the client closes it, and closes the connection
            // itself (the client then gets its FIN). Shutting the
            // writing side too would have the client close first, and
            // sshd could read a reset instead.
            // SAFETY: a valid socket descriptor.
            if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) } == 0 {
                shut += 1;
            }
        }
        Ok(shut)
    }

    /// The connection of this process (for sshd's monitor: the client's),
    /// as (peer, own address), without touching it.
    fn connection(&self) -> Option<(SocketAddr, SocketAddr)> {
        let sockets = self.connected_sockets().ok()?;
        let fd = sockets.first()?;
        Some((socket_address(fd, libc::getpeername)?, socket_address(fd, libc::getsockname)?))
    }

    /// The connected TCP sockets this process holds, taken through its
    /// pidfd; an error when there is none.
    fn connected_sockets(&self) -> Result<Vec<OwnedFd>, String> {
        let Some(pidfd) = self.pidfd.as_ref().filter(|_| !self.gone) else {
            return Err("no pidfd for the process".to_string());
        };
        let dir = format!("/proc/{}/fd", self.victim.pid);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
        let mut sockets = Vec::new();
        let mut refused = None;
        // One socket may stand at several descriptors: each is shut once.
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let Some(target_fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if !target.as_os_str().as_encoded_bytes().starts_with(b"socket:") || !seen.insert(target) {
                continue;
            }
            // SAFETY: plain syscall; returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
            if fd < 0 {
                refused = Some(std::io::Error::last_os_error());
                continue;
            }
            // SAFETY: a descriptor just given to us, closed on drop.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            if is_connected_tcp(&fd) {
                sockets.push(fd);
            }
        }
        match (sockets.is_empty(), refused) {
            (true, Some(err)) => Err(format!("pidfd_getfd: {err}")),
            (true, None) => Err("no connected TCP socket".to_string()),
            (false, _) => Ok(sockets),
        }
    }
}

/// The address `get` (`getpeername` or `getsockname`) gives a socket.
fn socket_address(
    fd: &OwnedFd,
    get: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: plain data.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a valid fd and a buffer with its length.
    if unsafe { get(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, which the storage holds.
            let a = unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, which the storage holds.
            let a = unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::new(Ipv6Addr::from(a.sin6_addr.s6_addr).into(), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// A connected TCP socket (IPv4 or IPv6, stream, with a peer).
fn is_connected_tcp(fd: &OwnedFd) -> bool {
    let opt = |name: libc::c_int| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid fd and an int-sized buffer with its length.
        let rc = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, name, (&mut value as *mut libc::c_int).cast(), &mut len)
        };
        (rc == 0).then_some(value)
    };
    let inet = matches!(opt(libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6));
    if !inet || opt(libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return false;
    }
    // SAFETY: plain data.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a valid fd and a buffer with its length.
    unsafe { libc::getpeername(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) == 0 }
}

/// Where ending a session has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Hung up; waiting for sshd to close the connection by itself.
    HungUp,
    /// sshd's connection was shut down (or that was tried).
    Closed,
    /// The last resort was used: SIGTERM to the monitor (and, for
    /// `end=session`, SIGKILL to the user's survivors).
    Forced,
    /// Everything that had to exit did, or was killed.
    Done,
}

/// What happened while ending a session, to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The connection was shut down (this many sockets).
    ConnectionClosed(usize),
    /// It could not be, and why: the last resort will follow.
    CloseFailed(String),
    /// sshd's monitor was still there after the grace: it got SIGTERM.
    MonitorTerminated,
    /// sshd's processes were still there after twice the grace: SIGKILL.
    SshdKilled(Vec<Victim>),
    /// Processes that joined the session's tree while it was being ended (a
    /// channel's command sshd started meanwhile) got the hangup too.
    JoinedHungUp(Vec<Victim>),
    /// Commands that sshd started for the session's channels as its
    /// processes exited, found outside the tree, got the hangup too.
    LateCommandsHungUp(Vec<Victim>),
}

/// A session being ended: hung up, its connection closed, waiting for its
/// processes to exit.
#[derive(Debug)]
pub struct Termination {
    pub key: SessionKey,
    pub uid: u32,
    pub end: End,
    pub audit: Option<u32>,
    pub started: Instant,
    handles: Vec<Handle>,
    stage: Stage,
    /// Victims of the user's that received SIGKILL (`end=session`).
    pub killed: Vec<Victim>,
    /// What happened beyond the hangup, oldest first; [`Termination::take_notes`].
    notes: Vec<Note>,
    /// What tells a command sshd starts for a channel while the session is
    /// being ended; looked for once sshd's processes have exited.
    late: LateWatch,
    swept: bool,
}

impl Termination {
    /// Hangs the session up: SIGHUP + SIGCONT to what a terminal's hangup
    /// reaches (see [`hangup_reaches`]); with `end=session`, SIGHUP +
    /// SIGTERM + SIGCONT to every process of the user's. sshd's own
    /// processes get no signal: they see the hangup's effects, or the
    /// connection closed.
    pub fn begin(key: SessionKey, uid: u32, end: End, collected: Collected) -> Termination {
        let mut handles: Vec<Handle> = collected.victims.into_iter().filter_map(Handle::open).collect();
        for h in &mut handles {
            h.hang_up(end);
        }
        let sshd = |h: &&Handle| matches!(h.victim.role, Role::Monitor | Role::Sshd);
        let late = LateWatch {
            since: collected.scanned,
            sshd: handles.iter().filter(sshd).map(|h| (h.victim.pid, h.victim.start)).collect(),
            reapers: ancestors(key.pid),
            audit: procfs::audit_session(key.pid),
            connection: handles.iter().find(|h| h.victim.role == Role::Monitor).and_then(Handle::connection),
            sshd_exe: procfs::exe_id(key.pid),
        };
        Termination {
            key,
            uid,
            end,
            audit: collected.audit,
            started: Instant::now(),
            handles,
            stage: Stage::HungUp,
            killed: Vec::new(),
            notes: Vec::new(),
            late,
            swept: false,
        }
    }

    /// The collected processes still running that have to exit: sshd's
    /// always, the user's only with `end=session`.
    pub fn survivors(&mut self) -> Vec<Victim> {
        let end = self.end;
        let must = |role| match role {
            Role::Monitor | Role::Sshd => true,
            Role::User => end == End::Session,
            Role::HangupOnly => false,
        };
        self.handles.iter_mut().filter(|h| must(h.victim.role)).filter_map(|h| h.alive().then_some(h.victim)).collect()
    }

    fn monitor_alive(&mut self) -> bool {
        self.handles.iter_mut().any(|h| h.victim.role == Role::Monitor && h.alive())
    }

    /// How many of sshd's processes of the connection (which may start a
    /// channel's command) still run, and how many there were.
    fn sshd_alive(&mut self) -> (usize, usize) {
        let sshd = self.handles.iter_mut().filter(|h| matches!(h.victim.role, Role::Monitor | Role::Sshd));
        sshd.fold((0, 0), |(alive, all), h| (alive + usize::from(h.alive()), all + 1))
    }

    /// When the next stage is due, if nothing exits before.
    pub fn next_due(&self) -> Instant {
        let after = match self.stage {
            Stage::HungUp => CLOSE_AFTER,
            Stage::Closed => GRACE,
            Stage::Forced | Stage::Done => 2 * GRACE,
        };
        self.started + after
    }

    /// What happened since the last call (connection closed, last resorts).
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Moves the ending on as time passes (`force`: as if the grace were
    /// over now). Returns true once it is done.
    pub fn step(&mut self, force: bool) -> bool {
        let elapsed = self.started.elapsed();
        if self.stage < Stage::Closed && (force || elapsed >= CLOSE_AFTER) {
            self.close_connection();
        }
        self.hang_up_late_comers();
        if self.survivors().is_empty() {
            self.done();
            return true;
        }
        if self.stage < Stage::Forced && (force || elapsed >= GRACE) {
            self.stage = Stage::Forced;
            self.last_resort();
            if !force && self.survivors().is_empty() {
                self.done();
                return true;
            }
            if !force {
                return false;
            }
        }
        if force || elapsed >= 2 * GRACE {
            self.kill_survivors();
            self.hang_up_late_commands();
            self.stage = Stage::Done;
            return true;
        }
        false
    }

    /// Everything that had to exit did. With `end=session`, what the
    /// session's user forked in the login's audit session while it was being
    /// ended (a process started by a dying shell) gets SIGKILL too.
    fn done(&mut self) {
        self.hang_up_late_commands();
        if self.end == End::Session && self.stage != Stage::Done {
            let killed = self.kill_users();
            self.killed.extend(killed);
        }
        self.stage = Stage::Done;
    }

    /// Shuts down sshd's connection if its monitor still runs.
    fn close_connection(&mut self) {
        self.stage = Stage::Closed;
        let Some(monitor) = self.handles.iter_mut().find(|h| h.victim.role == Role::Monitor) else { return };
        if !monitor.alive() {
            return;
        }
        let note = match monitor.shut_down_connections() {
            Ok(n) => Note::ConnectionClosed(n),
            Err(why) => Note::CloseFailed(why),
        };
        self.notes.push(note);
    }

    /// Hangs up what joined the session's tree since the hangup: a channel's
    /// command that sshd started meanwhile (it runs in a session of its own
    /// and would outlive the connection). Looked for at every step while
    /// sshd's processes run: what they fork after the last reading is looked
    /// for when they have exited.
    fn hang_up_late_comers(&mut self) {
        if self.sshd_alive().0 == 0 {
            return;
        }
        let table = ProcTable::scan();
        let Some(now) = collect(&table, self.key, self.uid, self.end) else { return };
        let late: Vec<Victim> = now.victims.into_iter().filter(|v| !self.knows(v)).collect();
        let hung_up = self.hang_up_all(late);
        if !hung_up.is_empty() {
            self.notes.push(Note::JoinedHungUp(hung_up));
        }
        // Read whole while every one of sshd's processes ran: what they fork
        // later starts after the reading began. Once one has exited, what it
        // forked since the last such reading may have left the tree.
        let (alive, all) = self.sshd_alive();
        if alive == all {
            self.late.since = table.scanned();
        }
    }

    /// Once sshd's processes have exited (or got SIGKILL): hangs up the
    /// commands they started for the session's channels after the tree was
    /// last read whole, and what those started (see [`late_suspects`]).
    fn hang_up_late_commands(&mut self) {
        // Without the connection nothing proves a command its own.
        if std::mem::replace(&mut self.swept, true) || self.late.connection.is_none() {
            return;
        }
        let table = ProcTable::scan();
        let read = |pid| Suspect {
            session_leader: procfs::read_stat(pid).is_some_and(|p| p.session == pid),
            real_uid: procfs::real_uid(pid),
            audit: procfs::audit_session(pid),
            exe: procfs::exe_id(pid),
            ssh_connection: procfs::ssh_connection(pid),
        };
        let mut suspects = late_suspects(&table, &self.late);
        let mut commands = Vec::new();
        // A fork's exec follows at once: a bounded wait for it.
        let deadline = Instant::now() + EXEC_WAIT;
        while !suspects.is_empty() {
            let mut not_yet = Vec::new();
            for p in suspects {
                match judge_late(&read(p.pid), &self.late, self.uid) {
                    Verdict::Late if procfs::is_same_process(p.pid, p.start) => commands.push(p),
                    Verdict::NotYet => not_yet.push(p),
                    _ => {}
                }
            }
            suspects = not_yet;
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut late = Vec::new();
        for command in commands {
            late.push(Victim { pid: command.pid, start: command.start, role: Role::User });
            for p in table.descendants(command.pid) {
                if let Some(role) = role_for(Place::Tree, false, procfs::real_uid(p.pid), self.uid) {
                    late.push(Victim { pid: p.pid, start: p.start, role });
                }
            }
        }
        late.retain(|v| !self.knows(v));
        let hung_up = self.hang_up_all(late);
        if !hung_up.is_empty() {
            self.notes.push(Note::LateCommandsHungUp(hung_up));
        }
    }

    fn knows(&self, v: &Victim) -> bool {
        self.handles.iter().any(|h| h.victim.pid == v.pid && h.victim.start == v.start)
    }

    /// The hangup for processes found late; returns those reached.
    fn hang_up_all(&mut self, victims: Vec<Victim>) -> Vec<Victim> {
        let mut hung_up = Vec::new();
        for mut h in victims.into_iter().filter_map(Handle::open) {
            h.hang_up(self.end);
            hung_up.push(h.victim);
            self.handles.push(h);
        }
        hung_up
    }

    /// SIGTERM to a monitor still running; with `end=session`, SIGKILL to
    /// the user's processes still running.
    fn last_resort(&mut self) {
        if self.monitor_alive() {
            if let Some(h) = self.handles.iter_mut().find(|h| h.victim.role == Role::Monitor) {
                if h.signal(libc::SIGTERM) {
                    self.notes.push(Note::MonitorTerminated);
                }
            }
        }
        if self.end == End::Session {
            let killed = self.kill_users();
            self.killed.extend(killed);
        }
    }

    /// SIGKILL for every process of the user's still running (`end=session`),
    /// and for processes of the login's audit session forked meanwhile.
    fn kill_users(&mut self) -> Vec<Victim> {
        let mut killed = Vec::new();
        let uid = self.uid;
        for h in &mut self.handles {
            // A user's process that became another user's meanwhile (it ran
            // `sudo`) is not the session's any more.
            if h.victim.role != Role::User || procfs::real_uid(h.victim.pid) != Some(uid) {
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
        killed
    }

    /// SIGKILL for everything that had to exit and still runs. Returns who
    /// got it.
    pub fn kill_survivors(&mut self) -> Vec<Victim> {
        let mut killed = Vec::new();
        if self.end == End::Session {
            killed = self.kill_users();
            self.killed.extend(&killed);
        }
        let mut sshd = Vec::new();
        for h in &mut self.handles {
            if matches!(h.victim.role, Role::Monitor | Role::Sshd) && h.alive() && h.signal(libc::SIGKILL) {
                sshd.push(h.victim);
            }
        }
        if !sshd.is_empty() {
            killed.extend(&sshd);
            self.notes.push(Note::SshdKilled(sshd));
        }
        killed
    }

    /// Steps until everything that had to exit did, or `grace` has passed
    /// twice (the last resort at `grace`). Returns the user's processes that
    /// had to be killed.
    pub fn finish(&mut self, grace: Duration) -> Vec<Victim> {
        let start = Instant::now();
        loop {
            let waited = start.elapsed();
            // `grace` may be shorter than GRACE (tests): forced at its end.
            if self.step(waited >= 2 * grace) {
                break;
            }
            if waited >= grace && self.stage < Stage::Forced {
                self.stage = Stage::Forced;
                self.last_resort();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.killed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// `sh -c script` with the dispositions a session's processes start
    /// with: a runner started under `nohup` would hand down SIGHUP ignored,
    /// which `sh` cannot undo.
    fn spawn(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("sh");
        command.args(["-c", script]).stdout(Stdio::null());
        // SAFETY: async-signal-safe calls only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                for signal in [libc::SIGHUP, libc::SIGTERM] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                Ok(())
            })
        };
        command.spawn().unwrap()
    }

    #[test]
    fn wrong_start_time_is_never_signalled() {
        let mut child = spawn("sleep 30");
        let pid = child.id() as i32;
        let start = procfs::start_time(pid).unwrap();
        let mut t = Termination::begin(
            SessionKey { pid, start: start + 1 },
            0,
            End::Session,
            Collected { victims: vec![Victim { pid, start: start + 1, role: Role::User }], audit: None, scanned: 0 },
        );
        assert!(t.survivors().is_empty());
        assert!(t.kill_survivors().is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "the process was signalled");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Polls `collect` until the tree under `pid` holds `count` processes
    /// (a loaded machine forks slowly).
    fn collect_all(pid: i32, count: usize, end: End) -> (SessionKey, Collected) {
        let key = SessionKey { pid, start: procfs::start_time(pid).unwrap() };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut collected = collect(&ProcTable::scan(), key, 0, end).unwrap();
        while collected.victims.len() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            collected = collect(&ProcTable::scan(), key, 0, end).unwrap();
        }
        assert!(collected.victims.len() >= count, "{collected:?}");
        (key, collected)
    }

    #[test]
    fn session_end_terms_then_kills_and_the_monitor_gets_sigterm_only_as_a_last_resort() {
        // A "monitor" with no connection to close, with a child that ignores
        // SIGHUP and SIGTERM.
        let mut monitor = spawn("sh -c 'trap \"\" TERM HUP; sleep 30' & exec sleep 30");
        let (key, collected) = collect_all(monitor.id() as i32, 3, End::Session);
        assert_eq!(collected.victims[0].role, Role::Monitor);
        assert!(!collected.victims.iter().any(|v| v.pid == std::process::id() as i32));
        let mut t = Termination::begin(key, 0, End::Session, collected);
        std::thread::sleep(Duration::from_millis(200));
        let early = monitor.try_wait().unwrap();
        assert!(early.is_none(), "the monitor was signalled at the hangup: {early:?}");
        let killed = t.finish(Duration::from_millis(500));
        assert!(!killed.is_empty(), "the TERM-ignoring child should have needed SIGKILL");
        let notes = t.take_notes();
        assert!(matches!(notes[0], Note::CloseFailed(_)), "{notes:?}");
        assert!(notes.contains(&Note::MonitorTerminated), "{notes:?}");
        monitor.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !t.survivors().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(t.survivors(), vec![]);
    }

    #[test]
    // clippy 1.85 (Debian 13's) misses the wait below, past the closure's panic.
    #[allow(clippy::zombie_processes)]
    fn logout_hangs_up_and_leaves_what_ignores_it_running() {
        // Two commands without a terminal under the "monitor": one dies of
        // SIGHUP, one ignores it (nohup).
        let mut monitor = spawn("sleep 31 & sh -c 'trap \"\" HUP; exec sleep 32' & wait");
        // Both are looked for as what they exec'ed: a child still `sh` may not
        // have set its trap yet.
        let pid_of = |name: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let table = ProcTable::scan();
                let found = table.descendants(monitor.id() as i32).iter().map(|p| p.pid).find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.replace('\0', " ").trim() == name)
                });
                match found {
                    Some(pid) => return pid,
                    None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    None => panic!("no {name}"),
                }
            }
        };
        let (plain, deaf) = (pid_of("sleep 31"), pid_of("sleep 32"));
        let (key, collected) = collect_all(monitor.id() as i32, 3, End::Logout);
        assert_eq!(collected.audit, None, "a logout never reaches outside the tree");
        let deaf_start = procfs::start_time(deaf).unwrap();
        let plain_start = procfs::start_time(plain).unwrap();
        let mut t = Termination::begin(key, 0, End::Logout, collected);
        // The "monitor" has no connection to close: SIGTERM at the grace's end.
        assert!(t.finish(Duration::from_millis(300)).is_empty(), "nothing is killed at a logout");
        monitor.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while procfs::is_same_process(plain, plain_start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!procfs::is_same_process(plain, plain_start), "the plain command was not hung up");
        assert!(procfs::is_same_process(deaf, deaf_start), "the process that ignores SIGHUP was ended");
        // SAFETY: plain kill of the process checked just now.
        unsafe { libc::kill(deaf, libc::SIGKILL) };
    }

    #[test]
    fn what_joins_the_tree_after_the_hangup_is_hung_up_when_the_connection_closes() {
        // The "monitor" starts a command only after the hangup reached its
        // first child, as sshd may start a channel's command while the
        // session is being ended.
        let mut monitor = spawn("sleep 0.2; sleep 34 & wait");
        let (key, collected) = collect_all(monitor.id() as i32, 2, End::Logout);
        let mut t = Termination::begin(key, 0, End::Logout, collected);
        let deadline = Instant::now() + Duration::from_secs(10);
        let late = loop {
            let table = ProcTable::scan();
            let found = table.descendants(key.pid).iter().map(|p| p.pid).find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.replace('\0', " ").trim() == "sleep 34")
            });
            match found {
                Some(pid) => break pid,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => panic!("no late command"),
            }
        };
        let late_start = procfs::start_time(late).unwrap();
        t.finish(Duration::from_millis(600));
        let _ = monitor.wait();
        let gone = wait_gone(late, late_start);
        if !gone {
            // SAFETY: plain kill of the process checked just now.
            unsafe { libc::kill(late, libc::SIGKILL) };
        }
        assert!(gone, "a command started after the hangup outlived the session");
    }

    /// The process running exactly `cmdline`, if one does.
    fn running(cmdline: &str) -> Option<(i32, u64)> {
        procfs::all_pids().into_iter().find_map(|pid| {
            let title = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (title.replace('\0', " ").trim() == cmdline).then_some((pid, procfs::start_time(pid)?))
        })
    }

    #[test]
    // As above: clippy 1.85 may miss the wait past a panic.
    #[allow(clippy::zombie_processes)]
    fn a_command_sshd_starts_after_the_last_reading_is_hung_up_once_sshd_has_exited() {
        use std::net::{TcpListener, TcpStream};
        use std::os::unix::process::CommandExt;
        // The connection: the "monitor" holds the server's end of it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let server_port = listener.local_addr().unwrap().port();
        let ours = format!("127.0.0.1 {} 127.0.0.1 {server_port}", client.local_addr().unwrap().port());
        let other = format!("127.0.0.1 1 127.0.0.1 {server_port}");
        // Its "user child" (sshd's executable, here sh, as sshd's is) reads
        // the connection to its end, then serves a request read before: a
        // channel's command in a session of its own, forked after the tree
        // was read again, and at once exits, as sshd does. Another login's
        // command starts then too; the session's shell setsid'ed a job
        // before, which left the tree: a logout leaves both running.
        let script = format!(
            "(SSH_CONNECTION='{ours}' setsid sleep 352 &); \
             sh -c \"while read -r _; do :; done <&3; (trap '' HUP; exec sleep 0.2); \
             SSH_CONNECTION='{ours}' setsid sleep 351 & SSH_CONNECTION='{other}' setsid sleep 353 &\" & wait"
        );
        let fd = server.as_raw_fd();
        let mut command = Command::new("sh");
        command.args(["-c", &script]).stdout(Stdio::null());
        // SAFETY: async-signal-safe calls only, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for signal in [libc::SIGHUP, libc::SIGTERM] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                match libc::dup2(fd, 3) {
                    3 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            })
        };
        let mut monitor = command.spawn().unwrap();
        drop(server);
        let pid = monitor.id() as i32;
        // The early job has left the tree (its subshell exited).
        let deadline = Instant::now() + Duration::from_secs(10);
        let early = loop {
            let found = running("sleep 352")
                .filter(|(job, _)| !ProcTable::scan().descendants(pid).iter().any(|p| p.pid == *job));
            match found {
                Some(found) => break found,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => panic!("the early job did not start"),
            }
        };
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let key = SessionKey { pid, start: procfs::start_time(pid).unwrap() };
        let collected = collect(&ProcTable::scan(), key, uid, End::Logout).unwrap();
        let mut t = Termination::begin(key, uid, End::Logout, collected);
        assert!(t.late.connection.is_some(), "the connection was not read");
        // The shutdown ends the child's reading; nothing needs SIGTERM.
        assert!(t.finish(Duration::from_secs(5)).is_empty());
        assert!(!t.take_notes().contains(&Note::MonitorTerminated));
        monitor.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while running("sleep 351").is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let late = running("sleep 351");
        let other = running("sleep 353");
        let early_kept = procfs::is_same_process(early.0, early.1);
        for (pid, start) in [late, other, Some(early)].into_iter().flatten() {
            if procfs::is_same_process(pid, start) {
                // SAFETY: plain kill of the process checked just now.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        drop(client);
        assert_eq!(late, None, "a command started after the last reading outlived the session");
        // Proof that the child served the request: the other one runs.
        assert!(other.is_some(), "another login's command started then was ended (or none started)");
        assert!(early_kept, "a job setsid'ed before the end was ended");
    }

    /// Waits up to 2 s for a process to exit.
    fn wait_gone(pid: i32, start: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while procfs::is_same_process(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        !procfs::is_same_process(pid, start)
    }

    #[test]
    fn the_connection_is_shut_down_and_its_holder_exits_unsignalled() {
        use std::io::Read;
        // A "monitor" holding a TCP connection, reading it to its end.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut monitor = Command::new("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec cat <&3 >/dev/null")])
            .spawn()
            .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let pid = monitor.id() as i32;
        // Until bash has exec'ed cat.
        let deadline = Instant::now() + Duration::from_secs(10);
        while procfs::read_stat(pid).is_none_or(|s| s.comm != "cat") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (key, collected) = collect_all(pid, 1, End::Logout);
        let mut t = Termination::begin(key, 0, End::Logout, collected);
        assert!(t.finish(Duration::from_secs(5)).is_empty());
        assert_eq!(t.take_notes(), vec![Note::ConnectionClosed(1)]);
        let status = monitor.wait().unwrap();
        assert!(status.success(), "the holder did not exit by itself: {status:?}");
        // The other end sees the connection closed (FIN, not reset).
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(peer.read(&mut [0u8; 16]).unwrap(), 0);
    }

    #[test]
    fn a_hangup_reaches_the_leader_the_foreground_and_what_has_no_terminal() {
        // pid (comm) state ppid pgrp session tty_nr tpgid ...
        let stat = |pid: i32, pgrp: i32, session: i32, tty: i32, tpgid: i32| {
            format!("{pid} (x y) S 1 {pgrp} {session} {tty} {tpgid} 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0")
        };
        assert!(hangup_reaches(100, &stat(100, 100, 100, 34816, 120)), "session leader");
        assert!(hangup_reaches(120, &stat(120, 120, 100, 34816, 120)), "foreground group");
        assert!(!hangup_reaches(130, &stat(130, 130, 100, 34816, 120)), "background job: its shell hangs it up");
        assert!(hangup_reaches(140, &stat(140, 140, 140, 0, -1)), "no terminal");
        assert!(hangup_reaches(141, &stat(141, 140, 140, 0, -1)), "no terminal");
        assert!(!hangup_reaches(1, "garbage"));
    }

    #[test]
    fn late_commands_are_told_by_age_parent_session_user_and_connection() {
        let proc = |pid: i32, ppid: i32, session: i32, start: u64| ProcStat {
            pid,
            comm: "sleep".into(),
            ppid,
            session,
            tty_nr: 0,
            start,
        };
        let table = ProcTable::from_procs([
            proc(100, 1, 100, 50),    // sshd's monitor (its parent here PID 1)
            proc(101, 100, 101, 51),  // its user child
            proc(200, 1, 200, 120),   // a command reparented to PID 1
            proc(201, 9, 201, 130),   // reparented to a subreaper above the monitor
            proc(202, 101, 202, 140), // still the user child's
            proc(203, 1, 203, 90),    // setsid'ed before the last reading
            proc(204, 1, 205, 150),   // no session leader (yet: judged)
            proc(206, 300, 206, 150), // a child of another process
            proc(207, 77, 207, 150),  // a child of a gone sshd process's PID, reused
            proc(77, 300, 77, 149),
        ]);
        let client: SocketAddr = "192.0.2.7:50123".parse().unwrap();
        let server: SocketAddr = "[::ffff:192.0.2.1]:22".parse().unwrap();
        let watch = LateWatch {
            since: 100,
            sshd: vec![(100, 50), (101, 51), (77, 10)],
            reapers: HashSet::from([1, 9]),
            audit: Some(7),
            connection: Some((client, server)),
            sshd_exe: Some((1, 2)),
        };
        let suspects: Vec<i32> = late_suspects(&table, &watch).iter().map(|p| p.pid).collect();
        assert_eq!(suspects, vec![200, 201, 202, 204]);

        let ours = Suspect {
            session_leader: true,
            real_uid: Some(1000),
            audit: Some(7),
            exe: Some((5, 6)),
            ssh_connection: Some("192.0.2.7 50123 192.0.2.1 22".into()),
        };
        assert_eq!(judge_late(&ours, &watch, 1000), Verdict::Late);
        let with = |f: &dyn Fn(&mut Suspect)| {
            let mut s = ours.clone();
            f(&mut s);
            judge_late(&s, &watch, 1000)
        };
        assert_eq!(with(&|s| s.real_uid = Some(0)), Verdict::No, "another user's (a root daemon)");
        assert_eq!(with(&|s| s.audit = Some(8)), Verdict::No, "another login's");
        assert_eq!(with(&|s| s.audit = None), Verdict::No, "started outside any login");
        assert_eq!(with(&|s| s.ssh_connection = Some("192.0.2.7 50124 192.0.2.1 22".into())), Verdict::No);
        assert_eq!(with(&|s| s.ssh_connection = Some("192.0.2.8 50123 192.0.2.1 22".into())), Verdict::No);
        assert_eq!(with(&|s| s.ssh_connection = Some("192.0.2.7 50123".into())), Verdict::No);
        assert_eq!(with(&|s| s.ssh_connection = None), Verdict::No, "no proof: a daemon");
        assert_eq!(with(&|s| s.session_leader = false), Verdict::No, "a job of the session's");
        // Not exec'ed yet: sshd's executable and environment (and maybe
        // before its setsid).
        assert_eq!(with(&|s| (s.exe, s.ssh_connection) = (Some((1, 2)), None)), Verdict::NotYet);
        assert_eq!(with(&|s| (s.exe, s.session_leader) = (Some((1, 2)), false)), Verdict::NotYet);
        assert_eq!(with(&|s| (s.exe, s.real_uid) = (Some((1, 2)), Some(0))), Verdict::No, "a new connection");
        // A connection that could not be read proves nothing.
        let unread = LateWatch { connection: None, ..watch.clone() };
        assert_eq!(judge_late(&ours, &unread, 1000), Verdict::No);
        // IPv6, a scope, and an IPv4-mapped socket address.
        let v6 = LateWatch {
            connection: Some(("[fe80::1]:40000".parse().unwrap(), "[fe80::2]:2222".parse().unwrap())),
            ..watch.clone()
        };
        let env = |e: &str| Suspect { ssh_connection: Some(e.into()), ..ours.clone() };
        assert_eq!(judge_late(&env("fe80::1%eth0 40000 fe80::2%eth0 2222"), &v6, 1000), Verdict::Late);
        assert_eq!(judge_late(&env("fe80::1 40000 fe80::3 2222"), &v6, 1000), Verdict::No);
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
        let collected = collect(&ProcTable::scan(), key, 0, End::Session).unwrap();
        let role = collected.victims.iter().find(|v| v.pid == other).map(|v| v.role);
        assert_eq!(role, Some(Role::HangupOnly), "{collected:?}");
        let other_start = procfs::start_time(other).unwrap();
        let mut t = Termination::begin(key, 0, End::Session, collected);
        t.finish(Duration::from_millis(300));
        monitor.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(procfs::is_same_process(other, other_start), "another user's process was killed");
        // SAFETY: plain kill of the process we checked just now.
        unsafe { libc::kill(other, libc::SIGKILL) };
    }

    #[test]
    fn gone_monitor_collects_nothing() {
        let table = ProcTable::scan();
        let me = SessionKey::current_process().unwrap();
        assert_eq!(collect(&table, SessionKey { pid: me.pid, start: me.start + 1 }, 0, End::Logout), None);
    }
}
