//! `status`, `check` and `explain`: read-only views of policy and state.

use crate::{Failure, Outcome};
use clap::{Args, ValueEnum};
use serde::Serialize;
use sshidle::policy::Policy;
use sshidle::procfs::{self, ProcTable};
use sshidle::state::{SessionRecord, StateDir, StateError};
use sshidle::{activity, discover, lifecycle};
use sshidle::{format_duration, users};
use std::path::Path;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (same as --format json)
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also list sshd connections that have no record (their login could
    /// not be written); the default with the default state directory
    #[arg(long)]
    pub find_unrecorded: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    /// node_exporter textfile collector format
    Prometheus,
}

/// One row of `status`.
#[derive(Serialize, Debug)]
pub struct SessionRow {
    pub id: String,
    pub pid: i32,
    pub user: String,
    pub uid: u32,
    pub ttys: Vec<String>,
    pub from: String,
    pub service: String,
    pub login_time: i64,
    pub idle_secs: u64,
    pub idle_limit_secs: Option<u64>,
    pub warn_secs: Option<u64>,
    pub hard_limit_secs: Option<u64>,
    /// Seconds until the enforcer disconnects the session if nothing
    /// changes; `None` when it never does.
    pub time_left_secs: Option<i64>,
    pub rule: String,
    /// What ending the session ends: `logout` or `session` (`end=`).
    pub end: String,
    pub warned: bool,
    /// Not recorded at login: found by the enforcer (or by `status` itself)
    /// among sshd's processes or in utmp.
    pub adopted: bool,
}

/// Services of sessions whose login was not recorded by the module.
const ADOPTED_SERVICES: &[&str] = &["utmp", "adopted", UNRECORDED];
/// The service `status` shows for an sshd connection it finds with no
/// record (the enforcer has not adopted it yet).
const UNRECORDED: &str = "unrecorded";

impl SessionRow {
    /// The row of `record` at `now_ms` (unix ms).
    pub fn new(record: &SessionRecord, now_ms: i64, observer: &activity::Observer) -> SessionRow {
        let seen = observer.observe(record, now_ms);
        // The enforcer's own judgement: quiet since the end of the tty's 8-s
        // block, a warning's full lead, `ssh -N` never ended for idleness.
        let ends =
            lifecycle::outlook(&record.limits, record.login_time, seen.quiet_since_ms, record.warned_at_ms, now_ms);
        SessionRow {
            id: record.key.to_string(),
            pid: record.key.pid,
            user: record.user.clone(),
            uid: record.uid,
            ttys: seen.ttys,
            from: record.rhost.clone(),
            service: record.service.clone(),
            login_time: record.login_time,
            idle_secs: seen.idle_secs,
            idle_limit_secs: record.limits.idle,
            warn_secs: record.limits.warn,
            hard_limit_secs: record.limits.hard,
            // Whole seconds, rounded up: 0 only once it is due.
            time_left_secs: ends.map(|(at, _)| lifecycle::ceil_secs(at - now_ms).max(0)),
            rule: record.rule.clone(),
            end: record.limits.end.to_string(),
            warned: record.warned_at_ms.is_some(),
            adopted: ADOPTED_SERVICES.contains(&record.service.as_str()),
        }
    }
}

/// sshd connections running now that `recorded` lacks, with the limits the
/// policy at `config` gives their user (what the enforcer adopts them with).
pub fn unrecorded_sessions(recorded: &[SessionRecord], config: &Path) -> Vec<SessionRecord> {
    let privsep = users::lookup_user("sshd").map(|a| a.uid);
    let found = discover::scan(&ProcTable::scan(), privsep);
    let policy = Policy::load(config).ok();
    found
        .into_iter()
        .filter(|c| !recorded.iter().any(|r| r.key == c.key))
        .filter_map(|c| {
            let user = users::user_name(c.uid)?;
            let rhost = crate::sshd_control::peer_of(c.key.pid).unwrap_or_default();
            let (limits, rule) = match (&policy, users::lookup_user(&user)) {
                (Some(policy), Some(account)) => {
                    let resolution = policy.resolve(&account.name, &rhost, &mut || users::group_names(&account));
                    (resolution.limits, resolution.describe())
                }
                _ => (Default::default(), "none".to_string()),
            };
            Some(SessionRecord {
                key: c.key,
                uid: c.uid,
                user,
                rhost,
                service: UNRECORDED.into(),
                login_time: procfs::start_unix(c.key.start).unwrap_or_else(sshidle::now_unix),
                limits,
                rule,
                warned_at_ms: None,
            })
        })
        .collect()
}

