//! A server's ordinary day (issue 18), shared by the soak test (`soak_e2e`,
//! two minutes in `make test`) and its bench (`bench_soak`, an hour): one
//! enforcer throughout, restarted once on purpose, while logins arrive and
//! leave without pause on a real sshd:
//! - ptys from tmux panes made once per lane, so that each login takes the
//!   number the previous one freed: typists (a line every 2.5 s) who log out
//!   or are disconnected with `sshidlectl disconnect`, and idlers the
//!   enforcer ends;
//! - a ControlMaster connection with three ttys, one typing, then all idle;
//! - commands without a terminal, busy (they finish) or idle (ended), and
//!   sftp sessions, busy or idle; before each, the kernel's PID cursor is put
//!   back below a PID an ended session's monitor had
//!   (`/proc/sys/kernel/ns_last_pid`), so PIDs are reused within minutes as
//!   on a busy server in a day;
//! - the policy changed twice (the idlers' limit, 15 s, then 13 s, then 15 s).
//!
//! What must hold is collected in [`DayReport::failures`]: every typist kept
//! and never warned; every idler ended within [limit, limit + 1.5 s] of its
//! last key (commands without a terminal: limit + 4.5 s of their start, their
//! I/O is sampled); `status` agrees at every sample (never more idle than
//! the last key says, to the second once the key's 8-s block is over and
//! saved, and the end it announces is the end that comes); the enforcer's
//! RSS, descriptors and inotify watches flat; nothing of an ended session
//! left (processes, records, ending marks, the activity memory).

use crate::session::{sessions_of, ssh_with, ttys_of, user_processes, Enforcer, Login, Pane};
use crate::sshd::{Sshd, SshdOptions};
use crate::util::{describe, wait_until};
use crate::TestUser;
use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The typists', the ControlMaster's and the commands' limit.
pub const LIMIT: Duration = Duration::from_secs(8);
/// The tty idlers' limits: before the first policy change, between the two
/// and after the second. Longer than an 8-s block and a save (see
/// `enforce`'s memory), so that `status` is checked to the second too.
pub const IDLER_LIMITS: [Duration; 3] = [Duration::from_secs(15), Duration::from_secs(13), Duration::from_secs(15)];
/// A tty session ends within this of its limit.
pub const SLACK: Duration = Duration::from_millis(1500);
/// Sessions without a terminal: their I/O is read every limit/10 and first
/// seen up to a second after the login, plus the login itself.
pub const NOTTY_SLACK: Duration = Duration::from_millis(4500);
/// A restart within the 8-s block of a session's last key may end it up to
/// the block's end late (the new enforcer reads the atime: idle_truth_e2e).
pub const RESTART_SLACK: Duration = Duration::from_secs(8);
/// The soak's enforcer adopts no login from utmp: another soak (a bench)
/// running on the machine has logins of the same kind there.
const ENFORCER_ARGS: &[&str] = &["--utmp", "none"];
const TYPE_EVERY: Duration = Duration::from_millis(2500);
const WARNING: &str = "will be disconnected in";

/// The part of this process's test user names after their prefix
/// (`unique_name`): the rules name this day's users only.
fn tag() -> String {
    format!("{:x}", std::process::id() & 0xfffff)
}

fn policy(idler_limit: Duration) -> String {
    let tag = tag();
    format!(
        "# the soak's day\nuser ski{tag}* idle={}s warn=3s\nuser sk?{tag}* idle={}s warn=3s\n",
        idler_limit.as_secs(),
        LIMIT.as_secs()
    )
}

/// How long the day lasts.
#[derive(Debug, Clone)]
pub struct Day {
    /// Logins keep arriving for this long (then the last ones end).
    pub length: Duration,
    /// Or stop after this many logins.
    pub max_logins: Option<usize>,
    /// Say each login's end as it happens (the bench).
    pub verbose: bool,
}

