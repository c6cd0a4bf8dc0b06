//! Finding sshd's connections from the processes themselves, so that a
//! login the module could not record (a full state directory, a lock held
//! too long, an NSS error) is still enforced.
//!
//! A connection's privileged monitor is a root process running sshd's
//! executable (`/proc/PID/exe`, never the process title, which follows
//! whatever name sshd was started by) whose parent is the sshd listener: a
//! root process running sshd's executable whose own parent does not. Its
//! user comes from credentials, not names: the uid of the monitor's sshd
//! child (`sshd: USER@pts/N`, which runs as the user; the pre-authentication
//! child runs as the privilege-separation user and is skipped), else that of
//! a non-sshd child (a root login has no separate sshd child: its shell is
//! the monitor's child), else the login uid `pam_loginuid` gave the monitor
//! when it differs from the listener's. A monitor with none of these has not
//! authenticated yet.
//!
//! Only sshd's processes of the enforcer's own PID namespace count: a host
//! that runs containers sees their processes in its `/proc` too, and their
//! sshds' connections are theirs, under their own policy and their own
//! sshidle (see [`procfs::in_namespace`]).

use crate::procfs::{self, ProcTable};
use crate::state::SessionKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where sshd's executables live (OpenSSH ≤ 9.7: `sshd` alone; 9.8+ also
/// the per-connection `sshd-session`; 10.0+ also the pre-authentication
/// `sshd-auth`, which runs as the privilege-separation user).
pub const SSHD_EXECUTABLES: &[&str] = &[
    "/usr/sbin/sshd",
    "/usr/sbin/sshd-session",
    "/usr/lib/openssh/sshd-session",
    "/usr/libexec/openssh/sshd-session",
    "/usr/libexec/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    "/usr/libexec/openssh/sshd-auth",
    "/usr/libexec/sshd-auth",
];

/// What discovery needs to know about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub start: u64,
    /// Runs one of sshd's executables.
    pub sshd: bool,
    /// Real uid; `None` when unreadable (gone).
    pub uid: Option<u32>,
    pub login_uid: Option<u32>,
    /// In the reader's PID namespace.
    pub own_namespace: bool,
}

/// One authenticated sshd connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The monitor, as the module would have recorded it.
    pub key: SessionKey,
    /// The user's uid.
    pub uid: u32,
}

/// The sshd executables present on this machine, as `/proc/PID/exe` shows
/// them (symlinks such as `/sbin` -> `/usr/sbin` resolved).
pub fn sshd_executables() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = SSHD_EXECUTABLES.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    out.sort();
    out.dedup();
    out
}

/// True when `exe` (a `/proc/PID/exe` target) is one of `sshd`; an
/// executable replaced by an upgrade reads `PATH (deleted)` and still is.
pub fn is_sshd_exe(exe: &Path, sshd: &[PathBuf]) -> bool {
    let text = exe.as_os_str().as_encoded_bytes();
    let text = text.strip_suffix(b" (deleted)").unwrap_or(text);
    sshd.iter().any(|p| p.as_os_str().as_encoded_bytes() == text)
}

/// The authenticated connections among `procs` (pure: see the module doc).
pub fn connections(procs: &HashMap<i32, ProcInfo>, privsep_uid: Option<u32>) -> Vec<Connection> {
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in procs.values() {
        children.entry(p.ppid).or_default().push(p);
    }
    let sshd_root = |p: &ProcInfo| p.sshd && p.uid == Some(0) && p.own_namespace;
    let mut out = Vec::new();
    for m in procs.values().filter(|p| sshd_root(p)) {
        let Some(listener) = procs.get(&m.ppid).filter(|l| sshd_root(l)) else { continue };
        if procs.get(&listener.ppid).is_some_and(|g| g.sshd) {
            continue; // m is a monitor's child, not a monitor
        }
        let kids = children.get(&m.pid).map(Vec::as_slice).unwrap_or_default();
        let by_child =
            kids.iter().filter(|c| c.sshd).filter_map(|c| c.uid).find(|u| *u != 0 && Some(*u) != privsep_uid);
        // Not the privsep user's either: an sshd-auth sshidle does not know
        // by path is still authenticating.
        let by_command = || kids.iter().filter(|c| !c.sshd).filter_map(|c| c.uid).find(|u| Some(*u) != privsep_uid);
        let by_login_uid = || m.login_uid.filter(|u| Some(*u) != listener.login_uid);
        if let Some(uid) = by_child.or_else(by_command).or_else(by_login_uid) {
            out.push(Connection { key: SessionKey { pid: m.pid, start: m.start }, uid });
        }
    }
    out.sort_by_key(|c| c.key);
    out
}

