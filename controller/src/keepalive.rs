//! `sshidlectl keepalive`: write sshd's `ClientAliveInterval` /
//! `ClientAliveCountMax` (and, where the policy asks and sshd supports it,
//! `UnusedConnectionTimeout`) safely, reload sshd and check the result.
//!
//! Order of a run, so that sshd is never left unable to accept logins:
//! lock (flock on the main config's directory, held to the end) → read the whole tree →
//! plan (stop on an admin setting that would win) → `sshd -t` on the current
//! config (a broken one is not touched) → write atomically → `sshd -t` →
//! `sshd -T` shows the new values → reload (systemctl / init script / SIGHUP
//! to the PidFile's sshd) → the listener re-opened its sockets and answers
//! with an SSH banner. Any failure after the write restores every file byte
//! for byte and reloads again when the reload had happened, or starts sshd
//! again when its listener exited.

use crate::sshd_config::{
    self, display_keyword, unified_diff, Desired, FileMode, MatchBlock, Plan, PlanError, Tree, KW_COUNT_MAX,
    KW_INTERVAL, KW_UNUSED,
};
use crate::{EXIT_OK, EXIT_PROBLEM};
use clap::Args;
use sshidle::policy::Selector;
use sshidle::{format_duration, Level, Policy};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Defaults when neither flags nor the policy file say otherwise.
pub const DEFAULT_INTERVAL: u64 = 60;
pub const DEFAULT_COUNT_MAX: u64 = 3;
/// Longest accepted interval: beyond a day a dead client holds its session for days.
pub const MAX_INTERVAL: u64 = 86_400;
/// Largest accepted count (the policy file has the same limit).
pub const MAX_COUNT_MAX: u64 = 1000;

pub const DEFAULT_SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
const SSHD: &str = "/usr/sbin/sshd";

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
(global, and Match User/Group blocks), where the installed sshd supports it (OpenSSH 9.2 and later).\n\n\
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

pub fn run(config: &Path, args: &KeepaliveArgs) -> u8 {
    if args.show {
        return show(args);
    }
    match apply(config, args) {
        Ok(code) => code,
        Err(message) => {
            error(&message);
            EXIT_PROBLEM
        }
    }
}

/// `keepalive --off` on the system's sshd configuration (for `uninstall`).
pub fn remove(config: &Path, dry_run: bool) -> u8 {
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
            let criteria = match &rule.selector {
                Selector::User(name) => format!("User {}", match_name(name, rule)?),
                Selector::Group(name) => format!("Group {}", match_name(name, rule)?),
                Selector::Any => "All".to_string(),
            };
            desired.matches.push(MatchBlock { criteria, unused: rule.unused_connection_timeout.filter(|u| *u > 0) });
            if rule.selector == Selector::Any {
                break;
            }
        }
    }
    Ok(desired)
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

fn sshd_binary() -> &'static str {
    SSHD
}

/// `sshd MODE -f MAIN` (`-t` or `-T`), run to completion.
fn run_sshd(mode: &str, main: &Path) -> Result<std::process::Output, String> {
    Command::new(sshd_binary())
        .arg(mode)
        .arg("-f")
        .arg(main)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", sshd_binary()))
}

/// `sshd -t -f MAIN`: Ok, or sshd's complaint.
fn sshd_test(main: &Path) -> Result<(), String> {
    let out = run_sshd("-t", main)?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if text.is_empty() { format!("sshd -t exited with {}", out.status) } else { text })
    }
}

/// `sshd -T -f MAIN`: keyword (lower case) → values, in order.
fn sshd_effective(main: &Path) -> Result<BTreeMap<String, Vec<String>>, String> {
    let out = run_sshd("-T", main)?;
    if !out.status.success() {
        return Err(format!("sshd -T -f {} failed: {}", main.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    Ok(map)
}

fn first<'a>(map: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(|v| v.first()).map(String::as_str)
}

/// Whether this sshd knows `UnusedConnectionTimeout` (OpenSSH 9.2+): `sshd
/// -t` on a one-line config; an unknown keyword is reported before anything
/// else is checked.
fn supports_unused_timeout() -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A new file (O_EXCL: never through someone's symlink in /tmp).
    let mut created = None;
    for attempt in 0..20 {
        let path = std::env::temp_dir().join(format!("sshidle-probe-{}-{attempt}.conf", std::process::id()));
        if let Ok(mut f) = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            if f.write_all(b"UnusedConnectionTimeout 1\n").is_ok() {
                created = Some(path);
            } else {
                let _ = fs::remove_file(&path);
            }
            break;
        }
    }
    let Some(path) = created else { return false };
    let out = run_sshd("-t", &path);
    let _ = fs::remove_file(&path);
    match out {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).to_ascii_lowercase();
            !(err.contains("bad configuration option") || err.contains("unsupported option"))
        }
        Err(_) => false,
    }
}

