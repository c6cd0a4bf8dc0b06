//! The login path inside a real libpam: bounded whatever the state, never
//! refusing or crashing, and the module as sshd loads it (no libgcc_s).

use sshidle::state::{SessionRecord, StateDir};
use sshidle_tests::pam::{PAM_IGNORE, PAM_SUCCESS};
use sshidle_tests::*;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Stack {
    conf: PamConfDir,
    service: String,
    state_dir: PathBuf,
    args: Vec<String>,
}

impl Stack {
    /// A service whose session stack is pam_permit + the module (optional,
    /// as installed) with `extra` arguments.
    fn new(tag: &str, extra: &str) -> Stack {
        let conf = PamConfDir::new(tag);
        let state_dir = conf.dir.join("state");
        let policy = conf.dir.join("sshidle.conf");
        std::fs::write(&policy, "* idle=15m\n").unwrap();
        let service = unique_name("lp");
        let args: Vec<String> =
            format!("conf={} state={} services={service} {extra}", policy.display(), state_dir.display())
                .split_whitespace()
                .map(String::from)
                .collect();
        conf.service(
            &service,
            &format!(
                "session required pam_permit.so\nsession optional {} {}\n",
                module_path().display(),
                args.join(" ")
            ),
        );
        Stack { conf, service, state_dir, args }
    }

    /// One connection's cycle; returns how long it took and open's result.
    fn cycle(&self) -> (Duration, i32) {
        let started = Instant::now();
        let mut pam = PamSession::start(self.conf.path(), &self.service, "root", Some("198.51.100.4")).unwrap();
        let open = pam.open_session();
        assert_eq!(pam.close_session(), PAM_SUCCESS);
        drop(pam);
        (started.elapsed(), open)
    }

    fn sessions(&self) -> Vec<SessionRecord> {
        StateDir::open(&self.state_dir, false).and_then(|s| s.load()).map(|s| s.sessions).unwrap_or_default()
    }
}

#[test]
fn module_does_not_need_libgcc_s_and_still_catches_panics() {
    let ldd = Command::new("ldd").arg(module_path()).output().expect("ldd");
    let deps = String::from_utf8_lossy(&ldd.stdout);
    assert!(ldd.status.success(), "{deps}");
    assert!(!deps.contains("libgcc_s"), "the module depends on libgcc_s again:\n{deps}");
    // A panic inside a hook (debug builds have a trigger) unwinds through the
    // module's own static unwinder to its catch_unwind: PAM_IGNORE, no abort.
    let stack = Stack::new("unwind", "debug_test_panic");
    let mut pam = PamSession::start(stack.conf.path(), &stack.service, "root", None).unwrap();
    let args: Vec<&str> = stack.args.iter().map(String::as_str).collect();
    assert_eq!(pam.call_hook(&module_path(), "pam_sm_open_session", &args), PAM_IGNORE);
    assert_eq!(pam.call_hook(&module_path(), "pam_sm_close_session", &args), PAM_IGNORE);
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    assert_eq!(pam.close_session(), PAM_SUCCESS);
}

/// pam-module/layout.ld: what loading, unloading and the hooks run sits in
/// the module's `.text.hot`, next to `.init` (a connection then faults in 1-2
/// of its 64-KB text windows, not all 6). Fails when the script is no longer
/// passed or its patterns stop matching this toolchain's symbol names.
#[test]
fn the_code_a_login_runs_is_laid_out_together() {
    let tool = |name: &str, args: &[&str]| {
        let out = Command::new(name).args(args).arg(module_path()).output().expect(name);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sections = tool("readelf", &["-SW"]);
    let hot = sections
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == ".text.hot")?;
            let hex = |i: usize| u64::from_str_radix(fields.get(at + i)?, 16).ok();
            let start = hex(2)?;
            Some(start..start + hex(4)?)
        })
        .unwrap_or_else(|| panic!("no .text.hot section:\n{sections}"));
    let symbols = tool("nm", &[]);
    for wanted in [
        "frame_dummy",
        "ARGV_INIT_ARRAY",
        "pam_sm_open_session",
        "pam_sm_close_session",
        "open_session_on",
        "deny_tiocsti",
        "File6open_c",
        "try_statx",
    ] {
        // "ADDRESS TYPE NAME"; code only (t/T), not e.g. frame_dummy's init_array entry.
        let at = symbols
            .lines()
            .filter_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [address, "t" | "T", name] if name.contains(wanted) => u64::from_str_radix(address, 16).ok(),
                _ => None,
            })
            .next()
            .unwrap_or_else(|| panic!("no symbol {wanted} in the module"));
        assert!(hot.contains(&at), "{wanted} at {at:#x}, outside .text.hot {hot:x?}");
    }
}

#[test]
fn a_stuck_lock_holder_delays_a_login_by_a_small_bound_only() {
    if !e2e_enabled() {
        return;
    }
    let stack = Stack::new("stuck", "");
    let (_, open) = stack.cycle();
    assert_eq!(open, PAM_SUCCESS);
    // A writer stuck while holding the state lock.
    let holder = std::fs::File::open(&stack.state_dir).unwrap();
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    let (took, open) = stack.cycle();
    assert_eq!(open, PAM_SUCCESS, "the login was refused");
    // The module waits 50 ms at open (close has nothing to remove then); a
    // generous sanity bound above.
    assert!(took >= Duration::from_millis(50), "took {took:?}: the lock was not waited for at all");
    assert!(took < Duration::from_secs(1), "a login waited {took:?} for a stuck lock");
    drop(holder);
    let (took, _) = stack.cycle();
    assert!(took < Duration::from_millis(500), "{took:?}");
}

/// 100,000 recorded sessions and a journal overdue for compaction: a login
/// appends and goes (it used to compact the journal inside sshd: 0.84 s).
#[test]
fn a_login_never_compacts_a_large_journal() {
    if !e2e_enabled() {
        return;
    }
    let stack = Stack::new("large", "");
    let state = StateDir::open(&stack.state_dir, true).unwrap();
    for i in 0..100_000 {
        state.record_open(&stranger_record(i, "x:1: *")).unwrap();
    }
    assert!(state.compaction_due(), "the journal should be overdue for compaction");
    let before = std::fs::metadata(state.file_path()).unwrap().len();
    let (took, open) = stack.cycle();
    assert_eq!(open, PAM_SUCCESS);
    let after = std::fs::metadata(state.file_path()).unwrap().len();
    assert!(after > before, "the login compacted the journal ({before} -> {after} bytes)");
    // A compaction of it takes 0.84 s here; a login about 1 ms, and this
    // first one loads the module.
    assert!(took < Duration::from_millis(400), "a login with 100k records took {took:?}");
    assert_eq!(stack.sessions().len(), 100_000);
}
