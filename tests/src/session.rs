//! Sessions for the enforcer's end-to-end tests: a running enforcer, pty
//! logins through tmux that know when their last key was typed, remote
//! commands, and what `status` says about a user's sessions.

use crate::sshd::Sshd;
use crate::tmux::Tmux;
use crate::util::{signal, sshidlectl, unique_name, wait_until};
use crate::TestUser;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sshidlectl enforce`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Enforcer {
    pub child: Child,
    pub log: PathBuf,
}

impl Enforcer {
    /// `sshidlectl enforce EXTRA...` on the test's sshd, e.g. with
    /// `&["--find-unrecorded"]`; its stdout and stderr go to `log`.
    pub fn start(sshd: &Sshd, extra: &[&str]) -> Enforcer {
        let mut command = sshidlectl(&sshd.policy_path, &sshd.state_dir);
        command.arg("enforce").args(extra);
        Enforcer::spawn(sshd, command)
    }

    /// Runs an enforcer command the caller built (under `nice`, say), its
    /// stdout and stderr to a log of its own in the sshd's directory.
    pub fn spawn(sshd: &Sshd, mut command: Command) -> Enforcer {
        let log = sshd.dir.join(format!("enforcer-{}.log", unique_name("e")));
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start enforcer");
        Enforcer { child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics unless the enforcer is still running.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(status.is_none(), "the enforcer exited ({status:?}):\n{}", self.output());
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

pub fn sessions_of(sshd: &Sshd, user: &str) -> Vec<serde_json::Value> {
    sshd.status_json().as_array().cloned().unwrap_or_default().into_iter().filter(|s| s["user"] == user).collect()
}

/// ssh argv with `opts` before the destination.
pub fn ssh_with(sshd: &Sshd, user: &str, opts: &[&str]) -> Vec<String> {
    let mut args = sshd.ssh_args(user);
    let dest = args.pop().expect("destination");
    args.extend(opts.iter().map(|s| s.to_string()));
    args.push(dest);
    args
}

/// An interactive login on a pty in tmux; returns once the shell answers.
pub fn tty_login(sshd: &Sshd, user: &str, opts: &[&str]) -> Tmux {
    tty_login_timed(sshd, user, opts).tmux
}

/// A pty login and when its last input was typed: after `key` (the instant
/// before the keys were sent) and before `echoed` (when the shell's answer
/// was seen). Idle windows are measured from these.
pub struct TtyLogin {
    pub tmux: Tmux,
    pub key: Instant,
    pub echoed: Instant,
}

pub fn tty_login_timed(sshd: &Sshd, user: &str, opts: &[&str]) -> TtyLogin {
    let mut o = vec!["-tt"];
    o.extend_from_slice(opts);
    let tmux = Tmux::new(&ssh_with(sshd, user, &o));
    let key = Instant::now();
    tmux.type_line("echo READY''GO");
    assert!(tmux.wait_for("READYGO", Duration::from_secs(15)), "no shell:\n{}\n{}", tmux.capture(), sshd.log());
    TtyLogin { tmux, key, echoed: Instant::now() }
}

/// The idle time (seconds) an enforcer log line gives: `...: idle 23s (limit ...`.
pub fn idle_in(line: &str) -> u64 {
    let text = line.split(": idle ").nth(1).and_then(|t| t.split(' ').next()).unwrap_or_else(|| panic!("{line}"));
    sshidle::duration::parse_duration(text).unwrap_or_else(|e| panic!("{text}: {e:?} in {line}"))
}

/// Seconds from the recorded login time (unix, rounded down) to now.
pub fn since_recorded_login(row: &serde_json::Value) -> i64 {
    sshidle::now_unix() - row["login_time"].as_i64().expect("login_time")
}

pub fn spawn_ssh(sshd: &Sshd, user: &str, remote: &str) -> Child {
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

pub fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

pub fn user_processes(user: &TestUser) -> Vec<String> {
    let out = Command::new("ps").args(["-o", "pid=,args=", "-u", &user.name]).output().expect("ps");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

pub fn wait_recorded(sshd: &Sshd, user: &str, count: usize) -> Vec<serde_json::Value> {
    let ok = wait_until(Duration::from_secs(15), || sessions_of(sshd, user).len() >= count);
    assert!(ok, "{count} session(s) of {user} not recorded:\n{}", sshd.log());
    sessions_of(sshd, user)
}