/// Loads the live sessions (records whose process is gone are left out).
pub fn live_sessions(state: Option<&StateDir>) -> Result<Vec<SessionRecord>, StateError> {
    let Some(state) = state else { return Ok(Vec::new()) };
    let snapshot = state.load()?;
    if snapshot.corrupt {
        eprintln!("sshidlectl: {}: not a state file; it is moved aside at the next login", state.file_path().display());
    }
    Ok(snapshot.sessions.into_iter().filter(|r| r.key.is_alive()).collect())
}

pub fn status(state_dir: &Path, config: &Path, args: &StatusArgs) -> Outcome {
    let state = StateDir::open_existing(state_dir)?;
    let mut sessions = live_sessions(state.as_ref())?;
    if crate::enforce::finds_unrecorded(state_dir, args.find_unrecorded) {
        let unrecorded = unrecorded_sessions(&sessions, config);
        sessions.extend(unrecorded);
    }
    let now_ms = sshidle::now_unix_ms();
    let observer = activity::Observer::new(state.as_ref());
    let rows: Vec<SessionRow> = sessions.iter().map(|r| SessionRow::new(r, now_ms, &observer)).collect();
    let format = if args.json { Format::Json } else { args.format };
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| Failure::Problem(e.to_string()))?)
        }
        Format::Table => print!("{}", table_text(&rows)),
        Format::Prometheus => {
            let counts = state.as_ref().map(|s| s.disconnect_counts()).unwrap_or_default();
            print!("{}", prometheus_text(&rows, &counts));
        }
    }
    Ok(())
}

/// The `status` table; user-controlled text is escaped.
fn table_text(rows: &[SessionRow]) -> String {
    let off = |v: Option<u64>| v.map_or_else(|| "off".to_string(), format_duration);
    let mut table =
        vec![["ID", "USER", "TTY", "FROM", "LOGIN", "IDLE", "LIMIT", "LEFT", "RULE"].map(String::from).to_vec()];
    for r in rows {
        let limit = match (r.idle_limit_secs, r.hard_limit_secs) {
            (i, Some(h)) => format!("{} hard {}", off(i), format_duration(h)),
            (i, None) => off(i),
        };
        table.push(vec![
            if r.adopted { format!("{}*", r.id) } else { r.id.clone() },
            escape_control(&r.user),
            if r.ttys.is_empty() { "-".into() } else { r.ttys.join(",") },
            if r.from.is_empty() { "-".into() } else { escape_control(&r.from) },
            format_utc(r.login_time),
            format_duration(r.idle_secs),
            limit,
            r.time_left_secs.map_or_else(|| "-".into(), |t| format_duration(t as u64)),
            escape_control(&r.rule),
        ]);
    }
    let widths: Vec<usize> =
        (0..table[0].len()).map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.iter().any(|r| r.adopted) {
        out.push_str("* not recorded at login: found among sshd's processes or in utmp, enforced all the same\n");
    }
    out
}

