//! Many sshd-like processes opening and closing sessions at once through
//! libpam, and writers killed with SIGKILL mid-update.

use sshidle::state::StateDir;
use sshidle_tests::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn driver() -> std::path::PathBuf {
    target_dir().join("pam_driver")
}

struct Setup {
    conf: PamConfDir,
    service: String,
    state_dir: std::path::PathBuf,
}

fn setup(tag: &str) -> Setup {
    let conf = PamConfDir::new(tag);
    let state_dir = conf.dir.join("state");
    let policy = conf.dir.join("sshidle.conf");
    std::fs::write(&policy, "* idle=15m\n").unwrap();
    let service = unique_name("load");
    conf.service(
        &service,
        &format!(
            "session required {} conf={} state={} services={service}\n",
            module_path().display(),
            policy.display(),
            state_dir.display()
        ),
    );
    Setup { conf, service, state_dir }
}

/// Kills the kept-open children on drop, even when the test fails.
struct Holders(Vec<i32>);

impl Drop for Holders {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, libc::SIGKILL);
        }
    }
}

#[test]
fn fifty_processes_times_forty_sessions() {
    const DRIVERS: usize = 50;
    const SESSIONS: usize = 40;
    const KEEP_EVERY: usize = 10;
    let s = setup("load");
    let mut children: Vec<Child> = (0..DRIVERS)
        .map(|_| {
            Command::new(driver())
                .arg(s.conf.path())
                .args([&s.service, "root", &SESSIONS.to_string(), &KEEP_EVERY.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("pam_driver")
        })
        .collect();
    let mut holders = Holders(Vec::new());
    let mut failures = Vec::new();
    for child in &mut children {
        let reader = BufReader::new(child.stdout.take().unwrap());
        for line in reader.lines().take(SESSIONS / KEEP_EVERY) {
            let line = line.unwrap();
            match line.parse::<i32>() {
                Ok(pid) => holders.0.push(pid),
                Err(_) => failures.push(line),
            }
        }
    }
    for child in &mut children {
        assert!(child.wait().unwrap().success(), "a PAM call failed");
    }
    assert!(failures.is_empty(), "{failures:?}");
    let state = StateDir::open(&s.state_dir, false).unwrap();
    let snapshot = state.load().unwrap();
    assert!(!snapshot.corrupt);
    assert_eq!(snapshot.bad_lines, 0);
    let recorded: Vec<i32> = snapshot.sessions.iter().map(|r| r.key.pid).collect();
    let unique: BTreeSet<i32> = recorded.iter().copied().collect();
    assert_eq!(unique.len(), recorded.len(), "duplicated records");
    let expected: BTreeSet<i32> = holders.0.iter().copied().collect();
    assert_eq!(expected.len(), DRIVERS * SESSIONS / KEEP_EVERY);
    assert_eq!(unique, expected, "state must hold exactly the sessions still open");
}

#[test]
fn writers_killed_mid_update_leave_a_readable_file() {
    let s = setup("kill9");
    let state = StateDir::open(&s.state_dir, true).unwrap();
    for round in 0..6 {
        let mut children: Vec<Child> = (0..8)
            .map(|_| {
                Command::new(driver())
                    .arg(s.conf.path())
                    .args([&s.service, "root", "100000", "0"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("pam_driver")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + 37 * round));
        for child in &mut children {
            // The driver and whatever child it is forking right now (stopped
            // first: it forks no other while its children are looked for).
            signal(child.id() as i32, libc::SIGSTOP);
            for pid in descendants(child.id() as i32) {
                signal(pid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let snapshot = state.load().unwrap();
        assert!(!snapshot.corrupt, "round {round}: header lost");
        // A single write(2) is never torn by SIGKILL: every line parses.
        assert_eq!(snapshot.bad_lines, 0, "round {round}");
        let text = std::fs::read(state.file_path()).unwrap();
        assert!(text.is_empty() || text.ends_with(b"\n"));
        assert!(std::fs::read_dir(&s.state_dir)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("corrupt")));
    }
    // Killed sessions left records; their processes are gone, so a
    // compaction that checks liveness drops them all.
    state.compact(&|r| r.key.is_alive()).unwrap();
    assert_eq!(state.load().unwrap().sessions, vec![]);
}