/// What the day saw.
#[derive(Debug, Default)]
pub struct DayReport {
    pub failures: Vec<String>,
    pub logins: HashMap<&'static str, usize>,
    /// Logins on a pty number an earlier login of the day had.
    pub ptys_reused: usize,
    /// Processes of a session (its monitor or below) with the PID a process
    /// of an earlier session had.
    pub pids_reused: usize,
    /// Sessions whose monitor had the PID of an earlier session's monitor.
    pub monitor_pids_reused: usize,
    pub typists_kept: usize,
    /// Seconds past the limit at which each idler was ended, from when its
    /// last key's answer was seen (tty) or from its start (no tty); the
    /// later limit when a policy change fell in between.
    pub lateness: Vec<f64>,
    pub status_samples: usize,
    pub status_rows_checked: usize,
    /// Per sample of the enforcer: seconds into the day, RSS (KiB), open
    /// descriptors, inotify watches, live sessions.
    pub enforcer: Vec<(f64, u64, usize, usize, usize)>,
    /// The enforcer's descriptors and watches with no session, at the start
    /// and after the last login ended.
    pub idle_fds: (usize, usize),
    pub idle_watches: (usize, usize),
    pub restarted_at: f64,
    pub elapsed: f64,
}

impl DayReport {
    pub fn summary(&self) -> String {
        let mut lateness = self.lateness.clone();
        lateness.sort_by(f64::total_cmp);
        let pick = |q: f64| lateness.get(((lateness.len() as f64 - 1.0) * q).round() as usize).copied();
        let after: Vec<_> = self.enforcer.iter().filter(|s| s.0 > self.restarted_at + 10.0).collect();
        let (rss_first, rss_max, rss_last) = (
            after.first().map(|s| s.1).unwrap_or(0),
            after.iter().map(|s| s.1).max().unwrap_or(0),
            after.last().map(|s| s.1).unwrap_or(0),
        );
        let mut logins: Vec<_> = self.logins.iter().collect();
        logins.sort();
        format!(
            "day of {:.0} s: logins {:?} ({} in all); pty numbers reused {}, session PIDs reused {} (monitors {}); typists kept {}; \
             idlers ended {} s past the limit: min {:.2} median {:.2} max {:.2}; status: {} samples, {} rows checked; \
             enforcer (restarted at {:.0} s): RSS {} -> max {} -> {} KiB, descriptors max {}, watches max {}, \
             with no session: descriptors {:?}, watches {:?}; failures: {}",
            self.elapsed,
            logins,
            self.logins.values().sum::<usize>(),
            self.ptys_reused,
            self.pids_reused,
            self.monitor_pids_reused,
            self.typists_kept,
            lateness.len(),
            pick(0.0).unwrap_or(f64::NAN),
            pick(0.5).unwrap_or(f64::NAN),
            pick(1.0).unwrap_or(f64::NAN),
            self.status_samples,
            self.status_rows_checked,
            self.restarted_at,
            rss_first,
            rss_max,
            rss_last,
            self.enforcer.iter().map(|s| s.2).max().unwrap_or(0),
            self.enforcer.iter().map(|s| s.3).max().unwrap_or(0),
            self.idle_fds,
            self.idle_watches,
            self.failures.len()
        )
    }
}

/// What the lanes tell the sampler about a login in progress.
#[derive(Debug, Clone)]
struct Track {
    /// The last key (tty logins): sent after this, read by the session
    /// before `echoed`; `None` for sessions without a terminal.
    last_key: Option<Instant>,
    echoed: Option<Instant>,
    /// The key is being typed (not yet known to have arrived).
    typing: bool,
    /// An idler: status's announced end is checked against the real one.
    idler: bool,
    /// The end status announced last (sample time + time left), with the
    /// sample's time.
    announced: Option<(Instant, Instant)>,
}

