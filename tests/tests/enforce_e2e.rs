//! End to end: the enforcer against real ssh sessions through a private sshd,
//! real ptys through tmux. Limits are short (seconds) so the file runs in
//! about a minute and a half with parallel threads; timing bounds allow for
//! the kernel's 8-second tty timestamp granularity and nothing else.

use sshidle::state::{SessionKey, SessionRecord, StateDir};
use sshidle::Limits;
use sshidle_tests::session::*;
use sshidle_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn idle_tty_is_warned_then_disconnected_cleanly() {
    if !e2e_enabled() {
        return;
    }
    let syslog = SyslogCapture::start();
    let user = TestUser::create("eit", &[]);
    let policy = format!("user {} idle=20s warn=10s\n", user.name);
    let sshd = Sshd::start("eidle", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let journal = JournalWatch::start(&sshd.state_dir);
    let enforcer = Enforcer::start(&sshd, &[]);
    let login = tty_login_timed(&sshd, &user.name, &[]);
    let tmux = &login.tmux;
    let rows = wait_recorded(&sshd, &user.name, 1);
    let id = rows[0]["id"].as_str().unwrap().to_string();
    let pid = rows[0]["pid"].as_i64().unwrap() as i32;
    assert!(!rows[0]["ttys"].as_array().unwrap().is_empty(), "no tty found: {}", rows[0]);

    assert!(
        tmux.wait_for("will be disconnected in", Duration::from_secs(30)),
        "no warning on the terminal:\n{}\n{}",
        tmux.capture(),
        enforcer.output()
    );
    let (warned_after_key, warned_after_echo) = (login.key.elapsed(), login.echoed.elapsed());
    assert!(tmux.capture().contains("Press a key"), "{}", tmux.capture());
    // A restarted enforcer knows the session was warned: no second warning,
    // same deadline.
    // It says so after it has recorded the warning (its tty gets it first):
    // stopped in between, the next one would warn again.
    let warned_line = format!("warned session {id} of {}", user.name);
    wait_until(Duration::from_secs(5), || enforcer.output().contains(&warned_line));
    let first_log = enforcer.output();
    drop(enforcer);
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let closed = wait_until(Duration::from_secs(30), || tmux.is_dead());
    let (after_key, after_echo) = (login.key.elapsed(), login.echoed.elapsed());
    let since_login = since_recorded_login(&rows[0]);
    assert!(closed, "not disconnected:\n{}\n{}", tmux.capture(), enforcer.output());
    enforcer.assert_alive();
    // The client saw the server end the connection. At LogLevel ERROR ssh
    // says "Connection ... closed by remote host" only when the TCP close
    // arrives before the channel's; otherwise it just exits 255 (an exit
    // signal from the server), which tmux learns once it has reaped it. A
    // client signalled itself shows neither.
    let saw_close =
        tmux.capture().contains("closed") || tmux.exit(Duration::from_secs(5)).as_deref() == Some("status=255");
    assert!(
        saw_close,
        "the client did not see the server close (its exit: {:?}):\n{}",
        tmux.exit(Duration::ZERO),
        tmux.capture()
    );
    // Windows from the last input (typed after `key`, read before `echoed`):
    // never before the limit, at most limit + 8 s tty granularity + 2 s.
    assert!(after_key >= Duration::from_secs(20), "disconnected {after_key:?} after the last key, before 20 s");
    assert!(after_echo <= Duration::from_secs(30), "disconnected {after_echo:?} after the last key, past 20+8+2 s");
    assert!(warned_after_key >= Duration::from_secs(10), "warned {warned_after_key:?} after the key, before 20-10 s");
    assert!(warned_after_echo <= Duration::from_secs(20), "warned {warned_after_echo:?} after the key, past 10+8+2 s");
    assert_eq!(tmux.capture().matches("will be disconnected in").count(), 1, "warned twice:\n{}", tmux.capture());
    assert!(first_log.contains(&warned_line), "{first_log}");

    // The module's close_session wrote the close (not the enforcer's clean-up).
    journal.assert_closed(pid, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
    // wtmp (or wtmpdb) has the logout: written because close ran normally.
    logouts::assert_logout_recorded(&user.name, "127.0.0.1");
    // syslog (authpriv): the warning, the disconnect with user, session,
    // idle time and rule, and the module's close with the reason, all of
    // this very session (other tests end sessions at the same time).
    let warn = syslog.wait_for(&format!("warned session {id} of {}", user.name), Duration::from_secs(2));
    let warn = warn.unwrap_or_else(|| panic!("no warning in syslog: {:#?}", syslog.messages()));
    assert_eq!(sshidle_tests::syslog::facility(&warn), Some(libc::LOG_AUTHPRIV), "{warn}");
    let gone = syslog.wait_for(&format!("disconnecting session {id} of {}", user.name), Duration::from_secs(2));
    let gone = gone.unwrap_or_else(|| panic!("no disconnect in syslog: {:#?}", syslog.messages()));
    assert!(gone.contains("(limit idle=20s") && gone.contains(":1: user"), "{gone}");
    let idle = idle_in(&gone);
    assert!(
        idle >= 20 && idle as i64 <= since_login + 1,
        "idle {idle}s reported, {since_login} s after the login: {gone}"
    );
    let closed = syslog
        .wait_for(&format!("session {id} of {} closed: ended by sshidle: idle", user.name), Duration::from_secs(5));
    assert!(closed.is_some(), "close_session did not log the reason: {:#?}", syslog.messages());
}

#[test]
fn typing_user_longer_rule_and_idle_off_are_kept() {
    if !e2e_enabled() {
        return;
    }
    let typist = TestUser::create("ekt", &[]);
    let relaxed = TestUser::create("ekr", &[]);
    let exempt = TestUser::create("eko", &[]);
    // The control: idle under the typist's limit, it must be ended, which
    // shows the enforcer was alive and looking while the others were kept.
    let control = TestUser::create("ekc", &[]);
    let policy = format!(
        "user {} idle=20s warn=10s\nuser {} idle=10m warn=1m\nuser {} idle=off\nuser {} idle=20s warn=10s\n",
        typist.name, relaxed.name, exempt.name, control.name
    );
    let sshd = Sshd::start("ekeep", SshdOptions { policy, ..Default::default() });
    for u in [&typist, &relaxed, &exempt, &control] {
        sshd.authorize(u);
    }
    let mut enforcer = Enforcer::start(&sshd, &[]);
    // The typist last: its login is its last key until the loop types (the
    // other logins take seconds on a loaded machine).
    let kept = [&relaxed, &exempt, &typist];
    let sessions: Vec<Tmux> = kept.iter().map(|u| tty_login(&sshd, &u.name, &[])).collect();
    let typing = &sessions[2];
    let idle = tty_login_timed(&sshd, &control.name, &[]);
    let started = Instant::now();
    let mut control_ended = None;
    let mut next_key = started;
    // 36 s: past the typist's limit + granularity, typing every 4 s.
    while started.elapsed() < Duration::from_secs(36) {
        if Instant::now() >= next_key {
            typing.type_line("true");
            next_key += Duration::from_secs(4);
        }
        if control_ended.is_none() && idle.tmux.is_dead() {
            control_ended = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    enforcer.assert_alive();
    for (tmux, user) in sessions.iter().zip(kept) {
        assert!(!tmux.is_dead(), "{} was disconnected:\n{}\n{}", user.name, tmux.capture(), enforcer.output());
        assert!(!tmux.capture().contains("will be disconnected"), "{} was warned:\n{}", user.name, tmux.capture());
    }
    // The control was ended, 20 s to 20 s + 8 s granularity + 2 s after its key.
    let ended = control_ended.unwrap_or_else(|| {
        panic!("the idle control session was not ended: is the enforcer looking?\n{}", enforcer.output())
    });
    assert!(ended - idle.key >= Duration::from_secs(20), "control ended {:?} after its key", ended - idle.key);
    assert!(ended - idle.echoed <= Duration::from_secs(30), "control ended {:?} after its key", ended - idle.echoed);
    assert!(idle.tmux.capture().contains("will be disconnected"), "{}", idle.tmux.capture());
}

/// A command that prints every 2 s and starts no process while it runs
/// (bash's `read -t` on a pipe that never has data is the pause; the one
/// process substitution forks once, at the start): only its output can keep
/// its session.
const CHATTY_WITHOUT_FORKS: &str = "exec 3<> <(:); while :; do echo tick; read -t 2 -u 3; done";

#[test]
fn idle_notty_is_disconnected_with_nothing_left_and_busy_one_kept() {
    if !e2e_enabled() {
        return;
    }
    let idle = TestUser::create("eni", &[]);
    let busy = TestUser::create("enb", &[]);
    // Starts a process every 2 s and does no I/O of its own: processes
    // starting and exiting are not activity, so it is ended like the quiet one.
    let forker = TestUser::create("enf", &[]);
    let policy = format!(
        "user {} idle=12s warn=4s\nuser {} idle=12s warn=4s\nuser {} idle=12s warn=4s\n",
        idle.name, busy.name, forker.name
    );
    let sshd = Sshd::start("enotty", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&idle);
    sshd.authorize(&busy);
    sshd.authorize(&forker);
    let journal = JournalWatch::start(&sshd.state_dir);
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let started = Instant::now();
    // A command and a background child: both run in a session of their own
    // and would outlive a naive kill of the connection.
    let mut quiet = spawn_ssh(&sshd, &idle.name, "sleep 1000 & exec sleep 1001");
    let mut chatty = spawn_ssh(&sshd, &busy.name, CHATTY_WITHOUT_FORKS);
    let mut forking = spawn_ssh(&sshd, &forker.name, "while :; do sleep 2; done");
    let quiet_row = wait_recorded(&sshd, &idle.name, 1).remove(0);
    wait_recorded(&sshd, &busy.name, 1);
    let forker_row = wait_recorded(&sshd, &forker.name, 1).remove(0);
    // Both watched from here, each timed when its client exits (the checks
    // of the first must not delay the second's figure).
    let (mut quiet_end, mut forker_end) = (None, None);
    wait_until(Duration::from_secs(30), || {
        if quiet_end.is_none() && exited(&mut quiet) {
            quiet_end = Some((started.elapsed(), since_recorded_login(&quiet_row)));
        }
        if forker_end.is_none() && exited(&mut forking) {
            forker_end = Some(since_recorded_login(&forker_row));
        }
        quiet_end.is_some() && forker_end.is_some()
    });
    assert!(quiet_end.is_some(), "idle notty session not disconnected:\n{}", enforcer.output());
    let (took, since_login) = quiet_end.unwrap();
    // Its last activity (the commands starting) came after `started`.
    assert!(took >= Duration::from_secs(12), "disconnected after {took:?}, before the limit");
    // First look 1 s after login, counters read every 1 s (limit/10): the
    // end comes at most ~3 s after the limit, measured from the recorded
    // login, plus 2 s for the ending itself on a loaded machine.
    assert!(since_login <= 12 + 3 + 2, "disconnected {since_login} s after the recorded login");
    assert!(
        wait_until(Duration::from_secs(8), || user_processes(&idle).is_empty()),
        "processes left: {:?}",
        user_processes(&idle)
    );
    journal.assert_closed(quiet_row["pid"].as_i64().unwrap() as i32, Duration::from_secs(5));
    // The forker: ended too, within the same window from its login.
    assert!(forker_end.is_some(), "a session that only starts processes was kept:\n{}", enforcer.output());
    let since_login = forker_end.unwrap();
    assert!(since_login >= 12, "the forker was ended {since_login} s after its login");
    assert!(since_login <= 12 + 3 + 2, "the forker was ended {since_login} s after its login");
    assert!(wait_until(Duration::from_secs(8), || user_processes(&forker).is_empty()), "{:?}", user_processes(&forker));
    // The chatty one lives on well past its limit, on its output alone.
    while started.elapsed() < Duration::from_secs(25) {
        assert!(!exited(&mut chatty), "a session printing every 2 s was disconnected:\n{}", enforcer.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    enforcer.assert_alive();
    assert!(!exited(&mut chatty), "a session printing every 2 s was disconnected:\n{}", enforcer.output());
    let _ = chatty.kill();
    let _ = chatty.wait();
}

#[test]
fn multiplexed_connection_is_kept_while_any_tty_is_active() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("emx", &[]);
    let policy = format!("user {} idle=20s warn=6s\n", user.name);
    let sshd = Sshd::start("emux", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let enforcer = Enforcer::start(&sshd, &[]);
    let socket = sshd.dir.join("mux.sock");
    let path_opt = format!("ControlPath={}", socket.display());
    let master = tty_login(&sshd, &user.name, &["-o", "ControlMaster=yes", "-o", &path_opt]);
    let second = tty_login(&sshd, &user.name, &["-o", "ControlMaster=no", "-o", &path_opt]);
    // One connection, one record, two ttys.
    let rows = wait_recorded(&sshd, &user.name, 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name)[0]["ttys"].as_array().unwrap().len() == 2),
        "{:?}",
        sessions_of(&sshd, &user.name)
    );
    let started = Instant::now();
    let mut last_key = Instant::now();
    while started.elapsed() < Duration::from_secs(34) {
        last_key = Instant::now(); // the key is read after this instant
        second.type_line("true");
        std::thread::sleep(Duration::from_secs(4));
    }
    assert!(!master.is_dead() && !second.is_dead(), "disconnected while a tty was active:\n{}", enforcer.output());
    assert!(!master.capture().contains("will be disconnected"), "warned while a tty was active");
    // Quiet on both: the connection goes 20 s after the last key, at most
    // 8 s (tty granularity) + 2 s later.
    assert!(
        wait_until(Duration::from_secs(35), || master.is_dead() && second.is_dead()),
        "not disconnected once idle:\n{}\n{}",
        master.capture(),
        enforcer.output()
    );
    let after = last_key.elapsed();
    assert!(after >= Duration::from_secs(20), "ended {after:?} after the last key");
    assert!(after <= Duration::from_secs(31), "ended {after:?} after the last key, past 20+8+2 s (+1 s typing)");
    // Both ttys of the connection got the warning.
    for (name, tty) in [("master", &master), ("second", &second)] {
        assert_eq!(
            tty.capture().matches("will be disconnected in").count(),
            1,
            "the {name} tty did not get one warning:\n{}\n{}",
            tty.capture(),
            enforcer.output()
        );
    }
}

#[test]
fn hard_limit_ends_an_active_session() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("ehd", &[]);
    let policy = format!("user {} idle=1h hard=15s warn=5s\n", user.name);
    let sshd = Sshd::start("ehard", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let enforcer = Enforcer::start(&sshd, &[]);
    let tmux = tty_login(&sshd, &user.name, &[]);
    let row = wait_recorded(&sshd, &user.name, 1).remove(0);
    let ended = wait_until(Duration::from_secs(30), || {
        tmux.type_line("true");
        tmux.is_dead()
    });
    let since_login = since_recorded_login(&row);
    assert!(ended, "hard limit not enforced:\n{}\n{}", tmux.capture(), enforcer.output());
    // From the recorded login (whole seconds, rounded down): not before 15 s,
    // at most 1 s (rounding) + 2 s later.
    assert!(since_login >= 15, "ended {since_login} s after the recorded login");
    assert!(since_login <= 15 + 1 + 2, "ended {since_login} s after the recorded login");
    assert!(tmux.capture().contains("maximum length of 15s"), "{}", tmux.capture());
}

/// A record whose PID now belongs to another process (same PID, other start
/// time): the enforcer and `disconnect` leave that process alone and drop the
/// record.
#[test]
fn stale_record_with_reused_pid_is_never_signalled() {
    if !e2e_enabled() {
        return;
    }
    let dir = TempDir::new("estale");
    let state_path = dir.join("state");
    let policy = dir.join("policy");
    std::fs::write(&policy, "user root idle=1s warn=0 hard=1s\n").unwrap();
    let mut victim = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = victim.id() as i32;
    let start = sshidle::procfs::start_time(pid).unwrap();
    let state = StateDir::open(&state_path, true).unwrap();
    state
        .record_open(&SessionRecord {
            key: SessionKey { pid, start: start.saturating_sub(5) },
            uid: 0,
            user: "root".into(),
            rhost: "192.0.2.1".into(),
            service: "sshd".into(),
            login_time: sshidle::now_unix() - 3600,
            limits: Limits { idle: Some(1), warn: None, hard: Some(1), ..Default::default() },
            rule: "test".into(),
            warned_at_ms: None,
        })
        .unwrap();
    let ctl = |args: &[&str]| sshidlectl(&policy, &state_path).args(args).output().unwrap();
    let out = ctl(&["disconnect", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let out = ctl(&["enforce", "--once", "--utmp", "none"]);
    assert!(out.status.success(), "{}", describe(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(victim.try_wait(), Ok(None)), "the unrelated process was signalled");
    assert!(state.load().unwrap().sessions.is_empty(), "the stale record was kept");
    assert!(!Path::new(&state_path).join(format!("ending.{pid}.{}", start - 5)).exists());
    let _ = victim.kill();
    let _ = victim.wait();
}

fn dir_contents(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn dry_run_changes_nothing_and_disconnect_by_id_and_user() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("edr", &[]);
    let policy = format!("user {} idle=2s warn=1s\n", user.name);
    let sshd = Sshd::start("edry", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let mut first = spawn_ssh(&sshd, &user.name, "sleep 1000");
    let tmux = tty_login(&sshd, &user.name, &[]);
    let rows = wait_recorded(&sshd, &user.name, 2);
    let journal = JournalWatch::start(&sshd.state_dir);
    let before = dir_contents(&sshd.state_dir);
    // Dry sweeps until the tty session is due (past idle + granularity; a
    // single sweep sees the notty command for the first time, which counts
    // as activity): it says what it would do, and changes nothing.
    let would =
        |text: &str| text.matches("would warn session").count() + text.matches("would disconnect session").count();
    let mut said = String::new();
    let due = wait_until(Duration::from_secs(20), || {
        let out = sshd.ctl(&["enforce", "--once", "--dry-run"]);
        assert!(out.status.success(), "{}", describe(&out));
        said = String::from_utf8_lossy(&out.stdout).into_owned();
        would(&said) >= 1
    });
    assert!(due, "a dry sweep never named the idle tty session: {said}");
    // A dry daemon remembers what it saw: both become due.
    let mut daemon = Enforcer::start(&sshd, &["--dry-run"]);
    assert!(wait_until(Duration::from_secs(15), || would(&daemon.output()) >= 2), "{}", daemon.output());
    daemon.assert_alive();
    let out = sshd.ctl(&["disconnect", "--user", &user.name, "--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(said.matches("would disconnect session").count(), 2, "{said}");
    drop(daemon);
    assert_eq!(dir_contents(&sshd.state_dir), before, "a dry run changed the state directory");
    assert!(!exited(&mut first) && !tmux.is_dead(), "a dry run disconnected someone");
    assert!(!tmux.capture().contains("will be disconnected"), "a dry run warned:\n{}", tmux.capture());

    // disconnect ID: only that session.
    let notty_id = rows
        .iter()
        .find(|r| r["ttys"].as_array().unwrap().is_empty())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .expect("notty session");
    let out = sshd.ctl(&["disconnect", &notty_id]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(5), || exited(&mut first)), "session {notty_id} still connected");
    assert!(!tmux.is_dead(), "disconnect ID ended another session");
    assert!(
        wait_until(Duration::from_secs(5), || !user_processes(&user).iter().any(|p| p.contains("sleep 1000"))),
        "{:?}",
        user_processes(&user)
    );
    // disconnect --user: all of them (a second notty session too).
    let mut third = spawn_ssh(&sshd, &user.name, "sleep 1002");
    // At once, before its command may have started: sshd may serve the
    // exec request while the session is being ended, and the command must
    // not outlive it all the same (logout_e2e's ControlMaster test).
    wait_recorded(&sshd, &user.name, 2);
    let out = sshd.ctl(&["disconnect", "--user", &user.name]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(8), || tmux.is_dead() && exited(&mut third)), "--user left sessions");
    assert!(wait_until(Duration::from_secs(8), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
    for row in &rows {
        journal.assert_closed(row["pid"].as_i64().unwrap() as i32, Duration::from_secs(5));
    }
    let known: Vec<i64> = rows.iter().map(|r| r["pid"].as_i64().unwrap()).collect();
    let third = journal.lines().into_iter().find(|l| l.kind == "open" && !known.contains(&(l.pid as i64)));
    let third_pid = third.unwrap_or_else(|| panic!("no open of the third session:\n{}", journal.dump())).pid;
    journal.assert_closed(third_pid, Duration::from_secs(5));
    let out = sshd.ctl(&["disconnect", "--user", &user.name]);
    assert_eq!(out.status.code(), Some(1), "no session left: {}", describe(&out));
}

#[test]
fn policy_change_applies_to_open_sessions() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("epc", &[]);
    let sshd =
        Sshd::start("epolicy", SshdOptions { policy: format!("user {} idle=10m\n", user.name), ..Default::default() });
    sshd.authorize(&user);
    let enforcer = Enforcer::start(&sshd, &[]);
    let mut client = spawn_ssh(&sshd, &user.name, "sleep 1000");
    let rows = wait_recorded(&sshd, &user.name, 1);
    assert_eq!(rows[0]["idle_limit_secs"], 600, "{}", rows[0]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!exited(&mut client));
    // Replaced the way editors do it: a new file renamed over the old one.
    let temp = sshd.policy_path.with_extension("new");
    std::fs::write(&temp, format!("# tightened\nuser {} idle=8s warn=3s\n", user.name)).unwrap();
    std::fs::rename(&temp, &sshd.policy_path).unwrap();
    let changed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name)
            .first()
            .is_some_and(|r| r["idle_limit_secs"] == 8 && r["rule"].as_str().unwrap().contains(":2: user"))),
        "new limits not applied: {:?}\n{}",
        sessions_of(&sshd, &user.name),
        enforcer.output()
    );
    // Quiet since well before the change: ends once warned (3 s of notice).
    assert!(
        wait_until(Duration::from_secs(20), || exited(&mut client)),
        "not disconnected under the new policy:\n{}",
        enforcer.output()
    );
    assert!(
        changed.elapsed() >= Duration::from_secs(3),
        "ended {:?} after the change, without notice",
        changed.elapsed()
    );
    assert!(wait_until(Duration::from_secs(8), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
}

/// A login without a record (made before the module was installed) is found
/// through utmp, gets the policy of its user and is enforced.
#[test]
fn session_known_only_from_utmp_is_adopted() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("eut", &[]);
    let policy = format!("user {} idle=12s warn=4s\n", user.name);
    let sshd = Sshd::start("eutmp", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let tmux = tty_login(&sshd, &user.name, &[]);
    let id = wait_recorded(&sshd, &user.name, 1)[0]["id"].as_str().unwrap().to_string();
    let in_utmp = wait_until(Duration::from_secs(5), || {
        sshidle::utmp::read(Path::new(sshidle::utmp::DEFAULT_UTMP))
            .unwrap_or_default()
            .iter()
            .any(|e| e.pid.to_string() == id && e.user == user.name)
    });
    assert!(in_utmp, "sshd wrote no utmp entry for session {id}");
    // Forget the record, as if the module had not been there at login.
    StateDir::open(&sshd.state_dir, false).unwrap().compact(&|r| r.user != user.name).unwrap();
    assert!(sessions_of(&sshd, &user.name).is_empty());
    let journal = JournalWatch::start(&sshd.state_dir);
    let enforcer = Enforcer::start(&sshd, &[]);
    assert!(
        wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name)
            .first()
            .is_some_and(|r| r["service"] == "utmp" && r["idle_limit_secs"] == 12 && r["id"] == id.as_str())),
        "not adopted: {:?}\n{}",
        sessions_of(&sshd, &user.name),
        enforcer.output()
    );
    assert!(
        wait_until(Duration::from_secs(30), || tmux.is_dead()),
        "adopted session not disconnected:\n{}\n{}",
        tmux.capture(),
        enforcer.output()
    );
    assert!(tmux.capture().contains("will be disconnected"), "{}", tmux.capture());
    // The audit lines of the adoption, the warning and the disconnect (the
    // last is written once the signals are sent, maybe after the close).
    let disconnect = format!("event=disconnect user={} session={id} ", user.name);
    wait_until(Duration::from_secs(5), || enforcer.output().contains(&disconnect));
    let log = enforcer.output();
    let audit = |event: &str| {
        log.lines()
            .find(|l| l.contains(&format!("event={event} user={} session={id} ", user.name)))
            .unwrap_or_else(|| panic!("no {event} audit line:\n{log}"))
            .to_string()
    };
    assert!(audit("adoption").contains(" limit=12 ") && audit("adoption").contains(" cause=unrecorded source="));
    assert!(audit("warning").contains(" tty=pts/") && audit("warning").contains(" cause=idle left="));
    assert!(audit("disconnect").contains(" limit=12 ") && audit("disconnect").ends_with(" cause=idle end=logout"));
    assert!(wait_until(Duration::from_secs(8), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
    // The enforcer wrote the adopted record; the module's close_session closed it.
    assert!(
        journal.opens_of(id.parse().unwrap()).iter().any(|l| l.text.contains("service=utmp")),
        "{}",
        journal.dump()
    );
    journal.assert_closed(id.parse().unwrap(), Duration::from_secs(5));
}

/// sftp through `internal-sftp` (the harness's sshd uses it): the transfer
/// runs in a forked sshd process (`sshd: user@internal-sftp`) whose I/O is
/// the user's, not keepalives'. An idle sftp session is ended; one that sends
/// a request every 2 s is kept (`ls`: the client answers `pwd` from a cache).
#[test]
fn internal_sftp_idle_is_disconnected_and_busy_is_kept() {
    if !e2e_enabled() {
        return;
    }
    let idle = TestUser::create("esi", &[]);
    let busy = TestUser::create("esb", &[]);
    let policy = format!("user {} idle=12s warn=4s\nuser {} idle=12s warn=4s\n", idle.name, busy.name);
    let sshd = Sshd::start("esftp", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&idle);
    sshd.authorize(&busy);
    let journal = JournalWatch::start(&sshd.state_dir);
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let sftp_argv = |user: &str| -> Vec<String> {
        sshd.ssh_args(user)
            .into_iter()
            .map(|a| match a.as_str() {
                "ssh" => "sftp".to_string(),
                "-p" => "-P".to_string(),
                _ => a,
            })
            .collect()
    };
    let started = Instant::now();
    let quiet = Tmux::new(&sftp_argv(&idle.name));
    let chatty = Tmux::new(&sftp_argv(&busy.name));
    let mut quiet_row = serde_json::Value::Null;
    for (tmux, user) in [(&quiet, &idle), (&chatty, &busy)] {
        assert!(tmux.wait_for("sftp>", Duration::from_secs(15)), "no sftp prompt:\n{}\n{}", tmux.capture(), sshd.log());
        let row = wait_recorded(&sshd, &user.name, 1).remove(0);
        if user.name == idle.name {
            quiet_row = row;
        }
    }
    let quiet_pid = quiet_row["pid"].as_i64().unwrap() as i32;
    // sftp's own ssh, the client end of the connection.
    let quiet_ssh = descendants(quiet.pane_pid());
    assert!(!quiet_ssh.is_empty(), "sftp runs no ssh");
    let ended = wait_until(Duration::from_secs(30), || {
        // Not is_multiple_of: stable since Rust 1.87, Debian 13 has 1.85.
        if started.elapsed().as_secs() % 2 == 0 {
            chatty.type_line("ls");
        }
        // The client saw the close: its ssh said so, or exited without a
        // word (at LogLevel ERROR it says so only when the TCP close beats
        // the channel's, see enforce_e2e's tty test); sftp itself only
        // notices at its next command.
        quiet.capture().contains("closed by remote host") || !quiet_ssh.iter().any(|p| process_alive(*p))
    });
    let took = started.elapsed();
    let since_login = since_recorded_login(&quiet_row);
    assert!(
        ended,
        "idle sftp session not disconnected:\n{}\n{}\n{:#}\n{}",
        quiet.capture(),
        enforcer.output(),
        sshd.status_json(),
        sshd.log()
    );
    assert!(took >= Duration::from_secs(12), "disconnected after {took:?}, before the limit");
    // From the recorded login: the limit, ~3 s of sampling (limit/10 every
    // second, first look 1 s after login), 3 s for sftp's start and the ending.
    assert!(since_login <= 12 + 3 + 3, "disconnected {since_login} s after the recorded login");
    journal.assert_closed(quiet_pid, Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(8), || user_processes(&idle).is_empty()),
        "processes left: {:?}",
        user_processes(&idle)
    );
    while started.elapsed() < Duration::from_secs(26) {
        chatty.type_line("ls");
        std::thread::sleep(Duration::from_secs(2));
    }
    enforcer.assert_alive();
    let screen = chatty.capture();
    assert!(
        !screen.contains("closed by remote host"),
        "a busy sftp session was disconnected:\n{screen}\n{}",
        enforcer.output()
    );
}
