//! End to end: promises of the enforcer that had no test of their own.
//! Detached children ended through the login's audit session (with
//! pam_loginuid required in the stack), the policy re-read on SIGHUP, a limit
//! loosened while a warning stands, the policy file deleted, and the warning
//! reaching a tty in raw mode or stopped with ^S. Real sshd, real users, real
//! ptys through tmux.

use sshidle_tests::session::*;
use sshidle_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn pgrep_user(user: &TestUser, pattern: &str) -> Vec<i32> {
    let out = Command::new("pgrep").args(["-u", &user.name, "-f", pattern]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn audit_session(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/sessionid")).ok().map(|s| s.trim().to_string())
}

/// `setsid -f` and `(nohup ... &)`: both leave the monitor's process tree at
/// once (their parent is init), so only the audit session, set by
/// pam_loginuid, ties them to the login. They are ended with it; a process
/// of the same user in another audit session (the innocent bystander) is not.
#[test]
fn detached_children_are_ended_through_the_audit_session() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("pdt", &[]);
    // end=session: what left the tree goes too (end=logout would leave it,
    // as logout_e2e shows).
    let policy = format!("user {} idle=12s warn=4s end=session\n", user.name);
    let sshd = Sshd::start("pdetach", SshdOptions { policy, loginuid_required: true, ..Default::default() });
    sshd.authorize(&user);
    // Started by the test, not by the login: another audit session.
    let mut bystander =
        Command::new("runuser").args(["-u", &user.name, "--", "setsid", "sleep", "1003"]).spawn().expect("runuser");
    let journal = JournalWatch::start(&sshd.state_dir);
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let login = tty_login_timed(&sshd, &user.name, &[]);
    let pid = wait_recorded(&sshd, &user.name, 1)[0]["pid"].as_i64().unwrap() as i32;
    let key = Instant::now();
    login.tmux.type_line("setsid -f sleep 1001; (nohup sleep 1002 >/dev/null 2>&1 &); echo DETACHED''OK");
    assert!(login.tmux.wait_for("DETACHEDOK", Duration::from_secs(10)), "{}", login.tmux.capture());
    let mut detached = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            detached = pgrep_user(&user, "^sleep 100[12]$");
            detached.len() == 2
        }),
        "{:?}",
        user_processes(&user)
    );
    let session = audit_session(pid).expect("monitor's audit session");
    assert_ne!(session, "4294967295", "pam_loginuid (required) set no audit session");
    let tree = descendants(pid);
    for p in &detached {
        assert!(!tree.contains(p), "process {p} is still in the monitor's tree: not a detached child");
        assert_eq!(audit_session(*p).as_deref(), Some(session.as_str()), "process {p} left the audit session");
    }
    assert_ne!(audit_session(bystander.id() as i32).as_deref(), Some(session.as_str()));

    let ended = wait_until(Duration::from_secs(30), || login.tmux.is_dead());
    assert!(ended, "not disconnected:\n{}\n{}", login.tmux.capture(), enforcer.output());
    assert!(key.elapsed() >= Duration::from_secs(12), "ended {:?} after the last key", key.elapsed());
    enforcer.assert_alive();
    let left = || detached.iter().copied().filter(|p| process_alive(*p)).collect::<Vec<_>>();
    assert!(
        wait_until(Duration::from_secs(10), || left().is_empty()),
        "detached children survived their session: {:?}\n{}",
        user_processes(&user),
        enforcer.output()
    );
    journal.assert_closed(pid, Duration::from_secs(5));
    assert!(matches!(bystander.try_wait(), Ok(None)), "the user's process of another audit session was ended");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// SIGHUP re-reads the policy: here the policy is a symlink to a file in a