struct Shared {
    sshd: Sshd,
    start: Instant,
    end: Instant,
    verbose: bool,
    max_logins: Option<usize>,
    logins_started: AtomicUsize,
    stop: AtomicBool,
    enforcer: Mutex<Option<Enforcer>>,
    restarted: Mutex<Option<Instant>>,
    /// When the policy changed.
    policy_changes: Mutex<Vec<Instant>>,
    tracks: Mutex<HashMap<String, Track>>,
    report: Mutex<DayReport>,
    /// Monitor PIDs of sessions seen, with their login time; and of ended ones.
    monitors: Mutex<HashMap<i32, i64>>,
    /// Every PID seen in a session (its monitor and all below), with the
    /// session (monitor PID, login time) it was in.
    session_pids: Mutex<HashMap<i32, (i32, i64)>>,
    ended_monitors: Mutex<Vec<i32>>,
    /// pty -> the user that had it last.
    ptys: Mutex<HashMap<String, String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        eprintln!("soak: FAILURE: {what}");
        self.report.lock().unwrap().failures.push(what);
    }

    fn count(&self, kind: &'static str) {
        *self.report.lock().unwrap().logins.entry(kind).or_default() += 1;
    }

    fn go_on(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
            && Instant::now() < self.end
            && self.max_logins.is_none_or(|max| self.logins_started.fetch_add(1, Ordering::SeqCst) < max)
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    fn say(&self, what: &str) {
        if self.verbose {
            eprintln!("soak {:7.1}s: {what}", self.start.elapsed().as_secs_f64());
        }
    }

    fn track(&self, user: &str, t: Track) {
        self.tracks.lock().unwrap().insert(user.to_string(), t);
    }

    /// A key sent at `at` (`typing`: not known to have arrived yet), read
    /// by `echoed` at the latest (when its answer was seen; else `at`).
    fn key(&self, user: &str, typing: bool, at: Instant, echoed: Option<Instant>) {
        if let Some(t) = self.tracks.lock().unwrap().get_mut(user) {
            t.typing = typing;
            t.last_key = Some(at);
            t.echoed = Some(echoed.unwrap_or(at));
        }
    }

    fn untrack(&self, user: &str) -> Option<Track> {
        self.tracks.lock().unwrap().remove(user)
    }

    /// The idle limit in force at `at` (for the idlers' rule).
    fn idler_limits_between(&self, from: Instant, to: Instant) -> (Duration, Duration) {
        let changes = self.policy_changes.lock().unwrap();
        let at = |t: Instant| IDLER_LIMITS[changes.iter().filter(|c| **c <= t).count().min(2)];
        let mut limits = vec![at(from), at(to)];
        limits.extend(changes.iter().filter(|c| **c > from && **c < to).map(|c| at(*c)));
        (*limits.iter().min().unwrap(), *limits.iter().max().unwrap())
    }

    fn restart_between(&self, from: Instant, to: Instant) -> bool {
        self.restarted.lock().unwrap().is_some_and(|r| r >= from && r <= to)
    }

    /// The one tty status gives the session of `user`, once found.
    fn tty_of(&self, user: &str) -> Option<String> {
        ttys_of(&self.sshd, user).first().cloned()
    }

    /// Notes the pty a login got (counting a number an earlier login had).
    fn note_pty(&self, user: &str, tty: &str) {
        let mut ptys = self.ptys.lock().unwrap();
        if ptys.insert(tty.to_string(), user.to_string()).is_some_and(|u| u != user) {
            self.report.lock().unwrap().ptys_reused += 1;
        }
    }

    /// Checks that nothing of `user` is left once its session ended.
    fn assert_nothing_left(&self, name: &str, user: &TestUser) {
        if !wait_until(Duration::from_secs(8), || user_processes(user).is_empty()) {
            self.fail(format!("{name} {}: processes left: {:?}", user.name, user_processes(user)));
        }
        if !wait_until(Duration::from_secs(5), || sessions_of(&self.sshd, &user.name).is_empty()) {
            self.fail(format!("{name} {}: still listed by status after its end", user.name));
        }
    }

    /// An idler's end against its limits (`from`: its last key or start).
    fn check_end(&self, name: &str, user: &str, from: Instant, echoed: Instant, ended: Option<Instant>, tty: bool) {
        let Some(ended) = ended else {
            self.fail(format!("{name} {user}: not ended"));
            return;
        };
        let (min, max) = if user.starts_with("ski") { self.idler_limits_between(from, ended) } else { (LIMIT, LIMIT) };
        let mut slack = if tty { SLACK } else { NOTTY_SLACK };
        if self.restart_between(from, ended) {
            slack += RESTART_SLACK;
        }
        let after = ended.saturating_duration_since(from);
        let after_echo = ended.saturating_duration_since(echoed);
        self.say(&format!("{name} {user} ended {after:.2?} after its last key (limit {min:?}..{max:?})"));
        if after < min {
            self.fail(format!("{name} {user}: ended {after:?} after its last key, before the {min:?} limit"));
        } else if after_echo > max + slack {
            self.fail(format!("{name} {user}: ended {after_echo:?} after its last key, past {max:?} + {slack:?}"));
        }
        self.report.lock().unwrap().lateness.push(after_echo.as_secs_f64() - max.as_secs_f64());
        if let Some(t) = self.untrack(user) {
            if let Some((sampled, announced)) = t.announced.filter(|_| t.idler) {
                let off =
                    ended.duration_since(self.start).as_secs_f64() - announced.duration_since(self.start).as_secs_f64();
                // The announcement is in whole seconds, the end to the
                // second and a half; a policy change or restart after the
                // sample may move it.
                let moved = self.policy_changes.lock().unwrap().iter().any(|c| *c >= sampled)
                    || self.restart_between(sampled, ended);
                if !moved && !(-2.0..=2.0).contains(&off) {
                    self.fail(format!("{name} {user}: status announced its end {off:+.1} s off the real one"));
                }
            }
        }
    }

    /// Puts the kernel's PID cursor below the PID of an ended session's
    /// monitor that is free now, so that the next processes reuse it.
    fn rewind_pids(&self) {
        let candidates = self.ended_monitors.lock().unwrap().clone();
        let free = |p: i32| !std::path::Path::new(&format!("/proc/{p}")).exists();
        if let Some(pid) = candidates.into_iter().rev().find(|p| *p > 300 && free(*p) && free(p - 1)) {
            // ssh takes pid - 1, sshd's monitor of the connection pid.
            let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 2).to_string());
        }
    }
}

