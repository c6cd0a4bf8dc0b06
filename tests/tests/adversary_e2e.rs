//! End to end, the adversary and the bystander of the rules that sort a
//! session's processes (core/src/activity.rs `members`): sshd's own are
//! told by executable and place (the monitor and its direct children running
//! its executable), never by a name or by running the sshd binary deeper in
//! the tree; a channel whose command sits on an sshd pty is judged by that
//! pty's input only, the others by their I/O; and an sshd pty that has no
//! shell on it any more (the shell dropped it, TIOCNOTTY) makes no channel a
//! command. Real sshd, real users, real ptys through tmux, the real
//! `sshidlectl enforce`.
//!
//! Windows are measured as in idle_truth_e2e.rs: from just before the last
//! real key was sent (`key`) and from when its effect was seen (`echoed`), a
//! session ends within [limit, limit + SLACK].

use sshidle::procfs;
use sshidle_tests::session::*;
use sshidle_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `perl io.pl [drop]`: with `drop`, first drops its controlling terminal
/// (TIOCNOTTY; exec'ed from the shell it is the session's leader, so the
/// whole session loses the pty) and says so. Then reads and writes a file
/// of its own every second, forever, deaf to a logout's SIGHUP and SIGTERM.
/// perl-base is essential in Debian; `sys/ioctl.ph` (libperl) may be absent,
/// then the generic value (asm-generic/ioctls.h: x86, arm) is taken.
const IO_PL: &str = r#"$SIG{HUP} = $SIG{TERM} = 'IGNORE';
$| = 1;
if (($ARGV[0] // '') eq 'drop') {
    my $notty = eval { require 'sys/ioctl.ph'; TIOCNOTTY() } // 0x5422;
    ioctl(STDIN, $notty, 0) or die "TIOCNOTTY: $!\n";
    print "TTY-", "DROPPED\n";
}
open(my $f, '+>', "$ENV{HOME}/io") or die "io: $!\n";
while (1) {
    sysseek($f, 0, 0); syswrite($f, time . "\n");
    sysseek($f, 0, 0); sysread($f, my $line, 64);
    select(undef, undef, undef, 1);
}
"#;

/// `perl feed.pl COMMAND...`: execs COMMAND (the sshd binary) holding the
/// master of a new pty as its stdin (which sshd keeps open), after forking
/// a `cat` reading that pty's slave and a feeder writing a line a second
/// into the master: a pty whose master a process running sshd's executable
/// holds, with input read on it.
const FEED_PL: &str = r#"open(my $m, '+<', '/dev/ptmx') or die "ptmx: $!\n";
my $unlock = pack('i', 0);
ioctl($m, 0x40045431, $unlock) or die "TIOCSPTLCK: $!\n";
my $n = pack('I', 0);
ioctl($m, 0x80045430, $n) or die "TIOCGPTN: $!\n";
$n = unpack('I', $n);
defined(my $cat = fork) or die "fork: $!\n";
if (!$cat) {
    open(STDIN, '<', "/dev/pts/$n") or die "pts/$n: $!\n";
    open(STDOUT, '>', '/dev/null');
    exec 'cat' or die "exec: $!\n";
}
defined(my $feeder = fork) or die "fork: $!\n";
if (!$feeder) {
    while (1) {
        syswrite($m, "k\n");
        sysread($m, my $echo, 4096);
        select(undef, undef, undef, 1);
    }
}
open(STDIN, '<&', $m) or die "dup: $!\n";
exec @ARGV or die "exec: $!\n";
"#;

fn home(user: &TestUser) -> PathBuf {
    PathBuf::from("/home").join(&user.name)
}

/// Writes `text` to `path`, owned by `user`.
fn write_owned(user: &TestUser, path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    run(Command::new("chown").arg(format!("{0}:{0}", user.name)).arg(path));
}

/// The user's process whose command line is `cmdline`, once it runs.
fn process_of(user: &TestUser, cmdline: &str) -> (i32, u64) {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(10), || {
        found = procfs::all_pids()
            .into_iter()
            .filter(|p| procfs::real_uid(*p) == Some(user.uid))
            .find(|p| procfs::title(*p).as_deref() == Some(cmdline));
        found.is_some()
    });
    assert!(ok, "no process '{cmdline}' of {}: {:?}", user.name, user_processes(user));
    let pid = found.unwrap();
    (pid, procfs::start_time(pid).expect("start time"))
}

