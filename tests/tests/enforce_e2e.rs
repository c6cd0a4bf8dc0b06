//! End to end: the enforcer against real ssh sessions through a private sshd,
//! real ptys through tmux. Limits are short (seconds) so the file runs in
//! about a minute and a half with parallel threads; timing bounds allow for
//! the kernel's 8-second tty timestamp granularity and nothing else.

use sshidle::state::{SessionKey, SessionRecord, StateDir};
use sshidle::Limits;
use sshidle_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sshidlectl enforce`, stopped (SIGTERM, then SIGKILL) on drop.
struct Enforcer {
    child: Child,
    log: PathBuf,
}

impl Enforcer {
    fn start(sshd: &Sshd, extra: &[&str]) -> Enforcer {
        let log = sshd.dir.join(format!("enforcer-{}.log", unique_name("e")));
        let child = sshidlectl(&sshd.policy_path, &sshd.state_dir)
            .arg("enforce")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start enforcer");
        Enforcer { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        signal(self.child.id() as i32, libc::SIGTERM);
        if !wait_until(Duration::from_secs(3), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn sessions_of(sshd: &Sshd, user: &str) -> Vec<serde_json::Value> {
    sshd.status_json().as_array().cloned().unwrap_or_default().into_iter().filter(|s| s["user"] == user).collect()
}

/// ssh argv with `opts` before the destination.
fn ssh_with(sshd: &Sshd, user: &str, opts: &[&str]) -> Vec<String> {
    let mut args = sshd.ssh_args(user);
    let dest = args.pop().expect("destination");
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push(dest);
    args
}

/// An interactive login on a pty in tmux; returns once the shell answers.
fn tty_login(sshd: &Sshd, user: &str, opts: &[&str]) -> Tmux {
    let mut o = vec!["-tt"];
    o.extend_from_slice(opts);
    let tmux = Tmux::new(&ssh_with(sshd, user, &o));
    tmux.type_line("echo READY''GO");
    assert!(tmux.wait_for("READYGO", Duration::from_secs(15)), "no shell:\n{}\n{}", tmux.capture(), sshd.log());
    tmux
}

fn spawn_ssh(sshd: &Sshd, user: &str, remote: &str) -> Child {
    let args = sshd.ssh_args(user);
    Command::new(&args[0])
        .args(&args[1..])
        .arg(remote)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh")
}

fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

fn user_processes(user: &TestUser) -> Vec<String> {
    let out = Command::new("ps").args(["-o", "pid=,args=", "-u", &user.name]).output().expect("ps");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn wait_recorded(sshd: &Sshd, user: &str, count: usize) -> Vec<serde_json::Value> {
    let ok = wait_until(Duration::from_secs(15), || sessions_of(sshd, user).len() >= count);
    assert!(ok, "{count} session(s) of {user} not recorded:\n{}", sshd.log());
    sessions_of(sshd, user)
}

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
    let enforcer = Enforcer::start(&sshd, &[]);
    let before_login = Instant::now();
    let tmux = tty_login(&sshd, &user.name, &[]);
    let ready = Instant::now();
    let rows = wait_recorded(&sshd, &user.name, 1);
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert!(!rows[0]["ttys"].as_array().unwrap().is_empty(), "no tty found: {}", rows[0]);

    assert!(
        tmux.wait_for("will be disconnected in", Duration::from_secs(30)),
        "no warning on the terminal:\n{}\n{}",
        tmux.capture(),
        enforcer.output()
    );
    let warned = before_login.elapsed();
    assert!(tmux.capture().contains("Press a key"), "{}", tmux.capture());
    // A restarted enforcer knows the session was warned: no second warning,
    // same deadline.
    let first_log = enforcer.output();
    drop(enforcer);
    let enforcer = Enforcer::start(&sshd, &[]);
    let closed = wait_until(Duration::from_secs(30), || tmux.is_dead());
    let since_login = before_login.elapsed();
    let since_ready = ready.elapsed();
    assert!(closed, "not disconnected:\n{}\n{}", tmux.capture(), enforcer.output());
    assert!(tmux.capture().contains("closed"), "client did not see the close:\n{}", tmux.capture());
    // Never before the limit after the pty existed (which was after
    // before_login); at most limit + 8 s granularity + 2 s after it (which
    // was before ready).
    assert!(since_login >= Duration::from_secs(20), "disconnected after {since_login:?}, before the 20 s limit");
    assert!(since_ready <= Duration::from_secs(30), "disconnected {since_ready:?} after login, later than 20+8+2 s");
    assert!(warned >= Duration::from_secs(10), "warned after {warned:?}, before limit - warn");
    assert_eq!(tmux.capture().matches("will be disconnected in").count(), 1, "warned twice:\n{}", tmux.capture());
    assert!(first_log.contains("warned session"), "{first_log}");

    assert!(wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name).is_empty()), "record left");
    assert!(wait_until(Duration::from_secs(5), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
    // wtmp has the logout (sshd wrote it because close ran normally).
    let last = Command::new("last").args(["-w", "-f", "/var/log/wtmp", &user.name]).output().expect("last");
    let last = String::from_utf8_lossy(&last.stdout).into_owned();
    let line = last.lines().find(|l| l.starts_with(&user.name)).unwrap_or_else(|| panic!("no wtmp entry:\n{last}"));
    assert!(!line.contains("still logged in") && !line.contains("no logout"), "no logout in wtmp: {line}");
    // syslog (authpriv): the warning, the disconnect with user, session,
    // idle time and rule, and the module's close with the reason.
    let warn = syslog.wait_for(&format!("warned session {id} of {}", user.name), Duration::from_secs(2));
    let warn = warn.unwrap_or_else(|| panic!("no warning in syslog: {:#?}", syslog.messages()));
    assert_eq!(sshidle_tests::syslog::facility(&warn), Some(libc::LOG_AUTHPRIV), "{warn}");
    let gone = syslog.wait_for(&format!("disconnecting session {id} of {}", user.name), Duration::from_secs(2));
    let gone = gone.unwrap_or_else(|| panic!("no disconnect in syslog: {:#?}", syslog.messages()));
    assert!(gone.contains("idle 2") && gone.contains("limit idle=20s") && gone.contains(":1: user"), "{gone}");
    let closed = syslog.wait_for("ended by sshidle: idle", Duration::from_secs(5));
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
    let policy = format!(
        "user {} idle=20s warn=10s\nuser {} idle=10m warn=1m\nuser {} idle=off\n",
        typist.name, relaxed.name, exempt.name
    );
    let sshd = Sshd::start("ekeep", SshdOptions { policy, ..Default::default() });
    for u in [&typist, &relaxed, &exempt] {
        sshd.authorize(u);
    }
    let enforcer = Enforcer::start(&sshd, &[]);
    let sessions: Vec<Tmux> = [&typist, &relaxed, &exempt].iter().map(|u| tty_login(&sshd, &u.name, &[])).collect();
    let started = Instant::now();
    // 36 s: past the typist's limit + granularity, typing every 4 s.
    while started.elapsed() < Duration::from_secs(36) {
        sessions[0].type_line("true");
        std::thread::sleep(Duration::from_secs(4));
    }
    for (tmux, user) in sessions.iter().zip([&typist, &relaxed, &exempt]) {
        assert!(!tmux.is_dead(), "{} was disconnected:\n{}\n{}", user.name, tmux.capture(), enforcer.output());
        assert!(!tmux.capture().contains("will be disconnected"), "{} was warned:\n{}", user.name, tmux.capture());
    }
}

#[test]
fn idle_notty_is_disconnected_with_nothing_left_and_busy_one_kept() {
    if !e2e_enabled() {
        return;
    }
    let idle = TestUser::create("eni", &[]);
    let busy = TestUser::create("enb", &[]);
    let policy = format!("user {} idle=12s warn=4s\nuser {} idle=12s warn=4s\n", idle.name, busy.name);
    let sshd = Sshd::start("enotty", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&idle);
    sshd.authorize(&busy);
    let enforcer = Enforcer::start(&sshd, &[]);
    let started = Instant::now();
    // A command and a background child: both run in a session of their own
    // and would outlive a naive kill of the connection.
    let mut quiet = spawn_ssh(&sshd, &idle.name, "sleep 1000 & exec sleep 1001");
    let mut chatty = spawn_ssh(&sshd, &busy.name, "while :; do echo tick; sleep 2; done");
    wait_recorded(&sshd, &idle.name, 1);
    wait_recorded(&sshd, &busy.name, 1);
    let ended = wait_until(Duration::from_secs(30), || exited(&mut quiet));
    let took = started.elapsed();
    assert!(ended, "idle notty session not disconnected:\n{}", enforcer.output());
    assert!(took >= Duration::from_secs(12), "disconnected after {took:?}, before the limit");
    // First look 1 s after login, counters read every 1 s (limit/10): the
    // end comes at most ~3 s after the limit, plus the login itself.
    assert!(took <= Duration::from_secs(19), "disconnected after {took:?}");
    assert!(
        wait_until(Duration::from_secs(8), || user_processes(&idle).is_empty()),
        "processes left: {:?}",
        user_processes(&idle)
    );
    assert!(wait_until(Duration::from_secs(5), || sessions_of(&sshd, &idle.name).is_empty()), "record left");
    // The chatty one lives on well past its limit.
    std::thread::sleep(Duration::from_secs(25u64.saturating_sub(started.elapsed().as_secs())));
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
    // Quiet on both: the connection goes, not before 20 s after the last key.
    assert!(
        wait_until(Duration::from_secs(35), || master.is_dead() && second.is_dead()),
        "not disconnected once idle:\n{}\n{}",
        master.capture(),
        enforcer.output()
    );
    assert!(last_key.elapsed() >= Duration::from_secs(20), "ended {:?} after the last key", last_key.elapsed());
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
    let before = Instant::now();
    let tmux = tty_login(&sshd, &user.name, &[]);
    let ready = Instant::now();
    let ended = wait_until(Duration::from_secs(30), || {
        tmux.type_line("true");
        tmux.is_dead()
    });
    assert!(ended, "hard limit not enforced:\n{}\n{}", tmux.capture(), enforcer.output());
    assert!(before.elapsed() >= Duration::from_secs(15), "ended after {:?}", before.elapsed());
    assert!(ready.elapsed() <= Duration::from_secs(18), "ended {:?} after login", ready.elapsed());
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
            limits: Limits { idle: Some(1), warn: None, hard: Some(1) },
            rule: "test".into(),
            warned_at: None,
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
    std::thread::sleep(Duration::from_secs(12)); // well past idle + granularity
    let before = dir_contents(&sshd.state_dir);

    let out = sshd.ctl(&["enforce", "--once", "--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("would warn session") || said.contains("would disconnect session"), "{said}");
    let daemon = Enforcer::start(&sshd, &["--dry-run"]);
    std::thread::sleep(Duration::from_secs(3));
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
    wait_recorded(&sshd, &user.name, 2);
    let out = sshd.ctl(&["disconnect", "--user", &user.name]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(wait_until(Duration::from_secs(8), || tmux.is_dead() && exited(&mut third)), "--user left sessions");
    assert!(wait_until(Duration::from_secs(8), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
    assert!(wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name).is_empty()));
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
    assert!(wait_until(Duration::from_secs(8), || user_processes(&user).is_empty()), "{:?}", user_processes(&user));
    assert!(wait_until(Duration::from_secs(5), || sessions_of(&sshd, &user.name).is_empty()), "record left");
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
    let enforcer = Enforcer::start(&sshd, &[]);
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
    for (tmux, user) in [(&quiet, &idle), (&chatty, &busy)] {
        assert!(tmux.wait_for("sftp>", Duration::from_secs(15)), "no sftp prompt:\n{}\n{}", tmux.capture(), sshd.log());
        wait_recorded(&sshd, &user.name, 1);
    }
    let ended = wait_until(Duration::from_secs(30), || {
        if started.elapsed().as_secs().is_multiple_of(2) {
            chatty.type_line("ls");
        }
        // The client's ssh reports the close; sftp itself only notices at
        // its next command.
        quiet.capture().contains("closed by remote host")
    });
    let took = started.elapsed();
    assert!(
        ended,
        "idle sftp session not disconnected:\n{}\n{}\n{:#}\n{}",
        quiet.capture(),
        enforcer.output(),
        sshd.status_json(),
        sshd.log()
    );
    assert!(took >= Duration::from_secs(12), "disconnected after {took:?}, before the limit");
    assert!(took <= Duration::from_secs(22), "disconnected after {took:?}");
    assert!(wait_until(Duration::from_secs(5), || sessions_of(&sshd, &idle.name).is_empty()), "record left");
    assert!(
        wait_until(Duration::from_secs(8), || user_processes(&idle).is_empty()),
        "processes left: {:?}",
        user_processes(&idle)
    );
    while started.elapsed() < Duration::from_secs(26) {
        chatty.type_line("ls");
        std::thread::sleep(Duration::from_secs(2));
    }
    let screen = chatty.capture();
    assert!(
        !screen.contains("closed by remote host"),
        "a busy sftp session was disconnected:\n{screen}\n{}",
        enforcer.output()
    );
}
