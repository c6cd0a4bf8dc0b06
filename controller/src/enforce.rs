//! `sshidlectl enforce` and `sshidlectl disconnect`.
//!
//! The enforcer keeps every recorded session's next deadline (the time it
//! must be warned, disconnected, or its commands' I/O looked at again) and
//! sleeps until the earliest one: nothing is polled on a fixed tick. It wakes
//! up early for
//! - a change of the state file (inotify on the state directory): a login or
//!   logout, picked up within ~0.1 s;
//! - a change of the policy file or of its drop-in directory (inotify on
//!   both directories, so editors that replace a file are seen): the policy
//!   is re-read and applied to the sessions already open;
//! - a login the module could not record (it touches the state directory:
//!   `IN_ATTRIB`): sshd's processes are searched for it every 2 s for 30 s
//!   (otherwise only every 30 minutes, a safety net);
//! - SIGHUP (re-read everything, look at every session) and SIGTERM/SIGINT
//!   (exit), through a signalfd.
//!
//! A look at a session is cheap when nothing is due: the atime of the ttys it
//! had, the I/O counters of the commands it had. Only before warning or
//! disconnecting is `/proc` scanned again (once per sweep, shared by every
//! session due), so that a tty or command opened since is not missed.
//!
//! With a textfile directory (`--textfile-dir`, `metrics textfile-dir=`) the
//! enforcer rewrites its Prometheus textfile after every change (see
//! [`crate::metrics`]), and every warning, disconnect and adoption is also
//! logged as an audit line (see [`sshidle::audit`]).

use crate::metrics::{self, Counters, Textfile};
use crate::report::SessionRow;
use crate::syslog::Logger;
use crate::ttywatch::{PtyLook, TtyWatch};
use crate::{Failure, Outcome, Paths};
use clap::Args;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sshidle::activity::{self, Activity, IoMemo, IoProbes, Members, Memory};
use sshidle::audit::{AuditLine, Event};
use sshidle::input::block_end;
use sshidle::lifecycle::{ceil_secs, Cause, Lifecycle, Observation, Step};
use sshidle::policy::{self, Policy};
use sshidle::procfs::{self, Pidfd, ProcTable};
use sshidle::state::{EndCause, SessionKey, SessionRecord, StateDir, StateError};
use sshidle::terminate::{self, Termination, GRACE};
use sshidle::{discover, format_duration, now_unix, users, utmp, Level, Limits, LogSink};
use std::collections::HashSet;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Dead records are dropped and utmp is re-read this often, also when no
/// deadline is near.
const HOUSEKEEPING: Duration = Duration::from_secs(300);
/// The enforcer never sleeps longer than this (wall-clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Bursts of state file changes are read once.
const RELOAD_DELAY: Duration = Duration::from_millis(100);
/// After a group lookup timed out, none is tried for this long.
const GROUPS_RETRY: Duration = Duration::from_secs(60);
/// A session logged in this long ago without a pty is not waiting for one
/// any more (a session without a terminal); its ptys are found when it is
/// next looked at.
const PTY_WAIT_SECS: i64 = 30;
/// A new pty is matched to sessions no sooner than this after it appeared:
/// by then sshd's monitor, which opened it, has made the user its owner.
const PTY_OWNER_DELAY: Duration = Duration::from_millis(100);
/// The command memory is written at most this often.
const MEMORY_SAVE_EVERY: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct EnforceArgs {
    /// Run one sweep and exit
    #[arg(long)]
    pub once: bool,
    /// Say what would be done; warn and disconnect nobody
    #[arg(long)]
    pub dry_run: bool,
    /// utmp file listing logins that have no sshidle record (made before the
    /// module was installed); `none` to look only at recorded sessions
    #[arg(long, value_name = "FILE", default_value = sshidle::utmp::DEFAULT_UTMP)]
    pub utmp: PathBuf,
    /// Keep a Prometheus textfile, DIR/sshidle.prom, for node_exporter's
    /// textfile collector (overrides the policy's `metrics textfile-dir=`)
    #[arg(long, value_name = "DIR")]
    pub textfile_dir: Option<PathBuf>,
    /// Also adopt sshd connections that have no record (their login could
    /// not be written); the default with the default state directory
    #[arg(long)]
    pub find_unrecorded: bool,
}

/// Whether to look among sshd's processes for connections with no record:
/// with the machine's own state directory, or when asked (a private state
/// directory may serve one sshd of several, whose connections the search
/// cannot tell apart).
pub fn finds_unrecorded(state_dir: &Path, asked: bool) -> bool {
    asked || state_dir == Path::new(sshidle::DEFAULT_STATE_DIR)
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "user"])))]
pub struct DisconnectArgs {
    /// Session id, as shown by `sshidlectl status`
    pub id: Option<String>,
    /// Disconnect every session of this user
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Say what would be done; disconnect nobody
    #[arg(long)]
    pub dry_run: bool,
    /// Also find sshd connections that have no record (default with the
    /// default state directory), as `status --find-unrecorded` lists them
    #[arg(long)]
    pub find_unrecorded: bool,
}

/// What the enforcer keeps of a session's processes between looks (the
/// observation side; the lifecycle state is in [`sshidle::lifecycle`]).
#[derive(Debug, Default)]
struct Seen {
    /// Its processes at the last scan; `None` until scanned.
    members: Option<Members>,
    memo: Option<IoMemo>,
    /// Its commands' counters, kept open between samples.
    probes: IoProbes,
    /// Its monitor's pidfd, opened at the first check: whether it still runs
    /// costs one poll(2), not a read of /proc.
    pidfd: Option<Pidfd>,
    /// Since when (unix ms) the session was quiet at the last look (for the
    /// metrics).
    quiet_since_ms: Option<i64>,
}

/// Every change the enforcer makes to the world goes through here. With
/// `--dry-run` none is made: each says what it would have done instead.
struct Effects {
    dry_run: bool,
    state: Option<StateDir>,
    log: Logger,
}

impl Effects {
    /// Tells the admin: to the log, or (`--dry-run`) to stdout.
    fn say(&self, level: Level, message: &str) {
        if self.dry_run {
            println!("{message}");
        } else {
            self.log.log(level, message);
        }
    }

    /// Writes a session's record (new limits, an adopted session).
    fn record(&self, record: &SessionRecord) -> Result<(), StateError> {
        match &self.state {
            Some(state) if !self.dry_run => state.record_open(record).map(drop),
            _ => Ok(()),
        }
    }

    /// Writes the warning to the session's terminals and records it as
    /// given at `at_ms` (unix ms).
    fn warn(&self, key: SessionKey, ttys: &[u32], text: &str, at_ms: i64, what: &str) {
        if self.dry_run {
            return self.say(Level::Notice, &format!("would warn {what}"));
        }
        for tty in ttys {
            if let Err(err) = write_tty(*tty, text) {
                self.log.log(Level::Warning, &format!("warning session {key} on its tty: {err}"));
            }
        }
        if let Some(state) = &self.state {
            if let Err(err) = state.record_warned(key, at_ms) {
                self.log.log(Level::Error, &format!("recording the warning of session {key}: {err}"));
            }
        }
        self.say(Level::Notice, &format!("warned {what}"));
    }

    /// Begins ending a session.
    fn end(&self, table: &ProcTable, r: &SessionRecord, cause: Cause, reason: &str, what: &str) -> Option<Termination> {
        if self.dry_run {
            self.say(Level::Notice, &format!("would disconnect {what}"));
            return None;
        }
        self.say(Level::Notice, &format!("disconnecting {what}"));
        begin_termination(self.state.as_ref(), table, r, cause.into(), reason, &self.log)
    }