/// Panics unless the process has no controlling terminal and is the child
/// of an sshd process (so it is where a channel's command is): `sshd` up to
/// OpenSSH 9.7, `sshd-session` from 9.8 (Debian 13, sid).
fn assert_dropped_its_tty(pid: i32) {
    let stat = procfs::read_stat(pid).expect("stat");
    assert_eq!(stat.tty_nr, 0, "{pid} still has a controlling terminal: {stat:?}");
    let parent = procfs::exe(stat.ppid);
    assert!(
        parent.as_deref().is_some_and(|p| p.ends_with("sshd") || p.ends_with("sshd-session")),
        "{pid} is not a channel's command (parent {} runs {parent:?})",
        stat.ppid
    );
}

/// Panics unless the process writes: its wchar grows within 3 s.
fn assert_writes(pid: i32, start: u64) {
    let before = procfs::io_counters(pid, start).expect("io").wchar;
    let ok = wait_until(Duration::from_secs(3), || procfs::io_counters(pid, start).is_some_and(|c| c.wchar > before));
    assert!(ok, "{pid} does no I/O");
}

/// Waits at least `min`, until 0.2 s past the start of one of the kernel's
/// 8-s blocks of tty times (wall clock), calling `meanwhile` every 2 s.
fn sleep_to_block_start(min: Duration, meanwhile: impl Fn()) {
    let block = Duration::from_secs(sshidle::activity::TTY_TIME_GRANULARITY as u64);
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let into = Duration::from_nanos((wall.as_nanos() % block.as_nanos()) as u64);
    let mut wait = (block + Duration::from_millis(200)).saturating_sub(into);
    while wait < min {
        wait += block;
    }
    let until = Instant::now() + wait;
    loop {
        meanwhile();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_secs(2)));
    }
}