fn apply(config: &Path, args: &KeepaliveArgs) -> Result<u8, String> {
    let main = fs::canonicalize(&args.sshd_config)
        .map_err(|e| format!("sshd configuration {}: {e}", args.sshd_config.display()))?;
    let mut desired = if args.off { None } else { Some(desired_values(config, args)?) };
    let _lock = lock_config(&main)?;
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
    // Mode and owner of every file before the change, for the restore.
    let modes: Vec<FileMode> = plan.changes.iter().map(|c| sshd_config::mode_of(&c.path)).collect();
    write_plan(&plan, &modes)?;
    let result = check_and_reload(&main, desired.as_ref(), args, &plan);
    match result {
        Ok(summary) => {
            say(&summary);
            crate::syslog::to_syslog(Level::Notice, &format!("keepalive: {}", summary.replace('\n', "; ")));
            Ok(EXIT_OK)
        }
        Err(Failure { message, reloaded, died }) => {
            let restored = restore(&plan, &modes);
            let mut msg = message;
            match restored {
                Ok(()) => msg.push_str("\nrestored the previous files byte for byte"),
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

// ---------------------------------------------------------------- reload ---

struct ReloadError {
    message: String,
    reloaded: bool,
    /// The listener exited after the reload: its command line, to start it again.
    died: Option<Vec<OsString>>,
}

/// The listener's command line, to start it again if it dies. sshd
/// overwrites its argv with a title, `NAME: ARGV... [listener] 0 of 10-100
/// startups`, so the words are taken from that (arguments with spaces are
/// lost); a first word that is not an existing absolute path is replaced by
/// the running binary.
fn listener_argv(pid: i32) -> Vec<OsString> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut words = argv_from_cmdline(&bytes);
    let usable = words.first().is_some_and(|w| Path::new(w).is_absolute() && Path::new(w).exists());
    if !usable {
        if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
            let exe = exe.to_string_lossy();
            let exe = OsString::from(exe.strip_suffix(" (deleted)").unwrap_or(&exe));
            match words.first_mut() {
                Some(first) => *first = exe,
                None => words.push(exe),
            }
        }
    }
    words
}

/// The words of a /proc/PID/cmdline: NUL-separated, or an sshd title.
fn argv_from_cmdline(bytes: &[u8]) -> Vec<OsString> {
    let parts: Vec<&[u8]> = bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    match parts.as_slice() {
        [title] if title.windows(11).any(|w| w == b" [listener]") => {
            let title = String::from_utf8_lossy(title);
            let title = title.split(" [listener]").next().unwrap_or("");
            let title = title.split_once(": ").map_or(title, |(_, rest)| rest);
            title.split_whitespace().map(OsString::from).collect()
        }
        _ => parts.iter().map(|a| OsStr::from_bytes(a).to_os_string()).collect(),
    }
}

/// The running sshd listener of a config: the PID in its PidFile, checked to
/// be sshd and to hold listening TCP sockets.
#[derive(Debug, Clone)]
struct Listener {
    pid: i32,
    sockets: BTreeSet<u64>,
    addrs: Vec<SocketAddr>,
}

fn socket_inodes(pid: i32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        out.insert(n);
                    }
                }
            }
        }
    }
    out
}

/// Listening TCP sockets of this network namespace: inode → local address.
fn listening_sockets() -> BTreeMap<u64, SocketAddr> {
    let mut out = BTreeMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let (Some(addr), Ok(inode)) = (parse_proc_addr(f[1], v6), f[9].parse::<u64>()) else { continue };
            out.insert(inode, addr);
        }
    }
    out
}