/// `s` with control characters (C0, DEL, C1) and backslashes escaped
/// (`\x1b`, `\u{9b}`, `\\`): a remote host name or user name must not drive
/// the admin's terminal or forge table rows.
pub fn escape_control(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The node_exporter textfile collector format: one gauge family per value,
/// per-session series labelled with the session id and user, and the
/// disconnects since boot by cause (`idle`, `hard`, `admin`, `other`).
pub fn prometheus_text(rows: &[SessionRow], disconnects: &std::collections::BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP sshidle_disconnects_total Sessions sshidle ended since boot, by cause.\n\
         # TYPE sshidle_disconnects_total counter\n",
    );
    let mut causes: Vec<&str> = vec!["idle", "hard", "admin"];
    causes.extend(disconnects.keys().map(String::as_str).filter(|c| !["idle", "hard", "admin"].contains(c)));
    for cause in causes {
        let n = disconnects.get(cause).copied().unwrap_or(0);
        out.push_str(&format!("sshidle_disconnects_total{{cause=\"{}\"}} {n}\n", prom_escape(cause)));
    }
    out.push_str("# HELP sshidle_sessions Recorded SSH sessions.\n# TYPE sshidle_sessions gauge\n");
    out.push_str(&format!("sshidle_sessions {}\n", rows.len()));
    type Value = fn(&SessionRow) -> Option<i64>;
    let families: [(&str, &str, Value); 6] = [
        ("login_time_seconds", "Unix time of the login.", |r| Some(r.login_time)),
        ("idle_seconds", "Seconds since the session's last activity.", |r| Some(r.idle_secs as i64)),
        ("idle_limit_seconds", "Idle limit the policy gave the session (absent: none).", |r| {
            r.idle_limit_secs.map(|v| v as i64)
        }),
        ("hard_limit_seconds", "Session length limit (absent: none).", |r| r.hard_limit_secs.map(|v| v as i64)),
        ("time_left_seconds", "Seconds until the session is disconnected (absent: never).", |r| r.time_left_secs),
        ("warned", "1 once the idle warning has been written to the session's terminals.", |r| {
            Some(i64::from(r.warned))
        }),
    ];
    for (name, help, value) in families {
        out.push_str(&format!("# HELP sshidle_session_{name} {help}\n# TYPE sshidle_session_{name} gauge\n"));
        for r in rows {
            if let Some(v) = value(r) {
                out.push_str(&format!(
                    "sshidle_session_{name}{{id=\"{}\",user=\"{}\"}} {v}\n",
                    prom_escape(&r.id),
                    prom_escape(&r.user)
                ));
            }
        }
    }
    out
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `2026-11-27 20:41:34Z`, without pulling in a date crate.
pub fn format_utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Errors of `check` and `explain` go to stderr as bare `FILE:LINE: message`.
fn to_stderr(_: sshidle::Level, message: &str) {
    eprintln!("{message}");
}

pub fn check(config: &Path) -> Outcome {
    let policy = match Policy::load_logged(config, &to_stderr, "") {
        Ok(Some(policy)) => policy,
        Ok(None) => {
            eprintln!("{}: {}", config.display(), std::io::Error::from_raw_os_error(libc::ENOENT));
            return Err(Failure::Reported);
        }
        Err(err) => {
            eprintln!("{}: {err}", config.display());
            return Err(Failure::Reported);
        }
    };
    if !policy.main_file_read() {
        println!("{}: no such file; the drop-ins alone make the policy", config.display());
    }
    if let Some(note) = tiocsti_note(legacy_tiocsti().as_deref()) {
        println!("{note}");
    }
    if !policy.errors.is_empty() {
        return Err(Failure::Reported);
    }
    let dropins = policy.files.iter().filter(|f| **f != policy.path).count();
    let from = match dropins {
        0 => String::new(),
        1 => " (with 1 drop-in)".to_string(),
        n => format!(" (with {n} drop-ins)"),
    };
    println!("{}: {} rules{from}, no errors", config.display(), policy.rules.len());
    for file in &policy.files {
        println!("  read {}", file.display());
    }
    Ok(())
}

const LEGACY_TIOCSTI: &str = "/proc/sys/dev/tty/legacy_tiocsti";

/// `dev.tty.legacy_tiocsti` as the running kernel has it (absent before 6.2).
pub fn legacy_tiocsti() -> Option<String> {
    std::fs::read_to_string(LEGACY_TIOCSTI).ok()
}

/// What `check` says of `TIOCSTI`, given `dev.tty.legacy_tiocsti` (absent on
/// kernels before 6.2): bytes a process pushes into a terminal's input are
/// read like typed ones. pam_sshidle takes it away from SSH sessions
/// (core/src/tiocsti.rs); the kernel's setting is what is left outside them.
fn tiocsti_note(sysctl: Option<&str>) -> Option<String> {
    if !sshidle::input::tiocsti_allowed(sysctl) {
        return None;
    }
    let how = match sysctl {
        Some(_) => "dev.tty.legacy_tiocsti = 1; `sysctl dev.tty.legacy_tiocsti=0` takes it from unprivileged processes",
        None => "this kernel has no dev.tty.legacy_tiocsti; Linux 6.2+ can take it from unprivileged processes",
    };
    Some(format!(
        "note: this kernel allows TIOCSTI, pushing input into a terminal ({how}); pam_sshidle takes it away \
         from SSH sessions, so such input never counts, unless its PAM line says tiocsti=allow; see \
         \"What counts as input\" in sshidle.conf(5)"
    ))
}

/// What `install` suggests where the kernel can forbid `TIOCSTI` and does
/// not: sshidle never changes that setting itself.
pub fn tiocsti_suggestion(sysctl: Option<&str>) -> Option<String> {
    (sysctl.is_some() && sshidle::input::tiocsti_allowed(sysctl)).then(|| {
        "note: pam_sshidle takes TIOCSTI (pushing input into a terminal) away from SSH sessions; this \
         kernel still allows it to every other process (dev.tty.legacy_tiocsti = 1). To forbid it to \
         unprivileged processes too, as KSPP recommends: `sysctl -w dev.tty.legacy_tiocsti=0`, and \
         `echo dev.tty.legacy_tiocsti=0 > /etc/sysctl.d/60-tiocsti.conf` to keep it after a reboot \
         (sshidle changes no kernel setting itself)"
            .to_string()
    })
}

pub fn explain(config: &Path, user: &str, from: Option<&str>) -> Outcome {
    let policy = match Policy::load_logged(config, &to_stderr, " (line skipped)") {
        Ok(Some(policy)) => policy,
        Ok(None) => {
            println!("{}: no policy file; {user} has no limit", config.display());
            return Ok(());
        }
        Err(err) => {
            eprintln!("{}: {err}", config.display());
            return Err(Failure::Reported);
        }
    };
    let Some(account) = users::lookup_user(user) else {
        return Err(Failure::Problem(format!("no such user: {user}")));
    };
    // Bounded as at a login, so that explain shows what a login would get
    // while the directory does not answer.
    let groups = users::group_names_within(&account, users::DEFAULT_NSS_TIMEOUT);
    let resolution = policy.resolve_at(&account.name, from, &mut || groups.clone().ok());
    println!("user:   {} (uid {})", account.name, account.uid);
    match &groups {
        Ok(names) => println!("groups: {}", names.join(" ")),
        Err(why) => println!("groups: not read ({why}); group rules are skipped, as at a login"),
    }
    match from {
        Some(host) => println!("from:   {host}"),
        None if resolution.from_rules.is_empty() => {}
        None => {
            println!("from:   not given (--from HOST); for a login these match, they decide first:");
            for rule in &resolution.from_rules {
                println!("          {}:{}: {} ({})", rule.file.display(), rule.line, rule.selector, rule.limits);
            }
        }
    }
    match resolution.rule {
        Some(rule) => {
            println!("rule:   {}", resolution.describe());
            println!("why:    {}", why_it_matches(&rule.selector, &account.name, groups.as_deref().ok(), from));
        }
        None => println!("rule:   none matches; no limit"),
    }
    println!("limits: {}", resolution.limits);
    if resolution.rule.is_some() {
        println!("end:    {}", end_text(resolution.limits.end));
    }
    Ok(())
}

/// What each part of the deciding rule matched, for `explain`.
fn why_it_matches(
    selector: &sshidle::policy::Selector,
    user: &str,
    groups: Option<&[String]>,
    from: Option<&str>,
) -> String {
    if selector.is_any() {
        return "* matches every login".to_string();
    }
    let mut parts = Vec::new();
    if let Some(pattern) = &selector.user {
        parts.push(format!("user {pattern} matches {user}"));
    }
    if let Some(pattern) = &selector.group {
        let group = groups
            .and_then(|g| g.iter().find(|g| sshidle::policy::wildcard_match(pattern, g)))
            .map_or_else(String::new, |g| format!(" (in {g})"));
        parts.push(format!("group {pattern} matches a group of {user}{group}"));
    }
    if let (Some(patterns), Some(host)) = (&selector.from, from) {
        parts.push(format!("from {patterns} matches {host}"));
    }
    parts.join("; ")
}

/// What `end=` ends, in the words of sshidle.conf(5).
pub fn end_text(end: sshidle::policy::End) -> &'static str {
    match end {
        sshidle::policy::End::Logout => {
            "logout: what a hangup of the connection ends (the session's processes and its commands get \
             SIGHUP; nohup, disowned and setsid'ed jobs and tmux/screen servers keep running)"
        }
        sshidle::policy::End::Session => {
            "session: every process of the user that the login started, also those that left the session \
             (SIGHUP, SIGTERM, SIGKILL after 5 s)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        escape_control, format_utc, prometheus_text, table_text, tiocsti_note, tiocsti_suggestion, SessionRow,
    };

    #[test]
    fn tiocsti_is_named_when_allowed() {
        assert_eq!(tiocsti_note(Some("0\n")), None);
        let on = tiocsti_note(Some("1\n")).unwrap();
        assert!(on.contains("dev.tty.legacy_tiocsti = 1; `sysctl dev.tty.legacy_tiocsti=0`"), "{on}");
        assert!(on.contains("pam_sshidle takes it away from SSH sessions"), "{on}");
        assert!(tiocsti_note(None).unwrap().contains("no dev.tty.legacy_tiocsti"));
        // install suggests the setting only where the kernel has it, and it is 1.
        assert_eq!(tiocsti_suggestion(Some("0\n")), None);
        assert_eq!(tiocsti_suggestion(None), None);
        assert!(tiocsti_suggestion(Some("1\n")).unwrap().contains("sysctl -w dev.tty.legacy_tiocsti=0"));
    }

    impl SessionRow {
        /// A session 30 s idle out of 900 with no hard limit, for the tests
        /// of this module and of `metrics`.
        pub(crate) fn example(id: &str, user: &str) -> SessionRow {
            SessionRow {
                id: id.into(),
                pid: id.parse().unwrap(),
                user: user.into(),
                uid: 1000,
                ttys: vec![],
                from: "10.0.0.7".into(),
                service: "sshd".into(),
                login_time: 1_795_811_294,
                idle_secs: 30,
                idle_limit_secs: Some(900),
                warn_secs: Some(60),
                hard_limit_secs: None,
                time_left_secs: Some(870),
                rule: "x:1: *".into(),
                end: "logout".into(),
                warned: false,
                adopted: false,
            }
        }
    }

    #[test]
    fn prometheus_text_format() {
        let row = SessionRow { ttys: vec!["pts/0".into()], ..SessionRow::example("4242", "al\"ice") };
        let counts = [("idle".to_string(), 3), ("other".to_string(), 1)].into_iter().collect();
        let text = prometheus_text(&[row], &counts);
        assert!(text.contains("sshidle_disconnects_total{cause=\"idle\"} 3\n"), "{text}");
        assert!(text.contains("sshidle_disconnects_total{cause=\"hard\"} 0\n"), "{text}");
        assert!(text.contains("sshidle_disconnects_total{cause=\"other\"} 1\n"), "{text}");
        assert!(text.contains("sshidle_sessions 1\n"), "{text}");
        assert!(text.contains("sshidle_session_idle_seconds{id=\"4242\",user=\"al\\\"ice\"} 30\n"), "{text}");
        assert!(text.contains("sshidle_session_time_left_seconds{id=\"4242\",user=\"al\\\"ice\"} 870\n"), "{text}");
        assert!(!text.contains("sshidle_session_hard_limit_seconds{"), "no series for an absent limit: {text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("sshidle_"), "{line}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(types, text.lines().filter(|l| l.starts_with("# HELP")).count());
        assert_eq!(types, 8);
        let empty = prometheus_text(&[], &Default::default());
        assert_eq!(
            empty.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
            [
                "sshidle_disconnects_total{cause=\"idle\"} 0",
                "sshidle_disconnects_total{cause=\"hard\"} 0",
                "sshidle_disconnects_total{cause=\"admin\"} 0",
                "sshidle_sessions 0"
            ]
        );
    }

    #[test]
    fn status_escapes_control_characters() {
        assert_eq!(escape_control("plain host-1.example"), "plain host-1.example");
        assert_eq!(escape_control("a\x1b[2Jb\n\t\x7f"), "a\\x1b[2Jb\\x0a\\x09\\x7f");
        assert_eq!(escape_control("\u{9b}31m back\\slash é"), "\\u{9b}31m back\\\\slash é");
        let row = SessionRow {
            id: "7".into(),
            pid: 7,
            user: "eve\x1b]0;owned\x07".into(),
            uid: 1000,
            ttys: vec![],
            from: "evil\nFAKE ROW\r".into(),
            service: "sshd".into(),
            login_time: 0,
            idle_secs: 0,
            idle_limit_secs: None,
            warn_secs: None,
            hard_limit_secs: None,
            time_left_secs: None,
            rule: "none".into(),
            end: "logout".into(),
            warned: false,
            adopted: false,
        };
        let text = table_text(&[row]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("eve\\x1b]0;owned\\x07") && text.contains("evil\\x0aFAKE ROW\\x0d"), "{text}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(format_utc(1_795_811_294), "2026-11-27 20:28:14Z");
    }
}
