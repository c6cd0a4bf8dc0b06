//! The enforcer's cost, and how exact it is next to autolog.
//!
//! Run as root, by hand (not part of `make test`):
//! ```text
//! cargo build --release --workspace
//! target/release/bench_enforce [--sizes 1000] [--users 10] [--notty-every 5]
//!     [--idle-window SECS] [--typing-window SECS] [--keys-per-sec 5] [--compare N | --no-compare]
//!     [--tiocsti-filter]
//! ```
//!
//! Sessions are faked, shaped like real ones, on real ptys: per session a
//! "monitor" (sshd's `[priv]` process, root, what the record names), its
//! child (`sshd: USER@pts/N`, running as the user and holding the pty master,
//! as sshd's own child does), a shell on the pty slave as its controlling
//! terminal (it reads what arrives and echoes it, as readline does), and a
//! job below the shell on the same tty: four processes. Every `--notty-every`
//! th session has no pty: its command (no tty, in a session of its own) and
//! a child of it. Sessions belong to `--users` real users (round robin) who
//! match different policy rules (a user rule, a group rule, `*`), so policy
//! resolution does its account lookups; every pty session has a utmp entry
//! in a private utmp file that the enforcer reads (`--utmp FILE`). With
//! `--tiocsti-filter` each monitor installs the module's TIOCSTI filter
//! (core/src/tiocsti.rs) before it forks the rest, as the module does in
//! sshd's monitor, so the session's processes run under it.
//!
//! 1. Sweep cost at each size: a full sweep in process, every part the
//!    enforcer does (journal parsing, policy resolution with account lookups,
//!    utmp, one /proc scan, each session's processes, ttys and decision, a
//!    memory of I/O per session), the cheap look at a deadline, and the
//!    wall/CPU time of `sshidlectl enforce --once` and `status --json`.
//! 2. At the first size, the daemon `sshidlectl enforce` (`idle=2h`, so
//!    nobody is ended): CPU over `--idle-window` seconds of idleness
//!    (default 330, longer than the enforcer's 5-minute housekeeping), in
//!    10-second slices so that housekeeping shows; then over
//!    `--typing-window` seconds (default 60) while every pty gets
//!    `--keys-per-sec` keystrokes a second (written into the masters, read
//!    on the slaves), as a share of one core.
//! 3. Side by side with autolog (Debian package `autolog`), N sessions each
//!    (default 20, one test user per pair), idle limit 1 minute (autolog's
//!    unit), warning 10 s before: the seconds past the limit at which each
//!    tool ends each session (median and max), and the CPU each used.
//!    autolog reads the system utmp, so its sessions get utmp entries there
//!    (removed afterwards); the sshidle sessions are recorded in a private
//!    state directory.

use sshidle::activity;
use sshidle::lifecycle::decide;
use sshidle::policy::{Limits, Policy};
use sshidle::procfs::{self, ProcTable};
use sshidle::state::{SessionKey, SessionRecord, StateDir};
use sshidle_tests::{sshidlectl, TempDir, TestGroup, TestUser};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fake {
    /// Our copy of the pty master (the session's child holds another).
    master: Option<OwnedFd>,
    monitor: i32,
    /// The process whose end means the session was ended: the shell, or
    /// the command of a session without a pty.
    shell: i32,
    tty: Option<String>,
    made: i64,
    /// When the pty was made (its last input), unix seconds with fraction.
    made_at: f64,
    uid: u32,
    user: String,
}

/// Whose session a fake is.
#[derive(Clone)]
struct Owner {
    uid: u32,
    gid: u32,
    name: String,
}

impl Owner {
    fn of(user: &TestUser) -> Owner {
        let gid = sshidle::users::lookup_user(&user.name).expect("test user").gid;
        Owner { uid: user.uid, gid, name: user.name.clone() }
    }
}