/// `0100007F:08AE` (IPv4) or 32 hex digits + port (IPv6), as /proc/net/tcp*
/// prints them: each 32-bit word in host (little-endian) order.
fn parse_proc_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_le_bytes);
    let ip = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::from(word(ip)?))
    };
    Some(SocketAddr::new(ip, port))
}

/// The process runs the sshd binary (also one replaced by an upgrade since it
/// started, which the kernel shows as `PATH (deleted)`).
fn is_sshd_process(pid: i32) -> bool {
    let (Ok(exe), Ok(sshd)) = (fs::read_link(format!("/proc/{pid}/exe")), fs::canonicalize(sshd_binary())) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Path::new(exe) == sshd
}

fn listener_of(pid: i32) -> Option<Listener> {
    if pid <= 1 || !is_sshd_process(pid) {
        return None;
    }
    let listening = listening_sockets();
    let mine = socket_inodes(pid);
    let sockets: BTreeSet<u64> = mine.into_iter().filter(|i| listening.contains_key(i)).collect();
    if sockets.is_empty() {
        return None;
    }
    let addrs = sockets.iter().filter_map(|i| listening.get(i).copied()).collect();
    Some(Listener { pid, sockets, addrs })
}

/// The process exists and is not a zombie (a listener whose parent has not
/// reaped it yet is gone all the same).
fn process_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !matches!(sshidle::procfs::stat_field(&stat, 3), Some("Z" | "X") | None))
}

fn read_pidfile(path: &str) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Where to connect to test a listening address (wildcards → loopback).
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

