//! End to end: real ssh logins through a private sshd on 127.0.0.1 whose PAM
//! service loads the built module; `sshidlectl status --json` shows them with
//! the limits and rule the policy gives, and they are gone after logout.

use sshidle_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn session_of<'a>(status: &'a serde_json::Value, user: &str) -> Option<&'a serde_json::Value> {
    status.as_array()?.iter().find(|s| s["user"] == user)
}

#[test]
fn logins_are_recorded_with_their_rule_and_removed_at_logout() {
    if !e2e_enabled() {
        return;
    }
    let team = TestGroup::create("stm");
    // Listed first, but also in the group: the user rule comes first and wins.
    let ruled = TestUser::create("sru", &[&team.name]);
    // Matches only through a supplementary group.
    let member = TestUser::create("smu", &[&team.name]);
    let stranger = TestUser::create("ssu", &[]);
    let policy = format!("user {} idle=7m warn=1m\ngroup {} idle=10m warn=2m hard=8h\n", ruled.name, team.name);
    let sshd = Sshd::start("login", SshdOptions { policy, ..Default::default() });
    for user in [&ruled, &member, &stranger] {
        sshd.authorize(user);
    }
    let journal = JournalWatch::start(&sshd.state_dir);
    // Three logins held open by a remote sleep until the test lets them go.
    let mut clients: Vec<_> = [&ruled, &member, &stranger]
        .iter()
        .map(|user| {
            let args = sshd.ssh_args(&user.name);
            Command::new(&args[0]).args(&args[1..]).arg("sleep 30").stdin(Stdio::null()).spawn().expect("ssh")
        })
        .collect();
    let all_in = wait_until(Duration::from_secs(15), || {
        let status = sshd.status_json();
        [&ruled, &member, &stranger].iter().all(|u| session_of(&status, &u.name).is_some())
    });
    let status = sshd.status_json();
    assert!(all_in, "not all logins recorded: {status:#}\n{}", sshd.log());
    let policy = sshd.policy_path.display();

    let s = session_of(&status, &ruled.name).unwrap();
    assert_eq!(s["idle_limit_secs"], 420, "{s}");
    assert_eq!(s["warn_secs"], 60);
    assert_eq!(s["hard_limit_secs"], serde_json::Value::Null);
    assert_eq!(s["rule"], format!("{policy}:1: user {}", ruled.name));
    assert_eq!(s["uid"], ruled.uid);
    assert_eq!(s["from"], "127.0.0.1");
    assert_eq!(s["service"], sshd.service);

    let s = session_of(&status, &member.name).unwrap();
    assert_eq!(s["idle_limit_secs"], 600, "{s}");
    assert_eq!(s["hard_limit_secs"], 8 * 3600);
    assert_eq!(s["rule"], format!("{policy}:2: group {}", team.name));

    let s = session_of(&status, &stranger.name).unwrap();
    assert_eq!(s["idle_limit_secs"], serde_json::Value::Null, "{s}");
    assert_eq!(s["time_left_secs"], serde_json::Value::Null);
    assert_eq!(s["rule"], "none");

    // The recorded PID is sshd's privileged monitor, a child of the listener.
    for s in status.as_array().unwrap() {
        let pid = s["pid"].as_i64().unwrap() as i32;
        assert_eq!(sshidle::procfs::parent_pid(pid), Some(sshd.pid), "{s}");
    }

    // Logout: end the remote commands, then every record is gone.
    // (The record appears at open_session, before the remote command starts,
    // so keep ending it until the client is gone.)
    let users = [&ruled, &member, &stranger];
    let ended = wait_until(Duration::from_secs(20), || {
        for user in users {
            let _ = Command::new("pkill").args(["-u", &user.name, "-x", "sleep"]).status();
        }
        clients.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_))))
    });
    assert!(ended, "ssh clients did not exit");
    // close_session wrote a close for each (status would hide a record
    // whose monitor is gone, so read the journal).
    for s in status.as_array().unwrap() {
        journal.assert_closed(s["pid"].as_i64().unwrap() as i32, Duration::from_secs(10));
    }
    let state = sshidle::StateDir::open(&sshd.state_dir, false).unwrap();
    assert_eq!(state.load().unwrap().sessions, vec![]);
}

