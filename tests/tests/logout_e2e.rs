//! End to end, issue 20: a disconnect for idleness is a logout. Under
//! `end=logout` (the default) the user's detached work (a tmux server, a
//! `nohup` job) survives, under `end=session` it does not; under both sshd
//! sees an ordinary end of the connection: no error logged, `close_session`
//! run, the logout in wtmp. And rules by where a login comes from (`from`).
//! Real sshd (logging to syslog, so every line has its priority), real
//! users, real ptys through tmux, a real tmux server started by the user.

use sshidle::procfs;
use sshidle_tests::session::*;
use sshidle_tests::syslog::severity;
use sshidle_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A process found by its exact command line among `user`'s.
fn process_of(user: &TestUser, cmdline: &str) -> (i32, u64) {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(15), || {
        found = procfs::all_pids()
            .into_iter()
            .find(|p| procfs::real_uid(*p) == Some(user.uid) && procfs::title(*p).as_deref() == Some(cmdline));
        found.is_some()
    });
    assert!(ok, "no process '{cmdline}' of {}: {:?}", user.name, user_processes(user));
    let pid = found.unwrap();
    (pid, procfs::start_time(pid).expect("start time"))
}

/// What a user left running before idling: a tmux server (started attached,
/// then detached) running a job, and a `nohup` job.
struct DetachedWork {
    tmux_server: (i32, u64),
    tmux_job: (i32, u64),
    nohup_job: (i32, u64),
    socket: String,
}

impl DetachedWork {
    fn start(login: &Tmux, user: &TestUser, tag: u16) -> DetachedWork {
        let socket = format!("/home/{}/work.sock", user.name);
        let (job, nohup) = (format!("sleep 21{tag}"), format!("sleep 22{tag}"));
        // Attached first, as a user would: the tmux client runs on the pty.
        login.type_line(&format!("tmux -S {socket} new-session -s work {job}"));
        let tmux_job = process_of(user, &job);
        // Detach (the outer tmux passes the keys through to the inner one).
        login.send_keys(&["C-b", "d"]);
        assert!(login.wait_for("[detached", Duration::from_secs(10)), "tmux not detached:\n{}", login.capture());
        login.type_line(&format!("nohup {nohup} >/dev/null 2>&1 & echo NOHUP''STARTED"));
        assert!(login.wait_for("NOHUPSTARTED", Duration::from_secs(10)), "{}", login.capture());
        let nohup_job = process_of(user, &nohup);
        let server = procfs::parent_pid(tmux_job.0).expect("the job's parent, tmux's server");
        let tmux_server = (server, procfs::start_time(server).expect("server start"));
        DetachedWork { tmux_server, tmux_job, nohup_job, socket }
    }

    /// (name, alive) of each process.
    fn alive(&self) -> Vec<(&'static str, bool)> {
        [("tmux server", self.tmux_server), ("job in tmux", self.tmux_job), ("nohup job", self.nohup_job)]
            .into_iter()
            .map(|(name, (pid, start))| (name, procfs::is_same_process(pid, start)))
            .collect()
    }
}

/// Whether syslog line `m` comes from the test's sshd: logged under its
/// service's name (OpenSSH 9.2 logs as argv[0]), or, from OpenSSH 9.8, by the
/// per-connection `sshd-session` (and `sshd-auth`), whose name is fixed.
fn from_sshd(m: &str, service: &str) -> bool {
    m.contains(service) || ["sshd-session[", "sshd-auth["].iter().any(|ident| m.contains(ident))
}

/// An error line that every logout on the system logs, ordinary or not:
/// Debian 13's sshd has no utmp to write the logout to.
fn logged_at_every_logout(m: &str) -> bool {
    m.contains("syslogin_perform_logout: logout() returned an error")
}

/// The port of `user`'s connection, from sshd's `Accepted ... for USER from
/// 127.0.0.1 port P`.
fn port_of(messages: &[String], service: &str, user: &str) -> String {
    let accepted = format!("for {user} from 127.0.0.1 port ");
    let line = messages
        .iter()
        .filter(|m| from_sshd(m, service))
        .find_map(|m| m.split(&accepted).nth(1).map(str::to_string))
        .unwrap_or_else(|| panic!("no accepted login of {user}: {messages:#?}"));
    line.split_whitespace().next().expect("port").to_string()
}

