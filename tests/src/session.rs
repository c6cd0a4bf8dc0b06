//! Sessions for the enforcer's end-to-end tests: a running enforcer, pty
//! logins through tmux that know when their last key was typed, remote
//! commands, and what `status` says about a user's sessions.

use crate::sshd::Sshd;
use crate::tmux::Tmux;
use crate::util::{signal, sshidlectl, unique_name, wait_until};
use crate::TestUser;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
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

/// Whether `pid` runs under a user's service manager (`user@UID.service`),
/// which logind starts at a user's first login where systemd runs, and
/// systemd stops some seconds after the last (`UserStopDelaySec`): it is no
/// session's, and nothing sshidle ends.
pub fn in_user_manager(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.contains("/user@") && l.contains(".service")))
}

/// The processes of `user` that still run, as "PID ARGS", but for those of
/// the user's service manager, and for those of another PID namespace (a
/// container's users may have the same numeric uid).
pub fn user_processes(user: &TestUser) -> Vec<String> {
    let own = sshidle::procfs::own_pid_namespace();
    let ours = |pid: i32| sshidle::procfs::in_namespace(own, sshidle::procfs::pid_namespace(pid));
    let out = Command::new("ps").args(["-o", "pid=,stat=,args=", "-u", &user.name]).output().expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "PID ARGS" of those that still run: a zombie has ended (where
            // PID 1 reaps late, as this VM's init does, one reparented to it
            // stays a while: an sshd child hung up before its exec).
            let mut words = line.split_whitespace();
            let (pid, stat) = (words.next()?, words.next()?);
            let running = !stat.starts_with('Z') && pid.parse().is_ok_and(|p| ours(p) && !in_user_manager(p));
            running.then(|| format!("{pid} {}", words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

pub fn wait_recorded(sshd: &Sshd, user: &str, count: usize) -> Vec<serde_json::Value> {
    let ok = wait_until(Duration::from_secs(15), || sessions_of(sshd, user).len() >= count);
    assert!(ok, "{count} session(s) of {user} not recorded:\n{}", sshd.log());
    sessions_of(sshd, user)
}

/// The promise of the timed tests: a session is ended within
/// [limit, limit + SLACK] of its last real key.
pub const SLACK: Duration = Duration::from_millis(1500);

/// The tests that measure to the second run one at a time: on a 2-core
/// machine, a dozen sessions of another test starting and typing would
/// delay the shells and the disconnects they measure.
static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the test binary's timed-test lock (one timed test at a time).
pub fn timed() -> std::sync::MutexGuard<'static, ()> {
    TIMED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pty login of its own user whose last real key is known.
pub struct Login {
    pub name: &'static str,
    pub user: TestUser,
    pub tmux: Tmux,
    /// When the pane's ssh client (it exits when the connection is closed)
    /// was first seen gone, by a thread watching it from the login on: the
    /// end is timed when it happens, also while the test checks something
    /// else.
    end: Arc<OnceLock<Instant>>,
    pub key: Instant,
    pub echoed: Instant,
}

impl Login {
    pub fn new(sshd: &Sshd, name: &'static str, user: TestUser, opts: &[&str]) -> Login {
        sshd.authorize(&user);
        let l = tty_login_timed(sshd, &user.name, opts);
        let client = l.tmux.pane_pid();
        Login::watching(name, user, l.tmux, client, l.key, l.echoed)
    }

    /// A login typed into `pane`'s shell: the client's pty is the pane's,
    /// made before, so sshd gives the login the lowest pty number free now
    /// (one the previous login of the pane just freed, on a quiet machine).
    pub fn in_pane(sshd: &Sshd, name: &'static str, user: TestUser, pane: &Pane, opts: &[&str]) -> Login {
        sshd.authorize(&user);
        let mut o = vec!["-tt"];
        o.extend_from_slice(opts);
        let argv = ssh_with(sshd, &user.name, &o);
        let before = pane.clients();
        pane.tmux.type_line(&argv.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" "));
        let mut client = None;
        let started = wait_until(Duration::from_secs(10), || {
            client = pane.clients().into_iter().find(|pid| !before.contains(pid));
            client.is_some()
        });
        assert!(started, "{name}: no ssh client started in the pane:\n{}", pane.tmux.capture());
        let marker = unique_name("in");
        let key = Instant::now();
        pane.tmux.type_line(&format!("echo {}''{}", &marker[..3], &marker[3..]));
        let shown = pane.tmux.wait_for(&marker, Duration::from_secs(15));
        assert!(shown, "{name}: no shell:\n{}\n{}", pane.tmux.capture(), sshd.log());
        Login::watching(name, user, pane.tmux.handle(), client.expect("found"), key, Instant::now())
    }

    fn watching(name: &'static str, user: TestUser, tmux: Tmux, client: i32, key: Instant, echoed: Instant) -> Login {
        assert!(client > 0 && crate::util::process_alive(client), "{name}: no ssh client in the pane");
        let end = Arc::new(OnceLock::new());
        let watched = Arc::clone(&end);
        std::thread::spawn(move || {
            // Read from /proc, not through tmux: cheap and exact on a loaded
            // machine. It stops when the login is dropped.
            while crate::util::process_alive(client) {
                if Arc::strong_count(&watched) == 1 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = watched.set(Instant::now());
        });
        Login { name, user, tmux, end, key, echoed }
    }

    /// When the key was sent (unix ms), for the messages.
    pub fn key_unix_ms(&self) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        now - self.key.elapsed().as_millis() as i64
    }

    /// When the client exited (the connection was closed), if it has.
    pub fn ended(&self) -> Option<Instant> {
        self.end.get().copied()
    }

    /// Types `line`, then a line echoing a marker, and waits for the marker:
    /// that is then the last real input.
    pub fn type_last(&mut self, line: &str) {
        let marker = unique_name("done");
        self.tmux.type_line(line);
        // A person's next key comes later than a few milliseconds after the
        // command (keys read in the same instant as a `touch` or `chmod` of
        // the pty are not told from it).
        std::thread::sleep(Duration::from_millis(300));
        self.key = Instant::now();
        self.tmux.type_line(&format!("echo {}''{}", &marker[..4], &marker[4..]));
        assert!(
            self.tmux.wait_for(&marker, Duration::from_secs(20)),
            "{}: `{line}` did not run:\n{}",
            self.name,
            self.tmux.capture()
        );
        self.echoed = Instant::now();
    }

    /// Types `line` as the last real input (a command that replaces the
    /// shell, say) and waits until `shown` is on the screen.
    pub fn type_final(&mut self, line: &str, shown: &str) {
        self.key = Instant::now();
        self.tmux.type_line(line);
        assert!(
            self.tmux.wait_for(shown, Duration::from_secs(20)),
            "{}: `{line}` did not show {shown:?}:\n{}",
            self.name,
            self.tmux.capture()
        );
        self.echoed = Instant::now();
    }
}

/// A tmux pane running a shell, made before the logins typed into it
/// ([`Login::in_pane`]): it holds the client's pty from first to last, so
/// each of its logins takes the server's lowest free pty number at its start
/// (the kernel hands out the lowest free number), the one the previous login
/// freed: the way a server reuses `pts/0` all day.
pub struct Pane {
    pub tmux: Tmux,
    shell: i32,
}

impl Pane {
    pub fn new() -> Pane {
        let tmux = Tmux::new(&["sh".to_string()]);
        let shell = tmux.pane_pid();
        assert!(shell > 0, "no shell in the pane");
        Pane { tmux, shell }
    }

    /// The shell's children now (the ssh clients it runs).
    fn clients(&self) -> Vec<i32> {
        crate::util::descendants(self.shell)
            .into_iter()
            .filter(|pid| sshidle::procfs::parent_pid(*pid) == Some(self.shell))
            .collect()
    }
}

impl Default for Pane {
    fn default() -> Pane {
        Pane::new()
    }
}

/// Ptys the test holds open on every free number below `pts/N`, so that the
/// next pty the kernel hands out is `pts/N` (the lowest free number) even on
/// a machine where other processes free lower ones meanwhile. Released on
/// drop.
pub struct PtyHoles {
    _held: Vec<std::os::fd::OwnedFd>,
}

impl PtyHoles {
    /// Fills the free numbers below `pts/N` (`tty`); `None` when `pts/N`
    /// itself is taken already (another process got it).
    pub fn below(tty: &str) -> Option<PtyHoles> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let n: u32 = tty.strip_prefix("pts/")?.parse().ok()?;
        let mut held = Vec::new();
        loop {
            // SAFETY: a path literal; the fd returned is owned below.
            let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
            assert!(fd >= 0, "open /dev/ptmx: {}", std::io::Error::last_os_error());
            // SAFETY: a descriptor just opened, owned from here on.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut index: libc::c_uint = 0;
            // SAFETY: TIOCGPTN writes the pty's number into an unsigned int.
            let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut index) } == 0;
            assert!(ok, "TIOCGPTN: {}", std::io::Error::last_os_error());
            if index < n {
                held.push(fd);
                continue;
            }
            // pts/N was free (it is again: this one is closed) or taken.
            return (index == n).then_some(PtyHoles { _held: held });
        }
    }
}

