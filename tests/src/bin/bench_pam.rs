//! What a login costs sshd because of pam_sshidle.so: the full PAM cycle of
//! one connection (`pam_start`, which loads every module of the stack, then
//! open_session, close_session and `pam_end`, which unloads them), a
//! `pam_permit` stack with the module against one without, with 0, 1,000,
//! 10,000 and 100,000 sessions already recorded.
//!
//! Run: `cargo build --release --workspace && target/release/bench_pam [--load-only|--session-only] [--fresh-process [--groups-warm]] [--tiocsti-allow] [CYCLES] [MODULE...]`
//! (CYCLES per row, default 2,000; MODULE defaults to the built module;
//! several MODULEs (say, two builds) are measured side by side in one run;
//! `--load-only`: pam_start + pam_end alone, what loading the module costs;
//! `--session-only`: open + close alone, the module's own work;
//! `--fresh-process`: each cycle in a new process, as sshd runs each
//! connection; slower to run: use fewer CYCLES; with `--groups-warm` the
//! new process has looked up groups once before, so NSS's group sources
//! (libnss_systemd) are loaded already); `--tiocsti-allow`: each stack also
//! with `tiocsti=allow`, so the TIOCSTI filter's own cost is the difference).
//!
//! Every stack takes TIOCSTI away from the process that opens the session (a
//! seccomp filter, core/src/tiocsti.rs; the floor installs the same one), as
//! it does in sshd's monitor. Filters stay with the thread that installed
//! them, so without `--fresh-process` each cycle runs in a new thread of
//! this process (timed inside it): thousands of cycles on one thread would
//! pile up thousands of filters, past the kernel's limit on their size.
//!
//! Measured as sshd pays it: this process has not loaded libgcc_s (it is
//! linked with the static unwinder, tests/build.rs; checked below), as
//! sshd's connection child has not. The baseline cycle is interleaved with
//! the module's, one each in turn, so load on the machine hits both alike.
//!
//! Beside the module, the floor: tests/bench/pam_floor.c, built here with
//! `cc`, a C module that makes only the system calls a login needs to keep
//! the spec's promises (account, start time, policy, groups, one append
//! each way, the close line). Its "floor added" is what any implementation
//! pays on this machine; the module's figure above it is ours to cut.

use sshidle::state::StateDir;
use sshidle_tests::pam::{PamSession, PAM_SUCCESS};
use sshidle_tests::{module_path, stranger_record, PamConfDir};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let pct = |p: f64| us(samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]);
    Stats { p50: pct(0.5), p99: pct(0.99), max: us(*samples.last().unwrap()) }
}

/// This process's minor page faults so far (a cycle in a new process
/// counts none here).
fn minor_faults() -> u64 {
    // SAFETY: rusage is plain data, filled by the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}

fn libgcc_s_loaded() -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap_or_default().contains("libgcc_s")
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// pam_start + open + close + pam_end: what sshd pays per connection.
    Full,
    /// pam_start + pam_end: loading and unloading the stack.
    LoadOnly,
    /// open + close on a handle already started: the module's own work.
    SessionOnly,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::LoadOnly => "load-only",
            Mode::SessionOnly => "session-only",
        }
    }
}

/// One cycle in a process of its own, as sshd runs each connection (a
/// forked listener child that re-executes sshd): this program executed
/// again with `--one-cycle`, so nothing of an earlier cycle is loaded or
/// touched and a module pays its first page faults, relocations and NSS
/// set-up in full. Timed inside the child, from `pam_start` to `pam_end`;
/// the exec itself is not counted.
fn cycle_in_new_process(conf: &Path, service: &str, mode: Mode) -> Duration {
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .arg(if GROUPS_WARM.load(Ordering::Relaxed) { "--one-cycle-groups-warm" } else { "--one-cycle" })
        .arg(conf)
        .arg(service)
        .arg(mode.name())
        .output()
        .expect("exec bench_pam --one-cycle");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cycle process failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    Duration::from_nanos(text.trim().parse().expect("the cycle's nanoseconds"))
}

/// `--groups-warm` (with `--fresh-process`).
static GROUPS_WARM: AtomicBool = AtomicBool::new(false);

