//! End to end, issue 21: input a process of the session pushes into its
//! terminal (`ioctl(TIOCSTI)`) never counts, because the module takes
//! `TIOCSTI` away from the session (a seccomp filter set in sshd's monitor at
//! open_session, core/src/tiocsti.rs), from root processes started with
//! `sudo` too, which the kernel's `dev.tty.legacy_tiocsti = 0` spares. Real
//! sshd, real users, real ptys through tmux, the real `sshidlectl enforce`.
//!
//! Windows are measured as in idle_truth_e2e.rs: a session ends within
//! [limit, limit + SLACK] of its last real key.

use sshidle_tests::session::*;
use sshidle_tests::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `perl push.pl TTY x|nul|high LOG`: every 2 s pushes one byte (`x`, or a
/// NUL) into TTY's input with `ioctl(TIOCSTI)`; `high` makes the call
/// itself with the request's upper 32 bits set (the kernel reads 32 bits, a
/// filter reading 64 would miss it). Appends what each try did to LOG.
const PUSH_PL: &str = r#"my ($tty, $how, $log) = @ARGV;
open(my $t, '<', $tty) or die "$tty: $!\n";
open($log, '>>', $log) or die "log: $!\n";
select((select($log), $| = 1)[0]);
while (1) {
    sleep 2;
    my $c = $how eq 'nul' ? "\0" : 'x';
    my $ok = $how eq 'high' ? syscall(16, fileno($t), 0x100005412, $c) == 0 : ioctl($t, 0x5412, $c);
    print $log ($ok ? "pushed\n" : "denied: $!\n");
}
"#;

/// `python3 push.py TTY LOG`: the same with `fcntl.ioctl`.
const PUSH_PY: &str = r#"import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
log = open(sys.argv[2], 'a', buffering=1)
while True:
    time.sleep(2)
    try:
        fcntl.ioctl(fd, 0x5412, b'x')
        log.write('pushed\n')
    except OSError as e:
        log.write('denied: %s\n' % e.strerror)
"#;

fn home(user: &TestUser) -> PathBuf {
    PathBuf::from("/home").join(&user.name)
}

/// The pushers, owned by `user`, in its home.
fn install_pushers(user: &TestUser) {
    for (name, text) in [("push.pl", PUSH_PL), ("push.py", PUSH_PY)] {
        let path = home(user).join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        run(Command::new("chown").arg(format!("{0}:{0}", user.name)).arg(&path));
    }
}

/// A sudoers drop-in letting `user` run anything as root without a
/// password, removed on drop.
struct Sudoer(PathBuf);

impl Sudoer {
    fn allow(user: &TestUser) -> Sudoer {
        let path = PathBuf::from("/etc/sudoers.d").join(format!("sshidle-test-{}", user.name));
        std::fs::write(&path, format!("{} ALL=(root) NOPASSWD: ALL\n", user.name)).expect("sudoers drop-in");
        run(Command::new("chmod").arg("0440").arg(&path));
        Sudoer(path)
    }
}

impl Drop for Sudoer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Each pusher, started once from its idle session's shell as its last
/// key, pushes a byte every 2 s, and every push is refused: the session is
/// warned when due and ended within [limit, limit + 1.5 s] of that key, with
/// nothing of it left (`end=session`: the pushers left the shell's tree). A typist and a ControlMaster connection with one
/// typing tty are kept.
#[test]
fn pushers_are_ended_at_their_limit_and_typists_kept() {
    if !e2e_enabled() {
        return;
    }
    let _timed = timed();
    // Each runs in a background job of the shell (its descendant, the pty
    // its controlling terminal); the sudo one as root, which the kernel's
    // legacy_tiocsti = 0 would let through.
    const PUSHERS: [(&str, &str); 5] = [
        ("perl, a visible key", "T=$(tty); (perl ~/push.pl $T x ~/pushed >/dev/null 2>&1 &)"),
        ("perl, a NUL", "T=$(tty); (perl ~/push.pl $T nul ~/pushed >/dev/null 2>&1 &)"),
        ("perl, request with high bits", "T=$(tty); (perl ~/push.pl $T high ~/pushed >/dev/null 2>&1 &)"),
        ("python fcntl.ioctl", "T=$(tty); (/usr/bin/python3 ~/push.py $T ~/pushed >/dev/null 2>&1 &)"),
        ("root through sudo", "T=$(tty); (sudo -n perl ~/push.pl $T x ~/pushed >/dev/null 2>&1 &)"),
    ];
    let pushers: Vec<TestUser> = PUSHERS.iter().map(|_| TestUser::create("tcp", &[])).collect();
    for u in &pushers {
        install_pushers(u);
    }
    let _sudoer = Sudoer::allow(&pushers[4]);
    let typist = TestUser::create("tct", &[]);
    let muxer = TestUser::create("tcx", &[]);
    let mut names: Vec<&str> = pushers.iter().map(|u| u.name.as_str()).collect();
    names.extend([typist.name.as_str(), muxer.name.as_str()]);
    let limit = Duration::from_secs(12);
    let sshd = Sshd::start(
        "tiocsti",
        SshdOptions { policy: policy_for(&names, "idle=12s warn=4s end=session"), ..Default::default() },
    );
    let mut enforcer = start_niced_enforcer(&sshd, &[]);
    let kept_typist = Login::new(&sshd, "typist", typist, &[]);
    let socket = sshd.dir.join("mux.sock");
    let path_opt = format!("ControlPath={}", socket.display());
    sshd.authorize(&muxer);
    let master = tty_login(&sshd, &muxer.name, &["-o", "ControlMaster=yes", "-o", &path_opt]);
    let second = tty_login(&sshd, &muxer.name, &["-o", "ControlMaster=no", "-o", &path_opt]);
    let logins = PUSHERS.iter().zip(pushers).map(|((name, line), user)| (*name, *line, user)).collect();
    let results = idlers_among_typists(&sshd, logins, &[&kept_typist.tmux, &second], limit);
    for (l, ended) in &results {
        // The pusher ran and tried, and the kernel refused every push.
        let pushed = std::fs::read_to_string(home(&l.user).join("pushed")).unwrap_or_default();
        assert!(pushed.lines().count() >= 3, "{}: the pusher did not run (its log: {pushed:?})", l.name);
        assert!(
            pushed.lines().all(|line| line == "denied: Operation not permitted"),
            "{}: a push was not refused with EPERM: {pushed:?}",
            l.name
        );
        assert_ended_on_time(l, *ended, limit, &enforcer);
        let screen = l.tmux.capture();
        assert!(screen.contains("will be disconnected in 4s"), "{}: no warning 4 s ahead:\n{screen}", l.name);
    }
    enforcer.assert_alive();
    assert!(!kept_typist.tmux.is_dead(), "the typist was disconnected:\n{}", enforcer.output());
    assert!(!kept_typist.tmux.capture().contains("will be disconnected"), "the typist was warned");
    assert!(!master.is_dead(), "the ControlMaster connection with a typing tty was disconnected");
    assert!(!second.is_dead(), "the typing tty of the ControlMaster connection was disconnected");
}

/// Types `line` and waits until `shown` is on the screen.
fn shows(tmux: &Tmux, line: &str, shown: &str) {
    tmux.type_line(line);
    assert!(tmux.wait_for(shown, Duration::from_secs(15)), "`{line}` did not show {shown:?}:\n{}", tmux.capture());
}

/// The session works with the filter: bash (a foreground job and Ctrl-C),
/// sudo, tmux inside the session, vim; its shell and what sudo runs carry
/// the filter, and a push as root fails. With `tiocsti=allow` there is no
/// filter and the same push, as root, runs a command in the shell.
#[test]
fn a_session_works_with_the_filter_and_tiocsti_allow_turns_it_off() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("tcw", &[]);
    let _sudoer = Sudoer::allow(&user);
    let policy = policy_for(&[&user.name], "idle=10m");
    let sshd = Sshd::start("tiocstiok", SshdOptions { policy: policy.clone(), ..Default::default() });
    sshd.authorize(&user);
    let tmux = tty_login(&sshd, &user.name, &[]);
    // The filter: in the shell, and in what sudo runs as root.
    shows(&tmux, "echo SECCOMP=$(awk '/^Seccomp:/ {print $2}' /proc/$$/status)", "SECCOMP=2");
    shows(&tmux, "sudo -n awk '/^Seccomp:/ {print \"ROOT\" \"SECCOMP=\" $2}' /proc/self/status", "ROOTSECCOMP=2");
    shows(&tmux, "sudo -n id -u | sed 's/^/UID=/'", "UID=0");
    // Pushing "echo PUSHED\n" into the shell's input, as root, from a
    // background job a second later: the shell is then reading its input
    // (a sudo in the foreground would read and relay it to its own pty).
    let push = "T=$(tty); (sleep 1; sudo -n perl -e 'open(T, \"<\", $ARGV[0]) or die; for (split //, \
                \"echo PU\" . \"SHED\\n\") { my $c = $_; ioctl(T, 0x5412, $c) or die \"TIOC\" . \"STI: $!\\n\" }' $T) &";
    shows(&tmux, push, "TIOCSTI: Operation not permitted");
    // bash: a foreground job interrupted by Ctrl-C (the line discipline's
    // signal), then the next command.
    tmux.type_line("sleep 60");
    std::thread::sleep(Duration::from_millis(500));
    tmux.send_keys(&["C-c"]);
    shows(&tmux, "echo AFTER''INTERRUPT", "AFTERINTERRUPT");
    // tmux inside the session: a server of the session's own, attached on
    // the pane, typed into, detached.
    shows(&tmux, "tmux -L inner -f /dev/null new-session -s in", "[in]");
    shows(&tmux, "echo INNER''TMUX", "INNERTMUX");
    tmux.send_keys(&["C-b", "d"]);
    assert!(tmux.wait_for("[detached", Duration::from_secs(10)), "inner tmux did not detach:\n{}", tmux.capture());
    shows(&tmux, "tmux -L inner kill-server; echo KILLED''INNER", "KILLEDINNER");
    // vim (vim.tiny where only vim-tiny is installed): insert, write, quit.
    // Keys typed before vim has the terminal may be flushed: wait for its
    // status line on the new file.
    shows(&tmux, "V=$(command -v vim || command -v vim.tiny); $V -u NONE -N ~/v.txt", "[New");
    tmux.send_text("ihello from vim");
    tmux.send_keys(&["Escape"]);
    // An Escape closely followed by a key is read as Alt+key.
    std::thread::sleep(Duration::from_millis(500));
    tmux.send_text(":wq");
    tmux.send_keys(&["Enter"]);
    // Keys typed while vim gives the terminal back may be flushed too: wait
    // for the shell's prompt below vim's command line.
    let prompt = |screen: String| {
        let mut lines = screen.lines().rev().map(str::trim_end).skip_while(|l| l.is_empty());
        lines.next().is_some_and(|l| l.ends_with('$')) && lines.next().is_some_and(|l| l.ends_with("v.txt"))
    };
    assert!(wait_until(Duration::from_secs(15), || prompt(tmux.capture())), "vim did not quit:\n{}", tmux.capture());
    shows(&tmux, "echo FILE=$(cat ~/v.txt)", "FILE=hello from vim");
    assert!(!tmux.is_dead(), "the session ended");
    drop(tmux);

    // tiocsti=allow: no filter, the push runs the command.
    let allowed = Sshd::start(
        "tiocstiallow",
        SshdOptions { policy, module_args: "tiocsti=allow".to_string(), ..Default::default() },
    );
    allowed.authorize(&user);
    let tmux = tty_login(&allowed, &user.name, &[]);
    shows(&tmux, "echo SECCOMP=$(awk '/^Seccomp:/ {print $2}' /proc/$$/status)", "SECCOMP=0");
    shows(&tmux, push, "PUSHED");
}