/// sshd logged the ordinary end of `user`'s connection, at INFO: the
/// client's disconnect, or the connection closed as by a client.
fn assert_ordinary_close(messages: &[String], service: &str, user: &str, enforcer: &Enforcer) {
    let port = port_of(messages, service, user);
    let closed = format!("Connection closed by 127.0.0.1 port {port}");
    let disconnected = format!("Disconnected from user {user} 127.0.0.1 port {port}");
    let ours: Vec<&String> = messages.iter().filter(|m| from_sshd(m, service)).collect();
    assert!(
        ours.iter().any(|m| [&closed, &disconnected].iter().any(|end| m.contains(end.as_str()))),
        "sshd did not end {user}'s connection the ordinary way (port {port}):\n{ours:#?}\n{}",
        enforcer.output()
    );
}

/// A client stopped with SIGSTOP, killed on drop (also when the test fails).
struct StoppedClient(std::process::Child);

impl Drop for StoppedClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn assert_logout_in_wtmp(user: &TestUser) {
    logouts::assert_logout_recorded(&user.name, "127.0.0.1");
}

#[test]
fn detached_work_survives_end_logout_and_not_end_session_and_sshd_sees_an_ordinary_end() {
    if !e2e_enabled() {
        return;
    }
    let syslog = SyslogCapture::start();
    let keep = TestUser::create("lgk", &[]);
    let free = TestUser::create("lgf", &[]);
    // A remote command without a terminal that ignores the hangup: only
    // closing the connection ends its session.
    let deaf = TestUser::create("lgn", &[]);
    // A pty login whose client was stopped (a laptop gone to sleep): it
    // answers nothing, so only closing the connection ends it.
    let asleep = TestUser::create("lgs", &[]);
    // The default for three, end=session for one; the same limit.
    let policy = format!(
        "user {} idle=10s warn=off\nuser {} idle=10s warn=off end=session\nuser {} idle=10s warn=off\n\
         user {} idle=10s warn=off\n",
        keep.name, free.name, deaf.name, asleep.name
    );
    // pam_loginuid required: end=session finds what left the tree by the
    // login's audit session.
    let sshd =
        Sshd::start("logout", SshdOptions { policy, syslog: true, loginuid_required: true, ..Default::default() });
    sshd.authorize(&keep);
    sshd.authorize(&free);
    sshd.authorize(&deaf);
    sshd.authorize(&asleep);
    // Bystanders: each user's process started outside the login (another
    // audit session), which neither ending may touch.
    let bystander = |user: &TestUser, n: u16| {
        let cmd = format!("sleep 24{n}");
        let mut child = Command::new("runuser")
            .args(["-u", &user.name, "--", "setsid"])
            .args(cmd.split(' '))
            .spawn()
            .expect("runuser");
        let found = process_of(user, &cmd);
        let _ = child.try_wait();
        found
    };
    let bystanders = [bystander(&keep, sshd.port), bystander(&free, sshd.port + 1)];
    let mut enforcer = Enforcer::start(&sshd, &[]);
    let (keep_login, free_login) = (tty_login(&sshd, &keep.name, &[]), tty_login(&sshd, &free.name, &[]));
    let keep_work = DetachedWork::start(&keep_login, &keep, sshd.port);
    let free_work = DetachedWork::start(&free_login, &free, sshd.port + 1);
    let deaf_cmd = format!("sleep 23{}", sshd.port);
    let deaf_log = sshd.dir.join("deaf-client.log");
    let mut deaf_client = {
        let args = sshd.ssh_args(&deaf.name);
        Command::new(&args[0])
            .args(&args[1..])
            .arg(format!("trap '' HUP; exec {deaf_cmd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&deaf_log).expect("client log"))
            .spawn()
            .expect("ssh")
    };
    let deaf_job = process_of(&deaf, &deaf_cmd);
    // Not in tmux, which would SIGCONT its stopped pane: a pty forced with
    // -tt, its input a pipe the test holds open.
    let asleep_client = {
        let args = session::ssh_with(&sshd, &asleep.name, &["-tt"]);
        Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh")
    };
    let stopped = StoppedClient(asleep_client);
    let rows = |user: &TestUser| wait_recorded(&sshd, &user.name, 1).remove(0);
    let (keep_row, free_row, deaf_row, asleep_row) = (rows(&keep), rows(&free), rows(&deaf), rows(&asleep));
    // Its shell is up (its pty is found): the client goes to sleep.
    wait_until(Duration::from_secs(10), || !sessions_of(&sshd, &asleep.name)[0]["ttys"].as_array().unwrap().is_empty());
    signal(stopped.0.id() as i32, libc::SIGSTOP);
    // status --json shows what ending each session ends.
    assert_eq!(keep_row["end"], "logout", "{keep_row}");
    assert_eq!(free_row["end"], "session", "{free_row}");
    let pid = |row: &serde_json::Value| row["pid"].as_i64().unwrap() as i32;

    let ended = wait_until(Duration::from_secs(40), || {
        keep_login.is_dead() && free_login.is_dead() && exited(&mut deaf_client)
    });
    assert!(ended, "not all disconnected:\n{}\n{}\n{}", keep_login.capture(), free_login.capture(), enforcer.output());
    enforcer.assert_alive();
    // Each session ended, by sshd's own close_session, and the logout is in wtmp.
    for (row, user) in [(&keep_row, &keep), (&free_row, &free), (&deaf_row, &deaf), (&asleep_row, &asleep)] {
        let closed = format!("session {} of {} closed: ended by sshidle", pid(row), user.name);
        if syslog.wait_for(&closed, Duration::from_secs(5)).is_none() {
            let ours: Vec<String> = syslog.messages().into_iter().filter(|m| from_sshd(m, &sshd.service)).collect();
            panic!("close_session of {} did not run:\n{ours:#?}\n{}", user.name, enforcer.output());
        }
    }
    assert_logout_in_wtmp(&keep);
    assert_logout_in_wtmp(&free);
    assert_logout_in_wtmp(&asleep);

    // end=logout: the detached work lives on, as after any logout...
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        keep_work.alive().iter().all(|(_, alive)| *alive),
        "end=logout ended detached work: {:?}\n{}",
        keep_work.alive(),
        enforcer.output()
    );
    // So does a command that ignores the hangup, as after a logout; its
    // connection was closed under it.
    assert!(procfs::is_same_process(deaf_job.0, deaf_job.1), "end=logout ended a command that ignores SIGHUP");
    for row in [&deaf_row, &asleep_row] {
        let shut = format!("session {}: connection still open after the hangup; shut down", pid(row));
        let mine: Vec<String> = syslog.messages().into_iter().filter(|m| from_sshd(m, &sshd.service)).collect();
        assert!(enforcer.output().contains(&shut), "{}\n{mine:#?}", enforcer.output());
    }
    // ... and the user finds the tmux session again at the next login.
    let out = sshd.ssh(&keep.name, &format!("tmux -S {} list-sessions", keep_work.socket));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("work:"), "tmux session lost: {}", describe(&out));
    // end=session: none of it is left (SIGTERM; SIGKILL at 5 s).
    assert!(
        wait_until(Duration::from_secs(8), || free_work.alive().iter().all(|(_, alive)| !*alive)),
        "end=session left detached work running: {:?}\n{}",
        free_work.alive(),
        enforcer.output()
    );

    for (pid, start) in bystanders {
        assert!(procfs::is_same_process(pid, start), "a process of the user's started outside the login was ended");
    }

    // sshd saw an ordinary end of each connection, and nothing, neither
    // sshd nor the module nor the enforcer, logged an error about it.
    wait_until(Duration::from_secs(3), || {
        syslog
            .messages()
            .iter()
            .filter(|m| m.contains("session closed for user") || m.contains("closed: ended"))
            .count()
            >= 2
    });
    let messages = syslog.messages();
    assert_ordinary_close(&messages, &sshd.service, &keep.name, &enforcer);
    assert_ordinary_close(&messages, &sshd.service, &free.name, &enforcer);
    assert_ordinary_close(&messages, &sshd.service, &deaf.name, &enforcer);
    assert_ordinary_close(&messages, &sshd.service, &asleep.name, &enforcer);
    let users = [&keep, &free, &deaf, &asleep];
    let ours = |m: &&String| from_sshd(m, &sshd.service) || users.iter().any(|u| m.contains(&u.name));
    // From the first login on (the harness's readiness probe, a bare TCP
    // connect, makes sshd log an error of its own before).
    let first_login = messages.iter().position(|m| m.contains("Accepted publickey")).expect("a login");
    let errors: Vec<&String> = messages[first_login..]
        .iter()
        .filter(ours)
        .filter(|m| severity(m).is_some_and(|s| s <= libc::LOG_ERR) && !logged_at_every_logout(m))
        .collect();
    assert!(errors.is_empty(), "error lines logged for an ordinary disconnect: {errors:#?}");
    // No last resort either: sshd's processes got no signal.
    let resorts: Vec<&String> =
        messages.iter().filter(ours).filter(|m| m.contains("SIGTERM") && m.contains("sshd")).collect();
    assert!(resorts.is_empty(), "{resorts:#?}\n{}", enforcer.output());
    // The audit lines say which ending applied.
    for (user, end) in [(&keep, "end=logout"), (&free, "end=session"), (&deaf, "end=logout"), (&asleep, "end=logout")] {
        let audit = messages
            .iter()
            .find(|m| m.contains("event=disconnect") && m.contains(&format!("user={}", user.name)))
            .unwrap_or_else(|| panic!("no audit line for {}: {messages:#?}", user.name));
        assert!(audit.contains(end), "{audit}");
    }
    // The client without a terminal saw the server close the connection (the
    // pty clients exit as at a logout, with their shell's end).
    let client_said = std::fs::read_to_string(&deaf_log).unwrap_or_default();
    assert!(client_said.contains("closed by remote host"), "the client says: {client_said}");
}

