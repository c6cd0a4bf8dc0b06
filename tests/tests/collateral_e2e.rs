//! End to end: ending a session ends only the session. Real sshd with
//! `pam_loginuid` in its PAM stack (so the audit session follows the login
//! through `sudo`), real users, a real pty through tmux, real `sudo`.

use sshidle::procfs;
use sshidle_tests::session::Enforcer;
use sshidle_tests::*;
use std::path::PathBuf;
use std::time::Duration;

/// `/etc/sudoers.d/NAME` letting one user run anything as root without a
/// password; removed on drop.
struct SudoRule {
    path: PathBuf,
}

impl SudoRule {
    fn allow(user: &TestUser) -> SudoRule {
        let path = PathBuf::from("/etc/sudoers.d").join(unique_name("sshidletest"));
        std::fs::write(&path, format!("{} ALL=(root) NOPASSWD: ALL\n", user.name)).expect("sudoers drop-in");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o440)).expect("chmod");
        SudoRule { path }
    }
}

impl Drop for SudoRule {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process found by its exact command line, killed on drop if still the same.
struct Found {
    pid: i32,
    start: u64,
}

impl Found {
    fn wait_for(cmdline: &str) -> Found {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(10), || {
            found = procfs::all_pids().into_iter().find(|p| procfs::title(*p).as_deref() == Some(cmdline));
            found.is_some()
        });
        assert!(ok, "no process '{cmdline}'");
        let pid = found.unwrap();
        Found { pid, start: procfs::start_time(pid).expect("start time") }
    }

    fn alive(&self) -> bool {
        procfs::is_same_process(self.pid, self.start)
    }
}

impl Drop for Found {
    fn drop(&mut self) {
        if self.alive() {
            signal(self.pid, libc::SIGKILL);
        }
    }
}

/// An admin's idle session ends: the root daemon it started with `sudo`
/// (which keeps the login's audit session) survives; the user's own
/// double-forked process, in the same audit session, does not.
#[test]
fn root_daemon_started_with_sudo_survives_and_users_daemon_does_not() {
    if !e2e_enabled() {
        return;
    }
    assert!(std::path::Path::new("/usr/bin/sudo").exists(), "sudo is missing: install it (it is in .ci/deps)");
    let user = TestUser::create("cad", &[]);
    let _sudo = SudoRule::allow(&user);
    // end=session, which ends the user's processes that left the tree: the
    // root one must survive even so (end=logout leaves both running).
    let policy = format!("user {} idle=10s warn=off end=session\n", user.name);
    let sshd = Sshd::start("collat", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&user);
    let enforcer = Enforcer::start(&sshd, &[]);
    let args = sshd.ssh_args(&user.name);
    let mut argv = vec![args[0].clone(), "-tt".to_string()];
    argv.extend(args[1..].iter().cloned());
    let tmux = Tmux::new(&argv);
    tmux.type_line("echo READY''GO");
    assert!(tmux.wait_for("READYGO", Duration::from_secs(15)), "no shell:\n{}\n{}", tmux.capture(), sshd.log());
    // Unique command lines, to find the two daemons among other tests' processes.
    let (root_cmd, user_cmd) = (format!("sleep 9{}", sshd.port), format!("sleep 8{}", sshd.port));
    tmux.type_line(&format!("sudo -n sh -c 'setsid {root_cmd} </dev/null >/dev/null 2>&1 &'; echo SUDO''DONE=$?"));
    // sudo (use_pty) eats what is typed while it runs: one line at a time.
    assert!(tmux.wait_for("SUDODONE=0", Duration::from_secs(10)), "sudo failed:\n{}", tmux.capture());
    tmux.type_line(&format!("(setsid {user_cmd} </dev/null >/dev/null 2>&1 &); echo FORK''DONE"));
    assert!(tmux.wait_for("FORKDONE", Duration::from_secs(10)), "no fork:\n{}", tmux.capture());
    let root_daemon = Found::wait_for(&root_cmd);
    let user_daemon = Found::wait_for(&user_cmd);

    // Both left the session's tree and are in its audit session: only the
    // real uid tells them apart.
    let rows = sshd.status_json();
    let row = rows.as_array().unwrap().iter().find(|r| r["user"] == user.name.as_str()).expect("recorded").clone();
    let monitor: i32 = row["id"].as_str().unwrap().parse().unwrap();
    let audit = procfs::audit_session(monitor).expect("pam_loginuid set an audit session");
    for (daemon, real) in [(&root_daemon, 0), (&user_daemon, user.uid)] {
        assert!(!descendants(monitor).contains(&daemon.pid), "still in the tree");
        assert_eq!(procfs::audit_session(daemon.pid), Some(audit));
        assert_eq!(procfs::login_uid(daemon.pid), Some(user.uid));
        assert_eq!(procfs::real_uid(daemon.pid), Some(real));
    }

    assert!(
        wait_until(Duration::from_secs(40), || tmux.is_dead()),
        "idle session not disconnected:\n{}\n{}",
        tmux.capture(),
        enforcer.output()
    );
    // The grace period (5 s) then SIGKILL: the user's daemon is gone by then.
    assert!(
        wait_until(Duration::from_secs(10), || !user_daemon.alive()),
        "the user's double-forked process survived the disconnect:\n{}",
        enforcer.output()
    );
    std::thread::sleep(Duration::from_secs(2));
    // A sleep dies of SIGHUP and SIGTERM alike: alive means never signalled.
    assert!(root_daemon.alive(), "the root daemon started with sudo was ended:\n{}", enforcer.output());
}