/// What the check says to sshd after its banner: our identification, then a
/// clean SSH_MSG_DISCONNECT, so that sshd logs "Received disconnect ...:
/// sshidlectl keepalive: listener check" at INFO level, not the
/// `error: kex_exchange_identification: Connection closed` of a client that
/// hung up without a word.
fn check_goodbye() -> Vec<u8> {
    const IDENTIFICATION: &[u8] = b"SSH-2.0-sshidlectl_check\r\n";
    const SSH_MSG_DISCONNECT: u8 = 1;
    const SSH_DISCONNECT_BY_APPLICATION: u32 = 11;
    let reason = b"sshidlectl keepalive: listener check";
    let mut payload = vec![SSH_MSG_DISCONNECT];
    payload.extend_from_slice(&SSH_DISCONNECT_BY_APPLICATION.to_be_bytes());
    payload.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    payload.extend_from_slice(reason);
    // The language tag: none.
    payload.extend_from_slice(&0u32.to_be_bytes());
    // RFC 4253 6: length, padding length, payload, at least 4 bytes of
    // padding, the whole a multiple of 8 (no cipher, no MAC yet).
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = IDENTIFICATION.to_vec();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// Connects, reads sshd's identification line (`SSH-2.0-...`) and says
/// goodbye properly.
fn ssh_banner(addr: SocketAddr) -> Result<String, String> {
    let target = connect_addr(addr);
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(|e| format!("{target}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 255 {
        match stream.read(&mut byte) {
            Ok(1) => {
                if byte[0] == b'\n' {
                    break;
                }
                buf.push(byte[0]);
            }
            Ok(_) => break,
            Err(e) => return Err(format!("{target}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
    if line.starts_with("SSH-") {
        // The listener answered; a failed goodbye changes nothing of that.
        let _ = std::io::Write::write_all(&mut stream, &check_goodbye());
        // Read until sshd hangs up (or a second passes): closing with its
        // KEXINIT unread would reset the connection instead.
        let deadline = Instant::now() + Duration::from_secs(1);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut sink = [0u8; 2048];
        while Instant::now() < deadline && matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        Ok(line)
    } else {
        Err(format!("{target}: no SSH banner (got {line:?})"))
    }
}

/// Addresses from `sshd -T` (`listenaddress 0.0.0.0:22`, `[::]:22`).
fn configured_addrs(effective: &BTreeMap<String, Vec<String>>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for v in effective.get("listenaddress").into_iter().flatten() {
        let text = v.split_whitespace().next().unwrap_or("");
        if let Ok(a) = text.parse::<SocketAddr>() {
            out.push(a);
        }
    }
    out
}

fn is_system_config(main: &Path) -> bool {
    fs::canonicalize(DEFAULT_SSHD_CONFIG).is_ok_and(|p| p == main)
}

/// Reloads the sshd that runs with `main` and checks it listens again.
/// Ok: a sentence saying how. Not running at all is Ok (nothing to reload).
fn reload_sshd(main: &Path) -> Result<String, ReloadError> {
    let err = |message: String| ReloadError { message, reloaded: false, died: None };
    let effective = sshd_effective(main).map_err(err)?;
    let pidfile = first(&effective, "pidfile").unwrap_or("none").to_string();
    let listener = if pidfile == "none" { None } else { read_pidfile(&pidfile).and_then(listener_of) };
    let Some(before) = listener else {
        for addr in configured_addrs(&effective) {
            if let Ok(banner) = ssh_banner(addr) {
                return Err(err(format!(
                    "an SSH server answers on {} ({banner}), but PidFile {pidfile} does not name a running sshd listener, so it cannot be reloaded",
                    connect_addr(addr)
                )));
            }
        }
        return Ok(format!(
            "sshd is not running (PidFile {pidfile} names no sshd listener, nothing answers on its ports): nothing to reload; the values apply when it starts"
        ));
    };
    let argv = listener_argv(before.pid);
    let system = is_system_config(main);
    let mut how: Option<String> = None;
    if system && Path::new("/run/systemd/system").is_dir() {
        for unit in ["ssh.service", "sshd.service"] {
            let active = Command::new("systemctl").args(["is-active", "--quiet", unit]).status();
            if active.is_ok_and(|s| s.success()) {
                let reload = Command::new("systemctl").args(["reload", unit]).status();
                if reload.is_ok_and(|s| s.success()) && wait_reexec(&before, Duration::from_secs(10)).is_ok() {
                    how = Some(format!("systemctl reload {unit}"));
                }
                break;
            }
        }
    }
    if how.is_none() && system {
        for script in ["/etc/init.d/ssh", "/etc/init.d/sshd"] {
            if !Path::new(script).exists() {
                continue;
            }
            // The script signals the PID of its own pidfile: it "works" when
            // our listener re-executes.
            let ok = Command::new(script).arg("reload").output().is_ok_and(|o| o.status.success());
            if ok && wait_reexec(&before, Duration::from_secs(5)).is_ok() {
                how = Some(format!("{script} reload"));
            }
            break;
        }
    }
    if how.is_none() {
        // SAFETY: plain kill(2) on a PID just checked to be an sshd listener.
        if unsafe { libc::kill(before.pid, libc::SIGHUP) } != 0 {
            return Err(err(format!(
                "cannot send SIGHUP to sshd PID {}: {}",
                before.pid,
                std::io::Error::last_os_error()
            )));
        }
        how = Some(format!("SIGHUP to sshd PID {} (PidFile {pidfile})", before.pid));
    }
    let how = how.unwrap_or_default();
    let reloaded = |message: String| ReloadError {
        message,
        reloaded: true,
        died: if process_running(before.pid) { None } else { Some(argv.clone()) },
    };
    let after = wait_reexec(&before, Duration::from_secs(10)).map_err(reloaded)?;
    let mut banners = Vec::new();
    for addr in &after.addrs {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ssh_banner(*addr) {
                Ok(b) => {
                    banners.push(format!("{} ({b})", connect_addr(*addr)));
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(reloaded(format!("sshd does not answer after the reload ({how}): {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(format!("reloaded sshd: {how}; it answers again on {}", banners.join(", ")))
}

/// Starts sshd again after its listener exited: the service manager for the
/// system's configuration, else the listener's own command line (detached).
/// Ok once an sshd listener of `main` answers.
fn restart_sshd(main: &Path, argv: &[OsString]) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let system = is_system_config(main);
    let mut how: Option<String> = None;
    if system && Path::new("/run/systemd/system").is_dir() {
        for unit in ["ssh.service", "sshd.service"] {
            if Command::new("systemctl").args(["restart", unit]).status().is_ok_and(|s| s.success()) {
                how = Some(format!("systemctl restart {unit}"));
                break;
            }
        }
    }
    if how.is_none() && system {
        for script in ["/etc/init.d/ssh", "/etc/init.d/sshd"] {
            if Path::new(script).exists()
                && Command::new(script).arg("start").output().is_ok_and(|o| o.status.success())
            {
                how = Some(format!("{script} start"));
                break;
            }
        }
    }
    if how.is_none() {
        let Some((program, rest)) = argv.split_first() else {
            return Err("the listener's command line is unknown".to_string());
        };
        let mut cmd = Command::new(program);
        cmd.args(rest).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the new sshd leaves our session.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        // Not waited for: it runs on as sshd.
        cmd.spawn().map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
        let line: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        how = Some(line.join(" "));
    }
    let how = how.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let effective = sshd_effective(main)?;
        let pidfile = first(&effective, "pidfile").unwrap_or("none").to_string();
        if let Some(l) = read_pidfile(&pidfile).and_then(listener_of) {
            let banners: Result<Vec<String>, String> = l.addrs.iter().map(|a| ssh_banner(*a)).collect();
            if let Ok(b) = banners {
                return Ok(format!("{how}: PID {} answers: {}", l.pid, b.join(", ")));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("ran {how}, but no sshd listener answers after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the listener re-executed: same PID, new listening sockets.
fn wait_reexec(before: &Listener, timeout: Duration) -> Result<Listener, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if !process_running(before.pid) {
            return Err(format!("sshd PID {} exited after the reload", before.pid));
        }
        if let Some(now) = listener_of(before.pid) {
            if now.sockets.is_disjoint(&before.sockets) {
                return Ok(now);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "sshd PID {} did not re-read its configuration within {} s (it kept its listening sockets)",
                before.pid,
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
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

    #[test]
    fn check_goodbye_is_an_identification_and_one_well_formed_packet() {
        let bytes = check_goodbye();
        let ident_end = bytes.windows(2).position(|w| w == b"\r\n").expect("CRLF") + 2;
        assert!(bytes[..ident_end].starts_with(b"SSH-2.0-"));
        let packet = &bytes[ident_end..];
        let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
        assert_eq!(packet.len(), 4 + length);
        assert_eq!(packet.len() % 8, 0, "a multiple of the block size");
        let padding = packet[4] as usize;
        assert!(padding >= 4);
        let payload = &packet[5..packet.len() - padding];
        assert_eq!(payload[0], 1, "SSH_MSG_DISCONNECT");
        assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), 11);
        let reason_len = u32::from_be_bytes(payload[5..9].try_into().unwrap()) as usize;
        assert_eq!(&payload[9..9 + reason_len], b"sshidlectl keepalive: listener check");
        assert_eq!(&payload[9 + reason_len..], &[0, 0, 0, 0], "empty language tag");
    }

    #[test]
    fn proc_net_addresses() {
        assert_eq!(parse_proc_addr("0100007F:08AE", false), Some("127.0.0.1:2222".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000:0016", false), Some("0.0.0.0:22".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0016", true), Some("[::1]:22".parse().unwrap()));
        assert_eq!(parse_proc_addr("zz:1", false), None);
        assert_eq!(connect_addr("0.0.0.0:22".parse().unwrap()), "127.0.0.1:22".parse().unwrap());
        assert_eq!(connect_addr("[::]:22".parse().unwrap()), "[::1]:22".parse().unwrap());
    }

    #[test]
    fn listener_command_lines() {
        let words =
            |b: &[u8]| argv_from_cmdline(b).iter().map(|w| w.to_string_lossy().into_owned()).collect::<Vec<_>>();
        assert_eq!(
            words(b"sshd: /usr/sbin/sshd -D -f /etc/ssh/sshd_config [listener] 0 of 10-100 startups"),
            ["/usr/sbin/sshd", "-D", "-f", "/etc/ssh/sshd_config"]
        );
        assert_eq!(words(b"/usr/sbin/sshd -D [listener] 1 of 10-100 startups"), ["/usr/sbin/sshd", "-D"]);
        assert_eq!(words(b"/usr/sbin/sshd\0-D\0-e\0"), ["/usr/sbin/sshd", "-D", "-e"]);
        assert!(words(b"").is_empty());
    }

    #[test]
    fn listener_of_rejects_non_sshd() {
        // This test process is not sshd.
        assert!(listener_of(std::process::id() as i32).is_none());
        assert!(listener_of(1).is_none());
    }
}
