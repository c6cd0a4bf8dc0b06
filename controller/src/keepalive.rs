//! `sshidlectl keepalive`: write sshd's `ClientAliveInterval` /
//! `ClientAliveCountMax` (and, where the policy asks and sshd supports it,
//! `UnusedConnectionTimeout`) safely, reload sshd and check the result.
//!
//! Order of a run, so that sshd is never left unable to accept logins:
//! lock (flock on the main config's directory, held to the end) → roll back
//! what a killed earlier run left (its rollback journal) → read the whole tree →
//! plan (stop on an admin setting that would win) → `sshd -t` on the current
//! config (a broken one is not touched) → `sshd -t` on the candidate, before
//! anything is written (in a private mount namespace where the new files are
//! bind-mounted over the real ones) → rollback journal written (the old bytes
//! of every file) → write atomically → `sshd -t` → `sshd -T` shows the new
//! values → reload (systemctl / init script / SIGHUP to the PidFile's sshd) →
//! the listener re-opened its sockets and answers with an SSH banner →
//! journal removed. Any failure after the write restores every file byte
//! for byte and reloads again when the reload had happened, or starts sshd
//! again when its listener exited. A SIGKILL at any step leaves a config
//! that `sshd -t` accepts (each file is replaced atomically, and only by a
//! checked candidate), and the next run puts back the files of a change it
//! interrupted.

use crate::sshd_config::{
    self, display_keyword, unified_diff, Desired, FileMode, MatchBlock, Plan, PlanError, Tree, KW_COUNT_MAX,
    KW_INTERVAL, KW_UNUSED,
};
use crate::sshd_control::{
    first, reload_sshd, restart_sshd, sshd_binary, sshd_effective, sshd_test, supports_unused_timeout, ReloadError,
};
use crate::{EXIT_OK, EXIT_PROBLEM};
use clap::Args;
use sshidle::patterns::MatchKind;
use sshidle::policy::Selector;
use sshidle::{format_duration, Level, Policy};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults when neither flags nor the policy file say otherwise.
pub const DEFAULT_INTERVAL: u64 = 60;
pub const DEFAULT_COUNT_MAX: u64 = 3;
/// Longest accepted interval: beyond a day a dead client holds its session for days.
pub const MAX_INTERVAL: u64 = 86_400;
/// Largest accepted count (the policy file has the same limit).
pub const MAX_COUNT_MAX: u64 = 1000;

pub const DEFAULT_SSHD_CONFIG: &str = "/etc/ssh/sshd_config";

/// `sshidlectl keepalive --help` (set on the subcommand in main.rs).
pub const LONG_ABOUT: &str =
    "Write sshd's ClientAliveInterval and ClientAliveCountMax (defaults 60 and 3, or the policy \
file's `keepalive interval=DUR count-max=N` line; flags override) into sshd's server configuration: a drop-in \
(10-sshidle.conf) in the directory the main file includes, or a marked block at the top of the main file when it \
has no Include. Every other line is kept byte for byte. sshd takes the first value it reads: an earlier drop-in \
that sets the same keyword is beaten by naming sshidle's drop-in 00-sshidle.conf; a line that cannot be beaten (above \
the Include, or in a Match block) is reported as FILE:LINE and nothing is changed.\n\n\
The complete configuration is checked with `sshd -t` before and after writing, the new values with `sshd -T`; then \
sshd is reloaded (systemctl where systemd runs, else the init script, else SIGHUP to the PID in its PidFile) and \
must answer on its ports again. On any failure the previous files are restored exactly.\n\n\
The policy file's `keepalive ... unused=DUR` and per-rule `unused=DUR` also write UnusedConnectionTimeout \
(global, and Match User/Group/Address/Host blocks), where the installed sshd supports it (OpenSSH 9.2 and later).\n\n\
--show prints the effective values, the file and line each comes from, and how long sshd keeps a client that \
stopped answering: 2 x ClientAliveInterval x (ClientAliveCountMax + 1) after its last packet, as measured on \
OpenSSH 9.2 (it probes only every second interval).\n\n\
Exit status: 0 done (or nothing to change), 1 a problem (conflict, sshd -t failure, failed reload; the files are \
as before), 2 bad usage or values.";

#[derive(Args, Debug)]
pub struct KeepaliveArgs {
    /// Seconds of silence from a client before sshd probes it, in sshd TIME FORMAT (30, 1m, 1m30s); default 60
    #[arg(long, value_name = "DUR", value_parser = parse_interval, conflicts_with_all = ["show", "off"])]
    pub interval: Option<u64>,
    /// Unanswered probes after which sshd drops the client (1 to 1000); default 3
    #[arg(long, value_name = "N", value_parser = parse_count_max, conflicts_with_all = ["show", "off"])]
    pub count_max: Option<u64>,
    /// sshd's main server configuration file (never ssh_config)
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SSHD_CONFIG)]
    pub sshd_config: PathBuf,
    /// Print the change as a unified diff and change nothing
    #[arg(long, conflicts_with = "show")]
    pub dry_run: bool,
    /// Write and validate, but do not reload sshd
    #[arg(long, conflicts_with_all = ["show", "dry_run"])]
    pub no_reload: bool,
    /// Print the effective values (sshd -T), where they come from, and how long a dead client lasts
    #[arg(long)]
    pub show: bool,
    /// Remove exactly what sshidle wrote, validate and reload
    #[arg(long, conflicts_with = "show")]
    pub off: bool,
}

