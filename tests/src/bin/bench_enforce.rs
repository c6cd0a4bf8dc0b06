//! The enforcer's cost, and how exact it is next to autolog.
//!
//! Run as root, by hand (not part of `make test`):
//! ```text
//! cargo build --release --workspace
//! target/release/bench_enforce [--sizes 1000,4000] [--idle-window SECS] [--compare N] [--no-compare]
//! ```
//!
//! Sessions are faked, with real ptys: per session a "monitor" process (what
//! sshd's `[priv]` process is to a real login, and what the record names)
//! with a child that holds a pty slave (from openpty) as its controlling
//! terminal, the way a login shell does. Nothing on the ptys is typed, so
//! every session is idle since its pty was made.
//!
//! 1. Sweep cost at each size: a full sweep in process (one /proc scan, then
//!    every session's processes, ttys and decision), the cheap look the
//!    enforcer does at a deadline (tty atimes of known ttys), and the
//!    wall/CPU time of `sshidlectl enforce --once` and `status --json`.
//! 2. At the first size: the daemon `sshidlectl enforce` with sessions that
//!    sit idle under `idle=2h`: CPU at start, CPU over `--idle-window`
//!    seconds (default 120), extrapolated to an hour, wake-ups, and RSS.
//! 3. Side by side with autolog (Debian package `autolog`), N sessions each
//!    (default 5, one test user per pair), idle limit 1 minute (autolog's
//!    unit), warning 10 s before: the seconds past the limit at which each
//!    tool ends each session, and the CPU each used. autolog reads the
//!    system utmp, so its sessions get utmp entries (removed afterwards); the
//!    sshidle sessions are recorded in a private state directory.

use sshidle::activity;
use sshidle::policy::Limits;
use sshidle::procfs::{self, ProcTable};
use sshidle::state::{SessionKey, SessionRecord, StateDir};
use sshidle_tests::{sshidlectl, TempDir, TestUser};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Fake {
    _master: OwnedFd,
    monitor: i32,
    shell: i32,
    tty: String,
    made: i64,
}

/// A fake session: monitor + shell on a fresh pty. The shell runs as `uid`.
fn spawn_fake(uid: Option<u32>) -> Fake {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-pointers to two ints; NULL name/termios/winsize are allowed.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: just opened.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let tty = tty_of(slave);
    if let Some(uid) = uid {
        // SAFETY: valid fd.
        unsafe { libc::fchown(slave, uid, uid) };
    }
    let mut pipe = [0; 2];
    // SAFETY: two-int array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: this program is single-threaded when it forks; the children
    // only make async-signal-safe system calls and never return.
    let monitor = unsafe { libc::fork() };
    if monitor == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"sshd-bench".as_ptr());
            let shell = libc::fork();
            if shell == 0 {
                libc::setsid();
                libc::ioctl(slave, libc::TIOCSCTTY, 0);
                libc::dup2(slave, 0);
                libc::dup2(slave, 1);
                libc::dup2(slave, 2);
                if let Some(uid) = uid {
                    libc::setgroups(0, std::ptr::null());
                    libc::setgid(uid);
                    libc::setuid(uid);
                }
                libc::prctl(libc::PR_SET_NAME, c"bash".as_ptr());
                libc::close_range(3, u32::MAX, 0);
                loop {
                    libc::pause();
                }
            }
            libc::write(pipe[1], (&shell as *const i32).cast(), 4);
            libc::close_range(0, u32::MAX, 0);
            loop {
                libc::pause();
            }
        }
    }
    let mut shell = 0i32;
    // SAFETY: reading 4 bytes into an i32; closing our copies.
    unsafe {
        libc::close(pipe[1]);
        libc::read(pipe[0], (&mut shell as *mut i32).cast(), 4);
        libc::close(pipe[0]);
        libc::close(slave);
    }
    let made = std::fs::metadata(format!("/dev/{tty}")).map(|m| std::os::unix::fs::MetadataExt::atime(&m)).unwrap();
    Fake { _master: master, monitor, shell, tty, made }
}

fn tty_of(fd: i32) -> String {
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("pty path");
    path.to_string_lossy().trim_start_matches("/dev/").to_string()
}

fn kill_fakes(fakes: Vec<Fake>) {
    for f in &fakes {
        // SAFETY: our own children.
        unsafe {
            libc::kill(f.shell, libc::SIGKILL);
            libc::kill(f.monitor, libc::SIGKILL);
        }
    }
    reap();
    drop(fakes);
}

