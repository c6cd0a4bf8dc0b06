//! End to end: no session escapes the record. A login the module cannot
//! write (the state directory full, the lock held by a stuck writer) still
//! goes through, and the enforcer finds it among sshd's processes, adopts it
//! with its user's rule and enforces it; `status` marks it. Real sshd, real
//! users, real ptys through tmux, a real tmpfs.

use sshidle_tests::session::{self, tty_login_timed, Enforcer};
use sshidle_tests::*;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny tmpfs mounted on `path`, filled up; unmounted on drop.
struct FullTmpfs {
    path: PathBuf,
}

impl FullTmpfs {
    fn mount(path: &Path) -> FullTmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"]).arg(path));
        let tmpfs = FullTmpfs { path: path.to_path_buf() };
        let filler = std::fs::write(path.join("filler"), vec![0u8; 1 << 20]);
        assert!(filler.is_err(), "the tmpfs did not fill up");
        tmpfs
    }
}

impl Drop for FullTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

fn status(sshd: &Sshd) -> Vec<serde_json::Value> {
    let out = sshd.ctl(&["status", "--json", "--find-unrecorded"]);
    assert!(out.status.success(), "status: {}", describe(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("status JSON")
}

fn rows_of(sshd: &Sshd, user: &str) -> Vec<serde_json::Value> {
    status(sshd).into_iter().filter(|r| r["user"] == user).collect()
}

/// A pty login and a notty one (a remote command), neither recorded: both
/// work, both show in `status` as adopted, both are ended for idleness.
fn logins_go_through_and_are_enforced(sshd: &Sshd, pty_user: &TestUser, notty_user: &TestUser) {
    let enforcer = Enforcer::start(sshd, &["--find-unrecorded"]);
    let started = Instant::now();
    let mut argv = sshd.ssh_args(&pty_user.name);
    argv.insert(1, "-tt".into());
    let tmux = Tmux::new(&argv);
    tmux.type_line("echo READY-$((6*7))");
    assert!(tmux.wait_for("READY-42", Duration::from_secs(15)), "no shell:\n{}\n{}", tmux.capture(), sshd.log());
    let args = sshd.ssh_args(&notty_user.name);
    let mut notty = Command::new(&args[0])
        .args(&args[1..])
        .arg("sleep 1000 & exec sleep 1001")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    for user in [pty_user, notty_user] {
        let adopted = wait_until(Duration::from_secs(15), || {
            rows_of(sshd, &user.name).first().is_some_and(|r| r["adopted"] == true && r["idle_limit_secs"] == 12)
        });
        assert!(adopted, "{} not found/adopted: {:#?}\n{}", user.name, status(sshd), enforcer.output());
        // The client's address, from the monitor's socket.
        assert_eq!(rows_of(sshd, &user.name)[0]["from"], "127.0.0.1", "{:#?}", status(sshd));
    }
    let table = String::from_utf8_lossy(&sshd.ctl(&["status", "--find-unrecorded"]).stdout).into_owned();
    assert!(table.contains("* not recorded at login"), "{table}");
    assert!(
        wait_until(Duration::from_secs(45), || tmux.is_dead()),
        "unrecorded pty session not disconnected:\n{}\n{}",
        tmux.capture(),
        enforcer.output()
    );
    assert!(
        wait_until(Duration::from_secs(30), || matches!(notty.try_wait(), Ok(Some(_)))),
        "unrecorded notty session not disconnected:\n{}",
        enforcer.output()
    );
    // Never before the 12-s limit.
    assert!(started.elapsed() >= Duration::from_secs(12), "ended after {:?}", started.elapsed());
    let log = enforcer.output();
    assert!(log.contains(&format!("of {}: an sshd connection with no record", pty_user.name)), "{log}");
    assert!(log.contains(&format!("of {}: an sshd connection with no record", notty_user.name)), "{log}");
    for user in [pty_user, notty_user] {
        let gone = wait_until(Duration::from_secs(10), || {
            let out = Command::new("pgrep").args(["-u", &user.name]).output().expect("pgrep");
            out.stdout.is_empty()
        });
        assert!(gone, "processes of {} left", user.name);
    }
}

#[test]
fn full_state_directory_logins_work_and_are_enforced() {
    if !e2e_enabled() {
        return;
    }
    let pty_user = TestUser::create("ufp", &[]);
    let notty_user = TestUser::create("ufn", &[]);
    let policy = format!("user {} idle=12s warn=4s\nuser {} idle=12s warn=4s\n", pty_user.name, notty_user.name);
    let sshd = Sshd::start("ufull", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&pty_user);
    sshd.authorize(&notty_user);
    let _tmpfs = FullTmpfs::mount(&sshd.state_dir);
    logins_go_through_and_are_enforced(&sshd, &pty_user, &notty_user);
    // Nothing could be written: the records came from sshd's processes.
    let journal = std::fs::read_to_string(sshd.state_dir.join("sessions")).unwrap_or_default();
    assert!(!journal.contains(&pty_user.name), "{journal}");
}

#[test]
fn stuck_lock_holder_logins_work_and_are_enforced() {
    if !e2e_enabled() {
        return;
    }
    let pty_user = TestUser::create("usp", &[]);
    let notty_user = TestUser::create("usn", &[]);
    let policy = format!("user {} idle=12s warn=4s\nuser {} idle=12s warn=4s\n", pty_user.name, notty_user.name);
    let sshd = Sshd::start("ustuck", SshdOptions { policy, ..Default::default() });
    sshd.authorize(&pty_user);
    sshd.authorize(&notty_user);
    drop(sshidle::StateDir::open(&sshd.state_dir, true).expect("state dir"));
    // A writer that took the lock and never lets go.
    let holder = std::fs::File::open(&sshd.state_dir).expect("state dir");
    // SAFETY: valid descriptor.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    logins_go_through_and_are_enforced(&sshd, &pty_user, &notty_user);
    drop(holder);
}

/// An admin ends a session that has no record (the state directory full,
/// no enforcer running) as `status` shows it: `disconnect --find-unrecorded`
/// finds it among sshd's processes; without the flag, on a private state
/// directory, it is not found and nothing is ended.
#[test]
fn an_unrecorded_session_is_disconnected_by_the_admin() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("udc", &[]);
    let sshd = Sshd::start("udisc", SshdOptions { policy: "* idle=1h\n".into(), ..Default::default() });
    sshd.authorize(&user);
    let _tmpfs = FullTmpfs::mount(&sshd.state_dir);
    let args = sshd.ssh_args(&user.name);
    let mut notty = Command::new(&args[0])
        .args(&args[1..])
        .arg("exec sleep 1002")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let found = wait_until(Duration::from_secs(15), || {
        rows_of(&sshd, &user.name).first().is_some_and(|r| r["adopted"] == true)
    });
    assert!(found, "{} not found: {:#?}", user.name, status(&sshd));
    let out = sshd.ctl(&["disconnect", "--user", &user.name]);
    assert!(!out.status.success(), "found without --find-unrecorded: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("no session of {}", user.name)),
        "{}",
        describe(&out)
    );
    assert!(matches!(notty.try_wait(), Ok(None)), "the session ended without a disconnect");
    let out = sshd.ctl(&["disconnect", "--find-unrecorded", "--user", &user.name]);
    assert!(out.status.success(), "disconnect: {}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(15), || matches!(notty.try_wait(), Ok(Some(_)))),
        "the unrecorded session was not disconnected: {}",
        describe(&out)
    );
    let gone = wait_until(Duration::from_secs(10), || {
        Command::new("pgrep").args(["-u", &user.name]).output().expect("pgrep").stdout.is_empty()
    });
    assert!(gone, "processes of {} left", user.name);
}

/// A host that runs containers sees their processes in its /proc: another
/// PID namespace's sshd, with its own policy and its own sshidle, is none of
/// the host enforcer's business. A private sshd in a PID namespace of its
/// own (`unshare --pid`, as a container's) and one in the host's, the
/// host's logins unrecorded (its state directory full): the host's pty
/// login is adopted and ended for idleness, the namespace's, as idle and
/// as unrecorded for the host enforcer, is neither listed nor adopted nor
/// ended.
#[test]
fn another_pid_namespaces_sshd_is_none_of_ours() {
    if !e2e_enabled() {
        return;
    }
    let ns_user = TestUser::create("unsn", &[]);
    let host_user = TestUser::create("unsh", &[]);
    // The host enforcer's policy names both: only the namespace keeps its own out.
    let policy = format!("user {} idle=8s warn=3s\nuser {} idle=8s warn=3s\n", ns_user.name, host_user.name);
    let host = Sshd::start("unshost", SshdOptions { policy, ..Default::default() });
    // The namespace's sshd records its logins in a state directory of its
    // own, under a policy with no rule for them.
    let launcher = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--"];
    let contained =
        Sshd::start("unsns", SshdOptions { launcher: launcher.map(String::from).to_vec(), ..Default::default() });
    let ns_of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid namespace");
    let listener = descendants(contained.pid).into_iter().next().expect("the namespace's sshd");
    assert_ne!(ns_of(listener), ns_of(std::process::id() as i32), "sshd is not in a PID namespace of its own");
    contained.authorize(&ns_user);
    host.authorize(&host_user);
    let _tmpfs = FullTmpfs::mount(&host.state_dir);
    let contained_login = tty_login_timed(&contained, &ns_user.name, &[]);
    let host_login = tty_login_timed(&host, &host_user.name, &[]);
    // Both connections run before the enforcer starts: its first search sees both.
    let enforcer = Enforcer::start(&host, &["--find-unrecorded"]);
    let adopted = wait_until(Duration::from_secs(15), || {
        rows_of(&host, &host_user.name).first().is_some_and(|r| r["adopted"] == true && r["idle_limit_secs"] == 8)
    });
    assert!(adopted, "the host's login was not adopted: {:#?}\n{}", status(&host), enforcer.output());
    assert!(rows_of(&host, &ns_user.name).is_empty(), "the namespace's login is listed: {:#?}", status(&host));
    assert!(
        wait_until(Duration::from_secs(30), || host_login.tmux.is_dead()),
        "the host's unrecorded login was not disconnected:\n{}\n{}",
        host_login.tmux.capture(),
        enforcer.output()
    );
    assert!(host_login.key.elapsed() >= Duration::from_secs(8), "ended before its limit");
    // The namespace's login was idle longer, past the limit and its slack.
    let idle_enough = contained_login.key + Duration::from_secs(8) + session::SLACK + Duration::from_secs(2);
    std::thread::sleep(idle_enough.saturating_duration_since(Instant::now()));
    assert!(!contained_login.tmux.is_dead(), "the namespace's login was ended:\n{}", enforcer.output());
    contained_login.tmux.type_line("echo STILL''HERE");
    assert!(
        contained_login.tmux.wait_for("STILLHERE", Duration::from_secs(15)),
        "the namespace's shell does not answer:\n{}\n{}",
        contained_login.tmux.capture(),
        enforcer.output()
    );
    assert!(rows_of(&host, &ns_user.name).is_empty(), "the namespace's login is listed: {:#?}", status(&host));
    let log = enforcer.output();
    assert!(log.contains(&format!("of {}: an sshd connection with no record", host_user.name)), "{log}");
    assert!(!log.contains(&ns_user.name), "the enforcer acted on the namespace's login:\n{log}");
}