fn parse_interval(text: &str) -> Result<u64, String> {
    let secs = sshidle::parse_duration(text).map_err(|e| format!("{e} (sshd TIME FORMAT: 30, 1m, 1m30s)"))?;
    check_interval(secs)
}

fn check_interval(secs: u64) -> Result<u64, String> {
    if secs == 0 {
        return Err(
            "0 turns sshd's keepalive probes off; use `sshidlectl keepalive --off` to remove sshidle's settings"
                .to_string(),
        );
    }
    if secs > MAX_INTERVAL {
        return Err(format!(
            "{} is longer than {}: a dead client would keep its session for days",
            format_duration(secs),
            format_duration(MAX_INTERVAL)
        ));
    }
    Ok(secs)
}

fn parse_count_max(text: &str) -> Result<u64, String> {
    let n: u64 = text.parse().map_err(|_| format!("'{text}' is not a whole number"))?;
    if n == 0 {
        return Err("0 means sshd never drops a silent client (OpenSSH 8.2 and later)".to_string());
    }
    if n > MAX_COUNT_MAX {
        return Err(format!("{n} is out of range (1 to {MAX_COUNT_MAX})"));
    }
    Ok(n)
}

/// Worst-case seconds from a client's last packet to sshd dropping it.
///
/// Measured on OpenSSH 9.2 (facts.md, and again for this command with
/// Interval/CountMax 2/2, 3/1, 1/3: 12 s, 12 s, 8 s after the last packet):
/// sshd sends a probe only after every *second* interval of silence, and drops
/// the client when a probe is due and CountMax are unanswered, so the client
/// is gone after 2 × Interval × (CountMax + 1). `None`: never dropped.
pub fn dead_client_drop_secs(interval: u64, count_max: u64) -> Option<u64> {
    if interval == 0 || count_max == 0 {
        return None;
    }
    interval.checked_mul(2)?.checked_mul(count_max.checked_add(1)?)
}

pub fn run(config: &Path, args: &KeepaliveArgs) -> crate::Outcome {
    let code = if args.show {
        show(args)
    } else {
        match apply(config, args) {
            Ok(code) => code,
            Err(message) => {
                error(&message);
                EXIT_PROBLEM
            }
        }
    };
    // Every problem was told above, as it was found.
    if code == EXIT_OK {
        Ok(())
    } else {
        Err(crate::Failure::Reported)
    }
}

/// `keepalive --off` on the system's sshd configuration (for `uninstall`).
pub fn remove(config: &Path, dry_run: bool) -> crate::Outcome {
    let args = KeepaliveArgs {
        interval: None,
        count_max: None,
        sshd_config: DEFAULT_SSHD_CONFIG.into(),
        dry_run,
        no_reload: false,
        show: false,
        off: true,
    };
    run(config, &args)
}

fn error(message: &str) {
    for line in message.lines() {
        eprintln!("sshidlectl: {line}");
    }
    crate::syslog::to_syslog(Level::Error, &format!("keepalive: {}", message.replace('\n', "; ")));
}

fn say(message: &str) {
    println!("{message}");
}