    /// Drops the records of sessions whose process is gone (`dead`), and
    /// their ending marks.
    fn drop_dead(&self, dead: &[SessionKey]) {
        let Some(state) = self.state.as_ref().filter(|_| !self.dry_run) else { return };
        for key in dead {
            state.take_ending(*key);
        }
        match state.compact(&|r| r.key.is_alive()) {
            Ok(dropped) => {
                for r in dropped {
                    self.log
                        .log(Level::Info, &format!("session {} of {}: process gone, record dropped", r.key, r.user));
                }
            }
            Err(err) => self.log.log(Level::Error, &format!("dropping dead sessions: {err}")),
        }
    }

    /// Compacts the journal when it has grown enough: logins only append,
    /// compacting is the enforcer's job.
    fn compact_if_due(&self) {
        let Some(state) = self.state.as_ref().filter(|_| !self.dry_run) else { return };
        if state.compaction_due() {
            if let Err(err) = state.compact(&|_| true) {
                self.log.log(Level::Warning, &format!("compacting the state file: {err}"));
            }
        }
    }

    /// Drops the records of sessions ended without `close_session`.
    fn drop_ended(&self, gone: &[SessionKey]) {
        let Some(state) = self.state.as_ref().filter(|_| !self.dry_run) else { return };
        let _ = state.compact(&|r| !gone.contains(&r.key));
        for key in gone {
            state.take_ending(*key);
        }
    }

    /// The audit line of an event that happened (none in `--dry-run`).
    fn audit(&self, event: Event, line: &AuditLine) {
        if !self.dry_run {
            let level = if event == Event::Adoption { Level::Warning } else { Level::Notice };
            self.log.log(level, &line.format(event));
        }
    }

    fn save_memory(&self, memory: &Memory) {
        let Some(state) = self.state.as_ref().filter(|_| !self.dry_run) else { return };
        if let Err(err) = memory.save(state) {
            self.log.log(Level::Warning, &format!("saving {}: {err}", activity::MEMORY_FILE));
        }
    }
}

struct Enforcer {
    config: PathBuf,
    state_path: PathBuf,
    utmp_path: Option<PathBuf>,
    fx: Effects,
    policy: Option<Policy>,
    policy_stamp: Option<policy::Fingerprint>,
    life: Lifecycle<Seen>,
    /// The input on sshd's ptys, to the moment it was read.
    ttys: TtyWatch,
    /// When the watched ptys are next matched to the sessions again (a pty
    /// appeared).
    ptys_refresh_at: Option<Instant>,
    ptys_refreshed: Instant,
    memory_dirty: bool,
    memory_saved: Instant,
    /// When the memory is to be saved again although nothing changed (see
    /// [`Enforcer::save_memory`]).
    memory_resave_at: Option<Instant>,
    terminations: Vec<Termination>,
    problems: usize,
    /// `resolve` answers of the current batch.
    resolved: std::collections::HashMap<(String, String), Option<(Limits, String)>>,
    /// Bad fields of the state file already logged (each is logged once).
    bad_fields_told: HashSet<String>,
    /// Group lookups timed out: none is tried again before this.
    groups_down_until: Option<Instant>,
    /// `--textfile-dir`; else the policy's `metrics textfile-dir=`.
    textfile_flag: Option<PathBuf>,
    textfile: Option<Textfile>,
    counters: Counters,
    /// Something the textfile shows changed since it was written.
    metrics_dirty: bool,
    /// The last write of the textfile failed (and was logged).
    textfile_failing: bool,
    /// Unrecorded connections already looked at (adopted, or no limit), by
    /// monitor and user: a connection first taken for another user's (in
    /// authentication) is looked at again.
    discovered: HashSet<(SessionKey, u32)>,
    find_unrecorded: bool,
}

impl Enforcer {
    fn new(paths: &Paths, args: &EnforceArgs) -> Enforcer {
        let utmp_path = match args.utmp.to_str() {
            Some("none") | Some("") => None,
            _ => Some(args.utmp.clone()),
        };
        Enforcer {
            config: paths.config.clone(),
            state_path: paths.state_dir.clone(),
            utmp_path,
            fx: Effects { dry_run: args.dry_run, state: None, log: Logger::new(true, !args.dry_run) },
            policy: None,
            policy_stamp: None,
            life: Lifecycle::new(),
            ttys: TtyWatch::new(false, Default::default()),
            ptys_refresh_at: None,
            ptys_refreshed: Instant::now(),
            memory_dirty: false,
            memory_saved: Instant::now(),
            memory_resave_at: None,
            terminations: Vec::new(),
            problems: 0,
            resolved: Default::default(),
            bad_fields_told: HashSet::new(),
            groups_down_until: None,
            textfile_flag: args.textfile_dir.clone(),
            textfile: None,
            counters: Counters { started: now_unix(), ..Counters::default() },
            metrics_dirty: true,
            textfile_failing: false,
            discovered: HashSet::new(),
            find_unrecorded: finds_unrecorded(&paths.state_dir, args.find_unrecorded),
        }
    }

    fn log(&self) -> &Logger {
        &self.fx.log
    }