fn reap() {
    // SAFETY: non-blocking reap of our own children.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn record(f: &Fake, uid: u32, user: &str, limits: Limits, rule: &str) -> SessionRecord {
    SessionRecord {
        key: SessionKey { pid: f.monitor, start: procfs::start_time(f.monitor).expect("monitor start") },
        uid,
        user: user.into(),
        rhost: "192.0.2.1".into(),
        service: "bench".into(),
        login_time: f.made,
        limits,
        rule: rule.into(),
        warned_at: None,
    }
}

/// utime + stime of a process, in seconds.
fn cpu_of(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f = |n| procfs::stat_field(&stat, n).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (f(14) + f(15)) as f64 / procfs::clock_ticks_per_second() as f64
}

/// CPU of waited-for children (cutime + cstime), in seconds.
fn child_cpu_of(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f = |n| procfs::stat_field(&stat, n).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (f(16) + f(17)) as f64 / procfs::clock_ticks_per_second() as f64
}

fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn children_cpu() -> f64 {
    // SAFETY: rusage out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Runs sshidlectl once; (wall, CPU) seconds.
fn timed_ctl(policy: &std::path::Path, state: &std::path::Path, args: &[&str]) -> (f64, f64) {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let out =
        sshidlectl(policy, state).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("sshidlectl");
    let wall = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "sshidlectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (wall, children_cpu() - cpu0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sweep_cost(size: usize, idle_window: u64) {
    println!("\n== {size} idle sessions on real ptys ==");
    let dir = TempDir::new("bench-enforce");
    let state_path = dir.join("state");
    let policy = dir.join("policy");
    std::fs::write(&policy, "user root idle=2h warn=1m\n").unwrap();
    let t = Instant::now();
    let fakes: Vec<Fake> = (0..size).map(|_| spawn_fake(None)).collect();
    println!("made {size} sessions ({} processes) in {:.1} s", 2 * size, t.elapsed().as_secs_f64());
    let state = StateDir::open(&state_path, true).unwrap();
    let limits = Limits { idle: Some(7200), warn: Some(60), hard: None };
    let rule = format!("{}:1: user root", policy.display());
    let records: Vec<SessionRecord> = fakes.iter().map(|f| record(f, 0, "root", limits, &rule)).collect();
    for r in &records {
        state.record_open(r).unwrap();
    }
    let processes = procfs::all_pids().len();

    // A full sweep, in process: what the enforcer does at start and on SIGHUP.
    let mut full = Vec::new();
    let mut scans = Vec::new();
    let mut cheap = Vec::new();
    let now = sshidle::now_unix();
    for _ in 0..5 {
        let t = Instant::now();
        let table = ProcTable::scan();
        scans.push(t.elapsed().as_secs_f64());
        let mut members = Vec::with_capacity(records.len());
        let mut memo = None;
        for r in &records {
            let m = activity::members(&table, r.key).expect("members");
            let a = activity::assess(r, &m, &mut memo, now);
            let _ = sshidle::lifecycle::decide(&r.limits, r.login_time, a.quiet_since, r.warned_at, now);
            members.push(m);
        }
        full.push(t.elapsed().as_secs_f64());
        assert!(members.iter().all(|m| m.ttys.len() == 1), "every session has its tty");
        // The cheap look at a deadline: known ttys only, no scan.
        let t = Instant::now();
        for (r, m) in records.iter().zip(&members) {
            let a = activity::assess(r, m, &mut memo, now);
            let _ = sshidle::lifecycle::decide(&r.limits, r.login_time, a.quiet_since, r.warned_at, now);
        }
        cheap.push(t.elapsed().as_secs_f64());
    }
    println!("processes on the machine: {processes}");
    println!(
        "full sweep in process:  {:.1} ms (of which /proc scan {:.1} ms) = {:.1} µs/session",
        median(full.clone()) * 1e3,
        median(scans) * 1e3,
        median(full) * 1e6 / size as f64
    );
    println!(
        "cheap look (deadline):  {:.2} ms for all = {:.2} µs/session",
        median(cheap.clone()) * 1e3,
        median(cheap) * 1e6 / size as f64
    );
    let runs: Vec<(f64, f64)> =
        (0..3).map(|_| timed_ctl(&policy, &state_path, &["enforce", "--once", "--utmp", "none"])).collect();
    println!(
        "sshidlectl enforce --once:   wall {:.0} ms, CPU {:.0} ms",
        median(runs.iter().map(|r| r.0).collect()) * 1e3,
        median(runs.iter().map(|r| r.1).collect()) * 1e3
    );
    let runs: Vec<(f64, f64)> = (0..3).map(|_| timed_ctl(&policy, &state_path, &["status", "--json"])).collect();
    println!(
        "sshidlectl status --json:    wall {:.0} ms, CPU {:.0} ms",
        median(runs.iter().map(|r| r.0).collect()) * 1e3,
        median(runs.iter().map(|r| r.1).collect()) * 1e3
    );

    // The daemon with these sessions sitting idle.
    let mut daemon = sshidlectl(&policy, &state_path)
        .args(["enforce", "--utmp", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("enforcer");
    let pid = daemon.id() as i32;
    std::thread::sleep(Duration::from_secs(3));
    let start_cpu = cpu_of(pid);
    let wakes0: u64 = status_field(pid, "voluntary_ctxt_switches:").parse().unwrap_or(0);
    let rss_start = status_field(pid, "VmRSS:");
    if idle_window > 0 {
        std::thread::sleep(Duration::from_secs(idle_window));
        let cpu = cpu_of(pid) - start_cpu;
        let wakes: u64 = status_field(pid, "voluntary_ctxt_switches:").parse().unwrap_or(0);
        println!(
            "enforcer daemon: start-up CPU {:.3} s; then {:.3} s CPU and {} wake-ups in {idle_window} s \
             => {:.2} CPU s/hour (start-up included)",
            start_cpu,
            cpu,
            wakes.saturating_sub(wakes0),
            start_cpu + cpu * 3600.0 / idle_window as f64
        );
    } else {
        println!("enforcer daemon: start-up CPU {start_cpu:.3} s");
    }
    println!("enforcer daemon RSS: {rss_start} at start, {} now", status_field(pid, "VmRSS:"));
    // SAFETY: our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = daemon.wait();
    kill_fakes(fakes);
}

/// Writes (or, with `dead`, ends) the utmp entry of a fake session.
fn utmp_entry(f: &Fake, user: &str, dead: bool) {
    // SAFETY: all-zero utmpx is valid; fields filled below; the utmp API is
    // used from this thread only.
    unsafe {
        let mut u: libc::utmpx = std::mem::zeroed();
        u.ut_type = if dead { libc::DEAD_PROCESS } else { libc::USER_PROCESS };
        u.ut_pid = f.monitor;
        for (d, s) in u.ut_line.iter_mut().zip(f.tty.bytes()) {
            *d = s as libc::c_char;
        }
        let id = f.tty.trim_start_matches("pts/");
        for (d, s) in u.ut_id.iter_mut().zip(id.bytes()) {
            *d = s as libc::c_char;
        }
        if !dead {
            for (d, s) in u.ut_user.iter_mut().zip(user.bytes()) {
                *d = s as libc::c_char;
            }
            for (d, s) in u.ut_host.iter_mut().zip(b"192.0.2.1".iter()) {
                *d = *s as libc::c_char;
            }
        }
        u.ut_tv.tv_sec = sshidle::now_unix() as _;
        libc::setutxent();
        libc::pututxline(&u);
        libc::endutxent();
    }
}

fn compare_with_autolog(n: usize) {
    const LIMIT: i64 = 60;
    println!("\n== side by side: sshidle and autolog, {n} idle sessions each, idle limit 1 min, warning 10 s ==");
    if !std::path::Path::new("/usr/sbin/autolog").exists() {
        println!("autolog is not installed (apt-get install autolog); skipped");
        return;
    }
    let dir = TempDir::new("bench-autolog");
    let state_path = dir.join("state");
    let prefix = sshidle_tests::unique_name("sib");
    let users: Vec<TestUser> = (0..n).map(|_| TestUser::create(&prefix, &[])).collect();
    let policy = dir.join("policy");
    std::fs::write(&policy, format!("user {prefix}* idle=1m warn=10s\n")).unwrap();
    let autolog_conf = dir.join("autolog.conf");
    std::fs::write(
        &autolog_conf,
        format!("name={prefix}.* idle=1 grace=10 nomail nolog noclear\nname=.* idle=-1\nnolostkill\n"),
    )
    .unwrap();
    // Become the subreaper, so autolog's own children are ours to reap.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let ours: Vec<Fake> = users.iter().map(|u| spawn_fake(Some(u.uid))).collect();
    let theirs: Vec<Fake> = users.iter().map(|u| spawn_fake(Some(u.uid))).collect();
    let state = StateDir::open(&state_path, true).unwrap();
    let limits = Limits { idle: Some(LIMIT as u64), warn: Some(10), hard: None };
    for (f, u) in ours.iter().zip(&users) {
        state.record_open(&record(f, u.uid, &u.name, limits, &format!("{}:1", policy.display()))).unwrap();
    }
    for (f, u) in theirs.iter().zip(&users) {
        utmp_entry(f, &u.name, false);
    }
    let mut enforcer = sshidlectl(&policy, &state_path)
        .args(["enforce", "--utmp", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshidlectl enforce");
    let mut autolog = Command::new("/usr/sbin/autolog")
        .args(["-d", "-f"])
        .arg(&autolog_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("autolog");
    let (epid, apid) = (enforcer.id() as i32, autolog.id() as i32);
    let mut ended_ours: Vec<Option<i64>> = vec![None; n];
    let mut ended_theirs: Vec<Option<i64>> = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs((LIMIT as u64) * 2 + 30 + 25 * n as u64);
    let mut cpu = (0.0, 0.0, 0.0);
    while Instant::now() < deadline && (ended_ours.contains(&None) || ended_theirs.contains(&None)) {
        let now = sshidle::now_unix();
        for (slot, f) in ended_ours.iter_mut().zip(&ours).chain(ended_theirs.iter_mut().zip(&theirs)) {
            if slot.is_none() && !procfs::is_same_process(f.shell, procfs::start_time(f.shell).unwrap_or(0)) {
                *slot = Some(now);
            }
        }
        cpu = (cpu_of(epid), cpu_of(apid), child_cpu_of(apid));
        std::thread::sleep(Duration::from_millis(100));
        reap_others(epid, apid);
    }
    let show = |name: &str, ended: &[Option<i64>], fakes: &[Fake]| {
        let late: Vec<String> = ended
            .iter()
            .zip(fakes)
            .map(|(e, f)| e.map_or_else(|| "never".into(), |e| format!("{:+}", e - (f.made + LIMIT))))
            .collect();
        println!("{name:<8} seconds past the limit: {}", late.join(" "));
    };
    show("sshidle", &ended_ours, &ours);
    show("autolog", &ended_theirs, &theirs);
    println!("CPU used: sshidle {:.3} s; autolog {:.3} s (+ {:.3} s in its ps children)", cpu.0, cpu.1, cpu.2);
    println!("RSS: sshidle {}; autolog {}", status_field(epid, "VmRSS:"), status_field(apid, "VmRSS:"));
    for (f, u) in theirs.iter().zip(&users) {
        utmp_entry(f, &u.name, true);
    }
    // SAFETY: our own children.
    unsafe {
        libc::kill(epid, libc::SIGTERM);
        libc::kill(apid, libc::SIGKILL);
    }
    let _ = enforcer.wait();
    let _ = autolog.wait();
    kill_fakes(ours);
    kill_fakes(theirs);
}

/// Reaps exited children other than the two daemons (fake sessions, and
/// autolog's `ps` once we are their subreaper).
fn reap_others(keep_a: i32, keep_b: i32) {
    for pid in ProcTable::scan().procs.values().filter(|p| p.ppid == std::process::id() as i32).map(|p| p.pid) {
        if pid != keep_a && pid != keep_b {
            let mut status = 0;
            // SAFETY: non-blocking reap of one child.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}

fn main() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
    let mut sizes = vec![1000usize, 4000];
    let mut idle_window = 120u64;
    let mut compare = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => sizes = args.next().unwrap().split(',').map(|s| s.parse().unwrap()).collect(),
            "--idle-window" => idle_window = args.next().unwrap().parse().unwrap(),
            "--compare" => compare = args.next().unwrap().parse().unwrap(),
            "--no-compare" => compare = 0,
            other => panic!("unknown argument {other}"),
        }
    }
    // Room for the ptys and their descriptors.
    let max = sizes.iter().max().copied().unwrap_or(0) + 2 * compare + 512;
    let pty_max: usize = std::fs::read_to_string("/proc/sys/kernel/pty/max").unwrap().trim().parse().unwrap();
    if pty_max < max {
        std::fs::write("/proc/sys/kernel/pty/max", max.to_string()).expect("raise kernel.pty.max");
    }
    // SAFETY: rlimit out/in parameter.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    for (i, size) in sizes.iter().enumerate() {
        sweep_cost(*size, if i == 0 { idle_window } else { 0 });
    }
    if compare > 0 {
        compare_with_autolog(compare);
    }
    if pty_max < max {
        let _ = std::fs::write("/proc/sys/kernel/pty/max", pty_max.to_string());
    }
}