/// `--one-cycle CONFDIR SERVICE MODE`: the child of [`cycle_in_new_process`].
fn one_cycle(args: &[String], groups_warm: bool) -> ! {
    let [conf, service, mode] = args else { panic!("usage: --one-cycle CONFDIR SERVICE MODE") };
    let mode = [Mode::Full, Mode::LoadOnly, Mode::SessionOnly].into_iter().find(|m| m.name() == mode).expect("mode");
    // What sshd has done before PAM's session hooks run: its syslog socket
    // is connected (its own lines), and NSS is set up by its look-up of
    // the user (getpwnam: nsswitch.conf read, NSS modules loaded).
    // SAFETY: a static ident; a valid C string.
    unsafe {
        libc::openlog(c"bench_pam".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_AUTHPRIV);
        libc::getpwnam(c"root".as_ptr());
        // `--groups-warm`: as if a group look-up had loaded NSS's group
        // sources already (sshd's session child does one, initgroups,
        // after the module's: it inherits what the module loaded).
        if groups_warm {
            let (mut groups, mut count) = ([0 as libc::gid_t; 64], 64);
            libc::getgrouplist(c"root".as_ptr(), 0, groups.as_mut_ptr(), &mut count);
        }
    }
    println!("{}", cycle(Path::new(conf), service, mode).as_nanos());
    std::process::exit(0)
}

/// One cycle in a new thread of this process, which takes the cycle's
/// seccomp filter with it when it ends.
fn cycle_in_new_thread(conf: &Path, service: &str, mode: Mode) -> Duration {
    std::thread::scope(|scope| scope.spawn(|| cycle(conf, service, mode)).join().expect("cycle thread"))
}

fn cycle(conf: &Path, service: &str, mode: Mode) -> Duration {
    let t0 = Instant::now();
    let mut pam = PamSession::start(conf, service, "root", Some("192.0.2.1")).expect("pam_start");
    let t1 = Instant::now();
    if mode != Mode::LoadOnly {
        assert_eq!(pam.open_session(), PAM_SUCCESS);
        assert_eq!(pam.close_session(), PAM_SUCCESS);
    }
    let t2 = Instant::now();
    drop(pam);
    match mode {
        Mode::SessionOnly => t2 - t1,
        _ => t0.elapsed(),
    }
}

/// Writes `path` back and drops it from the page cache.
fn evict_from_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return };
    let _ = file.sync_all();
    // SAFETY: a valid descriptor; advice only.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// A module's file name, for the stack's label.
fn file_label(module: &Path) -> String {
    module.file_name().map_or_else(|| "module".to_string(), |n| n.to_string_lossy().into_owned())
}

/// Builds tests/bench/pam_floor.c into `dir` with the system's C compiler:
/// the floor under the module's cost, measured beside it.
fn build_floor(dir: &Path) -> Result<std::path::PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pam_floor.c");
    let out = dir.join("pam_floor.so");
    let status = std::process::Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-Wl,-z,relro,-z,now", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-lpam")
        .status()
        .map_err(|err| format!("cc: {err}"))?;
    if !status.success() {
        return Err(format!("cc {}: {status}", source.display()));
    }
    Ok(out)
}