    /// Opens the state directory (creating it unless `--dry-run`).
    fn open_state(&mut self) {
        if self.fx.state.is_some() {
            return;
        }
        match StateDir::open(&self.state_path, !self.fx.dry_run) {
            Ok(state) => self.fx.state = Some(state),
            Err(StateError::Io(_, err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                self.problems += 1;
                self.log().log(Level::Error, &err.to_string());
            }
        }
    }

    /// Reads the policy when it changed (or `force`). Returns true when the
    /// limits may have changed.
    fn load_policy(&mut self, force: bool) -> bool {
        // The main file and every drop-in: any one added, replaced or written.
        let stamp = Some(policy::fingerprint(&self.config));
        if !force && stamp == self.policy_stamp {
            return false;
        }
        self.policy_stamp = stamp;
        self.resolved.clear();
        match Policy::load(&self.config) {
            Ok(policy) => {
                for error in &policy.errors {
                    self.log().log(Level::Error, &format!("{error} (line skipped)"));
                }
                self.policy = Some(policy);
                self.choose_textfile();
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if self.policy.is_some() {
                    self.log().log(
                        Level::Warning,
                        &format!("{}: gone; sessions keep the limits they have", self.config.display()),
                    );
                }
                self.policy = None;
            }
            Err(err) => {
                self.problems += 1;
                self.log()
                    .log(Level::Error, &format!("{}: {err}; keeping the policy read before", self.config.display()));
                return false;
            }
        }
        true
    }

    /// The limits and rule the policy gives `user` logged in from `rhost`;
    /// `None` without a policy or for an unknown user.
    /// Answers are cached for one batch (a reload, a policy change, utmp):
    /// thousands of sessions of few users cost few NSS lookups.
    fn resolve(&mut self, user: &str, rhost: &str) -> Option<(Limits, String)> {
        let cache_key = (user.to_string(), rhost.to_string());
        if let Some(cached) = self.resolved.get(&cache_key) {
            return cached.clone();
        }
        let policy = self.policy.as_ref()?;
        // The user and the groups are looked up with the login's bound.
        // After one timeout the directory is taken as down for a while and
        // nothing is looked up (sessions keep their limits), so that a
        // hundred users cost one wait, not a hundred, and the enforcer goes
        // on enforcing.
        if self.groups_down_until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let mut timed_out = None;
        let answer = match users::lookup_user_within(user, users::DEFAULT_NSS_TIMEOUT) {
            Err(why) => {
                timed_out = Some(why);
                None
            }
            Ok(account) => account.map(|account| {
                let groups = &mut || {
                    users::group_names_within(&account, users::DEFAULT_NSS_TIMEOUT)
                        .map_err(|why| timed_out = Some(why))
                        .ok()
                };
                let resolution = policy.resolve_with(&account.name, rhost, groups);
                (resolution.limits, resolution.describe())
            }),
        };
        if let Some(why) = timed_out {
            self.groups_down_until = Some(Instant::now() + GROUPS_RETRY);
            self.fx.log.log(
                Level::Warning,
                &format!(
                    "{user}: {why}; no account or group lookups for {}s, sessions keep their limits",
                    GROUPS_RETRY.as_secs()
                ),
            );
            // A user not read is not cached as unknown.
            answer.as_ref()?;
        }
        self.resolved.insert(cache_key, answer.clone());
        answer
    }

    /// Applies the current policy to a session; records the new limits so
    /// `status` shows them.
    fn apply_policy(&mut self, key: SessionKey, now_ms: i64) {
        let Some((user, rhost)) =
            self.life.get(&key).map(|t| (t.session.record.user.clone(), t.session.record.rhost.clone()))
        else {
            return;
        };
        let Some((limits, rule)) = self.resolve(&user, &rhost) else { return };
        // Without the groups a session keeps the limits it has: its login
        // read them, or got the rule that needs none.
        if rule.ends_with(policy::GROUPS_UNREAD) {
            self.fx.log.log(Level::Warning, &format!("session {key} of {user}: groups not read; limits kept"));
            return;
        }
        let t = self.life.get_mut(&key).expect("present");
        let Some(change) = t.session.apply_policy(limits, &rule, now_ms) else { return };
        if key.is_alive() {
            if let Err(err) = self.fx.record(&t.session.record) {
                self.fx.log.log(Level::Error, &format!("recording new limits of session {key}: {err}"));
            }
        }
        self.fx.say(
            Level::Info,
            &format!("session {key} of {user}: limits {} -> {} (rule {rule})", change.before, change.after),
        );
    }

    /// Re-reads the state file: new sessions are tracked, closed ones dropped.
    fn reload_sessions(&mut self, now_ms: i64) {
        self.resolved.clear();
        self.open_state();
        let Some(state) = &self.fx.state else { return };
        let snapshot = match state.load() {
            Ok(s) => s,
            Err(err) => {
                self.problems += 1;
                self.fx.log.log(Level::Error, &err.to_string());
                return;
            }
        };
        for field in snapshot.bad_fields.iter().filter(|f| !self.bad_fields_told.contains(*f)) {
            self.fx.log.log(Level::Warning, &format!("{}: {field} (default used)", state.file_path().display()));
        }
        self.bad_fields_told.extend(snapshot.bad_fields.iter().cloned());
        self.fx.compact_if_due();
        let memory = Memory::load(state);
        let new = self.life.sync(
            snapshot.sessions,
            now_ms,
            |r| Seen { memo: memory.entries.get(&r.key).cloned(), ..Seen::default() },
            // Sessions closed meanwhile are forgotten; adopted ones are in no
            // file (in --dry-run not even in ours).
            |s| (s.record.service == ADOPTED || s.record.service == DISCOVERED) && s.key().is_alive(),
        );
        for key in new {
            self.apply_policy(key, now_ms);
        }
        self.retain_ptys();
        self.metrics_dirty = true;
    }

    /// Sessions in utmp without a record (logged in before sshidle was
    /// installed) get one, with the limits the policy gives their user.
    fn adopt_from_utmp(&mut self, now_ms: i64) {
        let Some(path) = self.utmp_path.clone() else { return };
        // utmp first, then the state file: a login recorded in between is
        // then found in the state file, never adopted twice.
        let entries = match utmp::read(&path) {
            Ok(entries) => entries,
            Err(err) => {
                self.log().log(Level::Warning, &format!("{}: {err}", path.display()));
                return;
            }
        };
        // A login that is tracked and still runs needs no look at /proc
        // (its pidfd says it runs); only the others are candidates.
        let dead: HashSet<i32> = self.dead_sessions().into_iter().map(|k| k.pid).collect();
        let running: HashSet<i32> = self.life.keys().into_iter().map(|k| k.pid).filter(|p| !dead.contains(p)).collect();
        let mut seen = HashSet::new();
        let entries: Vec<utmp::UtmpEntry> =
            entries.into_iter().filter(|e| seen.insert(e.pid) && !running.contains(&e.pid)).collect();
        if entries.is_empty() {
            return;
        }
        self.reload_sessions(now_ms);
        let sshd = discover::sshd_executables();
        for entry in entries {
            let Some(start) = procfs::start_time(entry.pid) else { continue };
            let key = SessionKey { pid: entry.pid, start };
            if self.life.contains(&key) || !is_sshd_login(entry.pid, start, entry.time, &sshd) {
                continue;
            }
            let Some((limits, rule)) = self.resolve(&entry.user, &entry.host) else { continue };
            if limits.is_unlimited() {
                continue;
            }
            let Some(account) = users::lookup_user(&entry.user) else { continue };
            let record = SessionRecord {
                key,
                uid: account.uid,
                user: entry.user.clone(),
                rhost: entry.host.clone(),
                service: ADOPTED.into(),
                login_time: entry.time,
                limits,
                rule,
                warned_at_ms: None,
            };
            if let Err(err) = self.fx.record(&record) {
                self.log().log(Level::Error, &format!("recording session {key} from utmp: {err}"));
                continue;
            }
            self.fx.say(
                Level::Info,
                &format!(
                    "session {key} of {} on {} (logged in before sshidle): {} (rule {})",
                    entry.user, entry.line, record.limits, record.rule
                ),
            );
            let line = AuditLine {
                tty: Some(entry.line.clone()),
                cause: Some("unrecorded"),
                extra: vec![("source", "utmp".into())],
                ..audit_fields(&record)
            };
            self.fx.audit(Event::Adoption, &line);
            self.counters.adoptions += 1;
            self.metrics_dirty = true;
            self.life.adopt(record, Seen::default(), now_ms);
        }
    }

    /// Connections of sshd's with no record (the module could not write it:
    /// a full directory, the lock, an NSS error) are adopted with the
    /// limits the policy gives their user now.
    fn adopt_discovered(&mut self, now_ms: i64) {
        if !self.find_unrecorded {
            return;
        }
        // Processes first, then the state file: a login recorded in between
        // is then found in the state file, never adopted twice.
        let privsep = users::lookup_user("sshd").map(|a| a.uid);
        let found = discover::scan(&ProcTable::scan(), privsep);
        self.reload_sessions(now_ms);
        self.discovered.retain(|(k, uid)| found.iter().any(|c| c.key == *k && c.uid == *uid));
        for c in found {
            if self.life.contains(&c.key) || !self.discovered.insert((c.key, c.uid)) {
                continue;
            }
            let Some(user) = users::user_name(c.uid) else { continue };
            let rhost = crate::sshd_control::peer_of(c.key.pid).unwrap_or_default();
            let Some((limits, rule)) = self.resolve(&user, &rhost) else { continue };
            let key = c.key;
            if limits.is_unlimited() {
                self.fx.say(Level::Info, &format!("session {key} of {user} has no record; no limit (rule {rule})"));
                continue;
            }
            let record = SessionRecord {
                key,
                uid: c.uid,
                user: user.clone(),
                rhost,
                service: DISCOVERED.into(),
                login_time: procfs::start_unix(key.start).unwrap_or(now_ms.div_euclid(1000)),
                limits,
                rule,
                warned_at_ms: None,
            };
            let recorded = match self.fx.record(&record) {
                Ok(()) => String::new(),
                Err(err) => format!("; not written ({err}), enforced all the same"),
            };
            self.fx.say(
                Level::Notice,
                &format!(
                    "session {key} of {user}: an sshd connection with no record (its login was not recorded); \
                     adopted: {} (rule {}){recorded}",
                    record.limits, record.rule
                ),
            );
            let line = AuditLine {
                cause: Some("unrecorded"),
                extra: vec![("source", "sshd".into())],
                ..audit_fields(&record)
            };
            self.fx.audit(Event::Adoption, &line);
            self.counters.adoptions += 1;
            self.metrics_dirty = true;
            self.life.adopt(record, Seen::default(), now_ms);
        }
    }

    /// The tracked sessions whose monitor is gone.
    fn dead_sessions(&mut self) -> Vec<SessionKey> {
        let keys = self.life.keys();
        self.dead_among(&keys)
    }

    /// Those of `keys` whose monitor is gone: their pidfds in one poll(2) (a
    /// read of /proc for those without one, or not tracked).
    fn dead_among(&mut self, keys: &[SessionKey]) -> Vec<SessionKey> {
        let mut dead = Vec::new();
        let mut polled = Vec::new();
        let mut fds = Vec::new();
        for key in keys {
            let Some(t) = self.life.get_mut(key) else {
                if !key.is_alive() {
                    dead.push(*key);
                }
                continue;
            };
            if t.seen.pidfd.is_none() {
                t.seen.pidfd = Pidfd::open(key.pid, key.start);
            }
            match &t.seen.pidfd {
                Some(pidfd) => {
                    polled.push(*key);
                    fds.push(libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                }
                None if !key.is_alive() => dead.push(*key),
                None => {}
            }
        }
        // SAFETY: a slice of valid pollfds, no wait.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) } > 0 {
            dead.extend(polled.iter().zip(&fds).filter(|(_, fd)| fd.revents != 0).map(|(k, _)| *k));
        }
        dead
    }

    /// Forgets sessions whose monitor is gone, and drops their records.
    fn drop_dead(&mut self) {
        let dead = self.dead_sessions();
        for key in &dead {
            self.life.forget(key);
        }
        if !dead.is_empty() {
            self.fx.drop_dead(&dead);
            self.metrics_dirty = true;
            self.retain_ptys();
        }
    }

    /// Stops watching the ptys that are closed or whose session is not
    /// tracked any more, or no longer has them (a session whose processes
    /// are not known yet keeps what it had), and drops what was saved for
    /// sessions gone.
    fn retain_ptys(&mut self) {
        let life = &self.life;
        self.ttys.retain(|dev, owner| {
            life.get(&owner).is_some_and(|t| t.seen.members.as_ref().is_none_or(|m| m.ttys.contains(&dev)))
        });
    }

    /// A pty appeared: the sessions still waiting for theirs (logged in less
    /// than [`PTY_WAIT_SECS`] ago, no pty yet) are looked at again, at most
    /// once a second, so a new session's pty is watched from its first key.
    /// So are the sessions of the pty's owner whose sshd processes hold its
    /// master (a ControlMaster connection opening another tty) or are not
    /// known yet: sshd makes the user the owner as it opens the pty.
    /// Nothing is scanned when no session waits (ptys made inside sessions,
    /// or by anything else on the machine, cost nothing).
    fn refresh_ptys(&mut self) {
        self.ptys_refresh_at = None;
        let now = now_unix();
        let created: HashSet<u32> = self.ttys.take_created().into_iter().collect();
        let owners: HashSet<u32> = created
            .iter()
            .filter_map(|n| std::fs::metadata(format!("/dev/pts/{n}")).ok())
            .map(|meta| meta.uid())
            .collect();
        let opened_here = |m: &Members| {
            m.sshd.iter().any(|(pid, _)| procfs::pty_masters(*pid).indexes.iter().any(|i| created.contains(i)))
        };
        let waiting: Vec<SessionKey> = self
            .life
            .iter()
            .filter(|(_, t)| {
                let young = now - t.session.record.login_time <= PTY_WAIT_SECS;
                let members = t.seen.members.as_ref();
                (young && members.is_none_or(|m| m.ttys.is_empty()))
                    || (owners.contains(&t.session.record.uid) && members.is_none_or(opened_here))
            })
            .map(|(k, _)| *k)
            .collect();
        if waiting.is_empty() {
            return;
        }
        self.ptys_refreshed = Instant::now();
        let table = ProcTable::scan();
        let now_ms = now_millis();
        for key in waiting {
            let Some(t) = self.life.get_mut(&key) else { continue };
            if let Some(m) = activity::members(&table, key) {
                for dev in &m.ttys {
                    self.ttys.watch(*dev, key, now_ms, t.session.record.login_time, true);
                }
                t.seen.members = Some(m);
            }
        }
    }

    /// Reads the tty watch; a new pty schedules a refresh.
    fn ttys_readable(&mut self) {
        self.ttys.read(Instant::now(), now_millis());
        if self.ttys.has_created() && self.ptys_refresh_at.is_none() {
            let owned = Instant::now() + PTY_OWNER_DELAY;
            self.ptys_refresh_at = Some((self.ptys_refreshed + Duration::from_secs(1)).max(owned));
        }
    }

    /// Looks at a session, cheaply with what was known, and again with a
    /// fresh process table when the lifecycle wants to act on it. `None`
    /// when its monitor is gone.
    fn look(&mut self, key: SessionKey, now_ms: i64, table: &mut Option<ProcTable>) -> Option<(Step, Activity)> {
        let t = self.life.get_mut(&key).expect("tracked");
        let mut scan = t.seen.members.is_none();
        let mut fresh = false;
        loop {
            if scan {
                let table = table.get_or_insert_with(ProcTable::scan);
                t.seen.members = Some(activity::members(table, key)?);
                fresh = true;
            }
            let members = t.seen.members.as_ref().expect("scanned");
            let essence = |m: &Option<IoMemo>| m.as_ref().map(|m| (m.fingerprint, m.last_active));
            let had = essence(&t.seen.memo);
            // The moment of the look, not of the sweep's start: what the
            // watch read meanwhile is not from the future.
            let now_ms = now_millis().max(now_ms);
            let login = t.session.record.login_time;
            let mut tty_quiet = None;
            let mut stale = false;
            for dev in &members.ttys {
                match self.ttys.watch(*dev, key, now_ms, login, fresh) {
                    PtyLook::Quiet(q) => tty_quiet = tty_quiet.max(Some(q)),
                    PtyLook::Stale => stale = true,
                    PtyLook::Gone => {}
                }
            }
            if stale && !fresh {
                // A pty of the session's list was closed, or its number is
                // another login's now: the list is older than the ptys.
                scan = true;
                continue;
            }
            let probes = &mut t.seen.probes;
            let sample = |commands: &[(i32, u64)], before: Option<&_>| probes.sample(commands, before);
            let act = activity::assess_sampled(&t.session.record, members, &mut t.seen.memo, sample, tty_quiet, now_ms);
            t.seen.quiet_since_ms = act.quiet_since_ms;
            // sampled_at alone is not worth a write.
            if essence(&t.seen.memo) != had {
                self.memory_dirty = true;
            }
            let seen = Observation {
                quiet_since_ms: act.quiet_since_ms,
                ttys: !members.ttys.is_empty(),
                commands: !members.commands.is_empty(),
                fresh,
            };
            match t.session.step(&seen, now_ms) {
                Step::Refresh => scan = true,
                step @ Step::Wait { rescan } => {
                    if rescan {
                        t.seen.members = None;
                    }
                    return Some((step, act));
                }
                step => return Some((step, act)),
            }
        }
    }

    /// Looks at the sessions that are due (or all), and acts.
    fn sweep(&mut self, now_ms: i64, all: bool) {
        let mut table = None;
        let mut dead = false;
        let due = self.life.due(now_ms, all);
        let gone = self.dead_among(&due);
        for key in due {
            if gone.contains(&key) {
                dead = true;
                continue;
            }
            match self.look(key, now_ms, &mut table) {
                None => dead = true,
                Some((Step::Wait { .. } | Step::Refresh, _)) => {}
                Some((Step::Warn { cause, ends_at_ms }, act)) => self.warn(key, &act, cause, ends_at_ms, now_ms),
                Some((Step::End(cause), act)) => {
                    let table = table.get_or_insert_with(ProcTable::scan);
                    self.end(key, &act, cause, table, now_ms);
                }
            }
        }
        if dead {
            self.drop_dead();
        }
    }

    fn warn(&mut self, key: SessionKey, act: &Activity, cause: Cause, ends_at_ms: i64, now_ms: i64) {
        let t = self.life.get(&key).expect("tracked");
        let r = &t.session.record;
        // The moment the lifecycle took as the warning's: recorded as it.
        let now_ms = r.warned_at_ms.unwrap_or(now_ms);
        let ttys = t.seen.members.as_ref().map(|m| m.ttys.clone()).unwrap_or_default();
        // The lead in whole seconds, rounded up (the end is due to the ms).
        let left_secs = ceil_secs(ends_at_ms - now_ms).max(0);
        let left = format_duration(left_secs as u64);
        let text = warning_text(cause, &r.limits, act.idle_secs, &left);
        let what = match cause {
            Cause::Idle => format!("idle {}", format_duration(act.idle_secs)),
            Cause::Hard => {
                format!("logged in for {}", format_duration((now_ms.div_euclid(1000) - r.login_time).max(0) as u64))
            }
        };
        let what = format!(
            "session {key} of {} from {} on {}: {what}, disconnect in {left} (limits {}, rule {})",
            r.user,
            display_or_dash(&r.rhost),
            display_ttys(&act.ttys),
            r.limits,
            r.rule
        );
        self.fx.warn(key, &ttys, &text, now_ms, &what);
        let line = AuditLine {
            tty: Some(act.ttys.join(",")),
            idle: Some(act.idle_secs),
            limit: limit_of(cause, &r.limits),
            cause: Some(cause_name(cause)),
            extra: vec![("left", left_secs.to_string())],
            ..audit_fields(r)
        };
        self.fx.audit(Event::Warning, &line);
        self.counters.warnings += 1;
        self.metrics_dirty = true;
    }

    fn end(&mut self, key: SessionKey, act: &Activity, cause: Cause, table: &ProcTable, now_ms: i64) {
        let r = &self.life.get(&key).expect("tracked").session.record;
        let reason = match cause {
            Cause::Idle => format!(
                "idle {} (limit idle={}, rule {})",
                format_duration(act.idle_secs),
                r.limits.idle.map_or_else(|| "off".into(), format_duration),
                r.rule
            ),
            Cause::Hard => format!(
                "logged in for {} (limit hard={}, rule {})",
                format_duration((now_ms.div_euclid(1000) - r.login_time).max(0) as u64),
                r.limits.hard.map_or_else(|| "off".into(), format_duration),
                r.rule
            ),
        };
        let what = format!(
            "session {key} of {} from {} on {}: {reason}, end={}",
            r.user,
            display_or_dash(&r.rhost),
            display_ttys(&act.ttys),
            r.limits.end
        );
        let line = AuditLine {
            tty: Some(act.ttys.join(",")),
            idle: Some(act.idle_secs),
            limit: limit_of(cause, &r.limits),
            cause: Some(cause_name(cause)),
            extra: vec![("end", r.limits.end.to_string())],
            ..audit_fields(r)
        };
        if let Some(term) = self.fx.end(table, r, cause, &reason, &what) {
            self.fx.audit(Event::Disconnect, &line);
            self.terminations.push(term);
            self.metrics_dirty = true;
        }
    }

    /// Moves the disconnects on (connection closed, last resorts) and
    /// finishes those whose processes are gone or were killed.
    fn progress_terminations(&mut self, force: bool) {
        let mut finished = Vec::new();
        for (i, term) in self.terminations.iter_mut().enumerate() {
            let done = term.step(force);
            report_ending(term, &self.fx.log);
            if done {
                finished.push(i);
            }
        }
        let mut gone = Vec::new();
        for i in finished.into_iter().rev() {
            let term = self.terminations.remove(i);
            // Normally close_session removes the record; if the monitor died
            // without running it, the record goes here.
            if !term.key.is_alive() && self.life.forget(&term.key).is_some() {
                gone.push(term.key);
            }
        }
        if !gone.is_empty() {
            self.fx.drop_ended(&gone);
            self.retain_ptys();
            self.metrics_dirty = true;
        }
    }

    /// The textfile directory: the flag, else the policy's `metrics` line.
    fn choose_textfile(&mut self) {
        let dir = self.textfile_flag.clone().or_else(|| self.policy.as_ref()?.metrics.textfile_dir.clone());
        if self.fx.dry_run || dir.as_deref() == self.textfile.as_ref().and_then(|t| t.path().parent()) {
            return;
        }
        self.textfile = dir.map(|d| Textfile::new(&d));
        self.metrics_dirty = true;
    }

    /// Rewrites the textfile when something changed or its heartbeat is due.
    fn write_metrics(&mut self, up: bool) {
        let Some(textfile) = &self.textfile else { return };
        if up && !self.metrics_dirty && !textfile.heartbeat_due(Instant::now()) {
            return;
        }
        let now_ms = now_millis();
        let now = now_ms.div_euclid(1000);
        let rows: Vec<SessionRow> =
            self.life.iter().map(|(_, t)| metrics_row(&t.session, t.seen.quiet_since_ms, now_ms)).collect();
        let adopted = self
            .life
            .iter()
            .filter(|(_, t)| [ADOPTED, DISCOVERED].contains(&t.session.record.service.as_str()))
            .count();
        let disconnects = self.fx.state.as_ref().map(|s| s.disconnect_counts()).unwrap_or_default();
        let text = metrics::render(&rows, adopted, &disconnects, &self.counters, up, now);
        let path = textfile.path().display().to_string();
        let textfile = self.textfile.as_mut().expect("checked");
        match textfile.write(&text, Instant::now()) {
            // Told once per failure streak, not at every change.
            Err(err) if !self.textfile_failing => {
                self.fx.log.log(Level::Warning, &format!("{path}: {err}; retried at every change"));
                self.textfile_failing = true;
            }
            Err(_) => {}
            Ok(()) => self.textfile_failing = false,
        }
        self.metrics_dirty = false;
    }

    fn save_memory(&mut self, force: bool) {
        self.memory_dirty |= self.ttys.dirty;
        // Due at a block's end: not held back by MEMORY_SAVE_EVERY (at most
        // one more write per block in which a pty had input).
        let resave = self.memory_resave_at.is_some_and(|at| at <= Instant::now());
        if resave {
            self.memory_resave_at = None;
            self.memory_dirty = true;
        }
        // When stopping, what is known of the ptys is saved as of now, so the
        // next enforcer takes it up to the second.
        if force && !self.ttys.is_empty() {
            self.memory_dirty = true;
        }
        if !self.memory_dirty || (!force && !resave && self.memory_saved.elapsed() < MEMORY_SAVE_EVERY) {
            return;
        }
        let now_ms = now_millis();
        let memory = Memory {
            entries: self
                .life
                .iter()
                .filter_map(|(k, t)| {
                    t.seen.memo.as_ref().map(|m| (*k, IoMemo::new(m.fingerprint, m.last_active, m.sampled_at)))
                })
                .collect(),
            ptys: self.ttys.saved(Instant::now(), now_ms),
        };
        self.ttys.dirty = false;
        self.fx.save_memory(&memory);
        self.memory_dirty = false;
        self.memory_saved = Instant::now();
        // A pty saved within the 8-s block of its atime is read back (by
        // `status`) as possibly read until the block's end: saved again then,
        // what status shows is what the enforcer acts on, to the second.
        self.memory_resave_at = memory
            .ptys
            .values()
            .map(|p| block_end(p.times.atime.sec).saturating_mul(1000))
            .filter(|end| *end > now_ms)
            .min()
            .map(|end| Instant::now() + Duration::from_millis((end - now_ms) as u64));
    }

    /// The earliest moment something is due.
    fn next_wake(&self) -> Option<Instant> {
        let now_ms = now_millis();
        let mut wake: Option<Instant> = None;
        let mut consider = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        if let Some(next) = self.life.next_check_ms() {
            // Due to the millisecond; never further than the longest sleep.
            let ms = next.saturating_sub(now_ms).clamp(0, MAX_SLEEP.as_millis() as i64) as u64;
            consider(Instant::now() + Duration::from_millis(ms));
        }
        for term in &self.terminations {
            // Look at the processes being ended every 200 ms, and when the
            // next stage (the connection's close, a last resort) is due.
            consider(term.next_due().min(Instant::now() + Duration::from_millis(200)));
        }
        if self.memory_dirty || self.ttys.dirty {
            consider(self.memory_saved + MEMORY_SAVE_EVERY);
        }
        if let Some(at) = self.memory_resave_at {
            consider(at);
        }
        for at in [self.ttys.resume_at(), self.ptys_refresh_at].into_iter().flatten() {
            consider(at);
        }
        match &self.textfile {
            Some(_) if self.metrics_dirty => consider(Instant::now()),
            Some(textfile) => textfile.next_heartbeat().into_iter().for_each(&mut consider),
            None => {}
        }
        wake
    }
}

const ADOPTED: &str = "utmp";
/// The service of a session the enforcer found among sshd's processes with
/// no record (its login could not be written).
pub const DISCOVERED: &str = "adopted";
/// How often sshd's processes are searched for connections with no record
/// when no login said it went unrecorded: a safety net only (a login that
/// could neither record nor touch the state directory), since a search
/// reads every process on the machine (~10 µs each: 44 ms at 4,000
/// processes, so ~0.1 CPU-s an hour at this interval).
const DISCOVER_EVERY: Duration = Duration::from_secs(1800);
/// After a login that went unrecorded (the module touched the state
/// directory: `state::nudge_enforcer`), searches this often for this long:
/// the connection is found only once its user's process exists.
const DISCOVER_AFTER_NUDGE: Duration = Duration::from_secs(2);
const NUDGE_WINDOW: Duration = Duration::from_secs(30);

/// The audit fields every event of a session has.
fn audit_fields(r: &SessionRecord) -> AuditLine<'_> {
    AuditLine {
        user: Some(&r.user),
        session: Some(r.key.to_string()),
        rhost: Some(&r.rhost),
        limit: r.limits.idle.or(r.limits.hard),
        rule: Some(&r.rule),
        ..AuditLine::default()
    }
}

fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::Idle => "idle",
        Cause::Hard => "hard",
    }
}

/// The limit an event of `cause` is about.
fn limit_of(cause: Cause, limits: &Limits) -> Option<u64> {
    match cause {
        Cause::Idle => limits.idle,
        Cause::Hard => limits.hard,
    }
}

/// A session as the textfile shows it, from what the enforcer last saw
/// (`quiet_since_ms`, `now_ms`: unix ms).
fn metrics_row(session: &sshidle::lifecycle::Session, quiet_since_ms: Option<i64>, now_ms: i64) -> SessionRow {
    let r = &session.record;
    SessionRow {
        id: r.key.to_string(),
        pid: r.key.pid,
        user: r.user.clone(),
        uid: r.uid,
        ttys: Vec::new(),
        from: r.rhost.clone(),
        service: r.service.clone(),
        login_time: r.login_time,
        idle_secs: activity::idle_secs(quiet_since_ms, r.login_time, now_ms),
        idle_limit_secs: r.limits.idle,
        warn_secs: r.limits.warn,
        hard_limit_secs: r.limits.hard,
        time_left_secs: session.outlook(quiet_since_ms, now_ms).map(|(at, _)| ceil_secs(at - now_ms).max(0)),
        rule: r.rule.clone(),
        end: r.limits.end.to_string(),
        warned: r.warned_at_ms.is_some(),
        adopted: r.service == ADOPTED || r.service == DISCOVERED,
    }
}