/// A child process killed on drop (the test's own bystanders).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A shell that drops its controlling terminal (TIOCNOTTY) and then does
/// file I/O forever: alone, and as the second tty of a ControlMaster
/// connection whose other tty keeps its shell. Without input each is warned
/// when due and disconnected at its limit after the last key, with nothing
/// of it left (the program ignores SIGHUP and SIGTERM). The bystander: a
/// ControlMaster connection with an idle tty and an honest command without
/// a terminal that does the same I/O is kept on that I/O.
#[test]
fn a_shell_that_drops_its_tty_is_still_judged_by_the_ttys_input() {
    if !e2e_enabled() {
        return;
    }
    let _timed = timed();
    let alone = TestUser::create("avn", &[]);
    let muxed = TestUser::create("avm", &[]);
    let honest = TestUser::create("avh", &[]);
    for u in [&alone, &muxed, &honest] {
        write_owned(u, &home(u).join("io.pl"), IO_PL);
    }
    let limit = Duration::from_secs(12);
    let names = [alone.name.as_str(), muxed.name.as_str(), honest.name.as_str()];
    let sshd = Sshd::start(
        "advnotty",
        SshdOptions { policy: policy_for(&names, "idle=12s warn=4s end=session"), ..Default::default() },
    );
    let mut enforcer = start_niced_enforcer(&sshd, &[]);
    let control = |user: &TestUser, tag: &str| {
        format!("ControlPath={}", sshd.dir.join(format!("{tag}-{}.sock", user.name)).display())
    };

    // The bystander: an idle tty, and a command without a terminal doing I/O
    // in the same connection.
    sshd.authorize(&honest);
    let honest_path = control(&honest, "mux");
    let honest_tty = tty_login(&sshd, &honest.name, &["-o", "ControlMaster=yes", "-o", &honest_path]);
    let mut remote = ssh_with(&sshd, &honest.name, &["-o", "ControlMaster=no", "-o", &honest_path]);
    remote.push(format!("exec perl {}/io.pl", home(&honest).display()));
    let honest_command = Killed(
        Command::new(&remote[0])
            .args(&remote[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh"),
    );
    let (perl, start) = process_of(&honest, &format!("perl {}/io.pl", home(&honest).display()));
    assert_writes(perl, start);

    let mut alone = Login::new(&sshd, "tty dropped", alone, &[]);
    // The connection's first tty keeps its shell; the second drops its tty.
    sshd.authorize(&muxed);
    let muxed_path = control(&muxed, "mux");
    let master = tty_login(&sshd, &muxed.name, &["-o", "ControlMaster=yes", "-o", &muxed_path]);
    // The second tty opens once the enforcer knows the connection by its
    // first: it must still be watched from its first key.
    std::thread::sleep(Duration::from_millis(1500));
    let mut second = Login::new(&sshd, "second tty dropped", muxed, &["-o", "ControlMaster=no", "-o", &muxed_path]);
    // The enforcer notices new ptys within a second. The second tty's key
    // comes at the start of an 8-s block, while the first one types every
    // 2 s (so the connection is not looked at afresh before its warning):
    // were the second tty judged by its kernel atime, the connection would
    // end 8 s late.
    sleep_to_block_start(Duration::from_millis(1500), || master.type_line("true"));
    for l in [&mut second, &mut alone] {
        l.type_final("exec perl ~/io.pl drop", "TTY-DROPPED");
        let (pid, start) = process_of(&l.user, &format!("perl {}/io.pl drop", home(&l.user).display()));
        assert_dropped_its_tty(pid);
        assert_writes(pid, start);
    }
    let rows = sessions_of(&sshd, &second.user.name);
    assert!(rows.len() == 1 && rows[0]["ttys"].as_array().unwrap().len() == 2, "one connection, two ttys: {rows:?}");

    let ended = wait_ended(&[&alone, &second], limit + Duration::from_secs(10));
    assert_ended_on_time(&alone, ended[0], limit, &enforcer);
    assert_ended_on_time(&second, ended[1], limit, &enforcer);
    // The master's ssh exits as its connection closes, the mux client's maybe first.
    assert!(
        wait_until(Duration::from_secs(5), || master.is_dead()),
        "the first tty of the connection is still connected:\n{}",
        master.capture()
    );
    for (l, screen) in [(&alone, alone.tmux.capture()), (&second, second.tmux.capture()), (&second, master.capture())] {
        assert!(screen.contains("will be disconnected in 4s"), "{}: no warning 4 s ahead:\n{screen}", l.name);
    }

    // The honest connection's tty has been idle for longer than the limit
    // and its warning: only its command's I/O keeps it, a while longer still.
    std::thread::sleep(Duration::from_secs(3));
    enforcer.assert_alive();
    assert!(!honest_tty.is_dead(), "an idle tty beside a command doing I/O was disconnected:\n{}", enforcer.output());
    assert!(
        !honest_tty.capture().contains("will be disconnected"),
        "an idle tty beside a command doing I/O was warned:\n{}",
        honest_tty.capture()
    );
    assert!(procfs::is_same_process(perl, start), "the honest command was ended:\n{}", enforcer.output());
    drop(honest_command);
}

/// What a user's own sshd needs: a host key, a client key allowed to log in
/// as the user, and a config listening on a free port of 127.0.0.1, all
/// owned by the user in `~/NAME/`.
struct OwnSshd {
    dir: PathBuf,
    config: PathBuf,
    port: u16,
}

impl OwnSshd {
    fn prepare(user: &TestUser, name: &str) -> OwnSshd {
        let dir = home(user).join(name);
        std::fs::create_dir_all(&dir).expect("own sshd dir");
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(dir.join(key)));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("authorized key");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nUsePAM no\nStrictModes no\nPrintMotd no\n",
                d = dir.display()
            ),
        )
        .expect("own sshd_config");
        run(Command::new("chown").arg("-R").arg(format!("{0}:{0}", user.name)).arg(&dir));
        OwnSshd { dir, config, port }
    }

    /// The command line that runs it in the foreground.
    fn command(&self) -> String {
        format!("/usr/sbin/sshd -D -e -f {}", self.config.display())
    }

    /// `ssh` to it with its client key, as a shell line.
    fn ssh(&self, opts: &str, remote: &str) -> String {
        format!(
            "ssh -F /dev/null -i {}/client_key -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o LogLevel=ERROR {opts} 127.0.0.1 '{remote}'",
            self.dir.display(),
            self.port
        )
    }

    /// Started as `user` by root, outside any session.
    fn start_outside(&self, user: &TestUser) -> Killed {
        let child = Command::new("su")
            .args(["-s", "/bin/sh", &user.name, "-c", &format!("exec {}", self.command())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).expect("log"))
            .spawn()
            .expect("su");
        Killed(child)
    }

    /// The running listener (from its PID file), once it answers.
    fn listener(&self) -> (i32, u64) {
        let pid_file = self.dir.join("sshd.pid");
        let mut pid = None;
        let up = wait_until(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok());
            pid.is_some() && sshidle_tests::sshd::banner(self.port)
        });
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        assert!(up, "the user's own sshd on port {} did not start: {log}", self.port);
        let pid = pid.unwrap();
        assert_eq!(procfs::exe(pid).as_deref(), Some(Path::new("/usr/sbin/sshd")), "{pid} does not run sshd");
        (pid, procfs::start_time(pid).expect("start time"))
    }
}