/// `recorded` open sessions of other (non-existent) processes in `dir`.
fn fill(dir: &Path, recorded: usize, policy: &Path) {
    let state = StateDir::open(dir, true).unwrap();
    let rule = format!("{}:4: *", policy.display());
    for i in 0..recorded {
        state.record_open(&stranger_record(i, &rule)).unwrap();
    }
    state.compact(&|_| true).unwrap();
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--one-cycle") => one_cycle(&args[1..], false),
        Some("--one-cycle-groups-warm") => one_cycle(&args[1..], true),
        _ => {}
    }
    GROUPS_WARM.store(args.iter().any(|a| a == "--groups-warm"), Ordering::Relaxed);
    let mode = if args.iter().any(|a| a == "--load-only") {
        Mode::LoadOnly
    } else if args.iter().any(|a| a == "--session-only") {
        Mode::SessionOnly
    } else {
        Mode::Full
    };
    // Default: every cycle in this one process, the module loaded and
    // unloaded again each time (issue 9's method). `--fresh-process`: each
    // cycle in a new process, first touches and all.
    let fresh = args.iter().any(|a| a == "--fresh-process");
    let run: fn(&Path, &str, Mode) -> Duration = if fresh { cycle_in_new_process } else { cycle_in_new_thread };
    let with_allow = args.iter().any(|a| a == "--tiocsti-allow");
    let syslog = SyslogSink::start();
    args.retain(|a| !a.starts_with("--"));
    let cycles: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(2_000);
    // MODULE [MODULE...]: several builds measured side by side in one run.
    let mut modules: Vec<std::path::PathBuf> = args.iter().skip(1).map(std::path::PathBuf::from).collect();
    if modules.is_empty() {
        modules.push(module_path());
    }
    assert!(!libgcc_s_loaded(), "this process loaded libgcc_s: the figures would not be sshd's");
    let conf = PamConfDir::new("bench");
    let policy = conf.dir.join("sshidle.conf");
    std::fs::write(
        &policy,
        "user backup idle=off\ngroup admins idle=2h warn=5m\ngroup contractors idle=10m warn=1m hard=8h\n* idle=15m warn=1m\n",
    )
    .unwrap();
    conf.service("permit", "session required pam_permit.so\n");
    // The stacks, each a pam_permit line and one module: the modules
    // named, then the floor.
    let mut stacks: Vec<(String, std::path::PathBuf, &str)> =
        modules.iter().enumerate().map(|(i, m)| (format!("m{}-{}", i + 1, file_label(m)), m.clone(), "")).collect();
    for (label, module, _) in &stacks {
        let size = std::fs::metadata(module).map(|m| m.len()).unwrap_or(0);
        println!("{label}: {} ({size} bytes)", module.display());
    }
    // Every module file read back from disk, as after a boot: a file just
    // written by cp or install sits in larger page-cache folios than one
    // read back, and faults in 10-25 µs cheaper a connection, so two builds
    // with different histories would not compare.
    for (_, module, _) in &stacks {
        evict_from_page_cache(module);
    }
    match build_floor(conf.path()) {
        Ok(path) => {
            println!("floor: {} (tests/bench/pam_floor.c: the system calls the spec needs, in C)", path.display());
            evict_from_page_cache(&path);
            stacks.push(("floor".to_string(), path, ""));
        }
        Err(why) => println!("floor: not built ({why})"),
    }
    if with_allow {
        let allowed: Vec<_> = stacks
            .iter()
            .map(|(label, module, _)| (format!("{label}-allow"), module.clone(), "tiocsti=allow"))
            .collect();
        stacks.extend(allowed);
    }
    println!(
        "{}, {cycles} cycles per row,",
        match mode {
            Mode::Full => "full cycle pam_start + open_session + close_session + pam_end",
            Mode::LoadOnly => "pam_start + pam_end only (loading and unloading)",
            Mode::SessionOnly => "open_session + close_session only (the module's own work)",
        }
    );
    println!(
        "{}; every stack's cycles interleaved with pam_permit's; µs; added = stack - pam_permit;",
        if fresh { "each cycle in a new process (exec)" } else { "all cycles in this process, each in a new thread" }
    );
    println!("faults: this process's minor page faults per cycle\n");
    println!(
        "{:>9}  {:<30} {:>8} {:>8} {:>8}  {:>9} {:>9}  {:>6}",
        "recorded", "stack", "p50", "p99", "max", "added p50", "added p99", "faults"
    );
    for recorded in [0usize, 1_000, 10_000, 100_000] {
        // Each stack with a journal of its own holding `recorded` sessions.
        for (label, module, extra) in &stacks {
            let state_dir = conf.dir.join(format!("state-{label}"));
            fill(&state_dir, recorded, &policy);
            conf.service(
                label,
                &format!(
                    "session required pam_permit.so\nsession optional {} conf={} state={} services={label} {extra}\n",
                    module.display(),
                    policy.display(),
                    state_dir.display()
                ),
            );
        }
        let services: Vec<&str> = std::iter::once("permit").chain(stacks.iter().map(|(l, ..)| l.as_str())).collect();
        // Warm up the page cache and the policy file.
        for _ in 0..20 {
            for service in &services {
                run(conf.path(), service, mode);
            }
        }
        // One cycle of each stack in turn, so load on the machine hits all
        // alike; the page faults of this process counted per stack.
        let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(cycles); services.len()];
        let mut faults = vec![0u64; services.len()];
        for _ in 0..cycles {
            for (i, service) in services.iter().enumerate() {
                let before = minor_faults();
                samples[i].push(run(conf.path(), service, mode));
                faults[i] += minor_faults() - before;
            }
        }
        let all: Vec<Stats> = samples.into_iter().map(stats).collect();
        let base = &all[0];
        for (i, (service, s)) in services.iter().zip(&all).enumerate() {
            let (added_p50, added_p99) = if i == 0 {
                ("-".to_string(), "-".to_string())
            } else {
                (format!("{:+.1}", s.p50 - base.p50), format!("{:+.1}", s.p99 - base.p99))
            };
            println!(
                "{recorded:>9}  {service:<30} {:>8.1} {:>8.1} {:>8.1}  {added_p50:>9} {added_p99:>9}  {:>6.1}",
                s.p50,
                s.p99,
                s.max,
                faults[i] as f64 / cycles as f64
            );
        }
        for (label, ..) in &stacks {
            let state_dir = conf.dir.join(format!("state-{label}"));
            let left = StateDir::open(&state_dir, false).unwrap().load().unwrap().sessions.len();
            assert_eq!(left, recorded, "{label}: the benchmark's own sessions must all be closed");
            let _ = std::fs::remove_dir_all(&state_dir);
        }
    }
    let module = &modules[0];
    if mode == Mode::Full {
        overdue(&conf, module, &policy, run);
    }
    assert!(!libgcc_s_loaded(), "libgcc_s stayed loaded after the module was unloaded");
    if let Some(sink) = syslog {
        let lines = sink.lines.load(Ordering::Relaxed);
        println!("\nsyslog lines received on the private /dev/log: {lines}");
        // Each module cycle with open_session logs the session's end.
        assert!(mode == Mode::LoadOnly || lines >= cycles, "the module's close_session lines did not arrive");
    }
}