/// `from` rules, by the address sshd gives PAM: a login from 127.0.0.2
/// (`ssh -b`) gets a `from 127.0.0.2/32` rule and one from 127.0.0.1 does
/// not; `::1`; a negated pattern; a user+group+from line whose group must
/// match too; a bad CIDR is a FILE:LINE error, skipped, and logins go on.
#[test]
fn from_rules_match_where_the_login_comes_from() {
    if !e2e_enabled() {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        skip_or_fail("this machine has no IPv6 loopback (::1): the from ::1 rule cannot be tried");
        return;
    }
    let group = TestGroup::create("lgg");
    // a and a2 match `user lga*`, only a is in the group.
    let (a, a2, b, c, d) = (
        TestUser::create("lga", &[&group.name]),
        TestUser::create("lga", &[]),
        TestUser::create("lgb", &[]),
        TestUser::create("lgc", &[]),
        TestUser::create("lgd", &[]),
    );
    let g = &group.name;
    let policy = format!(
        "user * from 10.0.0.0/33 idle=1m\n\
         user lga* group {g} from 127.0.0.2/32 idle=61m\n\
         user {b} from 127.0.0.2/32 idle=62m\n\
         user {c} from ::1 idle=63m\n\
         user {d} from *,!127.0.0.2 idle=64m\n\
         * idle=65m\n",
        b = b.name,
        c = c.name,
        d = d.name,
    );
    let sshd =
        Sshd::start("from", SshdOptions { policy, sshd_extra: "ListenAddress ::1".into(), ..Default::default() });
    for u in [&a, &a2, &b, &c, &d] {
        sshd.authorize(u);
    }
    let journal = JournalWatch::start(&sshd.state_dir);
    let conf = sshd.policy_path.display().to_string();
    // Logs in (bound to `source`, to `dest`), runs `true`, and returns the
    // rule the module recorded.
    let rule_of = |user: &TestUser, source: Option<&str>, dest: &str| {
        let mut args = sshd.ssh_args(&user.name);
        assert_eq!(args.pop(), Some(format!("{}@127.0.0.1", user.name)));
        if let Some(source) = source {
            args.extend(["-b".to_string(), source.to_string()]);
        }
        args.push(format!("{}@{dest}", user.name));
        let before = journal.lines().len();
        let out = Command::new(&args[0]).args(&args[1..]).arg("true").stdin(Stdio::null()).output().expect("ssh");
        assert!(out.status.success(), "login of {} from {source:?}: {}\n{}", user.name, describe(&out), sshd.log());
        let mut rule = None;
        wait_until(Duration::from_secs(5), || {
            rule = journal.lines()[before..]
                .iter()
                .filter(|l| l.kind == "open" && l.user.as_deref() == Some(user.name.as_str()))
                .find_map(|l| l.text.split("\trule=").nth(1).map(|r| r.split('\t').next().unwrap().to_string()));
            rule.is_some()
        });
        rule.unwrap_or_else(|| panic!("no open line of {}:\n{}", user.name, journal.dump()))
    };
    let at = |n: usize, selector: &str| format!("{conf}:{n}: {selector}");
    let user_group = format!("user lga* group {g} from 127.0.0.2/32");
    assert_eq!(rule_of(&a, Some("127.0.0.2"), "127.0.0.1"), at(2, &user_group));
    assert_eq!(rule_of(&a, None, "127.0.0.1"), at(6, "*"), "from 127.0.0.1 is not from 127.0.0.2/32");
    assert_eq!(rule_of(&a2, Some("127.0.0.2"), "127.0.0.1"), at(6, "*"), "the group must match too");
    assert_eq!(rule_of(&b, Some("127.0.0.2"), "127.0.0.1"), at(3, &format!("user {} from 127.0.0.2/32", b.name)));
    assert_eq!(rule_of(&c, None, "::1"), at(4, &format!("user {} from ::1", c.name)));
    assert_eq!(rule_of(&c, None, "127.0.0.1"), at(6, "*"));
    assert_eq!(rule_of(&d, None, "127.0.0.1"), at(5, &format!("user {} from *,!127.0.0.2", d.name)));
    assert_eq!(rule_of(&d, Some("127.0.0.2"), "127.0.0.1"), at(6, "*"), "the negated address");

    // The bad CIDR: reported with its file and line, and skipped.
    let check = sshd.ctl(&["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", describe(&check));
    let said = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(said.contains(&format!("{conf}:1: from: '10.0.0.0/33' is not a valid CIDR network")), "{said}");
    // explain --from names the rule and why; without --from it lists the
    // from rules that would decide first.
    let explain = sshd.ctl(&["explain", &a.name, "--from", "127.0.0.2"]);
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(text.contains(&format!("rule:   {}", at(2, &user_group))), "{text}");
    assert!(text.contains(&format!("why:    user lga* matches {}", a.name)), "{text}");
    assert!(text.contains(&format!("group {g} matches a group of {} (in {g})", a.name)), "{text}");
    assert!(text.contains("from 127.0.0.2/32 matches 127.0.0.2"), "{text}");
    assert!(text.contains("end:    logout"), "{text}");
    let explain = sshd.ctl(&["explain", &a.name]);
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(text.contains("from:   not given"), "{text}");
    assert!(text.contains(&at(2, &user_group)), "{text}");
    assert!(text.contains(&format!("rule:   {}", at(6, "*"))), "{text}");
}

/// A ControlMaster connection whose client opens new channels in a tight
/// loop while `disconnect` ends it: sshd may start a channel's command (in a
/// session of its own) after the session's processes were collected, until
/// its user child has read the end of the connection and exited. None of
/// those commands may outlive the session under `end=logout`; what a logout
/// leaves running must: the user's process started outside the login, jobs
/// the session started before its end that left its tree (setsid'ed, one of
/// them nohup'ed too), and another login of the same user, which detaches
/// jobs of its own all the while.
#[test]
fn channels_opened_while_the_session_ends_do_not_outlive_it() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("lgr", &[]);
    let policy = format!("user {} idle=10m\n", user.name);
    // Enough channels for the loop: sshd refuses a channel past MaxSessions.
    let sshd = Sshd::start("race", SshdOptions { policy, sshd_extra: "MaxSessions 1000".into(), ..Default::default() });
    sshd.authorize(&user);
    let p = sshd.port;
    let outside = {
        let cmd = format!("sleep 24{p}");
        let mut child = Command::new("runuser")
            .args(["-u", &user.name, "--", "setsid"])
            .args(cmd.split(' '))
            .spawn()
            .expect("runuser");
        let found = process_of(&user, &cmd);
        let _ = child.try_wait();
        found
    };
    let socket = sshd.dir.join("master.sock");
    let path_opt = format!("ControlPath={}", socket.display());
    // The master's own command starts the detached jobs, then waits.
    let (setsid_job, nohup_job) = (format!("sleep 25{p}"), format!("sleep 26{p}"));
    let master_cmd = format!(
        "(setsid {setsid_job} >/dev/null 2>&1 </dev/null &); (nohup setsid {nohup_job} >/dev/null 2>&1 </dev/null &); \
         exec sleep 1003"
    );
    let mut master = {
        let args = session::ssh_with(&sshd, &user.name, &["-o", "ControlMaster=yes", "-o", &path_opt]);
        Command::new(&args[0])
            .args(&args[1..])
            .arg(&master_cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh")
    };
    let jobs = [process_of(&user, &setsid_job), process_of(&user, &nohup_job)];
    let id = wait_recorded(&sshd, &user.name, 1)[0]["id"].as_str().unwrap().to_string();
    // The other login: a setsid'ed job every 20 ms, each PID noted.
    let other_job = format!("sleep 28{p}");
    let mut other = spawn_ssh(
        &sshd,
        &user.name,
        &format!("while :; do (setsid {other_job} >/dev/null 2>&1 </dev/null & echo $! >>jobs); sleep 0.02; done"),
    );
    wait_recorded(&sshd, &user.name, 2);
    assert!(wait_until(Duration::from_secs(10), || socket.exists()), "no control socket");
    // New channels of the master, as fast as clients start. A client whose
    // master is gone fails (ProxyCommand=false) instead of logging in anew.
    let channel = format!("sleep 27{p}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = {
        let stop = std::sync::Arc::clone(&stop);
        let args = session::ssh_with(
            &sshd,
            &user.name,
            &["-o", "ControlMaster=no", "-o", &path_opt, "-o", "ProxyCommand=false"],
        );
        let channel = channel.clone();
        std::thread::spawn(move || {
            let (mut clients, mut spawned) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let client = Command::new(&args[0])
                    .args(&args[1..])
                    .arg(&channel)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("ssh");
                clients.push(client);
                spawned += 1;
                std::thread::sleep(Duration::from_millis(10));
                clients.retain_mut(|c| !exited(c));
            }
            for mut c in clients {
                let _ = c.kill();
                let _ = c.wait();
            }
            spawned
        })
    };
    let channels = || user_processes(&user).iter().filter(|p| p.ends_with(&channel)).count();
    assert!(wait_until(Duration::from_secs(10), || channels() >= 3), "no channel started: {:?}", user_processes(&user));
    let out = sshd.ctl(&["disconnect", &id]);
    // The loop goes on a little: its clients now fail.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let spawned = looping.join().expect("the loop");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(spawned >= 20, "the loop started only {spawned} clients");
    assert!(wait_until(Duration::from_secs(8), || exited(&mut master)), "the master was not disconnected");
    // The other login's jobs noted by now have all exec'ed 0.3 s later.
    let home = std::path::PathBuf::from(format!("/home/{}", user.name));
    let noted = std::fs::read_to_string(home.join("jobs")).expect("the other login's jobs");
    std::thread::sleep(Duration::from_millis(300));
    let other_jobs: Vec<i32> = noted.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(other_jobs.len() >= 20, "the other login started only {} jobs", other_jobs.len());
    for pid in &other_jobs {
        let title = procfs::title(*pid);
        assert_eq!(title.as_deref(), Some(other_job.as_str()), "the other login's job {pid} was ended");
    }
    assert!(!exited(&mut other), "the other login was ended");
    // What the master's session ran: its command and its channels'.
    let left = || -> Vec<String> {
        user_processes(&user).into_iter().filter(|p| p.ends_with(" sleep 1003") || p.ends_with(&channel)).collect()
    };
    let ended = wait_until(Duration::from_secs(8), || left().is_empty());
    // What the sweep saw of them, if it did.
    let details = |p: &String| {
        let pid: i32 = p.split(' ').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let stat = procfs::read_stat(pid).map(|s| (s.ppid, s.session, s.start));
        format!("{p}: (ppid, session, start) {stat:?}, SSH_CONNECTION {:?}", procfs::ssh_connection(pid))
    };
    assert!(
        ended,
        "outlived the session:\n{}\ndisconnect: {}",
        left().iter().map(details).collect::<Vec<_>>().join("\n"),
        describe(&out)
    );
    for ((pid, start), what) in [(outside, "started outside the login"), (jobs[0], "setsid'ed"), (jobs[1], "nohup'ed")]
    {
        assert!(procfs::is_same_process(pid, start), "the user's process {what} was ended");
    }
}