/// Flags > the policy file's `keepalive` line > defaults.
fn desired_values(config: &Path, args: &KeepaliveArgs) -> Result<Desired, String> {
    // Bad lines other than `keepalive` ones are `check`'s and the enforcer's
    // business: not logged here.
    let quiet = |_: Level, _: &str| {};
    let policy = Policy::load_logged(config, &quiet, "").map_err(|e| format!("{}: {e}", config.display()))?;
    let mut desired =
        Desired { interval: DEFAULT_INTERVAL, count_max: DEFAULT_COUNT_MAX, unused: None, matches: vec![] };
    let Some(policy) = policy else {
        desired.interval = args.interval.unwrap_or(DEFAULT_INTERVAL);
        desired.count_max = args.count_max.unwrap_or(DEFAULT_COUNT_MAX);
        return Ok(desired);
    };
    // A bad keepalive line (in the main file or a drop-in) means the admin
    // wanted something else: stop.
    let mut texts: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut is_keepalive_line = |e: &sshidle::policy::PolicyError| {
        let text = texts
            .entry(e.path.clone())
            .or_insert_with(|| fs::read(&e.path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default());
        text.lines().nth(e.line.wrapping_sub(1)).is_some_and(|l| l.split_whitespace().next() == Some("keepalive"))
    };
    let bad: Vec<String> = policy.errors.iter().filter(|e| is_keepalive_line(e)).map(|e| e.to_string()).collect();
    if !bad.is_empty() {
        return Err(format!("{}\nfix the policy file first (`sshidlectl check`); nothing was changed", bad.join("\n")));
    }
    let at = |what: &str| match &policy.keepalive.at {
        Some((file, l)) => format!("{}:{l}: {what}", file.display()),
        None => what.to_string(),
    };
    desired.interval = match (args.interval, policy.keepalive.interval) {
        (Some(v), _) => v,
        (None, Some(v)) => check_interval(v).map_err(|e| at(&format!("interval: {e}")))?,
        (None, None) => DEFAULT_INTERVAL,
    };
    desired.count_max = args.count_max.or(policy.keepalive.count_max).unwrap_or(DEFAULT_COUNT_MAX);
    desired.unused = policy.keepalive.unused_connection_timeout.filter(|u| *u > 0);
    // Per-rule unused=: Match blocks in policy order reproduce "first rule
    // wins" (sshd also takes the first matching block's value); rules before
    // the last one with unused= get the global value so they still shadow.
    if let Some(last) = policy.rules.iter().rposition(|r| r.unused_connection_timeout.is_some()) {
        for rule in &policy.rules[..=last] {
            let criteria = match_criteria(&rule.selector, rule)?;
            desired.matches.push(MatchBlock { criteria, unused: rule.unused_connection_timeout.filter(|u| *u > 0) });
            if rule.selector.is_any() {
                break;
            }
        }
    }
    Ok(desired)
}

/// A rule's selector as the criteria of an sshd `Match` line: `User`,
/// `Group`, and `Address` or `Host` for `from` (sshd matches `Address`
/// against the client's address and `Host` against its resolved name).
fn match_criteria(selector: &Selector, rule: &sshidle::policy::Rule) -> Result<String, String> {
    if selector.is_any() {
        return Ok("All".to_string());
    }
    let mut parts = Vec::new();
    if let Some(name) = &selector.user {
        parts.push(format!("User {}", match_name(name, rule)?));
    }
    if let Some(name) = &selector.group {
        parts.push(format!("Group {}", match_name(name, rule)?));
    }
    if let Some(from) = &selector.from {
        let keyword = match from.match_kind() {
            MatchKind::Address => "Address",
            MatchKind::Host => "Host",
            MatchKind::Mixed => {
                return Err(format!(
                    "{}:{}: 'from {from}' mixes addresses and host names: sshd's Match takes one or the other \
                     (Address, Host); split the rule",
                    rule.file.display(),
                    rule.line
                ))
            }
        };
        parts.push(format!("{keyword} {from}"));
    }
    Ok(parts.join(" "))
}

/// A user/group name as sshd's Match takes it (a pattern list is not one name).
fn match_name<'a>(name: &'a str, rule: &sshidle::policy::Rule) -> Result<&'a str, String> {
    if name.is_empty() || name.contains([',', '!', '"', '\'', '\\', '#']) {
        return Err(format!(
            "{}:{}: '{name}' cannot be written as an sshd Match criterion (no , ! quotes # or \\)",
            rule.file.display(),
            rule.line
        ));
    }
    Ok(name)
}

/// Exclusive lock for one run, held until dropped: flock on the directory of
/// the main config. Not on the file itself: a run replaces that file (rename),
/// and a later run would then lock the new inode while this one still works.
type ConfigLock = sshidle::files::Flock<fs::File>;

fn lock_config(main: &Path) -> Result<ConfigLock, String> {
    const WAIT: Duration = Duration::from_secs(120);
    let dir_path = main.parent().unwrap_or(Path::new("/"));
    let dir = fs::File::open(dir_path).map_err(|e| format!("cannot open {}: {e}", dir_path.display()))?;
    let mut told = false;
    let mut tell = |waited: Duration| {
        if !told && waited >= Duration::from_secs(2) {
            eprintln!("sshidlectl: waiting for another `sshidlectl keepalive` (lock on {})", dir_path.display());
            told = true;
        }
    };
    sshidle::files::lock_exclusive(dir, WAIT, &mut tell).map_err(|err| match err {
        sshidle::files::LockError::TimedOut(_) => format!(
            "another `sshidlectl keepalive` still holds the lock on {} after {} s; nothing was changed",
            dir_path.display(),
            WAIT.as_secs()
        ),
        sshidle::files::LockError::Io(err) => format!("cannot lock {}: {err}", dir_path.display()),
    })
}

