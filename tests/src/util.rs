//! Paths of the built artefacts, unique names and ports, waiting, temp dirs,
//! and small fixtures: differences of file-tree snapshots, other logins' records.

use sshidle::policy::Limits;
use sshidle::state::{SessionKey, SessionRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The variable that skips end-to-end tests on purpose; its value says why.
pub const SKIP_E2E_VAR: &str = "SSHIDLE_SKIP_E2E";
/// Where skipped tests are listed (under the cargo target directory), one
/// line each, for `make test` to report; it removes the file before a run.
pub const SKIPS_FILE: &str = "sshidle-test-skips.txt";

/// True when end-to-end tests can run (we are root). A test that cannot run
/// fails and says why, unless `SSHIDLE_SKIP_E2E=REASON` asks for the skip;
/// an asked-for skip is recorded in `SKIPS_FILE`. Under CI (`CI` set to
/// anything but `false`/`0`) nothing may skip.
pub fn e2e_enabled() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    skip_or_fail("end-to-end tests need root (they create users and start sshd)");
    false
}

/// Either records an explicitly requested skip (returns) or panics with
/// `why`: a test that cannot run never passes silently.
pub fn skip_or_fail(why: &str) {
    let skip = std::env::var(SKIP_E2E_VAR).ok().filter(|r| !r.trim().is_empty());
    let ci = std::env::var("CI").ok().filter(|v| !v.is_empty() && v != "false" && v != "0");
    if let Some(ci) = ci {
        panic!("{why}; CI={ci} forbids skipping (run as root)");
    }
    let Some(reason) = skip else {
        panic!("{why}; run as root, or set {SKIP_E2E_VAR}=REASON to skip end-to-end tests on purpose");
    };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.rsplit_once('-').map(|(stem, _hash)| stem.to_string()).unwrap_or(n))
        .unwrap_or_default();
    let line = format!("{binary}::{test}: {why} ({SKIP_E2E_VAR}={reason})\n");
    eprintln!("SKIPPED {line}");
    let file = target_dir().parent().map(|t| t.join(SKIPS_FILE));
    if let Some(file) = file {
        use std::io::Write;
        // O_APPEND: one short write per line, safe across test processes.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// The cargo profile directory holding the test executable (target/debug).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn built(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first", path.display());
    path
}

pub fn sshidlectl_path() -> PathBuf {
    built("sshidlectl")
}

/// `sshidlectl --config CONFIG --state-dir STATE_DIR`, ready for its arguments.
pub fn sshidlectl(config: &Path, state_dir: &Path) -> Command {
    let mut cmd = Command::new(sshidlectl_path());
    cmd.arg("--config").arg(config).arg("--state-dir").arg(state_dir);
    cmd
}

pub fn module_path() -> PathBuf {
    built("libpam_sshidle.so")
}

/// A short name unique across threads and concurrently running test
/// processes, valid as a user, group or PAM service name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{:x}{n:x}", std::process::id() & 0xfffff)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    out
}

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A directory under /tmp, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(&format!("sshidle-{tag}-")));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// All descendants of `pid` (children, grandchildren, ...), from /proc.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if let Some(ppid) = sshidle::procfs::parent_pid(p) {
                    parents.push((p, ppid));
                }
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Sends `signal` to `pid`, ignoring errors (it may be gone already).
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, signal) };
}

/// True while a process with this PID exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| sshidle::procfs::stat_field(&stat, 3) != Some("Z"))
        .unwrap_or(false)
}

/// Creates the runtime files sshd and utmp readers expect on these machines.
pub fn ensure_runtime_dirs() {
    let _ = std::fs::create_dir_all("/run/sshd");
    if !Path::new("/run/utmp").exists() {
        let _ =
            Command::new("install").args(["-m", "664", "-o", "root", "-g", "utmp", "/dev/null", "/run/utmp"]).status();
    }
}

/// What differs between two snapshots of a file tree (path to a description
/// of its entry): one `PATH: BEFORE -> AFTER` line a path (either side
/// `None` where the path is missing), sorted by path.
pub fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", a.get(k), b.get(k)))
        .collect()
}

/// The record of an open session of another, non-existent process (the
/// `i`-th: PID 4,000,000 + i), under `rule`: what fills a journal with
/// other logins.
pub fn stranger_record(i: usize, rule: &str) -> SessionRecord {
    SessionRecord {
        key: SessionKey { pid: 4_000_000 + i as i32, start: 123_456 + i as u64 },
        uid: 1000,
        user: format!("user{i}"),
        rhost: "203.0.113.50".into(),
        service: "sshd".into(),
        login_time: sshidle::now_unix(),
        limits: Limits { idle: Some(900), warn: Some(60), hard: None, ..Default::default() },
        rule: rule.into(),
        warned_at_ms: None,
    }
}