/// A fake session (see the top of this file): monitor → child (holds the
/// master) → shell on the slave → job; or, without a pty, monitor → child →
/// command → its child.
/// `--tiocsti-filter`: the filter each fake monitor installs, built before
/// any fork.
static TIOCSTI_FILTER: std::sync::OnceLock<Vec<libc::sock_filter>> = std::sync::OnceLock::new();

fn spawn_fake(owner: &Owner, pty: bool) -> Fake {
    let (mut master, mut slave) = (-1, -1);
    if pty {
        // SAFETY: out-pointers to two ints; NULL name/termios/winsize are allowed.
        let rc =
            unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: valid fd; the termios is filled by tcgetattr. Readline's
        // mode: every key is read at once, the shell echoes it itself.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(slave, &mut t);
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(slave, libc::TCSANOW, &t);
            libc::fchown(slave, owner.uid, libc::gid_t::MAX);
        }
    }
    let tty = pty.then(|| tty_of(slave));
    let mut pipe = [0; 2];
    // SAFETY: two-int array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let (uid, gid) = (owner.uid, owner.gid);
    // SAFETY: this program is single-threaded while it forks (the keystroke
    // thread starts later); the children only make async-signal-safe system
    // calls and never return.
    let monitor = unsafe { libc::fork() };
    if monitor == 0 {
        // SAFETY: in the forked child, only async-signal-safe calls follow.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"sshd".as_ptr());
            if let Some(filter) = TIOCSTI_FILTER.get() {
                if sshidle::tiocsti::install(filter).is_err() {
                    libc::_exit(1);
                }
            }
            let child = libc::fork();
            if child == 0 {
                become_user(uid, gid);
                let shell = libc::fork();
                if shell == 0 {
                    libc::setsid();
                    libc::prctl(libc::PR_SET_NAME, if pty { c"bash".as_ptr() } else { c"rsync".as_ptr() });
                    if pty {
                        libc::ioctl(slave, libc::TIOCSCTTY, 0);
                        libc::dup2(slave, 0);
                        libc::dup2(slave, 1);
                        libc::dup2(slave, 2);
                    } else {
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                        libc::dup2(null, 0);
                        libc::dup2(null, 1);
                        libc::dup2(null, 2);
                    }
                    let job = libc::fork();
                    if job == 0 {
                        libc::prctl(libc::PR_SET_NAME, if pty { c"vim".as_ptr() } else { c"ssh".as_ptr() });
                        libc::close_range(3, u32::MAX, 0);
                        loop {
                            libc::pause();
                        }
                    }
                    let shell_pid = libc::getpid();
                    libc::write(pipe[1], (&shell_pid as *const i32).cast(), 4);
                    libc::close_range(3, u32::MAX, 0);
                    // Read what arrives and echo it, as an interactive shell does.
                    let mut buf = [0u8; 64];
                    loop {
                        let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
                        if n > 0 {
                            libc::write(1, buf.as_ptr().cast(), n as usize);
                        } else if n == 0 || !pty {
                            libc::pause();
                        }
                    }
                }
                // sshd's child keeps the master (as fd 3), nothing else.
                if pty {
                    libc::dup2(master, 3);
                }
                libc::close_range(if pty { 4 } else { 3 }, u32::MAX, 0);
                libc::close(0);
                libc::close(1);
                libc::close(2);
                loop {
                    libc::pause();
                }
            }
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
        if pty {
            libc::close(slave);
        }
    }
    let master = pty.then(|| {
        // SAFETY: just opened, ours; non-blocking, for the keystroke thread.
        unsafe {
            libc::fcntl(master, libc::F_SETFL, libc::O_NONBLOCK);
            // Not inherited by the enforcer the bench starts (it would hold
            // every session's master).
            libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
            OwnedFd::from_raw_fd(master)
        }
    });
    let made = match &tty {
        Some(tty) => {
            std::fs::metadata(format!("/dev/{tty}")).map(|m| std::os::unix::fs::MetadataExt::atime(&m)).unwrap()
        }
        None => sshidle::now_unix(),
    };
    Fake { master, monitor, shell, tty, made, made_at: unix_now_f64(), uid: owner.uid, user: owner.name.clone() }
}