/// One kind of traffic, run in a thread of its own until the day ends.
type Lane = fn(&Shared);

/// Runs the day; the report says what held and what did not.
pub fn run_day(day: &Day) -> DayReport {
    let sshd = Sshd::start("soak", SshdOptions { policy: policy(IDLER_LIMITS[0]), ..Default::default() });
    let start = Instant::now();
    let shared = Arc::new(Shared {
        sshd,
        start,
        end: start + day.length,
        verbose: day.verbose,
        max_logins: day.max_logins,
        logins_started: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        enforcer: Mutex::new(None),
        restarted: Mutex::new(None),
        policy_changes: Mutex::new(Vec::new()),
        tracks: Mutex::new(HashMap::new()),
        report: Mutex::new(DayReport::default()),
        monitors: Mutex::new(HashMap::new()),
        session_pids: Mutex::new(HashMap::new()),
        ended_monitors: Mutex::new(Vec::new()),
        ptys: Mutex::new(HashMap::new()),
    });
    let enforcer = crate::session::start_niced_enforcer(&shared.sshd, ENFORCER_ARGS);
    let pid = enforcer.child.id() as i32;
    *shared.enforcer.lock().unwrap() = Some(enforcer);
    std::thread::sleep(Duration::from_millis(500));
    let (fds0, watches0) = (open_fds(pid), inotify_watches(pid));
    let lanes: [(&str, Lane); 5] = [
        ("tty a", tty_lane),
        ("tty b", tty_lane),
        ("controlmaster", mux_lane),
        ("notty", notty_lane),
        ("sftp", sftp_lane),
    ];
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sampler(&shared));
        let handles: Vec<_> = lanes
            .into_iter()
            .enumerate()
            .map(|(i, (name, lane))| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("soak {name}"))
                    .spawn_scoped(scope, move || {
                        std::thread::sleep(Duration::from_millis(700) * i as u32);
                        lane(shared)
                    })
                    .expect("lane")
            })
            .collect();
        for h in handles {
            if h.join().is_err() {
                shared.fail("a lane panicked".into());
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
        let _ = sampler.join();
    });
    // The day is over: nothing of it left, the enforcer back to what it had
    // with no session.
    let mut guard = shared.enforcer.lock().unwrap();
    let enforcer = guard.as_mut().expect("enforcer");
    if !wait_until(Duration::from_secs(10), || shared.sshd.status_json().as_array().is_some_and(|a| a.is_empty())) {
        shared.fail(format!("sessions left at the end: {:#}", shared.sshd.status_json()));
    }
    let pid = enforcer.child.id() as i32;
    // The memory is saved at most every 5 s.
    std::thread::sleep(Duration::from_secs(6));
    let memory = std::fs::read_to_string(shared.sshd.state_dir.join("activity")).unwrap_or_default();
    if memory.lines().count() > 1 {
        shared.fail(format!("the activity memory still holds ended sessions:\n{memory}"));
    }
    let marks: Vec<String> = std::fs::read_dir(&shared.sshd.state_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ending."))
                .collect()
        })
        .unwrap_or_default();
    if !marks.is_empty() {
        shared.fail(format!("ending marks left: {marks:?}"));
    }
    // What the enforcer keeps for sessions (pty handles, pidfds, /proc
    // files) is gone, its watches are back to the start's; counted again for
    // a few seconds (a look in progress), and compared by kind: the
    // restarted enforcer's other descriptors (a syslog socket opened at its
    // first message) need not be the first one's.
    let (mut kept, mut watches1) = (0, 0);
    let back = wait_until(Duration::from_secs(5), || {
        (kept, watches1) = (session_fds(pid), inotify_watches(pid));
        kept == 0 && watches1 == watches0
    });
    let fds1 = open_fds(pid);
    if !back {
        shared.fail(format!(
            "with no session the enforcer keeps {kept} descriptors of sessions and {watches1} inotify watches \
             ({watches0} at the start): {:?}",
            fd_targets(pid)
        ));
    }
    if let Ok(Some(status)) = enforcer.child.try_wait() {
        shared.fail(format!("the enforcer exited: {status}"));
    }
    let log = enforcer.output();
    drop(guard);
    let mut report = std::mem::take(&mut *shared.report.lock().unwrap());
    report.idle_fds = (fds0, fds1);
    report.idle_watches = (watches0, watches1);
    report.restarted_at = shared.restarted.lock().unwrap().map(|r| shared.secs(r)).unwrap_or(0.0);
    report.elapsed = start.elapsed().as_secs_f64();
    let after: Vec<_> = report.enforcer.iter().filter(|s| s.0 > report.restarted_at + 10.0).cloned().collect();
    if let (Some(first), Some(max)) = (after.first(), after.iter().map(|s| s.1).max()) {
        // Flat: what a steady enforcer may still grow by (allocator arenas,
        // a longer table of sessions at the busiest moment).
        if max > first.1 + 2048 {
            report.failures.push(format!("the enforcer's RSS grew from {} to {max} KiB", first.1));
        }
    }
    if !report.failures.is_empty() && !day.verbose {
        eprintln!("enforcer log:\n{log}");
    }
    report
}