/// The authenticated sshd connections running now.
pub fn scan(table: &ProcTable, privsep_uid: Option<u32>) -> Vec<Connection> {
    let sshd = sshd_executables();
    if sshd.is_empty() {
        return Vec::new();
    }
    let is_sshd: HashMap<i32, bool> =
        table.procs.keys().map(|pid| (*pid, procfs::exe(*pid).is_some_and(|exe| is_sshd_exe(&exe, &sshd)))).collect();
    // Credentials only where they are looked at: sshd's processes and
    // their children.
    let wanted = |p: &procfs::ProcStat| is_sshd[&p.pid] || is_sshd.get(&p.ppid).copied().unwrap_or(false);
    let procs: HashMap<i32, ProcInfo> = table
        .procs
        .values()
        .filter(|p| wanted(p))
        .map(|p| {
            let info = ProcInfo {
                pid: p.pid,
                ppid: p.ppid,
                start: p.start,
                sshd: is_sshd[&p.pid],
                uid: procfs::real_uid(p.pid),
                login_uid: procfs::login_uid(p.pid),
                own_namespace: table.in_own_namespace(p.pid),
            };
            (p.pid, info)
        })
        .collect();
    // A process that changed since the table was read (exited, PID reused)
    // is not a monitor.
    connections(&procs, privsep_uid).into_iter().filter(|c| procfs::is_same_process(c.key.pid, c.key.start)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, sshd: bool, uid: u32, login_uid: Option<u32>) -> ProcInfo {
        ProcInfo { pid, ppid, start: 1000 + pid as u64, sshd, uid: Some(uid), login_uid, own_namespace: true }
    }

    fn in_another_namespace(p: ProcInfo) -> ProcInfo {
        ProcInfo { own_namespace: false, ..p }
    }

    fn found(procs: &[ProcInfo]) -> Vec<(i32, u32)> {
        let map = procs.iter().map(|p| (p.pid, p.clone())).collect();
        connections(&map, Some(101)).into_iter().map(|c| (c.key.pid, c.uid)).collect()
    }

    #[test]
    fn monitors_and_their_users_from_credentials() {
        let procs = [
            p(1, 0, false, 0, None),
            p(10, 1, true, 0, None), // listener
            // alice on a pty: monitor, her sshd child, her shell
            p(20, 10, true, 0, Some(1000)),
            p(21, 20, true, 1000, Some(1000)),
            p(22, 21, false, 1000, Some(1000)),
            // root's shell straight under the monitor
            p(30, 10, true, 0, Some(0)),
            p(31, 30, false, 0, Some(0)),
            // bob with ssh -N and no pam_loginuid: only his sshd child
            p(40, 10, true, 0, None),
            p(41, 40, true, 1001, None),
            // authenticating: only the privsep child
            p(50, 10, true, 0, None),
            p(51, 50, true, 101, None),
            // root with ssh -N: known by the login uid pam_loginuid set
            p(60, 10, true, 0, Some(0)),
            // authenticating on OpenSSH 10: sshd-auth, as the privsep user,
            // also where its path is not one sshidle knows
            p(70, 10, true, 0, None),
            p(71, 70, true, 101, None),
            p(80, 10, true, 0, None),
            p(81, 80, false, 101, None),
        ];
        assert_eq!(found(&procs), vec![(20, 1000), (30, 0), (40, 1001), (60, 0)]);
    }

    #[test]
    fn titles_and_fakes_do_not_make_a_monitor() {
        let procs = [
            p(1, 0, false, 0, None),
            // A user's own sshd (not root) with a "connection".
            p(10, 1, true, 1000, Some(1000)),
            p(11, 10, true, 1000, Some(1000)),
            p(12, 11, true, 1000, Some(1000)),
            // Root's non-sshd process with an sshd-running child.
            p(20, 1, false, 0, None),
            p(21, 20, true, 0, Some(5)),
            // A listener started from a login session shares its login
            // uid: that alone does not make an authenticated connection.
            p(30, 1, true, 0, Some(0)),
            p(31, 30, true, 0, Some(0)),
        ];
        assert_eq!(found(&procs), vec![]);
    }

    #[test]
    fn another_pid_namespaces_connections_are_not_ours() {
        let procs = [
            p(1, 0, false, 0, None),
            // Our listener and alice's connection.
            p(10, 1, true, 0, None),
            p(20, 10, true, 0, Some(1000)),
            p(21, 20, true, 1000, Some(1000)),
            // A container's sshd (its PID 1 is sshd, under a runtime that
            // is ours) with bob's connection, and another whose listener
            // runs under the container's init.
            p(30, 1, false, 0, None),
            in_another_namespace(p(31, 30, true, 0, None)),
            in_another_namespace(p(32, 31, true, 0, Some(1001))),
            in_another_namespace(p(33, 32, true, 1001, Some(1001))),
            in_another_namespace(p(40, 30, false, 0, None)),
            in_another_namespace(p(41, 40, true, 0, None)),
            in_another_namespace(p(42, 41, true, 0, Some(1000))),
            in_another_namespace(p(43, 42, false, 1000, Some(1000))),
        ];
        assert_eq!(found(&procs), vec![(20, 1000)]);
        // Neither counts when only the monitor, or only the listener, is
        // another namespace's.
        let half = [
            p(10, 1, true, 0, None),
            in_another_namespace(p(20, 10, true, 0, Some(1000))),
            p(21, 20, true, 1000, Some(1000)),
            in_another_namespace(p(30, 1, true, 0, None)),
            p(31, 30, true, 0, Some(1000)),
            p(32, 31, true, 1000, Some(1000)),
        ];
        assert_eq!(found(&half), vec![]);
    }

    #[test]
    fn sshd_executables_by_path_even_when_replaced() {
        let sshd = vec![PathBuf::from("/usr/sbin/sshd")];
        assert!(is_sshd_exe(Path::new("/usr/sbin/sshd"), &sshd));
        assert!(is_sshd_exe(Path::new("/usr/sbin/sshd (deleted)"), &sshd));
        assert!(!is_sshd_exe(Path::new("/tmp/sshd"), &sshd));
        assert!(!is_sshd_exe(Path::new("/usr/sbin/sshd-fake"), &sshd));
        assert!(!is_sshd_exe(Path::new("/usr/sbin/sshdx (deleted)"), &sshd));
    }

    #[test]
    fn scan_sees_no_connection_in_a_plain_process_tree() {
        // This test's own processes are not sshd: nothing of ours is found.
        let table = ProcTable::scan();
        let me = std::process::id() as i32;
        assert!(scan(&table, None).iter().all(|c| c.key.pid != me));
    }
}