/// The user runs the sshd binary itself inside a session: in one session
/// as a listener of its own below the login shell, with a connection to it
/// whose command does I/O; in another the login shell execs it (the
/// channel's own process then runs sshd's executable). Each holds the master
/// of a pty fed a line a second (read by a `cat`). Were a process running
/// sshd's executable anywhere in the tree taken for sshd's own, that pty
/// would be the session's and that command a channel's, and either would
/// keep it. Each session is judged by the input on its own pty alone
/// (`status` shows that one tty), ended at its limit, and the user's sshd
/// and all below it are ended with it. The bystanders survive: the same
/// user's sshd and another user's, both started by root outside the
/// session, and the test's (root's) sshd, which still takes logins.
#[test]
fn sshd_run_inside_a_session_is_the_sessions_and_ends_with_it() {
    if !e2e_enabled() {
        return;
    }
    let _timed = timed();
    let below = TestUser::create("avs", &[]);
    let execs = TestUser::create("ave", &[]);
    let other = TestUser::create("avo", &[]);
    for u in [&below, &execs] {
        write_owned(u, &home(u).join("io.pl"), IO_PL);
        write_owned(u, &home(u).join("feed.pl"), FEED_PL);
    }
    let below_own = OwnSshd::prepare(&below, "inside");
    let execs_own = OwnSshd::prepare(&execs, "inside");
    let outside = OwnSshd::prepare(&below, "outside");
    let others = OwnSshd::prepare(&other, "outside");
    let limit = Duration::from_secs(12);
    let sshd = Sshd::start(
        "advsshd",
        SshdOptions {
            policy: policy_for(&[&below.name, &execs.name], "idle=12s warn=0 end=session"),
            ..Default::default()
        },
    );
    let _outside_run = outside.start_outside(&below);
    let _others_run = others.start_outside(&other);
    let bystanders = [outside.listener(), others.listener()];
    let mut enforcer = start_niced_enforcer(&sshd, &["--find-unrecorded"]);

    let mut below = Login::new(&sshd, "own sshd below the shell", below, &[]);
    let mut execs = Login::new(&sshd, "the shell execs sshd", execs, &[]);
    let mut sessions = Vec::new();
    for l in [&below, &execs] {
        let row = wait_recorded(&sshd, &l.user.name, 1).remove(0);
        let monitor: i32 = row["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(row["ttys"].as_array().map(Vec::len), Some(1), "{row}");
        sessions.push((monitor, row["ttys"].clone()));
    }
    // Its own sshd in the background holding the fed pty, then a connection
    // to it whose command does I/O.
    let start = home(&below.user).join("start.sh");
    let script = format!(
        "perl ~/feed.pl {sshd} 2>{dir}/log &\n\
         for i in $(seq 100); do [ -s {dir}/sshd.pid ] && break; sleep 0.1; done; sleep 0.3\n\
         {io} </dev/null >/dev/null 2>&1 &\n",
        sshd = below_own.command(),
        dir = below_own.dir.display(),
        io = below_own.ssh("", "exec perl ~/io.pl"),
    );
    write_owned(&below.user, &start, &script);
    std::thread::sleep(Duration::from_millis(1500));
    below.type_last(&format!(". {}", start.display()));
    execs.type_final(&format!("exec perl ~/feed.pl {}", execs_own.command()), "Server listening on");

    // What makes the test: all of it in the session's tree, the user's sshd
    // holding a pty's master, the command doing I/O; the shell's own process
    // running sshd's executable.
    let mut listeners = Vec::new();
    for (l, own, (monitor, _)) in [(&below, &below_own, sessions[0].clone()), (&execs, &execs_own, sessions[1].clone())]
    {
        let (listener, start) = own.listener();
        let tree = descendants(monitor);
        assert!(tree.contains(&listener), "{}: the user's sshd {listener} is not in the session's tree", l.name);
        assert_eq!(procfs::pty_masters(listener).indexes.len(), 1, "{}: the user's sshd holds no pty master", l.name);
        let (cat, _) = process_of(&l.user, "cat");
        assert!(descendants(listener).contains(&cat), "{}: the cat is not below the user's sshd", l.name);
        listeners.push((listener, start));
    }
    let shell = procfs::parent_pid(listeners[1].0).and_then(procfs::parent_pid);
    assert_eq!(shell, Some(sessions[1].0), "the shell's own process does not run sshd");
    let (perl, perl_start) = process_of(&below.user, &format!("perl {}/io.pl", home(&below.user).display()));
    assert!(descendants(listeners[0].0).contains(&perl), "the command is not below the user's sshd");
    assert_writes(perl, perl_start);
    // Neither the fed pty nor the command counts: one tty, the session's.
    for (l, (_, own_tty)) in [&below, &execs].into_iter().zip(&sessions) {
        let ttys = sessions_of(&sshd, &l.user.name).first().map(|r| r["ttys"].clone());
        assert_eq!(ttys.as_ref(), Some(own_tty), "{}: the session's ttys", l.name);
    }

    let ended = wait_ended(&[&below, &execs], limit + Duration::from_secs(10));
    let ended_at = Instant::now();
    assert_ended_within(&below, ended[0], limit, &enforcer);
    assert_ended_on_time(&execs, ended[1], limit, &enforcer);
    // Nothing of the user is left but the sshd started outside the session
    // (and the user's service manager, where systemd runs: no session's).
    let uid = below.user.uid;
    let left = || -> Vec<String> {
        procfs::all_pids()
            .into_iter()
            .filter(|p| procfs::real_uid(*p) == Some(uid) && *p != bystanders[0].0 && !in_user_manager(*p))
            .filter(|p| procfs::in_namespace(procfs::own_pid_namespace(), procfs::pid_namespace(*p)))
            .map(|p| format!("{p} {:?}", procfs::title(p)))
            .collect()
    };
    assert!(wait_until(Duration::from_secs(8), || left().is_empty()), "processes left: {:?}", left());
    for (pid, start) in listeners {
        assert!(!procfs::is_same_process(pid, start), "the user's sshd inside the session survived it");
    }

    // Past the grace period (SIGKILL) of the ending.
    std::thread::sleep((Duration::from_secs(7)).saturating_sub(ended_at.elapsed()));
    enforcer.assert_alive();
    for (pid, start) in bystanders {
        assert!(
            procfs::is_same_process(pid, start),
            "an sshd started outside the session was ended:\n{}",
            enforcer.output()
        );
    }
    assert!(process_alive(sshd.pid), "the test's sshd was ended");
    sshd.authorize(&other);
    let out = sshd.ssh(&other.name, "echo still''up");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stillup"), "no login after: {}", describe(&out));
}