/// The ttys `status` gives the only session of `user` (as `pts/N`), once
/// recorded and found.
pub fn ttys_of(sshd: &Sshd, user: &str) -> Vec<String> {
    let mut ttys = Vec::new();
    wait_until(Duration::from_secs(10), || {
        ttys = sessions_of(sshd, user)
            .first()
            .and_then(|s| s["ttys"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        !ttys.is_empty()
    });
    ttys
}

/// Waits until each login has ended or `timeout` passes; returns when each
/// ended (timed by its watcher, so also an end before this call is timed
/// right: too early, or not late).
pub fn wait_ended(logins: &[&Login], timeout: Duration) -> Vec<Option<Instant>> {
    wait_until(timeout, || logins.iter().all(|l| l.ended().is_some()));
    logins.iter().map(|l| l.ended()).collect()
}

/// Checks that a login ended within [limit, limit + SLACK] of its last key,
/// and that nothing of its user is left.
pub fn assert_ended_on_time(l: &Login, ended: Option<Instant>, limit: Duration, enforcer: &Enforcer) {
    assert_ended_within(l, ended, limit, enforcer);
    assert!(
        wait_until(Duration::from_secs(8), || user_processes(&l.user).is_empty()),
        "{}: processes left: {:?}",
        l.name,
        user_processes(&l.user)
    );
}

/// Checks that a login ended within [limit, limit + SLACK] of its last key.
pub fn assert_ended_within(l: &Login, ended: Option<Instant>, limit: Duration, enforcer: &Enforcer) {
    let ended = ended.unwrap_or_else(|| {
        panic!("{}: not disconnected:\n{}\n{}", l.name, l.tmux.capture(), enforcer.output());
    });
    let after_key = ended - l.key;
    let after_echo = ended.saturating_duration_since(l.echoed);
    assert!(after_key >= limit, "{}: ended {after_key:?} after its last key, before the {limit:?} limit", l.name);
    assert!(
        after_echo <= limit + SLACK,
        "{}: ended {after_echo:?} after its last key (sent at {} ms, echoed {:?} later), later than {:?}:\n{}",
        l.name,
        l.key_unix_ms(),
        l.echoed - l.key,
        limit + SLACK,
        enforcer.output()
    );
}

/// The timed tests' day of idlers among typists: one login per `(name, line,
/// user)` of `idlers`, 0.7 s apart, each in a thread of its own: logged in,
/// watched (the enforcer notices a new pty within a second), `line` typed
/// once as its last input, then watched until it ends (at most `limit` +
/// 10 s). Meanwhile each of `kept` types every 3 s, until 4 s past the last
/// idler's end. Returns each idler's login with when it ended.
pub fn idlers_among_typists(
    sshd: &Sshd,
    idlers: Vec<(&'static str, &str, TestUser)>,
    kept: &[&Tmux],
    limit: Duration,
) -> Vec<(Login, Option<Instant>)> {
    let stop_typing = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop_typing;
        let typing = scope.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for tmux in kept {
                    tmux.type_line("true");
                }
                std::thread::sleep(Duration::from_secs(3));
            }
        });
        let threads: Vec<_> = idlers
            .into_iter()
            .enumerate()
            .map(|(i, (name, line, user))| {
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(700) * i as u32);
                    let mut l = Login::new(sshd, name, user, &[]);
                    std::thread::sleep(Duration::from_millis(1500));
                    l.type_last(line);
                    let ended = wait_ended(&[&l], limit + Duration::from_secs(10)).remove(0);
                    (l, ended)
                })
            })
            .collect();
        let results = threads.into_iter().map(|t| t.join().expect("idler's thread")).collect();
        // Past the last idler's end, the kept ones are still typing.
        std::thread::sleep(Duration::from_secs(4));
        stop_typing.store(true, std::sync::atomic::Ordering::SeqCst);
        typing.join().expect("typing thread");
        results
    })
}

/// A policy giving each of `users` the same `settings` (`idle=12s warn=4s`).
pub fn policy_for(users: &[&str], settings: &str) -> String {
    users.iter().map(|u| format!("user {u} {settings}")).collect::<Vec<_>>().join("\n") + "\n"
}

/// `sshidlectl enforce` at a higher scheduling priority (nice value -10,
/// whatever the test's own): it credits a key when it reads the event, and
/// on a machine loaded far beyond its cores a normal-priority process reads
/// it seconds late (a daemon of its own machine has no such competition; a
/// bench run under `nice` does not lower it). `extra` as for
/// [`Enforcer::start`].
pub fn start_niced_enforcer(sshd: &Sshd, extra: &[&str]) -> Enforcer {
    use std::os::unix::process::CommandExt;
    let mut command = crate::util::sshidlectl(&sshd.policy_path, &sshd.state_dir);
    command.arg("enforce").args(extra);
    // SAFETY: setpriority is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, -10);
            Ok(())
        });
    }
    Enforcer::spawn(sshd, command)
}