/// directory the enforcer does not watch, edited in place, so only the
/// signal can make the enforcer see the change.
#[test]
fn sighup_applies_a_policy_change_nothing_else_announced() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("phu", &[]);
    let sshd = Sshd::start("phup", SshdOptions::default());
    sshd.authorize(&user);
    let elsewhere = TempDir::new("phup-target");
    let target = elsewhere.join("sshidle.conf");
    std::fs::write(&target, format!("user {} idle=10m\n", user.name)).unwrap();
    std::fs::remove_file(&sshd.policy_path).unwrap();
    std::os::unix::fs::symlink(&target, &sshd.policy_path).unwrap();
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let mut client = spawn_ssh(&sshd, &user.name, "sleep 1000");
    let row = wait_recorded(&sshd, &user.name, 1).remove(0);
    assert_eq!(row["idle_limit_secs"], 600, "{row}");
    // In place (same inode, same directory entry): nothing the enforcer watches moves.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&target)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, format!("# tightened\nuser {} idle=8s warn=3s\n", user.name).as_bytes())
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        sessions_of(&sshd, &user.name)[0]["idle_limit_secs"],
        600,
        "the change was applied without SIGHUP: this test no longer shows what SIGHUP does"
    );
    signal(enforcer.child.id() as i32, libc::SIGHUP);
    let hup = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name)
            .first()
            .is_some_and(|r| r["idle_limit_secs"] == 8 && r["rule"].as_str().unwrap().contains(":2: user"))),
        "SIGHUP did not apply the new limits: {:?}\n{}",
        sessions_of(&sshd, &user.name),
        enforcer.output()
    );
    enforcer.assert_alive();
    // Quiet since long before: ended once warned (3 s of notice).
    assert!(wait_until(Duration::from_secs(20), || exited(&mut client)), "not ended:\n{}", enforcer.output());
    assert!(hup.elapsed() >= Duration::from_secs(3), "ended {:?} after SIGHUP, without notice", hup.elapsed());
    enforcer.assert_alive();
}

/// A limit loosened while its warning stands: the warned session is not
/// ended at the old deadline, and is not warned again.
#[test]
fn limit_loosened_during_a_warning_keeps_the_session() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("plo", &[]);
    let policy = format!("user {} idle=12s warn=8s\n", user.name);
    let sshd = Sshd::start("ploose", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let login = tty_login_timed(&sshd, &user.name, &[]);
    wait_recorded(&sshd, &user.name, 1);
    assert!(
        login.tmux.wait_for("will be disconnected in", Duration::from_secs(25)),
        "no warning:\n{}\n{}",
        login.tmux.capture(),
        enforcer.output()
    );
    let temp = sshd.policy_path.with_extension("new");
    // A short new warning: a product that kept the standing warning would
    // end the session 5 s after it, inside the window watched below.
    std::fs::write(&temp, format!("user {} idle=10m warn=5s\n", user.name)).unwrap();
    std::fs::rename(&temp, &sshd.policy_path).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name)
            .first()
            .is_some_and(|r| r["idle_limit_secs"] == 600)),
        "new limits not applied: {:?}\n{}",
        sessions_of(&sshd, &user.name),
        enforcer.output()
    );
    // The old deadline: 12 s after the last key, at most 8 s (granularity)
    // + 2 s later. Watch well past it.
    while login.echoed.elapsed() < Duration::from_secs(12 + 8 + 2 + 5) {
        assert!(!login.tmux.is_dead(), "ended at the old limit:\n{}\n{}", login.tmux.capture(), enforcer.output());
        std::thread::sleep(Duration::from_millis(250));
    }
    enforcer.assert_alive();
    assert_eq!(login.tmux.capture().matches("will be disconnected in").count(), 1, "{}", login.tmux.capture());
}

/// The policy file deleted: the enforcer keeps running and open sessions
/// keep the limits they have (they are still ended); a new login, whose
/// explicit conf= is missing, is let in with no limit.
#[test]
fn deleted_policy_keeps_the_limits_sessions_have() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("pdl", &[]);
    let policy = format!("user {} idle=12s warn=4s\n", user.name);
    let sshd = Sshd::start("pdel", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let started = Instant::now();
    let mut client = spawn_ssh(&sshd, &user.name, "sleep 1000");
    let row = wait_recorded(&sshd, &user.name, 1).remove(0);
    std::fs::remove_file(&sshd.policy_path).unwrap();
    let mut later = spawn_ssh(&sshd, &user.name, "sleep 1001");
    let rows = wait_recorded(&sshd, &user.name, 2);
    let new = rows.iter().find(|r| r["id"] != row["id"]).expect("second login");
    assert_eq!(new["idle_limit_secs"], serde_json::Value::Null, "{new}");
    assert!(wait_until(Duration::from_secs(30), || exited(&mut client)), "not ended:\n{}", enforcer.output());
    assert!(started.elapsed() >= Duration::from_secs(12), "ended after {:?}", started.elapsed());
    assert!(since_recorded_login(&row) <= 12 + 3 + 2, "ended {} s after the login", since_recorded_login(&row));
    enforcer.assert_alive();
    assert!(!exited(&mut later), "the login without a limit was ended");
    let _ = later.kill();
    let _ = later.wait();
}