/// In a forked child: drop root for `uid`/`gid`.
///
/// # Safety
/// Only in a child after fork (async-signal-safe calls only).
unsafe fn become_user(uid: u32, gid: u32) {
    if uid != 0 {
        // SAFETY: plain system calls.
        unsafe {
            libc::setgroups(0, std::ptr::null());
            libc::setgid(gid);
            libc::setuid(uid);
        }
    }
}

fn tty_of(fd: i32) -> String {
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("pty path");
    path.to_string_lossy().trim_start_matches("/dev/").to_string()
}

fn kill_fakes(fakes: Vec<Fake>) {
    let table = ProcTable::scan();
    for f in &fakes {
        let mut pids: Vec<i32> = table.descendants(f.monitor).iter().map(|p| p.pid).collect();
        pids.push(f.monitor);
        for pid in pids {
            // SAFETY: processes of our own fake sessions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    reap();
    drop(fakes);
}

fn reap() {
    // SAFETY: non-blocking reap of our own children.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn record(f: &Fake, limits: Limits, rule: &str) -> SessionRecord {
    SessionRecord {
        key: SessionKey { pid: f.monitor, start: procfs::start_time(f.monitor).expect("monitor start") },
        uid: f.uid,
        user: f.user.clone(),
        rhost: "192.0.2.1".into(),
        service: "bench".into(),
        login_time: f.made,
        limits,
        rule: rule.into(),
        warned_at_ms: None,
    }
}

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// CPU time of the calling thread, in seconds (user + system).
fn cpu_now() -> f64 {
    // SAFETY: plain data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// utime + stime of a process, in seconds.
fn cpu_of(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f = |n| procfs::stat_field(&stat, n).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (f(14) + f(15)) as f64 / procfs::clock_ticks_per_second() as f64
}

/// CPU time of a single-threaded process to the nanosecond (the scheduler's
/// run time, `/proc/PID/schedstat`): the enforcer's idle cost is a few
/// milliseconds, below what 10-ms ticks can tell. Falls back to ticks.
fn precise_cpu_of(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| cpu_of(pid), |ns| ns as f64 / 1e9)
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
    // SAFETY: a writable rusage.
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

/// The users of the sweep and the policy that gives them their limits: the
/// first by a `user` rule, every second by a `group` rule, the rest by `*`.
struct Population {
    owners: Vec<Owner>,
    _users: Vec<TestUser>,
    _group: TestGroup,
    policy: String,
}

fn population(count: usize) -> Population {
    let group = TestGroup::create("sbg");
    let prefix = sshidle_tests::unique_name("sbu");
    let users: Vec<TestUser> =
        (0..count).map(|i| TestUser::create(&prefix, &[group.name.as_str()][..(i % 2)])).collect();
    let policy =
        format!("user {} idle=2h warn=1m\ngroup {} idle=2h warn=2m\n* idle=2h warn=1m\n", users[0].name, group.name);
    Population { owners: users.iter().map(Owner::of).collect(), _users: users, _group: group, policy }
}

struct Phases {
    idle_window: u64,
    typing_window: u64,
    keys_per_sec: u32,
}

fn sweep_cost(size: usize, owners: &[Owner], policy_text: &str, notty_every: usize, phases: Option<&Phases>) {
    let dir = TempDir::new("bench-enforce");
    let state_path = dir.join("state");
    let policy_path = dir.join("policy");
    let utmp_path = dir.join("utmp");
    std::fs::write(&policy_path, policy_text).unwrap();
    let t = Instant::now();
    let fakes: Vec<Fake> = (0..size)
        .map(|i| spawn_fake(&owners[i % owners.len()], notty_every == 0 || i % notty_every != notty_every - 1))
        .collect();
    let ptys = fakes.iter().filter(|f| f.tty.is_some()).count();
    println!(
        "\n== {size} sessions of {} users ({ptys} on ptys, 4 processes each; {} without a pty, 4 processes each) ==",
        owners.len(),
        size - ptys
    );
    println!("made them in {:.1} s", t.elapsed().as_secs_f64());
    write_private_utmp(&utmp_path, &fakes);
    let state = StateDir::open(&state_path, true).unwrap();
    let policy = Policy::load(&policy_path).expect("policy");
    let records: Vec<SessionRecord> = fakes
        .iter()
        .map(|f| {
            let account = sshidle::users::lookup_user(&f.user).expect("account");
            let resolution = policy.resolve(&f.user, "127.0.0.1", &mut || sshidle::users::group_names(&account));
            record(f, resolution.limits, &resolution.describe())
        })
        .collect();
    for r in &records {
        state.record_open(r).unwrap();
    }
    let processes = procfs::all_pids().len();

    // A full sweep, in process: what the enforcer does at start and on SIGHUP.
    // Timed in CPU seconds of this thread: the machine may be busy.
    let mut parts: Vec<[f64; 5]> = Vec::new();
    let mut cheap = Vec::new();
    let now = sshidle::now_unix();
    let mut memos: std::collections::HashMap<SessionKey, Option<activity::IoMemo>> = Default::default();
    for _ in 0..5 {
        let t0 = cpu_now();
        let sessions = state.load().expect("journal").sessions;
        let t1 = cpu_now();
        let policy = Policy::load(&policy_path).expect("policy");
        let mut resolved: std::collections::HashMap<String, Limits> = Default::default();
        for r in &sessions {
            resolved.entry(r.user.clone()).or_insert_with(|| {
                let account = sshidle::users::lookup_user(&r.user).expect("account");
                policy.resolve(&account.name, &r.rhost, &mut || sshidle::users::group_names(&account)).limits
            });
        }
        let t2 = cpu_now();
        let utmp = sshidle::utmp::read(&utmp_path).expect("utmp");
        assert_eq!(utmp.len(), ptys);
        let t3 = cpu_now();
        let table = ProcTable::scan();
        let t4 = cpu_now();
        let mut members = Vec::with_capacity(sessions.len());
        for r in &sessions {
            let m = activity::members(&table, r.key).expect("members");
            // The ptys judged from their timestamps, as at an enforcer's start.
            let ttys = activity::ptys_quiet_since(&m.ttys, &Default::default(), r.key, now * 1000, r.login_time);
            let a = activity::assess(r, &m, memos.entry(r.key).or_default(), ttys, now * 1000);
            let _ = decide(&resolved[&r.user], r.login_time, a.quiet_since_ms, r.warned_at_ms, now * 1000);
            members.push(m);
        }
        let t5 = cpu_now();
        parts.push([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]);
        assert_eq!(members.iter().filter(|m| m.ttys.len() == 1).count(), ptys, "every pty session has its tty");
        // The cheap look at a deadline: known members only, no scan.
        let t = cpu_now();
        for (r, m) in sessions.iter().zip(&members) {
            let ttys = activity::ptys_quiet_since(&m.ttys, &Default::default(), r.key, now * 1000, r.login_time);
            let a = activity::assess(r, m, memos.entry(r.key).or_default(), ttys, now * 1000);
            let _ = decide(&resolved[&r.user], r.login_time, a.quiet_since_ms, r.warned_at_ms, now * 1000);
        }
        cheap.push(cpu_now() - t);
    }
    let part = |i: usize| median(parts.iter().map(|p| p[i]).collect());
    let full = median(parts.iter().map(|p| p.iter().sum()).collect());
    println!("processes on the machine: {processes}");
    println!(
        "full sweep in process (CPU):  {:.1} ms = {:.1} µs/session: journal {:.1} ms, policy + account lookups {:.1} ms, \
         utmp {:.1} ms, /proc scan {:.1} ms, sessions' processes/ttys/decisions {:.1} ms",
        full * 1e3,
        full * 1e6 / size as f64,
        part(0) * 1e3,
        part(1) * 1e3,
        part(2) * 1e3,
        part(3) * 1e3,
        part(4) * 1e3
    );
    println!(
        "cheap look at a deadline (CPU):  {:.2} ms for all = {:.2} µs/session",
        median(cheap.clone()) * 1e3,
        median(cheap) * 1e6 / size as f64
    );
    let utmp_arg = utmp_path.to_str().unwrap();
    let runs: Vec<(f64, f64)> =
        (0..3).map(|_| timed_ctl(&policy_path, &state_path, &["enforce", "--once", "--utmp", utmp_arg])).collect();
    println!(
        "sshidlectl enforce --once:   wall {:.0} ms, CPU {:.0} ms",
        median(runs.iter().map(|r| r.0).collect()) * 1e3,
        median(runs.iter().map(|r| r.1).collect()) * 1e3
    );
    let runs: Vec<(f64, f64)> = (0..3).map(|_| timed_ctl(&policy_path, &state_path, &["status", "--json"])).collect();
    println!(
        "sshidlectl status --json:    wall {:.0} ms, CPU {:.0} ms",
        median(runs.iter().map(|r| r.0).collect()) * 1e3,
        median(runs.iter().map(|r| r.1).collect()) * 1e3
    );
    if let Some(phases) = phases {
        daemon_cost(&fakes, &policy_path, &state_path, utmp_arg, phases);
    }
    kill_fakes(fakes);
}

/// The daemon with these sessions: idle, then typed into.
fn daemon_cost(fakes: &[Fake], policy: &Path, state: &Path, utmp: &str, phases: &Phases) {
    let mut daemon = sshidlectl(policy, state)
        .args(["enforce", "--utmp", utmp])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("enforcer");
    let pid = daemon.id() as i32;
    std::thread::sleep(Duration::from_secs(3));
    let start_cpu = precise_cpu_of(pid);
    let rss_start = status_field(pid, "VmRSS:");
    let wakes = || status_field(pid, "voluntary_ctxt_switches:").parse::<u64>().unwrap_or(0);
    println!("enforcer daemon: start-up CPU {start_cpu:.3} s, RSS {rss_start}");
    if phases.idle_window > 0 {
        // 10-second slices: the housekeeping (every 5 minutes) shows as a
        // slice above the others.
        let (w0, c0) = (wakes(), precise_cpu_of(pid));
        let mut slices = Vec::new();
        let mut last = c0;
        let begun = Instant::now();
        while begun.elapsed() < Duration::from_secs(phases.idle_window) {
            std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(phases.idle_window) - begun.elapsed()));
            let c = precise_cpu_of(pid);
            slices.push(((begun.elapsed().as_secs()), c - last));
            last = c;
        }
        let cpu = last - c0;
        let window = begun.elapsed().as_secs_f64();
        let (at, top) = slices.iter().fold((0, -1.0), |best, s| if s.1 > best.1 { *s } else { best });
        let typical = median(slices.iter().map(|s| s.1).collect());
        println!(
            "idle for {window:.0} s: {cpu:.3} s CPU, {} wake-ups => {:.3} CPU s/hour (start-up excluded); \
             10-s slices: median {:.1} ms, largest {:.1} ms (ending at {at} s)",
            wakes().saturating_sub(w0),
            cpu * 3600.0 / window,
            typical * 1e3,
            top * 1e3
        );
        let busy: Vec<String> =
            slices.iter().filter(|s| s.1 > 0.0005).map(|(at, cpu)| format!("{at}s:{:.1}ms", cpu * 1e3)).collect();
        println!("  slices with CPU (end of slice: CPU, scheduler run time): {}", busy.join(" "));
    }
    if phases.typing_window > 0 {
        let masters: Vec<i32> = fakes.iter().filter_map(|f| f.master.as_ref().map(|m| m.as_raw_fd())).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let typist = {
            let (stop, per_sec) = (stop.clone(), phases.keys_per_sec);
            std::thread::spawn(move || type_into(&masters, per_sec, &stop))
        };
        std::thread::sleep(Duration::from_secs(2));
        let (w0, c0, begun) = (wakes(), precise_cpu_of(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(phases.typing_window));
        let (cpu, window, woke) = (precise_cpu_of(pid) - c0, begun.elapsed().as_secs_f64(), wakes().saturating_sub(w0));
        stop.store(true, Ordering::SeqCst);
        let (keys, secs) = typist.join().expect("typist");
        println!(
            "typing ({:.0} keys/s in all, each read and echoed on its pty) for {window:.0} s: {cpu:.3} s CPU = \
             {:.2} % of one core, {woke} wake-ups",
            keys as f64 / secs,
            cpu / window * 100.0
        );
    }
    println!("enforcer daemon RSS now: {}", status_field(pid, "VmRSS:"));
    // SAFETY: our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = daemon.wait();
}

/// Writes one key into every master `per_sec` times a second, spread over
/// the second, and drains the echo; returns the keys written and the time.
fn type_into(masters: &[i32], per_sec: u32, stop: &AtomicBool) -> (u64, f64) {
    const SLICES: usize = 20;
    let period = Duration::from_secs(1) / per_sec.max(1);
    let chunk = masters.len().div_ceil(SLICES).max(1);
    let begun = Instant::now();
    let mut next = begun;
    let mut keys = 0u64;
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        for group in masters.chunks(chunk) {
            for fd in group {
                // SAFETY: writes to and reads from pty masters we hold.
                unsafe {
                    if libc::write(*fd, b"x".as_ptr().cast(), 1) == 1 {
                        keys += 1;
                    }
                    while libc::read(*fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
                }
            }
            next += period / SLICES as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    (keys, begun.elapsed().as_secs_f64())
}

/// A utmp file of our own with a USER_PROCESS entry per pty session.
fn write_private_utmp(path: &Path, fakes: &[Fake]) {
    let mut bytes = Vec::new();
    for f in fakes {
        let Some(tty) = &f.tty else { continue };
        let u = utmpx_of(f.monitor, tty, &f.user, false);
        // SAFETY: utmpx is plain old data.
        bytes.extend_from_slice(unsafe {
            std::slice::from_raw_parts((&u as *const libc::utmpx).cast::<u8>(), std::mem::size_of::<libc::utmpx>())
        });
    }
    std::fs::write(path, bytes).expect("utmp");
}

fn utmpx_of(pid: i32, tty: &str, user: &str, dead: bool) -> libc::utmpx {
    // SAFETY: an all-zero utmpx is valid.
    let mut u: libc::utmpx = unsafe { std::mem::zeroed() };
    u.ut_type = if dead { libc::DEAD_PROCESS } else { libc::USER_PROCESS };
    u.ut_pid = pid;
    for (d, s) in u.ut_line.iter_mut().zip(tty.bytes()) {
        *d = s as libc::c_char;
    }
    let id = tty.trim_start_matches("pts/");
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
    u
}

/// Writes (or, with `dead`, ends) the system utmp entry of a fake session.
fn utmp_entry(f: &Fake, dead: bool) {
    let u = utmpx_of(f.monitor, f.tty.as_deref().expect("pty"), &f.user, dead);
    // SAFETY: the utmp API is used from this thread only.
    unsafe {
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
    // Made 0.4 s apart, so that the sessions' last input falls at every
    // point of the kernel's 8-second tty timestamp block (one of sshidle's
    // and one of autolog's at each point).
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for u in &users {
        ours.push(spawn_fake(&Owner::of(u), true));
        theirs.push(spawn_fake(&Owner::of(u), true));
        std::thread::sleep(Duration::from_millis(8000 / n.max(1) as u64).min(Duration::from_millis(400)));
    }
    let state = StateDir::open(&state_path, true).unwrap();
    let limits = Limits { idle: Some(LIMIT as u64), warn: Some(10), hard: None, ..Default::default() };
    for f in &ours {
        state.record_open(&record(f, limits, &format!("{}:1", policy.display()))).unwrap();
    }
    for f in &theirs {
        utmp_entry(f, false);
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
    let mut ended_ours: Vec<Option<f64>> = vec![None; n];
    let mut ended_theirs: Vec<Option<f64>> = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs((LIMIT as u64) * 2 + 30 + 25 * n as u64);
    let mut cpu = (0.0, 0.0, 0.0);
    while Instant::now() < deadline && (ended_ours.contains(&None) || ended_theirs.contains(&None)) {
        let now = unix_now_f64();
        for (slot, f) in ended_ours.iter_mut().zip(&ours).chain(ended_theirs.iter_mut().zip(&theirs)) {
            if slot.is_none() && !procfs::is_same_process(f.shell, procfs::start_time(f.shell).unwrap_or(0)) {
                *slot = Some(now);
            }
        }
        cpu = (cpu_of(epid), cpu_of(apid), child_cpu_of(apid));
        std::thread::sleep(Duration::from_millis(100));
        reap_others(epid, apid);
    }
    let show = |name: &str, ended: &[Option<f64>], fakes: &[Fake]| {
        let late: Vec<Option<f64>> =
            ended.iter().zip(fakes).map(|(e, f)| e.map(|e| e - (f.made_at + LIMIT as f64))).collect();
        let seen: Vec<f64> = late.iter().flatten().copied().collect();
        let never = late.iter().filter(|l| l.is_none()).count();
        let summary = if seen.is_empty() {
            "none ended".to_string()
        } else {
            format!(
                "median {:+.1}, max {:+.1}, min {:+.1}",
                median(seen.clone()),
                seen.iter().copied().fold(f64::MIN, f64::max),
                seen.iter().copied().fold(f64::MAX, f64::min)
            )
        };
        let each: Vec<String> = late.iter().map(|l| l.map_or_else(|| "never".into(), |l| format!("{l:+.1}"))).collect();
        println!("{name:<8} seconds past the limit: {summary}; {never} never ended; each: {}", each.join(" "));
    };
    show("sshidle", &ended_ours, &ours);
    show("autolog", &ended_theirs, &theirs);
    println!("CPU used: sshidle {:.3} s; autolog {:.3} s (+ {:.3} s in its ps children)", cpu.0, cpu.1, cpu.2);
    println!("RSS: sshidle {}; autolog {}", status_field(epid, "VmRSS:"), status_field(apid, "VmRSS:"));
    for f in &theirs {
        utmp_entry(f, true);
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
    let mut sizes = vec![1000usize];
    let mut users = 10usize;
    let mut notty_every = 5usize;
    let mut phases = Phases { idle_window: 330, typing_window: 60, keys_per_sec: 5 };
    let mut compare = 20usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let at = i;
        let value = || args.get(at + 1).unwrap_or_else(|| panic!("{} needs a value", args[at])).clone();
        i += 2;
        match args[at].as_str() {
            "--sizes" => sizes = value().split(',').map(|s| s.parse().unwrap()).collect(),
            "--users" => users = value().parse().unwrap(),
            "--notty-every" => notty_every = value().parse().unwrap(),
            "--idle-window" => phases.idle_window = value().parse().unwrap(),
            "--typing-window" => phases.typing_window = value().parse().unwrap(),
            "--keys-per-sec" => phases.keys_per_sec = value().parse().unwrap(),
            "--compare" => compare = value().parse().unwrap(),
            "--no-compare" => {
                compare = 0;
                i -= 1;
            }
            "--tiocsti-filter" => {
                let _ = TIOCSTI_FILTER.set(sshidle::tiocsti::filter());
                i -= 1;
            }
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
    let people = population(users.max(1));
    for (i, size) in sizes.iter().enumerate() {
        sweep_cost(*size, &people.owners, &people.policy, notty_every, (i == 0).then_some(&phases));
    }
    if compare > 0 {
        compare_with_autolog(compare);
    }
    if pty_max < max {
        let _ = std::fs::write("/proc/sys/kernel/pty/max", pty_max.to_string());
    }
}