fn apply(config: &Path, args: &KeepaliveArgs) -> Result<u8, String> {
    let main = fs::canonicalize(&args.sshd_config)
        .map_err(|e| format!("sshd configuration {}: {e}", args.sshd_config.display()))?;
    let mut desired = if args.off { None } else { Some(desired_values(config, args)?) };
    let _lock = lock_config(&main)?;
    if !args.dry_run {
        recover_interrupted(&main)?;
    }
    let tree = Tree::load(&main).map_err(|e| e.0)?;
    if let Some(d) = desired.as_mut() {
        if (d.unused.is_some() || !d.matches.is_empty()) && !supports_unused_timeout() {
            say(&format!(
                "note: {} does not know UnusedConnectionTimeout (OpenSSH 9.2 and later); the policy's unused= values are left out",
                sshd_binary()
            ));
            d.unused = None;
            d.matches.clear();
        }
    }
    let plan = match &desired {
        Some(d) => match sshd_config::plan_apply(&tree, d) {
            Ok(plan) => plan,
            Err(PlanError::Conflicts(list)) => {
                let mut msg = String::new();
                for c in &list {
                    msg.push_str(&format!("{c}\n"));
                }
                msg.push_str(
                    "sshidle's value would not take effect; remove or change that line (or set the same value), then run again. Nothing was changed.",
                );
                return Err(msg);
            }
            Err(PlanError::Other(m)) => return Err(m),
        },
        None => sshd_config::plan_remove(&tree).map_err(|e| e.0)?,
    };
    for note in &plan.notes {
        say(&format!("note: {note}"));
    }
    if plan.changes.is_empty() {
        match &desired {
            Some(d) => say(&format!(
                "sshd's configuration already has ClientAliveInterval {} and ClientAliveCountMax {} from sshidle; nothing to change",
                d.interval, d.count_max
            )),
            None => say("sshidle has nothing in sshd's configuration; nothing to remove"),
        }
        return Ok(EXIT_OK);
    }
    if args.dry_run {
        for c in &plan.changes {
            print!("{}", unified_diff(&c.path, c.old.as_deref(), c.new.as_deref()));
        }
        say("(dry run: nothing was changed)");
        return Ok(EXIT_OK);
    }
    if let Err(e) = sshd_test(&main) {
        return Err(format!(
            "the current sshd configuration fails `sshd -t -f {}`:\n{e}\nnot changing anything and not reloading sshd; fix that first",
            main.display()
        ));
    }
    match check_candidate(&main, &plan) {
        Candidate::Valid => {}
        Candidate::Invalid(e) => {
            return Err(format!(
                "the new configuration would fail `sshd -t -f {}` (checked before writing anything):\n{e}\nnothing was changed",
                main.display()
            ))
        }
        // Still checked right after the write, and restored on failure.
        Candidate::Unchecked(why) => say(&format!("note: cannot check the new files before writing them ({why})")),
    }
    // Mode and owner of every file before the change, for the restore.
    let modes: Vec<FileMode> = plan.changes.iter().map(|c| sshd_config::mode_of(&c.path)).collect();
    let journal = Rollback::write(&main, &plan, &modes)?;
    write_plan(&plan, &modes)?;
    let result = check_and_reload(&main, desired.as_ref(), args, &plan);
    let result = result.inspect(|_| journal.done()).map_err(|f| (f, journal));
    match result {
        Ok(summary) => {
            say(&summary);
            crate::syslog::to_syslog(Level::Notice, &format!("keepalive: {}", summary.replace('\n', "; ")));
            Ok(EXIT_OK)
        }
        Err((Failure { message, reloaded, died }, journal)) => {
            let restored = restore(&plan, &modes);
            let mut msg = message;
            match restored {
                Ok(()) => {
                    journal.done();
                    msg.push_str("\nrestored the previous files byte for byte")
                }
                Err(e) => msg.push_str(&format!("\nRESTORING THE PREVIOUS FILES FAILED: {e}")),
            }
            if let Some(argv) = died {
                match restart_sshd(&main, &argv) {
                    Ok(how) => msg.push_str(&format!(" and started sshd again ({how})")),
                    Err(e) => msg.push_str(&format!("; SSHD IS NOT RUNNING and starting it again failed: {e}")),
                }
            } else if reloaded {
                match reload_sshd(&main) {
                    Ok(how) => msg.push_str(&format!(" and reloaded sshd again ({how})")),
                    Err(e) => msg.push_str(&format!("; reloading sshd with them failed too: {}", e.message)),
                }
            }
            Err(msg)
        }
    }
}

/// What `sshd -t` says of the new files before they are written.
enum Candidate {
    Valid,
    Invalid(String),
    /// No private mount namespace here (no CAP_SYS_ADMIN, no unshare).
    Unchecked(String),
}