/// The warning reaches a tty in raw mode (an editor, `stty raw`): it is
/// readable on the screen and the session is still ended on time.
#[test]
fn warning_reaches_a_raw_mode_tty() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("prw", &[]);
    let policy = format!("user {} idle=12s warn=6s\n", user.name);
    let sshd = Sshd::start("praw", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let enforcer = Enforcer::start(&sshd, &[]);
    let login = tty_login_timed(&sshd, &user.name, &[]);
    let key = Instant::now();
    // The cursor is left mid-line, as an editor's would be: in raw mode
    // only a \r brings the warning to the first column.
    login.tmux.type_line("stty raw -echo; printf 'editing...'; sleep 1000");
    assert!(wait_until(Duration::from_secs(5), || pgrep_user(&user, "^sleep 1000$").len() == 1));
    let raw = Command::new("ps").args(["-o", "tty=", "-p", &pgrep_user(&user, "^sleep 1000$")[0].to_string()]).output();
    let tty = String::from_utf8_lossy(&raw.unwrap().stdout).trim().to_string();
    let stty = Command::new("stty").args(["-a", "-F", &format!("/dev/{tty}")]).output().expect("stty");
    assert!(String::from_utf8_lossy(&stty.stdout).contains("-icanon"), "not raw: {}", describe(&stty));
    assert!(
        login.tmux.wait_for("will be disconnected in", Duration::from_secs(25)),
        "no warning on the raw tty:\n{}\n{}",
        login.tmux.capture(),
        enforcer.output()
    );
    let warned = key.elapsed();
    assert!(warned >= Duration::from_secs(6), "warned {warned:?} after the last key");
    // The whole text on one line, from its first column (\r\n in raw mode).
    let screen = login.tmux.capture();
    assert!(screen.lines().any(|l| l.starts_with("*** sshidle:") || l.starts_with("\x07*** sshidle:")), "{screen}");
    assert!(wait_until(Duration::from_secs(20), || login.tmux.is_dead()), "not ended:\n{}", enforcer.output());
    assert!(key.elapsed() >= Duration::from_secs(12), "ended {:?} after the last key", key.elapsed());
}

/// A tty stopped with ^S (XOFF): output is held, so a warning written to it
/// would never be seen. The warning must still reach the screen, and the
/// session still end on time.
#[test]
fn warning_reaches_a_tty_stopped_with_xoff() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("pxo", &[]);
    let policy = format!("user {} idle=12s warn=6s\n", user.name);
    let sshd = Sshd::start("pxoff", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let enforcer = Enforcer::start(&sshd, &[]);
    let login = tty_login_timed(&sshd, &user.name, &[]);
    login.tmux.send_keys(&["C-s"]);
    // Stopped: what the shell prints now is held back.
    let last_key = Instant::now();
    login.tmux.type_line("echo HELD''BACK");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!login.tmux.capture().contains("HELDBACK"), "^S did not stop the tty:\n{}", login.tmux.capture());
    assert!(
        login.tmux.wait_for("will be disconnected in", Duration::from_secs(25)),
        "the warning never reached the stopped tty:\n{}\n{}",
        login.tmux.capture(),
        enforcer.output()
    );
    assert!(last_key.elapsed() >= Duration::from_secs(6), "warned {:?} after the last key", last_key.elapsed());
    assert!(wait_until(Duration::from_secs(20), || login.tmux.is_dead()), "not ended:\n{}", enforcer.output());
    assert!(last_key.elapsed() >= Duration::from_secs(12), "ended {:?} after the last key", last_key.elapsed());
}