/// True when `pid` runs sshd's executable (compared by path with sshd's,
/// not by name) and was running when the utmp entry was written (not a
/// later process that reused the PID).
fn is_sshd_login(pid: i32, start: u64, login_time: i64, sshd: &[PathBuf]) -> bool {
    let exe_ok = procfs::exe(pid).is_some_and(|exe| discover::is_sshd_exe(&exe, sshd));
    exe_ok && procfs::start_unix(start).is_some_and(|s| s <= login_time + 2)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn display_or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn display_ttys(ttys: &[String]) -> String {
    if ttys.is_empty() {
        "no tty".into()
    } else {
        ttys.join(",")
    }
}

fn warning_text(cause: Cause, limits: &Limits, idle: u64, left: &str) -> String {
    let body = match cause {
        Cause::Idle => format!(
            "sshidle: this session has been idle for {}; it will be disconnected in {left} \
             (idle limit {}). Press a key to stay connected.",
            format_duration(idle),
            limits.idle.map_or_else(|| "off".into(), format_duration)
        ),
        Cause::Hard => format!(
            "sshidle: this session reaches its maximum length of {} and will be disconnected in {left}. \
             Save your work.",
            limits.hard.map_or_else(|| "off".into(), format_duration)
        ),
    };
    // \r\n: the terminal may be in raw mode (an editor).
    format!("\r\n\x07*** {body} ***\r\n")
}

/// Writes `text` to a pty without blocking (a terminal stopped with ^S must
/// not stall the enforcer) and without making it our controlling tty.
fn write_tty(tty_nr: u32, text: &str) -> std::io::Result<()> {
    let name = procfs::pts_name(tty_nr).ok_or_else(|| std::io::Error::other("not a pty"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(format!("/dev/{name}"))?;
    let meta = file.metadata()?;
    if !meta.file_type().is_char_device() || meta.rdev() as u32 != tty_nr {
        return Err(std::io::Error::other(format!("/dev/{name} is not the session's tty")));
    }
    // A tty stopped with ^S (XOFF) holds every byte written to it: restart
    // its output, or the user who froze it and walked away never sees the
    // warning. TCOON alone restarts only what TCOOFF stopped, so both.
    for action in [libc::TCOOFF, libc::TCOON] {
        // SAFETY: ioctl on a descriptor we own; TCXONC takes an int argument.
        unsafe { libc::ioctl(file.as_raw_fd(), libc::TCXONC, action) };
    }
    // A writer that was blocked by the stop holds the tty's write lock until
    // its output has gone: retry briefly rather than lose the warning.
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Notes why the session ends, collects its processes and signals them.
fn begin_termination(
    state: Option<&StateDir>,
    table: &ProcTable,
    r: &SessionRecord,
    cause: EndCause,
    reason: &str,
    log: &dyn LogSink,
) -> Option<Termination> {
    if !table.in_own_namespace(r.key.pid) {
        // Discovery and the walks of /proc leave another PID namespace's
        // processes out; a record naming one is not acted on either.
        log.log(Level::Warning, &format!("session {} of {}: another PID namespace's; not ended", r.key, r.user));
        return None;
    }
    let Some(collected) = terminate::collect(table, r.key, r.uid, r.limits.end) else {
        log.log(Level::Info, &format!("session {} of {}: already gone", r.key, r.user));
        return None;
    };
    if let Some(state) = state {
        if let Err(err) = state.mark_ending(r.key, cause, reason) {
            log.log(Level::Warning, &format!("noting why session {} ends: {err}", r.key));
        }
    }
    Some(Termination::begin(r.key, r.uid, r.limits.end, collected))
}

/// Logs what happened while ending a session beyond the hangup: how its
/// connection was closed, and any last resort (a warning: sshd did not end
/// the connection the ordinary way).
fn report_ending(term: &mut Termination, log: &dyn LogSink) {
    let key = term.key;
    for note in term.take_notes() {
        match note {
            terminate::Note::ConnectionClosed(_) => {
                log.log(Level::Info, &format!("session {key}: connection still open after the hangup; shut down"))
            }
            terminate::Note::CloseFailed(why) => log.log(
                Level::Warning,
                &format!("session {key}: cannot shut the connection down ({why}); sshd's monitor gets SIGTERM after {GRACE:?}"),
            ),
            terminate::Note::MonitorTerminated => log.log(
                Level::Warning,
                &format!("session {key}: sshd's monitor still ran {GRACE:?} after the hangup; sent SIGTERM"),
            ),
            terminate::Note::SshdKilled(victims) => log.log(
                Level::Warning,
                &format!("session {key}: sshd's processes {} still ran after SIGTERM; killed", pids(&victims)),
            ),
            terminate::Note::JoinedHungUp(victims) => log.log(
                Level::Info,
                &format!("session {key}: processes {} joined its tree while it was being ended; hung up too", pids(&victims)),
            ),
            terminate::Note::LateCommandsHungUp(victims) => log.log(
                Level::Info,
                &format!(
                    "session {key}: processes {} were started for its channels as sshd exited; hung up too",
                    pids(&victims)
                ),
            ),
        }
    }
    let killed: Vec<terminate::Victim> = std::mem::take(&mut term.killed);
    if !killed.is_empty() {
        log.log(
            Level::Warning,
            &format!(
                "session {key}: processes {} ignored SIGTERM/SIGHUP for {:?} and were killed (end=session)",
                pids(&killed),
                GRACE
            ),
        );
    }
}

fn pids(victims: &[terminate::Victim]) -> String {
    victims.iter().map(|v| v.pid.to_string()).collect::<Vec<_>>().join(" ")
}

/// The daemon holds a few descriptors per session (its monitor's pidfd, a
/// handle on each pty, its commands' counters): the soft limit goes up to the
/// hard one. None of them takes the last [`procfs::FD_RESERVE`] descriptors
/// ([`procfs::KeptFd`]): past that, each falls back to reading /proc and /dev
/// by path.
fn raise_fd_limit() {
    // SAFETY: plain data.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a writable rlimit; then the same one, with the soft limit raised.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn run(paths: &Paths, args: &EnforceArgs) -> Outcome {
    let mut e = Enforcer::new(paths, args);
    let now_ms = now_millis();
    e.open_state();
    let saved = e.fx.state.as_ref().map(|s| Memory::load(s).ptys).unwrap_or_default();
    if !args.once {
        raise_fd_limit();
    }
    e.ttys = TtyWatch::new(!args.once, saved);
    e.load_policy(true);
    e.reload_sessions(now_ms);
    e.adopt_from_utmp(now_ms);
    e.adopt_discovered(now_ms);
    e.drop_dead();
    if args.once {
        e.sweep(now_ms, true);
        for term in &mut e.terminations {
            term.finish(GRACE);
            report_ending(term, &e.fx.log);
        }
        e.terminations.clear();
        e.save_memory(true);
        return if e.problems == 0 { Ok(()) } else { Err(Failure::Reported) };
    }
    daemon(&mut e).map_err(|err| {
        e.fx.log.log(Level::Error, &format!("enforcer stopped: {err}"));
        Failure::Reported
    })
}

fn add_watch(inotify: &Inotify, dir: &Path, mask: AddWatchFlags) -> Option<WatchDescriptor> {
    inotify.add_watch(dir, mask).ok()
}

/// Reads pending inotify events: (watch, file name).
fn read_events(inotify: &Inotify) -> Vec<(WatchDescriptor, String)> {
    let mut out = Vec::new();
    // Until EAGAIN: one read returns at most a buffer's worth.
    while let Ok(events) = inotify.read_events() {
        if events.is_empty() {
            break;
        }
        out.extend(
            events.into_iter().map(|ev| (ev.wd, ev.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())),
        );
    }
    out
}

fn daemon(e: &mut Enforcer) -> std::io::Result<()> {
    // Signals arrive through a signalfd: no handler runs inside the loop.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    let nix_err = |what: &str| {
        let what = what.to_string();
        move |errno: nix::errno::Errno| {
            std::io::Error::new(std::io::Error::from(errno).kind(), format!("{what}: {errno}"))
        }
    };
    signals.thread_block().map_err(nix_err("sigprocmask"))?;
    let sigfd =
        SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(nix_err("signalfd"))?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(nix_err("inotify_init1"))?;
    let file_events = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    // IN_ATTRIB on the directory itself: a login that went unrecorded.
    let state_events = file_events | AddWatchFlags::IN_ATTRIB;
    let mut state_wd = add_watch(&inotify, &e.state_path, state_events);
    let policy_dir = e.config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let policy_name = e.config.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let policy_events = file_events | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_MOVED_FROM;
    let policy_wd = add_watch(&inotify, &policy_dir, policy_events);
    // The drop-in directory: watched when it exists, and from the moment it
    // appears in the policy's directory.
    let dropin_dir = policy::dropin_dir(&e.config);
    let dropin_name = dropin_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dropin_events = policy_events | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
    let mut dropin_wd = add_watch(&inotify, &dropin_dir, dropin_events);
    if policy_wd.is_none() {
        e.fx.log.log(
            Level::Warning,
            &format!("cannot watch {}; policy changes are seen on SIGHUP only", policy_dir.display()),
        );
    }
    e.fx.log.log(
        Level::Info,
        &format!(
            "enforcing {} on {} sessions in {}{}",
            e.config.display(),
            e.life.len(),
            e.state_path.display(),
            if e.fx.dry_run { " (dry run)" } else { "" }
        ),
    );
    e.sweep(now_millis(), true);
    e.write_metrics(true);
    let mut reload_at: Option<Instant> = None;
    let mut policy_at: Option<Instant> = None;
    let mut housekeeping_at = Instant::now() + HOUSEKEEPING;
    let mut discover_at = Instant::now() + DISCOVER_EVERY;
    let mut nudged_until: Option<Instant> = None;
    loop {
        e.progress_terminations(false);
        e.save_memory(false);
        let mut wake = housekeeping_at;
        if e.find_unrecorded {
            wake = wake.min(discover_at);
        }
        for at in [e.next_wake(), reload_at, policy_at].into_iter().flatten() {
            wake = wake.min(at);
        }
        let timeout = wake.saturating_duration_since(Instant::now()).min(MAX_SLEEP);
        // Round up so we do not wake a hair early and spin.
        let ms = timeout.as_millis().min(i32::MAX as u128 - 1) as i32 + i32::from(!timeout.is_zero());
        e.ttys.rest_over(Instant::now());
        let (signalled, changed, typed) = {
            let mut fds =
                vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN), PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            // The tty watch is not polled while a burst of keystrokes gathers.
            if let Some(fd) = e.ttys.poll_fd(Instant::now()) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(std::io::Error::from(errno)),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            (ready(&fds[0]), ready(&fds[1]), fds.get(2).is_some_and(ready))
        };
        if signalled {
            while let Ok(Some(info)) = sigfd.read_signal() {
                match info.ssi_signo as libc::c_int {
                    libc::SIGHUP => {
                        e.fx.log.log(Level::Info, "SIGHUP: re-reading the policy, the sessions and utmp");
                        let now_ms = now_millis();
                        e.load_policy(true);
                        e.adopt_from_utmp(now_ms);
                        e.adopt_discovered(now_ms);
                        let keys = e.life.keys();
                        for key in keys {
                            e.apply_policy(key, now_ms);
                            if let Some(t) = e.life.get_mut(&key) {
                                t.seen.members = None;
                            }
                        }
                        e.sweep(now_ms, true);
                    }
                    sig => {
                        e.fx.log.log(Level::Info, &format!("signal {sig}: stopping"));
                        for term in &mut e.terminations {
                            term.finish(GRACE);
                            report_ending(term, &e.fx.log);
                        }
                        e.terminations.clear();
                        e.save_memory(true);
                        e.metrics_dirty = true;
                        e.write_metrics(false);
                        return Ok(());
                    }
                }
            }
        }
        if changed {
            for (wd, name) in read_events(&inotify) {
                if Some(wd) == state_wd && name == sshidle::state::STATE_FILE {
                    reload_at.get_or_insert_with(|| Instant::now() + RELOAD_DELAY);
                } else if Some(wd) == state_wd && name.is_empty() {
                    nudged_until = Some(Instant::now() + NUDGE_WINDOW);
                    discover_at = discover_at.min(Instant::now() + RELOAD_DELAY);
                } else if Some(wd) == policy_wd && name == policy_name {
                    policy_at.get_or_insert_with(|| Instant::now() + RELOAD_DELAY);
                } else if Some(wd) == policy_wd && name == dropin_name {
                    // The drop-in directory was made, replaced or removed.
                    dropin_wd = add_watch(&inotify, &dropin_dir, dropin_events);
                    policy_at.get_or_insert_with(|| Instant::now() + RELOAD_DELAY);
                } else if Some(wd) == dropin_wd {
                    // Any name: the fingerprint tells what counts.
                    policy_at.get_or_insert_with(|| Instant::now() + RELOAD_DELAY);
                }
            }
        }
        if typed {
            e.ttys_readable();
        }
        if e.ptys_refresh_at.is_some_and(|at| at <= Instant::now()) {
            e.refresh_ptys();
        }
        let now_ms = now_millis();
        if state_wd.is_none() && e.fx.state.is_none() {
            // The state directory appeared (first login after boot, --dry-run).
            e.open_state();
            if e.fx.state.is_some() {
                state_wd = add_watch(&inotify, &e.state_path, state_events);
                reload_at = Some(Instant::now());
            }
        }
        if reload_at.is_some_and(|at| at <= Instant::now()) {
            reload_at = None;
            e.reload_sessions(now_ms);
            // A login or logout is in the textfile before any /proc scan.
            e.write_metrics(true);
        }
        if policy_at.is_some_and(|at| at <= Instant::now()) {
            policy_at = None;
            if e.load_policy(false) {
                e.fx.log.log(Level::Info, &format!("{}: re-read; applying it to open sessions", e.config.display()));
                let keys = e.life.keys();
                for key in keys {
                    e.apply_policy(key, now_ms);
                }
            }
        }
        if discover_at <= Instant::now() {
            let nudged = nudged_until.is_some_and(|until| until > Instant::now());
            discover_at = Instant::now() + if nudged { DISCOVER_AFTER_NUDGE } else { DISCOVER_EVERY };
            e.adopt_discovered(now_ms);
        }
        if housekeeping_at <= Instant::now() {
            housekeeping_at = Instant::now() + HOUSEKEEPING;
            e.adopt_from_utmp(now_ms);
            e.drop_dead();
        }
        e.write_metrics(true);
        e.sweep(now_ms, false);
        e.write_metrics(true);
    }
}

/// A session `disconnect` can name: recorded, only in utmp, or (with the
/// default state directory) an sshd connection with no record.
fn known_sessions(
    state_dir: &Path,
    utmp_path: Option<&Path>,
    find_unrecorded: bool,
) -> Result<(Option<StateDir>, Vec<SessionRecord>), StateError> {
    let entries = utmp_path.and_then(|p| utmp::read(p).ok()).unwrap_or_default();
    let state = StateDir::open_existing(state_dir)?;
    let mut sessions: Vec<SessionRecord> = match &state {
        Some(state) => state.load()?.sessions.into_iter().filter(|r| r.key.is_alive()).collect(),
        None => Vec::new(),
    };
    let mut seen: HashSet<i32> = sessions.iter().map(|r| r.key.pid).collect();
    let sshd = discover::sshd_executables();
    for entry in entries {
        let Some(start) = procfs::start_time(entry.pid) else { continue };
        if !seen.insert(entry.pid) || !is_sshd_login(entry.pid, start, entry.time, &sshd) {
            continue;
        }
        let Some(account) = users::lookup_user(&entry.user) else { continue };
        sessions.push(SessionRecord {
            key: SessionKey { pid: entry.pid, start },
            uid: account.uid,
            user: entry.user,
            rhost: entry.host,
            service: ADOPTED.into(),
            login_time: entry.time,
            limits: Limits::default(),
            rule: "none".into(),
            warned_at_ms: None,
        });
    }
    if finds_unrecorded(state_dir, find_unrecorded) {
        // sshd connections whose login was not recorded.
        let privsep = users::lookup_user("sshd").map(|a| a.uid);
        for c in discover::scan(&ProcTable::scan(), privsep) {
            let Some(user) = users::user_name(c.uid).filter(|_| seen.insert(c.key.pid)) else { continue };
            sessions.push(SessionRecord {
                key: c.key,
                uid: c.uid,
                user,
                rhost: crate::sshd_control::peer_of(c.key.pid).unwrap_or_default(),
                service: DISCOVERED.into(),
                login_time: procfs::start_unix(c.key.start).unwrap_or_else(now_unix),
                limits: Limits::default(),
                rule: "none".into(),
                warned_at_ms: None,
            });
        }
    }
    Ok((state, sessions))
}

pub fn disconnect(state_dir: &Path, args: &DisconnectArgs) -> Outcome {
    let log = Logger::new(true, !args.dry_run);
    let pid = match &args.id {
        Some(id) => Some(id.parse::<i32>().map_err(|_| {
            Failure::Usage(format!("'{id}' is not a session id (the ID column of `sshidlectl status`)"))
        })?),
        None => None,
    };
    let utmp_path = PathBuf::from(utmp::DEFAULT_UTMP);
    let (state, sessions) = known_sessions(state_dir, Some(&utmp_path), args.find_unrecorded)?;
    let targets: Vec<&SessionRecord> = match (pid, &args.user) {
        (Some(pid), _) => sessions.iter().filter(|r| r.key.pid == pid).collect(),
        (None, Some(user)) => sessions.iter().filter(|r| &r.user == user).collect(),
        (None, None) => Vec::new(),
    };
    if targets.is_empty() {
        return Err(Failure::Problem(match (&args.id, &args.user) {
            (Some(id), _) => format!("no session {id}"),
            (_, Some(user)) => format!("no session of {user}"),
            _ => "no session named".into(),
        }));
    }
    let observer = activity::Observer::new(state.as_ref());
    let table = ProcTable::scan();
    let now_ms = now_millis();
    let mut terms = Vec::new();
    let mut ok = true;
    for r in targets {
        let act = observer.observe(r, now_ms);
        let reason = format!("disconnected by the administrator (idle {})", format_duration(act.idle_secs));
        if args.dry_run {
            match terminate::collect(&table, r.key, r.uid, r.limits.end) {
                Some(c) => {
                    let pids: Vec<String> = c.victims.iter().map(|v| v.pid.to_string()).collect();
                    println!(
                        "would disconnect session {} of {} from {} on {}: processes {} (end={})",
                        r.key,
                        r.user,
                        display_or_dash(&r.rhost),
                        display_ttys(&act.ttys),
                        pids.join(" "),
                        r.limits.end
                    );
                }
                None => println!("session {} of {} is already gone", r.key, r.user),
            }
            continue;
        }
        log.log(
            Level::Notice,
            &format!(
                "disconnecting session {} of {} from {} on {}: {reason}",
                r.key,
                r.user,
                display_or_dash(&r.rhost),
                display_ttys(&act.ttys)
            ),
        );
        let state = if r.service == ADOPTED { None } else { state.as_ref() };
        match begin_termination(state, &table, r, EndCause::Admin, &reason, &log) {
            Some(term) => {
                let line = AuditLine {
                    tty: Some(act.ttys.join(",")),
                    idle: Some(act.idle_secs),
                    cause: Some("admin"),
                    extra: vec![("end", r.limits.end.to_string())],
                    ..audit_fields(r)
                };
                log.log(Level::Notice, &line.format(Event::Disconnect));
                terms.push(term);
            }
            None => ok = false,
        }
    }
    for term in &mut terms {
        term.finish(GRACE);
        report_ending(term, &log);
        if !term.survivors().is_empty() {
            ok = false;
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_texts() {
        let limits = Limits { idle: Some(900), warn: Some(60), hard: Some(28_800), ..Default::default() };
        let idle = warning_text(Cause::Idle, &limits, 840, "1m");
        assert!(idle.contains("idle for 14m") && idle.contains("in 1m") && idle.contains("Press a key"), "{idle}");
        let hard = warning_text(Cause::Hard, &limits, 0, "1m");
        assert!(hard.contains("maximum length of 8h") && hard.contains("in 1m"), "{hard}");
        assert!(idle.starts_with("\r\n") && idle.ends_with("\r\n"));
    }
}