/// Runs `sshd -t` on the configuration as it would be after `plan`, without
/// writing it: in a private mount namespace (`unshare --mount`), the new
/// files are bind-mounted over the real ones (a whole directory, copied,
/// where a file is created or removed), so sshd reads the complete candidate
/// with every `Include` where it really is.
fn check_candidate(main: &Path, plan: &Plan) -> Candidate {
    let work = std::env::temp_dir().join(format!("sshidle-candidate-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = stage_candidate(&work, plan).and_then(|binds| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(
            "sshd=$1 main=$2; shift 2; while [ $# -ge 2 ]; do mount --bind -- \"$1\" \"$2\" || exit 97; shift 2; done; exec \"$sshd\" -t -f \"$main\"",
        );
        cmd.arg("sh").arg(sshd_binary()).arg(main);
        for (from, to) in binds {
            cmd.arg(from).arg(to);
        }
        cmd.output().map_err(|e| format!("unshare: {e}"))
    });
    let _ = fs::remove_dir_all(&work);
    match result {
        Ok(out) if out.status.success() => Candidate::Valid,
        // sshd -t exits 255 on a bad configuration.
        Ok(out) if out.status.code() == Some(255) => {
            Candidate::Invalid(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
        Ok(out) => Candidate::Unchecked(format!(
            "unshare/mount exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Candidate::Unchecked(e),
    }
}

/// Writes the candidate files under `work`; returns the (copy, real path)
/// pairs to bind-mount.
fn stage_candidate(work: &Path, plan: &Plan) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let err = |e: std::io::Error| format!("staging the candidate in {}: {e}", work.display());
    fs::create_dir_all(work).map_err(err)?;
    let mut binds = Vec::new();
    let mut dirs: BTreeMap<PathBuf, Vec<&sshd_config::FileChange>> = BTreeMap::new();
    for (i, c) in plan.changes.iter().enumerate() {
        let real = fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone());
        match (&c.old, &c.new) {
            // An existing file rewritten: the file alone.
            (Some(_), Some(bytes)) if real.is_file() => {
                let copy = work.join(format!("file{i}"));
                fs::write(&copy, bytes).map_err(err)?;
                binds.push((copy, real));
            }
            // Created or removed: the whole directory.
            _ => dirs.entry(real.parent().unwrap_or(Path::new("/")).to_path_buf()).or_default().push(c),
        }
    }
    for (i, (dir, changes)) in dirs.into_iter().enumerate() {
        // An empty directory the real write would create anyway.
        fs::create_dir_all(&dir).map_err(err)?;
        let copy = work.join(format!("dir{i}"));
        fs::create_dir_all(&copy).map_err(err)?;
        for entry in fs::read_dir(&dir).map_err(err)?.flatten() {
            // Files (through symlinks) are copied; anything else would be
            // hidden by the bind mount, and the candidate would not be real.
            if !entry.path().is_file() {
                return Err(format!("{} holds more than files", dir.display()));
            }
            fs::copy(entry.path(), copy.join(entry.file_name())).map_err(err)?;
        }
        for c in changes {
            let name = copy.join(c.path.file_name().unwrap_or_default());
            match &c.new {
                Some(bytes) => fs::write(&name, bytes).map_err(err)?,
                None => {
                    let _ = fs::remove_file(&name);
                }
            }
        }
        binds.push((copy, dir));
    }
    Ok(binds)
}

/// The old bytes of every file a run changes, written before the first
/// change (`.sshidle-keepalive.rollback` beside the main config) and removed
/// when the run ends: a run killed in between is undone by the next one.
struct Rollback {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RollbackEntry {
    path: PathBuf,
    old: Option<Vec<u8>>,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn rollback_path(main: &Path) -> PathBuf {
    main.parent().unwrap_or(Path::new("/")).join(".sshidle-keepalive.rollback")
}

impl Rollback {
    fn write(main: &Path, plan: &Plan, modes: &[FileMode]) -> Result<Rollback, String> {
        let entries: Vec<RollbackEntry> = plan
            .changes
            .iter()
            .zip(modes)
            .map(|(c, m)| RollbackEntry {
                path: c.path.clone(),
                old: c.old.clone(),
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
            })
            .collect();
        let path = rollback_path(main);
        let json = serde_json::to_vec(&entries).map_err(|e| e.to_string())?;
        sshidle::files::write_atomic(&path, &json, &sshidle::files::Replace::synced(0o600, None))
            .map_err(|e| format!("cannot write {}: {e}; nothing was changed", path.display()))?;
        Ok(Rollback { path })
    }

    fn done(&self) {
        let _ = sshd_config::remove_file(&self.path);
    }
}

/// Puts back what an earlier run changed when it was killed before it
/// finished (its rollback journal is still there).
fn recover_interrupted(main: &Path) -> Result<(), String> {
    let path = rollback_path(main);
    remove_stale_temp(&path);
    let Ok(bytes) = fs::read(&path) else { return Ok(()) };
    let entries: Vec<RollbackEntry> = match serde_json::from_slice(&bytes) {
        Ok(entries) => entries,
        Err(e) => {
            // Killed while writing the journal itself: nothing was changed yet.
            say(&format!("note: ignoring an unreadable {} ({e})", path.display()));
            let _ = sshd_config::remove_file(&path);
            return Ok(());
        }
    };
    let plan = Plan {
        changes: entries
            .iter()
            .map(|e| sshd_config::FileChange { path: e.path.clone(), old: e.old.clone(), new: None })
            .collect(),
        ..Plan::default()
    };
    let modes: Vec<FileMode> = entries.iter().map(|e| FileMode { mode: e.mode, uid: e.uid, gid: e.gid }).collect();
    for e in &entries {
        remove_stale_temp(&e.path);
    }
    restore(&plan, &modes)
        .map_err(|e| format!("an interrupted earlier run left {}; restoring it failed: {e}", path.display()))?;
    let _ = sshd_config::remove_file(&path);
    let files: Vec<String> = entries.iter().map(|e| e.path.display().to_string()).collect();
    say(&format!("an earlier run was interrupted; restored {} as they were before it", files.join(", ")));
    crate::syslog::to_syslog(
        Level::Warning,
        &format!("keepalive: an interrupted run was rolled back ({})", files.join(", ")),
    );
    Ok(())
}

/// Removes the temporary files a killed `write_atomic` of `path` left
/// (`.NAME.sshidle-PID.tmp`, see `sshidle::files`); called with the config
/// lock held, so no other run is writing them.
fn remove_stale_temp(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!(".{}.sshidle-", name.to_string_lossy());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

struct Failure {
    message: String,
    /// sshd was reloaded with the new files, so the restore needs a reload too.
    reloaded: bool,
    /// The listener exited after the reload: its command line.
    died: Option<Vec<OsString>>,
}

fn fail(message: String) -> Failure {
    Failure { message, reloaded: false, died: None }
}

fn write_plan(plan: &Plan, modes: &[FileMode]) -> Result<(), String> {
    for (i, c) in plan.changes.iter().enumerate() {
        let result = match &c.new {
            Some(bytes) => {
                if let Some(dir) = c.path.parent() {
                    let _ = fs::create_dir_all(dir);
                }
                sshd_config::write_through_symlink(&c.path, bytes, modes[i])
            }
            None => sshd_config::remove_file(&c.path),
        };
        if let Err(e) = result {
            let partial = Plan { changes: plan.changes[..i].to_vec(), ..Plan::default() };
            let undo = match restore(&partial, modes) {
                Ok(()) => "nothing was changed".to_string(),
                Err(r) => format!("RESTORING FAILED: {r}"),
            };
            return Err(format!("cannot write {}: {e}; {undo}", c.path.display()));
        }
    }
    Ok(())
}

/// Puts back the exact previous contents with their previous mode and owner.
fn restore(plan: &Plan, modes: &[FileMode]) -> Result<(), String> {
    let mut errors = Vec::new();
    for (c, mode) in plan.changes.iter().zip(modes).rev() {
        let result = match &c.old {
            Some(bytes) => sshd_config::write_through_symlink(&c.path, bytes, *mode),
            None => sshd_config::remove_file(&c.path),
        };
        if let Err(e) = result {
            errors.push(format!("{}: {e}", c.path.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn check_and_reload(
    main: &Path,
    desired: Option<&Desired>,
    args: &KeepaliveArgs,
    plan: &Plan,
) -> Result<String, Failure> {
    sshd_test(main).map_err(|e| fail(format!("the new configuration fails `sshd -t -f {}`:\n{e}", main.display())))?;
    let effective = sshd_effective(main).map_err(fail)?;
    let mut summary = Vec::new();
    let written: Vec<String> = plan
        .changes
        .iter()
        .map(|c| format!("{} {}", if c.new.is_some() { "wrote" } else { "removed" }, c.path.display()))
        .collect();
    summary.push(written.join(", "));
    if let Some(d) = desired {
        let mut checks = vec![(KW_INTERVAL, d.interval.to_string()), (KW_COUNT_MAX, d.count_max.to_string())];
        if let Some(u) = d.unused {
            checks.push((KW_UNUSED, u.to_string()));
        }
        for (kw, want) in checks {
            let got = first(&effective, kw).unwrap_or("(missing)");
            if got != want {
                let origin = Tree::load(main)
                    .ok()
                    .and_then(|t| t.first_global(kw).map(|e| format!(" (first set at {})", e.loc)))
                    .unwrap_or_default();
                return Err(fail(format!(
                    "`sshd -T -f {}` shows {kw} {got}, not {want}{origin}; another setting takes precedence",
                    main.display()
                )));
            }
        }
        summary.push(format!(
            "sshd -t: ok; sshd -T: clientaliveinterval {} clientalivecountmax {}{}",
            d.interval,
            d.count_max,
            d.unused.map(|u| format!(" unusedconnectiontimeout {u}")).unwrap_or_default()
        ));
    } else {
        summary.push(format!(
            "sshd -t: ok; sshd -T: clientaliveinterval {} clientalivecountmax {}",
            first(&effective, KW_INTERVAL).unwrap_or("?"),
            first(&effective, KW_COUNT_MAX).unwrap_or("?")
        ));
    }
    if args.no_reload {
        summary.push("not reloaded (--no-reload): new connections get these values after sshd's next reload".into());
    } else {
        match reload_sshd(main) {
            Ok(how) => summary.push(how),
            Err(ReloadError { message, reloaded, died }) => return Err(Failure { message, reloaded, died }),
        }
    }
    if let Some(d) = desired {
        summary.push(drop_sentence(d.interval, d.count_max));
    }
    Ok(summary.join("\n"))
}

fn drop_sentence(interval: u64, count_max: u64) -> String {
    match dead_client_drop_secs(interval, count_max) {
        Some(secs) => format!(
            "a client that stops answering is dropped about {} after its last packet: 2 × ClientAliveInterval {interval} s × (ClientAliveCountMax {count_max} + 1), as measured on OpenSSH 9.2, which probes only every second interval",
            if secs < 60 { format!("{secs} s") } else { format!("{} ({secs} s)", format_duration(secs)) }
        ),
        None if interval == 0 => "ClientAliveInterval 0: sshd sends no probes, so a client that vanishes without closing the connection stays logged in (until TCPKeepAlive, after hours)".to_string(),
        None => "ClientAliveCountMax 0: sshd probes but never drops a silent client (OpenSSH 8.2 and later)".to_string(),
    }
}

// ------------------------------------------------------------------ show ---

fn show(args: &KeepaliveArgs) -> u8 {
    let main = &args.sshd_config;
    let effective = match sshd_effective(main) {
        Ok(e) => e,
        Err(e) => {
            error(&e);
            return EXIT_PROBLEM;
        }
    };
    let tree = Tree::load(main).ok();
    let mut code = EXIT_OK;
    say(&format!("sshd configuration: {} (effective values from `sshd -T`)", main.display()));
    for kw in [KW_INTERVAL, KW_COUNT_MAX, KW_UNUSED] {
        let Some(value) = first(&effective, kw) else { continue };
        let source = match tree.as_ref().and_then(|t| t.first_global(kw)) {
            Some(e) if e.managed => format!("{}, written by sshidle", e.loc),
            Some(e) => e.loc.to_string(),
            None => "sshd's default".to_string(),
        };
        say(&format!("{:<24} {:<6} ({source})", display_keyword(kw), value));
        if let Some(t) = &tree {
            // sshidle's value hidden by an earlier one.
            if let Some(e) = t.entries.iter().find(|e| e.managed && e.in_match.is_none() && e.directive.keyword == kw) {
                let winner = t.first_global(kw);
                if winner.is_some_and(|w| !w.managed) {
                    say(&format!(
                        "  sshidle's {} {} at {} does not take effect: {} comes first",
                        display_keyword(kw),
                        e.directive.args.first().map(String::as_str).unwrap_or(""),
                        e.loc,
                        winner.map(|w| w.loc.to_string()).unwrap_or_default()
                    ));
                    code = EXIT_PROBLEM;
                }
            }
            for e in t.entries.iter().filter(|e| e.in_match.is_some() && e.directive.keyword == kw) {
                say(&format!(
                    "  {} {} at {} for the Match block at {}{}",
                    display_keyword(kw),
                    e.directive.args.first().map(String::as_str).unwrap_or(""),
                    e.loc,
                    e.in_match.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                    if e.managed { " (sshidle)" } else { "" }
                ));
            }
        }
    }
    let interval = first(&effective, KW_INTERVAL).and_then(|v| v.parse().ok()).unwrap_or(0);
    let count_max = first(&effective, KW_COUNT_MAX).and_then(|v| v.parse().ok()).unwrap_or(0);
    say(&format!("Dead client: {}", drop_sentence(interval, count_max)));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_with_from_become_match_address_or_host() {
        let policy = sshidle::Policy::parse(
            Path::new("/p"),
            "user a group g from 10.0.0.0/8,!10.9.0.0/16 unused=1m\nfrom *.example.com unused=2m\n\
             from 10.0.0.0/8,*.example.com unused=3m\n* unused=4m\n",
        );
        assert_eq!(policy.errors, vec![]);
        let criteria: Vec<Result<String, String>> =
            policy.rules.iter().map(|r| match_criteria(&r.selector, r)).collect();
        assert_eq!(criteria[0], Ok("User a Group g Address 10.0.0.0/8,!10.9.0.0/16".to_string()));
        assert_eq!(criteria[1], Ok("Host *.example.com".to_string()));
        assert!(criteria[2].as_ref().unwrap_err().starts_with("/p:3: 'from 10.0.0.0/8,*.example.com' mixes"));
        assert_eq!(criteria[3], Ok("All".to_string()));
    }

    /// A private sshd configuration tree: main (Include conf.d/*.conf), a
    /// host key, an admin's drop-in.
    fn tree(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sshidle-cand-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("conf.d")).unwrap();
        let key = dir.join("host_key");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ssh-keygen");
        let main = dir.join("sshd_config");
        fs::write(&main, format!("Include {}/conf.d/*.conf\nHostKey {}\nPort 22\n", dir.display(), key.display()))
            .unwrap();
        fs::write(dir.join("conf.d/50-admin.conf"), "PermitRootLogin no\n").unwrap();
        (dir, main)
    }

    #[test]
    fn the_candidate_is_checked_before_anything_is_written() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 || !Path::new(sshd_binary()).exists() {
            return; // a private mount namespace needs root
        }
        let (dir, main) = tree("check");
        let before: Vec<(PathBuf, Vec<u8>)> = ["sshd_config", "conf.d/50-admin.conf"]
            .iter()
            .map(|f| (dir.join(f), fs::read(dir.join(f)).unwrap()))
            .collect();
        let change = |path: PathBuf, old: Option<Vec<u8>>, new: Option<&str>| sshd_config::FileChange {
            path,
            old,
            new: new.map(|s| s.as_bytes().to_vec()),
        };
        // A new drop-in sshd rejects, and a valid rewrite of the main file.
        let bad = Plan {
            changes: vec![
                change(dir.join("conf.d/10-sshidle.conf"), None, Some("ClientAliveInterval 60\nNoSuchKeyword yes\n")),
                sshd_config::FileChange {
                    path: main.clone(),
                    old: Some(before[0].1.clone()),
                    new: Some([before[0].1.as_slice(), b"# x\n"].concat()),
                },
            ],
            ..Plan::default()
        };
        match check_candidate(&main, &bad) {
            Candidate::Invalid(e) => assert!(e.contains("NoSuchKeyword") || e.contains("Bad configuration"), "{e}"),
            Candidate::Valid => panic!("an invalid candidate passed"),
            Candidate::Unchecked(why) => panic!("not checked: {why}"),
        }
        let good = Plan {
            changes: vec![change(dir.join("conf.d/10-sshidle.conf"), None, Some("ClientAliveInterval 60\n"))],
            ..Plan::default()
        };
        assert!(matches!(check_candidate(&main, &good), Candidate::Valid));
        // Removing the admin's file is checked the same way.
        let removal = Plan {
            changes: vec![change(dir.join("conf.d/50-admin.conf"), Some(before[1].1.clone()), None)],
            ..Plan::default()
        };
        assert!(matches!(check_candidate(&main, &removal), Candidate::Valid));
        // Nothing was written or left mounted.
        for (path, bytes) in &before {
            assert_eq!(&fs::read(path).unwrap(), bytes, "{}", path.display());
        }
        assert!(!dir.join("conf.d/10-sshidle.conf").exists());
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&dir.display().to_string()), "{mounts}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_interrupted_run_is_rolled_back_by_the_next() {
        let (dir, main) = tree("rollback");
        let admin = dir.join("conf.d/50-admin.conf");
        let dropin = dir.join("conf.d/10-sshidle.conf");
        let old_main = fs::read(&main).unwrap();
        let plan = Plan {
            changes: vec![
                sshd_config::FileChange {
                    path: dropin.clone(),
                    old: None,
                    new: Some(b"ClientAliveInterval 60\n".to_vec()),
                },
                sshd_config::FileChange {
                    path: main.clone(),
                    old: Some(old_main.clone()),
                    new: Some(b"# new\n".to_vec()),
                },
            ],
            ..Plan::default()
        };
        let modes: Vec<FileMode> = plan.changes.iter().map(|c| sshd_config::mode_of(&c.path)).collect();
        // Killed after the journal and the first of two files.
        let _journal = Rollback::write(&main, &plan, &modes).unwrap();
        fs::write(&dropin, "ClientAliveInterval 60\n").unwrap();
        recover_interrupted(&main).unwrap();
        assert!(!dropin.exists());
        assert_eq!(fs::read(&main).unwrap(), old_main);
        assert_eq!(fs::read(&admin).unwrap(), b"PermitRootLogin no\n");
        assert!(!rollback_path(&main).exists());
        // Nothing to do the next time.
        recover_interrupted(&main).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn interval_values() {
        assert_eq!(parse_interval("60"), Ok(60));
        assert_eq!(parse_interval("1m30s"), Ok(90));
        assert_eq!(parse_interval("1d"), Ok(86_400));
        assert!(parse_interval("abc").unwrap_err().contains("invalid duration 'abc'"));
        assert!(parse_interval("-5").is_err());
        assert!(parse_interval("0").unwrap_err().contains("--off"));
        assert!(parse_interval("1d1s").unwrap_err().contains("longer than 1d"));
        assert!(parse_interval("99999999999999999999999").is_err());
    }

    #[test]
    fn count_max_values() {
        assert_eq!(parse_count_max("3"), Ok(3));
        assert_eq!(parse_count_max("1000"), Ok(1000));
        assert!(parse_count_max("0").unwrap_err().contains("never drops"));
        assert!(parse_count_max("1001").unwrap_err().contains("out of range"));
        assert!(parse_count_max("-1").is_err());
        assert!(parse_count_max("2x").is_err());
    }

    #[test]
    fn drop_time_matches_the_9_2_measurements() {
        // Measured on 9.2, seconds from the client's last packet to the drop
        // (facts.md: 2/2 dropped 10.3-10.8 s after the stop, which came
        // ~1.5 s after the last packet; this command's own runs: 2/2, 3/1,
        // 1/3 after 12, 12 and 8 s). The promise is "worst case": never
        // earlier than what was seen, at most one probe interval later.
        for (interval, count_max, seen) in [(2, 2, 11.8), (2, 2, 12.0), (3, 1, 12.0), (1, 3, 8.0)] {
            let said = dead_client_drop_secs(interval, count_max).unwrap() as f64;
            assert!(said >= seen && said <= seen + interval as f64, "{interval}/{count_max}: said {said}, seen {seen}");
        }
        // What sshd does, whatever the values: a probe only after two silent
        // intervals, dropped when CountMax probes went unanswered and one more
        // is due. So the time is a whole number of double intervals, grows
        // with both settings, is never shorter than CountMax probes sent one
        // interval apart, and is None exactly when sshd never drops.
        for interval in [1, 2, 3, 7, 60, 3600, MAX_INTERVAL] {
            for count_max in [1, 2, 3, 10, MAX_COUNT_MAX] {
                let secs = dead_client_drop_secs(interval, count_max).expect("drops");
                assert_eq!(secs % (2 * interval), 0, "{interval}/{count_max}");
                assert_eq!(secs / (2 * interval), count_max + 1, "{interval}/{count_max}: probes");
                assert!(secs > interval * count_max, "{interval}/{count_max}");
                assert!(dead_client_drop_secs(interval + 1, count_max).unwrap() > secs);
                assert!(dead_client_drop_secs(interval, count_max + 1).unwrap() > secs);
            }
            assert_eq!(dead_client_drop_secs(interval, 0), None, "CountMax 0 never drops");
            assert_eq!(dead_client_drop_secs(0, interval), None, "Interval 0 sends no probes");
        }
        // Overflow is "never", not a wrapped small number.
        assert_eq!(dead_client_drop_secs(u64::MAX, 3), None);
        assert_eq!(dead_client_drop_secs(3, u64::MAX), None);
        // The sentence shows the same number.
        let secs = dead_client_drop_secs(60, 3).unwrap();
        assert!(drop_sentence(60, 3).contains(&format!("about {} ({secs} s)", format_duration(secs))));
    }
}