/// The descriptors `pid` holds.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The descriptors `pid` holds on a session's things: ptys, pidfds, files
/// of `/proc`.
pub fn session_fds(pid: i32) -> usize {
    fd_targets(pid)
        .iter()
        .filter(|t| t.contains(": /dev/pts/") || t.contains(": anon_inode:[pidfd]") || t.contains(": /proc/"))
        .count()
}

/// What each of `pid`'s descriptors is (for a failure's message).
fn fd_targets(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
            format!("{}: {target}", e.file_name().to_string_lossy())
        })
        .collect()
}

/// The inotify watches of all of `pid`'s inotify descriptors (their fdinfo
/// lists one `inotify wd:` line a watch).
pub fn inotify_watches(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify"))
        .map(|e| {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
                .map(|t| t.lines().filter(|l| l.starts_with("inotify wd:")).count())
                .unwrap_or(0)
        })
        .sum()
}

pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Every 2 s: status against what the lanes know, and the enforcer's
/// figures; the restart and the policy changes at their moments.
fn sampler(s: &Shared) {
    let length = s.end.saturating_duration_since(s.start);
    let mut changes = vec![s.start + length.mul_f64(0.3), s.start + length.mul_f64(0.7)];
    let mut restart = Some(s.start + length.mul_f64(0.45));
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(2));
        if changes.first().is_some_and(|c| *c <= Instant::now()) {
            changes.remove(0);
            let n = s.policy_changes.lock().unwrap().len() + 1;
            let text = policy(IDLER_LIMITS[n.min(2)]);
            let temp = s.sshd.policy_path.with_extension("new");
            std::fs::write(&temp, text).expect("policy");
            std::fs::rename(&temp, &s.sshd.policy_path).expect("policy");
            s.policy_changes.lock().unwrap().push(Instant::now());
            s.say(&format!("policy changed: idlers' limit {:?}", IDLER_LIMITS[n.min(2)]));
        }
        if restart.is_some_and(|r| r <= Instant::now()) {
            restart = None;
            let mut guard = s.enforcer.lock().unwrap();
            drop(guard.take());
            *s.restarted.lock().unwrap() = Some(Instant::now());
            *guard = Some(crate::session::start_niced_enforcer(&s.sshd, ENFORCER_ARGS));
            s.say("enforcer restarted");
        }
        let pid = s.enforcer.lock().unwrap().as_ref().map(|e| e.child.id() as i32).unwrap_or(0);
        let before = Instant::now();
        let keys_before = s.tracks.lock().unwrap().clone();
        let out = s.sshd.ctl(&["status", "--json"]);
        let after = Instant::now();
        if !out.status.success() {
            s.fail(format!("status failed: {}", describe(&out)));
            continue;
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        s.report.lock().unwrap().status_samples += 1;
        let sample = before + (after - before) / 2;
        let table = sshidle::procfs::ProcTable::scan();
        for row in &rows {
            let (Some(monitor), Some(login)) = (row["pid"].as_i64(), row["login_time"].as_i64()) else { continue };
            let session = (monitor as i32, login);
            let mut pids = vec![monitor as i32];
            pids.extend(table.descendants(monitor as i32).iter().map(|p| p.pid));
            let mut seen = s.session_pids.lock().unwrap();
            for pid in pids {
                if seen.insert(pid, session).is_some_and(|had| had != session) {
                    s.report.lock().unwrap().pids_reused += 1;
                }
            }
        }
        for row in &rows {
            let user = row["user"].as_str().unwrap_or_default();
            let (Some(pid), Some(login)) = (row["pid"].as_i64(), row["login_time"].as_i64()) else { continue };
            {
                let mut monitors = s.monitors.lock().unwrap();
                if monitors.insert(pid as i32, login).is_some_and(|l| l != login) {
                    s.report.lock().unwrap().monitor_pids_reused += 1;
                }
            }
            let idle = row["idle_secs"].as_f64().unwrap_or(f64::NAN);
            let mut tracks = s.tracks.lock().unwrap();
            let Some(t) = tracks.get_mut(user) else { continue };
            let (Some(key), Some(echoed)) = (t.last_key, t.echoed) else { continue };
            // A key typed while status ran: not comparable.
            if t.typing || keys_before.get(user).and_then(|b| b.last_key) != Some(key) {
                continue;
            }
            let most = sample.saturating_duration_since(key).as_secs_f64();
            let least = sample.saturating_duration_since(echoed).as_secs_f64();
            let exact = least >= 14.0;
            // Never more idle than the last key says; to the second once the
            // key's 8-s block is over and the enforcer saved it (a second for
            // the whole seconds, one for the moments of the look).
            // Below: whole seconds both ways (2 s), and the enforcer reads
            // the key's event a moment after the shell's answer was seen.
            if idle > most + 1.5 || (exact && idle < least - 3.0) {
                let what = format!("status said {user} was idle {idle} s, {least:.1}..{most:.1} s after its last key");
                drop(tracks);
                s.fail(what);
                continue;
            }
            s.report.lock().unwrap().status_rows_checked += 1;
            if exact && t.idler {
                if let Some(left) = row["time_left_secs"].as_i64() {
                    t.announced = Some((sample, sample + Duration::from_secs(left.max(0) as u64)));
                }
            }
        }
        if pid > 0 {
            let figures = (s.secs(Instant::now()), rss_kib(pid), open_fds(pid), inotify_watches(pid), rows.len());
            s.report.lock().unwrap().enforcer.push(figures);
        }
    }
}