#[test]
fn interactive_pty_login_is_recorded_and_closed() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("spt", &[]);
    let sshd = Sshd::start("pty", SshdOptions { policy: "* idle=15m warn=1m\n".into(), ..Default::default() });
    sshd.authorize(&user);
    let journal = JournalWatch::start(&sshd.state_dir);
    let mut argv = sshd.ssh_args(&user.name);
    argv.insert(1, "-tt".into());
    let tmux = Tmux::new(&argv);
    tmux.type_line("echo READY-$((6*7))");
    assert!(tmux.wait_for("READY-42", Duration::from_secs(10)), "{}", tmux.capture());
    let status = sshd.status_json();
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{status:#}");
    assert_eq!(rows[0]["user"], user.name);
    assert_eq!(rows[0]["idle_limit_secs"], 900);
    tmux.type_line("exit");
    assert!(wait_until(Duration::from_secs(10), || tmux.is_dead()), "{}", tmux.capture());
    journal.assert_closed(rows[0]["pid"].as_i64().unwrap() as i32, Duration::from_secs(10));
    assert!(sshd.status_json().as_array().is_some_and(|a| a.is_empty()), "{:#}", sshd.status_json());
}

#[test]
fn broken_policy_and_state_never_block_a_real_login() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("sbk", &[]);
    let sshd = Sshd::start(
        "broken",
        SshdOptions { policy: "this is not a policy\n* idle=nonsense\n".into(), ..Default::default() },
    );
    sshd.authorize(&user);
    std::fs::create_dir_all(&sshd.state_dir).unwrap();
    std::fs::write(sshd.state_dir.join("sessions"), vec![0xffu8; 4096]).unwrap();
    let out = sshd.ssh(&user.name, "echo logged-in");
    assert!(out.status.success(), "{}\n{}", describe(&out), sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "logged-in");
    let check = sshd.ctl(&["check"]);
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains(&format!("{}:1: unknown selector 'this'", sshd.policy_path.display())), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: idle: invalid duration 'nonsense'", sshd.policy_path.display())),
        "{stderr}"
    );
}

/// The harness's private sshd runs the PAM stack of its own service, never
/// the system's `/etc/pam.d/sshd`: OpenSSH up to 9.7 names the service after
/// argv[0] (a symlink), 9.8 and later after `PAMServiceName`, which sshd
/// always calls `sshd` otherwise. A pam_exec line of the private stack
/// writes down the `PAM_SERVICE` libpam ran; libpam reads the stack of that
/// name (or `other`), so a unique name there means `/etc/pam.d/sshd` was
/// not read. The module, watching only `services=<that name>`, recorded the
/// login under it.
#[test]
fn the_private_sshd_runs_its_own_pam_service() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("sps", &[]);
    let scratch = TempDir::new("pam-service");
    let (script, seen) = (scratch.join("seen.sh"), scratch.join("seen"));
    std::fs::write(&script, format!("#!/bin/sh\necho \"$PAM_SERVICE $PAM_TYPE\" >>{}\n", seen.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sshd = Sshd::start(
        "service",
        SshdOptions {
            policy: "* idle=15m\n".into(),
            pam_before: format!("session required pam_exec.so {}", script.display()),
            ..Default::default()
        },
    );
    sshd.authorize(&user);
    assert_ne!(sshd.service, "sshd");
    let config = std::fs::read_to_string(&sshd.config_path).unwrap();
    let named = format!("PAMServiceName {}", sshd.service);
    assert_eq!(config.lines().any(|l| l == named), sshidle_tests::sshd::knows_pam_service_name(), "{config}");
    let journal = JournalWatch::start(&sshd.state_dir);
    let out = sshd.ssh(&user.name, "true");
    assert!(out.status.success(), "{}\n{}", describe(&out), sshd.log());
    let closed = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.contains("close_session"))
    });
    let seen = std::fs::read_to_string(&seen).unwrap_or_default();
    assert!(closed, "pam_exec of the private stack did not run at close: {seen:?}\n{}", sshd.log());
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [format!("{} open_session", sshd.service), format!("{} close_session", sshd.service)],
        "the PAM service sshd ran"
    );
    // The watcher reads the journal every few ms: it may not have read the
    // lines yet (a loaded machine).
    let opens = || -> Vec<_> { journal.lines().into_iter().filter(|l| l.kind == "open").collect() };
    assert!(wait_until(Duration::from_secs(10), || !opens().is_empty()), "no open:\n{}", journal.dump());
    let pid = opens()[0].pid;
    journal.assert_closed(pid, Duration::from_secs(10));
    let opens = opens();
    assert_eq!(opens.len(), 1, "the module recorded the login once:\n{}", journal.dump());
    assert!(opens[0].text.contains(&format!("\tservice={}\t", sshd.service)), "{}", opens[0].text);
}