/// A syslog daemon of the benchmark's own, as sshd has one: in a private
/// mount namespace, a datagram socket bound at `/dev/log` (on a tmpfs over
/// /dev) and drained by a thread. The socket is connected before the first
/// cycle (`openlog(LOG_NDELAY)`), as sshd's is by its own earlier lines, so
/// a log line costs the module a `sendto`, as it does inside sshd. Without
/// it (no syslog daemon on this machine) every line would cost a failed
/// socket + connect. `None` when not root (then nothing is replaced).
struct SyslogSink {
    lines: Arc<AtomicUsize>,
}

impl SyslogSink {
    fn start() -> Option<SyslogSink> {
        // SAFETY: plain syscalls; this process is still single-threaded,
        // as unshare(CLONE_NEWNS) requires.
        unsafe {
            if libc::geteuid() != 0 || libc::unshare(libc::CLONE_NEWNS) != 0 {
                eprintln!("not root or no mount namespace: log lines go to this machine's /dev/log");
                return None;
            }
            let none = std::ptr::null();
            assert_eq!(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, none.cast()), 0);
            assert_eq!(libc::mount(c"tmpfs".as_ptr(), c"/dev".as_ptr(), c"tmpfs".as_ptr(), 0, none.cast()), 0);
            for (node, minor) in [(c"/dev/null", 3), (c"/dev/zero", 5), (c"/dev/random", 8), (c"/dev/urandom", 9)] {
                libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor));
            }
        }
        let socket = std::os::unix::net::UnixDatagram::bind("/dev/log").expect("bind /dev/log");
        let lines = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while socket.recv(&mut buf).is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        // SAFETY: a static ident; LOG_NDELAY connects now.
        unsafe { libc::openlog(c"bench_pam".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_AUTHPRIV) };
        Some(SyslogSink { lines })
    }
}

/// The worst login: 100,000 recorded sessions and the journal grown past its
/// compaction threshold (a module that compacts does it inside this login).
fn overdue(conf: &PamConfDir, module: &Path, policy: &Path, run: fn(&Path, &str, Mode) -> Duration) {
    let state_dir = conf.dir.join("state-overdue");
    fill(&state_dir, 100_000, policy);
    let state = StateDir::open(&state_dir, false).unwrap();
    let size = std::fs::metadata(state.file_path()).unwrap().len();
    // Logouts of sessions long gone, as a journal gathers them between
    // compactions (format: core/src/state.rs).
    let junk = "\nclose\tpid=1\tstart=1\n".repeat((size as usize + 128 * 1024) / 21 + 1);
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(state.file_path()).unwrap().write_all(junk.as_bytes()).unwrap();
    assert!(state.compaction_due());
    conf.service(
        "sshidle-overdue",
        &format!(
            "session required pam_permit.so\nsession optional {} conf={} state={} services=sshidle-overdue\n",
            module.display(),
            policy.display(),
            state_dir.display()
        ),
    );
    let times: Vec<String> =
        (0..5).map(|_| format!("{:.1}", us(run(conf.path(), "sshidle-overdue", Mode::Full)))).collect();
    println!("\n100000 recorded, journal overdue for compaction: 5 consecutive logins, µs: {}", times.join(", "));
    let _ = std::fs::remove_dir_all(&state_dir);
}