/// A session's monitor PID, noted as ended once it is.
fn monitor_of(s: &Shared, user: &str) -> Option<i32> {
    sessions_of(&s.sshd, user).first().and_then(|r| r["pid"].as_i64()).map(|p| p as i32)
}

fn ended_monitor(s: &Shared, pid: Option<i32>) {
    if let Some(pid) = pid {
        s.ended_monitors.lock().unwrap().push(pid);
    }
}

/// Typists (logout, disconnect) and idlers in turn, on one pane.
fn tty_lane(s: &Shared) {
    let pane = Pane::new();
    let mut turn = 0usize;
    while s.go_on() {
        turn += 1;
        let role = ["typist", "idler", "typist (disconnected)", "idler"][turn % 4];
        let prefix = if role == "idler" { "ski" } else { "skt" };
        let user = TestUser::create(prefix, &[]);
        let name = user.name.clone();
        let warned_before = pane.tmux.capture().matches(WARNING).count();
        s.track(&name, Track { last_key: None, echoed: None, typing: true, idler: role == "idler", announced: None });
        s.rewind_pids();
        let mut login = Login::in_pane(&s.sshd, "tty login", user, &pane, &[]);
        if role == "idler" {
            // The last key comes once the enforcer watches the pty (within a
            // second): the one typed while ssh connected may be read before
            // the enforcer knows the session, which then credits input up to
            // its first look (as in reuse_e2e).
            std::thread::sleep(Duration::from_millis(1500));
            login.type_last(":");
        }
        s.key(&name, false, login.key, Some(login.echoed));
        s.count(role);
        let monitor = monitor_of(s, &name);
        if let Some(tty) = s.tty_of(&name) {
            s.note_pty(&name, &tty);
        }
        if role == "idler" {
            let ended = crate::session::wait_ended(&[&login], Duration::from_secs(40)).remove(0);
            s.check_end("tty idler", &name, login.key, login.echoed, ended, true);
        } else {
            let typing_for = if turn % 8 < 4 { Duration::from_secs(4) } else { LIMIT + Duration::from_secs(3) };
            let until = Instant::now() + typing_for;
            while Instant::now() < until && login.ended().is_none() {
                std::thread::sleep(TYPE_EVERY);
                s.key(&name, true, Instant::now(), None);
                let at = Instant::now();
                login.tmux.type_line("true");
                s.key(&name, false, at, None);
            }
            let warned = pane.tmux.capture().matches(WARNING).count() > warned_before;
            if login.ended().is_some() || warned {
                s.fail(format!(
                    "typist {name}: {} while typing every 2.5 s",
                    if warned { "warned" } else { "disconnected" }
                ));
            } else {
                s.report.lock().unwrap().typists_kept += 1;
            }
            s.untrack(&name);
            if role == "typist" {
                login.tmux.type_line("exit");
            } else {
                let out = s.sshd.ctl(&["disconnect", "--user", &name]);
                if !out.status.success() {
                    s.fail(format!("disconnect {name}: {}", describe(&out)));
                }
            }
            if crate::session::wait_ended(&[&login], Duration::from_secs(10))[0].is_none() {
                s.fail(format!("{role} {name}: still connected after leaving"));
            }
        }
        ended_monitor(s, monitor);
        s.assert_nothing_left(role, &login.user);
    }
}

