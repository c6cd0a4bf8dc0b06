//! Properties of the readers of untrusted input (the policy file, durations,
//! the state journal, utmp, `/proc/PID/stat`), each a function of arbitrary
//! bytes that panics when a property fails. The fuzz targets in `fuzz/` call
//! them with libFuzzer's inputs; the tests below with seeded random ones, so
//! that `make test` on stable runs them too.

use crate::policy::Policy;
use crate::{duration, procfs, state, utmp};
use std::path::Path;

/// Parsing any text never panics; every error names a line of the text;
/// resolving any user name never panics.
pub fn policy(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let policy = Policy::parse(Path::new("/fuzz/sshidle.conf"), &text);
    let lines = text.lines().count();
    for error in &policy.errors {
        let shown = error.to_string();
        assert!(shown.starts_with("/fuzz/sshidle.conf:"), "{shown}");
    }
    assert!(policy.rules.len() <= lines, "{} rules from {lines} lines", policy.rules.len());
    for user in ["alice", "", "*", "a*b"] {
        let _ = policy.resolve(user, "10.0.0.1", &mut || vec!["admins".into(), "*".into()]);
    }
}

/// A duration that parses prints as one that parses back to it.
pub fn duration(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(secs) = duration::parse_duration(&text) {
        let shown = duration::format_duration(secs);
        assert_eq!(duration::parse_duration(&shown).ok(), Some(secs), "{text:?} -> {secs} -> {shown:?}");
    }
}

/// Any journal replays without panicking, to sessions with distinct keys
/// that survive compaction exactly.
pub fn journal(bytes: &[u8]) {
    let snapshot = state::parse_journal(bytes);
    let mut keys: Vec<_> = snapshot.sessions.iter().map(|r| r.key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), snapshot.sessions.len(), "duplicate keys");
    let again = state::parse_journal(&state::encode_sessions(&snapshot.sessions));
    assert_eq!(again.sessions, snapshot.sessions, "compaction changed the sessions");
    assert_eq!(again.bad_lines, 0);
}

/// Any utmp contents parse without panicking, at most one entry a record.
pub fn utmp(bytes: &[u8]) {
    let entries = utmp::parse(bytes);
    assert!(entries.len() <= bytes.len() / std::mem::size_of::<libc::utmpx>());
    assert!(entries.iter().all(|e| e.pid > 0));
}

/// Any `/proc/PID/stat` or `status` text parses without panicking; the
/// command name (which the process chooses) cannot shift the fields.
pub fn proc_stat(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let parsed = procfs::parse_stat(42, &text);
    for n in 0..60 {
        let _ = procfs::stat_field(&text, n);
    }
    let _ = procfs::parse_real_uid(&text);
    // The same name inside a well-formed line leaves the fields in place.
    let comm: String = text.chars().filter(|c| *c != '\0').take(64).collect();
    let line = format!("42 ({comm}) S 7 42 42 34816 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 123456 0");
    let p = procfs::parse_stat(42, &line).expect("well-formed line");
    assert_eq!((p.ppid, p.tty_nr, p.start), (7, 34816, 123456), "{line:?}");
    if let Some(p) = parsed {
        assert_eq!(p.pid, 42);
    }
}

/// Deterministic xorshift input generator for the stable counterparts.
#[doc(hidden)]
pub struct Inputs {
    seed: u64,
}

impl Inputs {
    pub fn new(seed: u64) -> Inputs {
        Inputs { seed: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Up to `max` bytes, drawn from `alphabet` (any byte when empty).
    pub fn bytes(&mut self, max: usize, alphabet: &[u8]) -> Vec<u8> {
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len)
            .map(|_| {
                let r = self.next();
                if alphabet.is_empty() {
                    r as u8
                } else {
                    alphabet[(r % alphabet.len() as u64) as usize]
                }
            })
            .collect()
    }

    /// Pieces of `words` glued with bytes of `alphabet`: inputs near the
    /// grammar, which pure noise rarely reaches.
    pub fn near(&mut self, words: &[&str], pieces: usize, alphabet: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = (self.next() % (pieces as u64 + 1)) as usize;
        for _ in 0..n {
            if self.next() % 3 == 0 {
                out.extend(self.bytes(3, alphabet));
            } else {
                out.extend_from_slice(words[(self.next() % words.len() as u64) as usize].as_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUNDS: usize = 4000;

    #[test]
    fn policy_properties() {
        let mut inputs = Inputs::new(1);
        let words = [
            "user ",
            "group ",
            "* ",
            "idle=",
            "warn=",
            "hard=",
            "off",
            "15m",
            "1h30m",
            "\n",
            "#",
            " ",
            "\t",
            "keepalive ",
            "interval=",
            "count-max=",
            "metrics ",
            "a*",
            "?",
            "9999999999999999999999",
            "unused=",
        ];
        for _ in 0..ROUNDS {
            policy(&inputs.near(&words, 30, b" \n=*?x0"));
            policy(&inputs.bytes(200, &[]));
        }
    }

    #[test]
    fn duration_properties() {
        let mut inputs = Inputs::new(2);
        let words = ["1", "0", "30", "s", "m", "h", "d", "w", "S", "H", " ", "18446744073709551615", "99999999999"];
        for _ in 0..ROUNDS {
            duration(&inputs.near(&words, 8, b"0123456789smhdw "));
            duration(&inputs.bytes(20, &[]));
        }
    }

    #[test]
    fn journal_properties() {
        let mut inputs = Inputs::new(3);
        let header = String::from_utf8(state::encode_sessions(&[])).unwrap();
        let words = [
            "\nopen\tpid=1\tstart=2\tuid=0\tuser=a\tlogin=5\tidle=60\twarn=-\thard=-",
            "\tpid=2",
            "\tstart=3",
            "\nclose\tpid=1\tstart=2",
            "\nwarned\tpid=1\tstart=2\tat=9",
            "\trhost=%0A",
            "\trule=x",
            "\n",
            "\t",
            "=",
            "%",
            "%4",
            "\tuser=b",
            "\tidle=-1",
            "\twarned=7",
        ];
        for _ in 0..ROUNDS {
            let mut bytes = header.clone().into_bytes();
            bytes.extend(inputs.near(&words, 20, b"\t\n=%0123456789"));
            journal(&bytes);
            journal(&inputs.bytes(100, &[]));
        }
    }

    #[test]
    fn utmp_properties() {
        let mut inputs = Inputs::new(4);
        let size = std::mem::size_of::<libc::utmpx>();
        for _ in 0..500 {
            utmp(&inputs.bytes(3 * size + 7, &[]));
            // Mostly USER_PROCESS (7) records with random contents.
            utmp(&inputs.bytes(2 * size, &[7, 0, 1, 0xff]));
        }
    }

    #[test]
    fn proc_stat_properties() {
        let mut inputs = Inputs::new(5);
        let words = ["42 ", "(", ")", " S ", "Uid:\t", "0\t", "1000", "\n", " ", "-1", "99999999999999999999"];
        for _ in 0..ROUNDS {
            proc_stat(&inputs.near(&words, 40, b"() 0123456789"));
            proc_stat(&inputs.bytes(100, &[]));
        }
    }
}
