//! Where the system records logins and logouts, for tests that check that
//! an ended session's logout was recorded as a normal logout is: wtmp (sshd
//! writes it itself, Debian 12) or wtmpdb (through `pam_wtmpdb`, Debian 13
//! and later, which have neither utmp nor `last`).

use std::path::{Path, PathBuf};
use std::process::Command;

const WTMP: &str = "/var/log/wtmp";

/// The PAM module directories of the supported systems.
const PAM_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/security",
    "/lib/x86_64-linux-gnu/security",
    "/usr/lib64/security",
    "/usr/lib/security",
];

/// `pam_wtmpdb.so` when the system has it: a private PAM stack then records
/// its logins in wtmpdb, as the system's own stack does.
pub fn pam_wtmpdb() -> Option<PathBuf> {
    PAM_DIRS.iter().map(|dir| Path::new(dir).join("pam_wtmpdb.so")).find(|p| p.is_file())
}

/// The session line a private PAM stack needs for its logins to be recorded
/// where the system records them (empty where sshd writes wtmp itself).
pub fn pam_session_line() -> String {
    pam_wtmpdb().map(|m| format!("session  optional {}", m.display())).unwrap_or_default()
}

/// Checks that `user`'s last login from `host` is recorded with its logout:
/// in wtmp (`last`) where the system has one, else in wtmpdb (`wtmpdb
/// last`). Lines from other hosts (tmux records its panes as from
/// "tmux(PID)") are not looked at.
pub fn assert_logout_recorded(user: &str, host: &str) {
    let (what, out) = if Path::new(WTMP).exists() && pam_wtmpdb().is_none() {
        ("wtmp", Command::new("last").args(["-w", "-f", WTMP, user]).output().expect("last"))
    } else {
        ("wtmpdb", Command::new("wtmpdb").args(["last", "-w", user]).output().expect("wtmpdb (package wtmpdb)"))
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(user) && l.contains(host))
        .unwrap_or_else(|| panic!("no {what} entry for {user} from {host}:\n{text}"));
    assert!(!line.contains("still logged in") && !line.contains("no logout"), "no logout in {what}: {line}");
}