/// A ControlMaster connection with three ttys: the second types past the
/// limit, then all are idle; the connection ends at the limit after its
/// last key.
fn mux_lane(s: &Shared) {
    let panes = [Pane::new(), Pane::new(), Pane::new()];
    let socket = s.sshd.dir.join("soak-mux.sock");
    let path = format!("ControlPath={}", socket.display());
    while s.go_on() {
        let user = TestUser::create("skm", &[]);
        let name = user.name.clone();
        s.sshd.authorize(&user);
        s.track(&name, Track { last_key: None, echoed: None, typing: true, idler: false, announced: None });
        let master =
            Login::in_pane(&s.sshd, "controlmaster", user, &panes[0], &["-o", "ControlMaster=yes", "-o", &path]);
        s.count("controlmaster");
        let mut last = master.key;
        for pane in &panes[1..] {
            let mut argv = ssh_with(&s.sshd, &name, &["-tt", "-o", "ControlMaster=no", "-o", &path]);
            argv = argv.into_iter().map(|a| format!("'{a}'")).collect();
            pane.tmux.type_line(&argv.join(" "));
            let marker = crate::util::unique_name("mx");
            last = Instant::now();
            pane.tmux.type_line(&format!("echo {}''{}", &marker[..3], &marker[3..]));
            if !pane.tmux.wait_for(&marker, Duration::from_secs(15)) {
                s.fail(format!("controlmaster {name}: no shell on a second tty:\n{}", pane.tmux.capture()));
            }
        }
        s.key(&name, false, last, None);
        let monitor = monitor_of(s, &name);
        wait_until(Duration::from_secs(5), || {
            sessions_of(&s.sshd, &name).first().and_then(|r| r["ttys"].as_array().map(|a| a.len())) == Some(3)
        });
        if let Some(row) = sessions_of(&s.sshd, &name).first() {
            for tty in row["ttys"].as_array().into_iter().flatten().filter_map(|t| t.as_str()) {
                s.note_pty(&name, tty);
            }
        }
        let warned_before = panes[0].tmux.capture().matches(WARNING).count();
        let until = Instant::now() + LIMIT + Duration::from_secs(3);
        while Instant::now() < until && master.ended().is_none() {
            std::thread::sleep(TYPE_EVERY);
            s.key(&name, true, Instant::now(), None);
            last = Instant::now();
            panes[1].tmux.type_line("true");
            s.key(&name, false, last, None);
        }
        if master.ended().is_some() || panes[0].tmux.capture().matches(WARNING).count() > warned_before {
            s.fail(format!("controlmaster {name}: warned or ended while one tty typed"));
        }
        // The last key: a line whose answer is waited for.
        let marker = crate::util::unique_name("mx");
        s.key(&name, true, Instant::now(), None);
        last = Instant::now();
        panes[1].tmux.type_line(&format!("echo {}''{}", &marker[..3], &marker[3..]));
        panes[1].tmux.wait_for(&marker, Duration::from_secs(15));
        let echoed = Instant::now();
        s.key(&name, false, last, Some(echoed));
        let ended = crate::session::wait_ended(&[&master], Duration::from_secs(30)).remove(0);
        s.check_end("controlmaster", &name, last, echoed, ended, true);
        ended_monitor(s, monitor);
        s.assert_nothing_left("controlmaster", &master.user);
    }
}

fn spawn_piped(argv: &[String], stdin: bool) -> Child {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("client")
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<Instant> {
    wait_until(timeout, || matches!(child.try_wait(), Ok(Some(_)))).then(Instant::now)
}

/// Remote commands without a terminal: a busy one that finishes, an idle
/// one the enforcer ends.
fn notty_lane(s: &Shared) {
    let mut turn = 0usize;
    while s.go_on() {
        turn += 1;
        let busy = turn % 2 == 0; // not is_multiple_of: Rust 1.87, Debian 13 has 1.85
        let user = TestUser::create("skn", &[]);
        s.sshd.authorize(&user);
        let remote = if busy { "for i in 1 2 3 4 5 6; do echo tick; sleep 2; done" } else { "exec sleep 600" };
        let mut argv = ssh_with(&s.sshd, &user.name, &[]);
        argv.push(remote.into());
        s.rewind_pids();
        let started = Instant::now();
        let mut child = spawn_piped(&argv, false);
        s.count(if busy { "notty busy" } else { "notty idle" });
        wait_until(Duration::from_secs(10), || !sessions_of(&s.sshd, &user.name).is_empty());
        let monitor = monitor_of(s, &user.name);
        let ended = wait_exit(&mut child, Duration::from_secs(40));
        if busy {
            let ok = ended.is_some() && child.try_wait().ok().flatten().is_some_and(|st| st.success());
            if !ok || started.elapsed() < Duration::from_secs(11) {
                s.fail(format!("busy command of {}: ended early or failed", user.name));
            }
        } else {
            s.check_end("idle command", &user.name, started, started, ended, false);
        }
        let _ = child.kill();
        let _ = child.wait();
        ended_monitor(s, monitor);
        s.assert_nothing_left("command", &user);
    }
}

/// sftp sessions: a busy one (a command every 2.5 s for 12 s, then `quit`),
/// an idle one the enforcer ends.
fn sftp_lane(s: &Shared) {
    let mut turn = 0usize;
    while s.go_on() {
        turn += 1;
        let busy = turn % 2 == 1;
        let user = TestUser::create("sks", &[]);
        s.sshd.authorize(&user);
        let argv: Vec<String> = s
            .sshd
            .ssh_args(&user.name)
            .into_iter()
            .map(|a| match a.as_str() {
                "ssh" => "sftp".to_string(),
                "-p" => "-P".to_string(),
                _ => a,
            })
            .collect();
        s.rewind_pids();
        let started = Instant::now();
        let mut child = spawn_piped(&argv, true);
        s.count(if busy { "sftp busy" } else { "sftp idle" });
        wait_until(Duration::from_secs(10), || !sessions_of(&s.sshd, &user.name).is_empty());
        let monitor = monitor_of(s, &user.name);
        let mut stdin = child.stdin.take().expect("stdin");
        if busy {
            let until = Instant::now() + LIMIT + Duration::from_secs(4);
            while Instant::now() < until {
                std::thread::sleep(TYPE_EVERY);
                let _ = stdin.write_all(b"ls\n");
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                s.fail(format!("busy sftp of {}: ended while listing every 2.5 s", user.name));
            }
            let _ = stdin.write_all(b"quit\n");
            drop(stdin);
            if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
                s.fail(format!("busy sftp of {}: did not quit", user.name));
            }
        } else {
            // sftp notices the end only at its next command: its ssh tells.
            let ssh = crate::util::descendants(child.id() as i32);
            let gone = || !ssh.iter().any(|p| crate::util::process_alive(*p));
            let ended = (!ssh.is_empty() && wait_until(Duration::from_secs(40), gone)).then(Instant::now);
            s.check_end("idle sftp", &user.name, started, started, ended, false);
            drop(stdin);
        }
        let _ = child.kill();
        let _ = child.wait();
        ended_monitor(s, monitor);
        s.assert_nothing_left("sftp", &user);
    }
}
