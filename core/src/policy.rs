//! The policy file, `/etc/security/sshidle.conf`.
//!
//! ```text
//! # selector            settings
//! user   backup         idle=off
//! group  admins         idle=2h   warn=5m
//! group  contractors    idle=10m  warn=1m  hard=8h
//! *                     idle=15m  warn=1m
//! keepalive             interval=60 count-max=3
//! ```
//! Rules are read top to bottom and the first one that matches a login wins.
//! A bad line is reported as `FILE:LINE: message` and skipped; the rest of the
//! file still applies, so a typo never stops logins.
//!
//! Drop-ins (`PATH.d/*.conf`, read in C-locale order) stand **before** the main
//! file, as `sshd_config.d` does in Debian's `sshd_config`: a role or a team
//! ships its specific rules there, and the main file's catch-all `*` stays
//! last instead of shadowing every drop-in.

use crate::duration::{format_duration, parse_duration};
pub use crate::patterns::HostPatterns;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_POLICY_PATH: &str = "/etc/security/sshidle.conf";

/// At most this many drop-ins are read: the login path stays bounded whatever
/// is put into the directory. The rest are reported and ignored.
pub const MAX_DROPINS: usize = 128;

/// What a rule's description ends with when group rules were skipped.
pub const GROUPS_UNREAD: &str = "(groups unread)";

/// A policy file (main or drop-in) larger than this is reported and ignored.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The warning lead used when a rule sets `idle=` but no `warn=`.
pub const DEFAULT_WARN_SECS: u64 = 60;

/// Who a rule is for: `*` (every login), or any of `user NAME`, `group NAME`
/// and `from PATTERNS` on one line, all of which must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub user: Option<String>,
    pub group: Option<String>,
    pub from: Option<HostPatterns>,
}

impl Selector {
    /// The `*` selector: every login.
    pub fn any() -> Selector {
        Selector::default()
    }

    pub fn is_any(&self) -> bool {
        self.user.is_none() && self.group.is_none() && self.from.is_none()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("*");
        }
        let mut parts = Vec::new();
        if let Some(name) = &self.user {
            parts.push(format!("user {name}"));
        }
        if let Some(name) = &self.group {
            parts.push(format!("group {name}"));
        }
        if let Some(from) = &self.from {
            parts.push(format!("from {from}"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// What ending a session ends (`end=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum End {
    /// What a hangup of the connection ends: the session's process tree and
    /// its commands get SIGHUP (+ SIGCONT); what ignores it or left the tree
    /// (nohup, tmux and screen servers, setsid) keeps running.
    #[default]
    Logout,
    /// Every process of the session's user that the login started, also
    /// those that left the tree: hangup, SIGTERM, SIGKILL after a grace.
    Session,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Logout => "logout",
            End::Session => "session",
        }
    }

    pub fn parse(text: &str) -> Option<End> {
        match text {
            "logout" => Some(End::Logout),
            "session" => Some(End::Session),
            _ => None,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Limits in seconds; `None` means off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub idle: Option<u64>,
    /// How long before a disconnect the user is warned.
    pub warn: Option<u64>,
    pub hard: Option<u64>,
    /// What ending the session ends.
    pub end: End,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.idle.is_none() && self.hard.is_none()
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| v.map_or_else(|| "off".to_string(), format_duration);
        write!(f, "idle={} warn={} hard={}", show(self.idle), show(self.warn), show(self.hard))?;
        // The default is left out: the text stays what it was before `end=`.
        if self.end != End::default() {
            write!(f, " end={}", self.end)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub selector: Selector,
    pub limits: Limits,
    /// `UnusedConnectionTimeout` for the logins this rule matches (rendered by
    /// `sshidlectl keepalive` as a `Match` block).
    pub unused_connection_timeout: Option<u64>,
    /// The file and line the rule was read from.
    pub file: PathBuf,
    pub line: usize,
}

/// sshd settings that `sshidlectl keepalive` applies when given no flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepaliveSettings {
    pub interval: Option<u64>,
    pub count_max: Option<u64>,
    pub unused_connection_timeout: Option<u64>,
    /// Where the `keepalive` line was read (file, line).
    pub at: Option<(PathBuf, usize)>,
}

/// Where `sshidlectl enforce` keeps its node_exporter textfile (`metrics`
/// line); a `--textfile-dir` flag overrides it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    pub textfile_dir: Option<PathBuf>,
    /// Where the `metrics` line was read (file, line).
    pub at: Option<(PathBuf, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The main file.
    pub path: PathBuf,
    /// The files read, in the order their rules stand: drop-ins, then the
    /// main file when it exists.
    pub files: Vec<PathBuf>,
    pub rules: Vec<Rule>,
    pub keepalive: KeepaliveSettings,
    pub metrics: MetricsSettings,
    /// Lines that were skipped, in file order.
    pub errors: Vec<PolicyError>,
}

/// What the policy gives one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution<'a> {
    pub rule: Option<&'a Rule>,
    pub limits: Limits,
    /// The user's groups could not be read and a `group` rule stood before
    /// the decision: group rules were skipped (see [`Policy::resolve_with`]).
    pub groups_skipped: bool,
    /// Resolved without a remote host: the rules with `from` that stand
    /// before the decision and match the user (see [`Policy::resolve_at`]).
    pub from_rules: Vec<&'a Rule>,
}

impl Resolution<'_> {
    /// `FILE:LINE: selector`, or `none` when no rule matched; with
    /// ` (groups unread)` when group rules were skipped.
    pub fn describe(&self) -> String {
        let decided = match self.rule {
            Some(rule) => format!("{}:{}: {}", rule.file.display(), rule.line, rule.selector),
            None => "none".to_string(),
        };
        if self.groups_skipped {
            format!("{decided} {GROUPS_UNREAD}")
        } else {
            decided
        }
    }
}

/// The drop-in directory of a main policy file: `PATH.d`.
pub fn dropin_dir(main: &Path) -> PathBuf {
    let mut name = OsString::from(main.as_os_str());
    name.push(".d");
    PathBuf::from(name)
}

/// The drop-ins of `main`, in C-locale (byte) order: regular names ending in
/// `.conf`, not starting with `.` (as sshd's `Include *.conf` globs them).
/// A missing directory has none; any other problem is returned as an error to
/// report. Only one directory is read, and at most [`MAX_DROPINS`] are kept.
pub fn dropin_files(main: &Path) -> (Vec<PathBuf>, Vec<PolicyError>) {
    let dir = dropin_dir(main);
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), errors),
        Err(err) => {
            errors.push(PolicyError::whole_file(&dir, format!("cannot read the drop-in directory: {err}")));
            return (Vec::new(), errors);
        }
    };
    let mut names: Vec<OsString> = entries
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .filter(|name| {
            let bytes = name.as_bytes();
            bytes.ends_with(b".conf") && bytes.len() > ".conf".len() && !bytes.starts_with(b".")
        })
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    if names.len() > MAX_DROPINS {
        for name in &names[MAX_DROPINS..] {
            errors.push(PolicyError::whole_file(
                &dir.join(name),
                format!("ignored: more than {MAX_DROPINS} drop-ins in {}", dir.display()),
            ));
        }
        names.truncate(MAX_DROPINS);
    }
    (names.into_iter().map(|name| dir.join(name)).collect(), errors)
}

/// What tells that the policy changed on disk: the identity, time and size
/// of the main file and of each drop-in, in reading order. Two equal
/// fingerprints mean nothing was added, removed, replaced or written.
pub type Fingerprint = Vec<(PathBuf, Option<(u64, u64, i64, i64, u64)>)>;

/// The [`Fingerprint`] of the policy `main` and its drop-ins (one directory
/// read and a stat per file).
pub fn fingerprint(main: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let stamp =
        |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
    let (dropins, _) = dropin_files(main);
    let mut out: Fingerprint = dropins.into_iter().map(|p| (stamp(&p), p)).map(|(s, p)| (p, s)).collect();
    out.push((main.to_path_buf(), stamp(main)));
    out
}

/// Reads one policy file, refusing what is not a regular file or too large.
fn read_policy_file(path: &Path) -> std::io::Result<String> {
    let bytes = crate::files::read_regular_file(path, MAX_FILE_BYTES)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

impl PolicyError {
    /// An error about a whole file (no line): printed `FILE: message`.
    fn whole_file(path: &Path, message: String) -> PolicyError {
        PolicyError { path: path.to_path_buf(), line: 0, message }
    }
}

impl Policy {
    /// An empty policy: every login is unlimited.
    pub fn empty(path: &Path) -> Policy {
        Policy {
            path: path.to_path_buf(),
            files: Vec::new(),
            rules: Vec::new(),
            keepalive: KeepaliveSettings::default(),
            metrics: MetricsSettings::default(),
            errors: Vec::new(),
        }
    }

    /// How the module and every command load the policy: `Ok(None)` when
    /// there is none (neither the file nor a drop-in), `Err` when it cannot
    /// be read. Each bad line is logged to `log` as `FILE:LINE: message`
    /// followed by `note`; the rest of the policy applies.
    pub fn load_logged(path: &Path, log: &dyn crate::LogSink, note: &str) -> std::io::Result<Option<Policy>> {
        match Policy::load(path) {
            Ok(policy) => {
                for error in &policy.errors {
                    log.log(crate::Level::Error, &format!("{error}{note}"));
                }
                Ok(Some(policy))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Reads the drop-ins of `path` (`PATH.d/*.conf`), then `path` itself.
    ///
    /// `Err` when the main file cannot be read (other than missing), or when
    /// it is missing and there is no drop-in either (`NotFound`: no policy).
    /// A drop-in that cannot be read, and bad lines, are not errors of the
    /// load: they are in `errors`, and the rest still applies.
    pub fn load(path: &Path) -> std::io::Result<Policy> {
        let mut policy = Policy::empty(path);
        let main_text = match read_policy_file(path) {
            Ok(text) => Ok(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(err),
            Err(err) => return Err(err),
        };
        let (dropins, errors) = dropin_files(path);
        policy.errors.extend(errors);
        for dropin in dropins {
            match read_policy_file(&dropin) {
                Ok(text) => policy.add_file(&dropin, &text),
                Err(err) => policy.errors.push(PolicyError::whole_file(&dropin, format!("cannot read: {err}"))),
            }
        }
        match main_text {
            Ok(text) => policy.add_file(path, &text),
            Err(missing) if policy.files.is_empty() => return Err(missing),
            Err(_) => {}
        }
        Ok(policy)
    }

    /// Whether the main file was read (it may be missing when drop-ins exist).
    pub fn main_file_read(&self) -> bool {
        self.files.last() == Some(&self.path)
    }

    /// Parses one file's text as the whole policy.
    pub fn parse(path: &Path, text: &str) -> Policy {
        let mut policy = Policy::empty(path);
        policy.add_file(path, text);
        policy
    }

    /// Appends the rules of one more file (lower in first-match order than
    /// those already read).
    pub fn add_file(&mut self, path: &Path, text: &str) {
        self.files.push(path.to_path_buf());
        let policy = self;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("");
            let mut words = content.split_whitespace();
            let Some(first) = words.next() else { continue };
            let result = match first {
                "keepalive" => parse_keepalive(words, &mut policy.keepalive, path, line),
                "metrics" => parse_metrics(words, &mut policy.metrics, path, line),
                _ => parse_rule(first, &mut words, path, line).map(|rule| policy.rules.push(rule)),
            };
            if let Err(message) = result {
                policy.errors.push(PolicyError { path: path.to_path_buf(), line, message });
            }
        }
    }

    /// The first rule matching a login of `user` from `rhost` (what sshd gave
    /// PAM as the remote host). `groups` returns the names of the user's
    /// primary and supplementary groups; it is called at most once, and only
    /// when a `group` rule has to be tested.
    pub fn resolve(&self, user: &str, rhost: &str, groups: &mut dyn FnMut() -> Vec<String>) -> Resolution<'_> {
        self.resolve_with(user, rhost, &mut || Some(groups()))
    }

    /// [`Policy::resolve`] when the groups may not be readable (`None`: the
    /// directory did not answer). Then every `group` rule is skipped, as if
    /// the user were in none of its groups, and the first rule without a
    /// group that matches decides: the answer depends on nothing that was
    /// not read, and it is the one `sshidlectl explain` shows for that case.
    pub fn resolve_with(
        &self,
        user: &str,
        rhost: &str,
        groups: &mut dyn FnMut() -> Option<Vec<String>>,
    ) -> Resolution<'_> {
        self.resolve_at(user, Some(rhost), groups)
    }

    /// [`Policy::resolve_with`] where the remote host may be unknown (`None`,
    /// `sshidlectl explain` without `--from`): then every rule with `from` is
    /// passed over, and those that would have decided for a login they match
    /// are listed in [`Resolution::from_rules`].
    pub fn resolve_at(
        &self,
        user: &str,
        rhost: Option<&str>,
        groups: &mut dyn FnMut() -> Option<Vec<String>>,
    ) -> Resolution<'_> {
        let mut group_names: Option<Option<Vec<String>>> = None;
        let mut groups_skipped = false;
        let mut from_rules = Vec::new();
        for rule in &self.rules {
            let s = &rule.selector;
            // The parts that cost nothing first: the groups only when the
            // rest of the line matched.
            if s.user.as_ref().is_some_and(|pattern| !wildcard_match(pattern, user))
                || s.from.as_ref().zip(rhost).is_some_and(|(from, rhost)| !from.matches(rhost))
            {
                continue;
            }
            let matched = match &s.group {
                None => true,
                Some(pattern) => match group_names.get_or_insert_with(&mut *groups) {
                    Some(names) => names.iter().any(|g| wildcard_match(pattern, g)),
                    None => {
                        groups_skipped = true;
                        false
                    }
                },
            };
            if matched && rhost.is_none() && s.from.is_some() {
                from_rules.push(rule);
            } else if matched {
                return Resolution { rule: Some(rule), limits: rule.limits, groups_skipped, from_rules };
            }
        }
        Resolution { rule: None, limits: Limits::default(), groups_skipped, from_rules }
    }
}

fn parse_rule<'a>(
    first: &'a str,
    words: &mut impl Iterator<Item = &'a str>,
    file: &Path,
    line: usize,
) -> Result<Rule, String> {
    let mut selector = Selector::any();
    let mut next = Some(first);
    if first == "*" {
        next = words.next();
    } else {
        while let Some(kind @ ("user" | "group" | "from")) = next {
            let value = words.next().ok_or_else(|| format!("'{kind}' needs a {}", value_name(kind)))?;
            if value.contains('=') {
                return Err(format!("'{kind}' needs a {} before the settings, found '{value}'", value_name(kind)));
            }
            let twice = match kind {
                "user" => selector.user.replace(value.to_string()).is_some(),
                "group" => selector.group.replace(value.to_string()).is_some(),
                _ => selector.from.replace(HostPatterns::parse(value)?).is_some(),
            };
            if twice {
                return Err(format!("'{kind}' is given twice on one line"));
            }
            next = words.next();
        }
        if selector.is_any() {
            return Err(format!(
                "unknown selector '{first}' (expected user NAME, group NAME, from PATTERNS, *, keepalive or metrics)"
            ));
        }
    }
    if let Some(word @ ("*" | "user" | "group" | "from")) = next {
        return Err(format!("'{word}' must come before the settings"));
    }
    let mut idle: Option<Option<u64>> = None;
    let mut warn: Option<Option<u64>> = None;
    let mut hard: Option<Option<u64>> = None;
    let mut unused: Option<Option<u64>> = None;
    let mut end: Option<End> = None;
    for word in next.into_iter().chain(words) {
        let (key, value) = split_setting(word)?;
        let slot = match key {
            "idle" => &mut idle,
            "warn" => &mut warn,
            "hard" => &mut hard,
            "unused" => &mut unused,
            "end" => {
                let parsed =
                    End::parse(value).ok_or_else(|| format!("end={value}: expected end=logout or end=session"))?;
                if end.replace(parsed).is_some() {
                    return Err(format!("'{key}' is set twice"));
                }
                continue;
            }
            _ => return Err(format!("unknown setting '{key}' (expected idle=, warn=, hard=, end= or unused=)")),
        };
        if slot.is_some() {
            return Err(format!("'{key}' is set twice"));
        }
        *slot = Some(parse_limit(key, value)?);
    }
    if idle.is_none() && warn.is_none() && hard.is_none() && unused.is_none() && end.is_none() {
        return Err(format!("'{selector}' has no settings (expected idle=, warn=, hard=, end=)"));
    }
    let idle = idle.flatten();
    let hard = hard.flatten();
    let shortest = match (idle, hard) {
        (Some(i), Some(h)) => Some(i.min(h)),
        (i, h) => i.or(h),
    };
    let warn = match warn {
        Some(explicit) => explicit,
        None => shortest.map(|s| DEFAULT_WARN_SECS.min(s / 2)).filter(|w| *w > 0),
    };
    if let (Some(w), Some(s)) = (warn, shortest) {
        if w >= s {
            return Err(format!(
                "warn={} must be shorter than the limit it warns of ({})",
                format_duration(w),
                format_duration(s)
            ));
        }
    }
    if let (Some(_), None) = (warn, shortest) {
        return Err("warn= needs idle= or hard=".to_string());
    }
    Ok(Rule {
        selector,
        limits: Limits { idle, warn, hard, end: end.unwrap_or_default() },
        unused_connection_timeout: unused.flatten(),
        file: file.to_path_buf(),
        line,
    })
}

fn parse_keepalive<'a>(
    words: impl Iterator<Item = &'a str>,
    settings: &mut KeepaliveSettings,
    file: &Path,
    line: usize,
) -> Result<(), String> {
    match &settings.at {
        Some((first_file, first_line)) if first_file == file => {
            return Err(format!("keepalive is already set on line {first_line}"))
        }
        Some((first_file, first_line)) => {
            return Err(format!("keepalive is already set at {}:{first_line}", first_file.display()))
        }
        None => {}
    }
    let mut parsed = KeepaliveSettings { at: Some((file.to_path_buf(), line)), ..KeepaliveSettings::default() };
    let mut any = false;
    for word in words {
        any = true;
        let (key, value) = split_setting(word)?;
        match key {
            "interval" => {
                let secs = parse_duration(value).map_err(|e| format!("interval: {e}"))?;
                if secs == 0 {
                    return Err("interval=0 would turn keepalives off; remove the line instead".to_string());
                }
                set_once(&mut parsed.interval, secs, key)?;
            }
            "count-max" => {
                let n: u64 = value.parse().map_err(|_| format!("count-max: '{value}' is not a whole number"))?;
                if n == 0 || n > 1000 {
                    return Err(format!("count-max={n} is out of range (1 to 1000)"));
                }
                set_once(&mut parsed.count_max, n, key)?;
            }
            "unused" => {
                let secs = parse_duration(value).map_err(|e| format!("unused: {e}"))?;
                set_once(&mut parsed.unused_connection_timeout, secs, key)?;
            }
            _ => return Err(format!("unknown keepalive setting '{key}' (expected interval=, count-max=, unused=)")),
        }
    }
    if !any {
        return Err("keepalive has no settings (expected interval=, count-max=, unused=)".to_string());
    }
    *settings = parsed;
    Ok(())
}

fn parse_metrics<'a>(
    words: impl Iterator<Item = &'a str>,
    settings: &mut MetricsSettings,
    file: &Path,
    line: usize,
) -> Result<(), String> {
    if let Some((first_file, first_line)) = &settings.at {
        return Err(format!("metrics is already set at {}:{first_line}", first_file.display()));
    }
    let mut parsed = MetricsSettings { at: Some((file.to_path_buf(), line)), ..MetricsSettings::default() };
    for word in words {
        let (key, value) = split_setting(word)?;
        match key {
            "textfile-dir" if parsed.textfile_dir.is_some() => return Err(format!("'{key}' is set twice")),
            "textfile-dir" if !value.starts_with('/') => {
                return Err(format!("textfile-dir={value}: not an absolute path"))
            }
            "textfile-dir" => parsed.textfile_dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown metrics setting '{key}' (expected textfile-dir=)")),
        }
    }
    if parsed.textfile_dir.is_none() {
        return Err("metrics has no settings (expected textfile-dir=DIR)".to_string());
    }
    *settings = parsed;
    Ok(())
}

fn value_name(selector: &str) -> &'static str {
    if selector == "from" {
        "pattern list"
    } else {
        "name"
    }
}

fn set_once(slot: &mut Option<u64>, value: u64, key: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("'{key}' is set twice"));
    }
    Ok(())
}

fn split_setting(word: &str) -> Result<(&str, &str), String> {
    match word.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok((key, value)),
        Some((key, _)) if !key.is_empty() => Err(format!("'{key}=' needs a value")),
        _ => Err(format!("expected KEY=VALUE, found '{word}'")),
    }
}

/// `off` (or `0` for warn) disables; anything else is a duration.
fn parse_limit(key: &str, value: &str) -> Result<Option<u64>, String> {
    if value.eq_ignore_ascii_case("off") || value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let secs = parse_duration(value).map_err(|e| format!("{key}: {e}"))?;
    if secs == 0 {
        if key == "warn" {
            return Ok(None);
        }
        return Err(format!("{key}=0 would disconnect at once; use {key}=off for no limit"));
    }
    Ok(Some(secs))
}

/// Shell-style wildcard match with `*` and `?` (no classes), like pam_limits.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    // Most names in a policy are literal: compared without allocating.
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        // The pattern's `*` first: a `*` in the name is only a character.
        if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Policy {
        Policy::parse(Path::new("/etc/security/sshidle.conf"), text)
    }

    fn resolve_for<'a>(policy: &'a Policy, user: &str, groups: &[&str]) -> Resolution<'a> {
        let groups: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        policy.resolve(user, "192.0.2.1", &mut || groups.clone())
    }

    const SPEC_EXAMPLE: &str = "\
# selector            settings
user   backup         idle=off
group  admins         idle=2h   warn=5m
group  contractors    idle=10m  warn=1m  hard=8h
*                     idle=15m  warn=1m
";

    #[test]
    fn spec_example_parses_without_errors() {
        let policy = parse(SPEC_EXAMPLE);
        assert_eq!(policy.errors, vec![]);
        assert_eq!(policy.rules.len(), 4);
        assert_eq!(
            policy.rules[2].limits,
            Limits { idle: Some(600), warn: Some(60), hard: Some(8 * 3600), ..Default::default() }
        );
        assert_eq!(policy.rules[2].line, 4);
    }

    #[test]
    fn first_match_wins() {
        let policy = parse(SPEC_EXAMPLE);
        // backup is also an admin, but its user rule comes first.
        let r = resolve_for(&policy, "backup", &["backup", "admins"]);
        assert_eq!(r.rule.unwrap().line, 2);
        assert_eq!(r.limits, Limits::default());
        let r = resolve_for(&policy, "alice", &["alice", "admins", "contractors"]);
        assert_eq!(r.rule.unwrap().selector, Selector { group: Some("admins".into()), ..Selector::any() });
        assert_eq!(r.limits.idle, Some(7200));
        let r = resolve_for(&policy, "carol", &["carol"]);
        assert_eq!(r.rule.unwrap().selector, Selector::any());
        assert_eq!(r.describe(), "/etc/security/sshidle.conf:5: *");
    }

    #[test]
    fn supplementary_groups_match() {
        let policy = parse("group contractors idle=10m\n");
        // The primary group is listed first; the supplementary one matches.
        let r = resolve_for(&policy, "dave", &["dave", "users", "contractors"]);
        assert_eq!(r.limits.idle, Some(600));
    }

    #[test]
    fn no_match_means_no_limit() {
        let policy = parse("user alice idle=5m\n");
        let r = resolve_for(&policy, "bob", &["bob"]);
        assert!(r.rule.is_none());
        assert!(r.limits.is_unlimited());
        assert_eq!(r.describe(), "none");
    }

    #[test]
    fn groups_are_looked_up_lazily_and_once() {
        let policy = parse("user alice idle=5m\ngroup a idle=1m\ngroup b idle=2m\n*  idle=3m\n");
        let mut calls = 0;
        policy.resolve("alice", "192.0.2.1", &mut || {
            calls += 1;
            vec![]
        });
        assert_eq!(calls, 0);
        let r = policy.resolve("bob", "192.0.2.1", &mut || {
            calls += 1;
            vec!["c".into()]
        });
        assert_eq!(calls, 1);
        assert_eq!(r.limits.idle, Some(180));
    }

    #[test]
    fn unreadable_groups_skip_group_rules_and_say_so() {
        let policy = parse("group contractors idle=10m hard=8h\nuser bob idle=1h\ngroup admins idle=2h\n* idle=15m\n");
        let unread = |user| policy.resolve_with(user, "192.0.2.1", &mut || None);
        let r = unread("bob");
        assert_eq!((r.rule.unwrap().line, r.groups_skipped), (2, true));
        assert_eq!(r.describe(), "/etc/security/sshidle.conf:2: user bob (groups unread)");
        let r = unread("carol");
        assert_eq!((r.rule.unwrap().line, r.limits.idle), (4, Some(900)));
        // No group rule before the decision: nothing was skipped.
        let policy = parse("user bob idle=1h\ngroup admins idle=2h\n");
        let r = policy.resolve_with("bob", "192.0.2.1", &mut || None);
        assert!(!r.groups_skipped);
        assert_eq!(r.describe(), "/etc/security/sshidle.conf:1: user bob");
        let r = policy.resolve_with("eve", "192.0.2.1", &mut || None);
        assert!(r.rule.is_none() && r.groups_skipped && r.limits.is_unlimited());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("dev-*", "dev-alice"));
        assert!(!wildcard_match("dev-*", "ops-alice"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*x*y", "axxbxy"));
        assert!(!wildcard_match("alice", "alice2"));
        // A literal `*` in the name is matched by the pattern's `*` too.
        assert!(wildcard_match("*", "*x"));
        assert!(wildcard_match("a*", "a*b"));
        assert!(wildcard_match("*b", "**b"));
        assert!(!wildcard_match("a*c", "a*b"));
    }

    /// The obvious recursive matcher, to compare the iterative one with.
    fn reference_match(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| reference_match(rest, &t[i..])),
            Some((c, rest)) => {
                t.split_first().is_some_and(|(tc, tr)| (*c == '?' || c == tc) && reference_match(rest, tr))
            }
        }
    }

    #[test]
    fn wildcard_match_agrees_with_the_reference_on_random_inputs() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = ['a', 'b', '*', '?'];
        for _ in 0..20_000 {
            let p: Vec<char> = (0..next(6)).map(|_| alphabet[next(4)]).collect();
            let t: Vec<char> = (0..next(7)).map(|_| alphabet[next(4)]).collect();
            let (ps, ts): (String, String) = (p.iter().collect(), t.iter().collect());
            assert_eq!(wildcard_match(&ps, &ts), reference_match(&p, &t), "pattern {ps:?} name {ts:?}");
        }
        let policy = parse("user svc-* idle=off\ngroup team-? idle=1h\n* idle=5m\n");
        assert!(resolve_for(&policy, "svc-backup", &[]).limits.is_unlimited());
        assert_eq!(resolve_for(&policy, "eve", &["team-a"]).limits.idle, Some(3600));
        assert_eq!(resolve_for(&policy, "eve", &["team-ab"]).limits.idle, Some(300));
    }

    #[test]
    fn default_warn_is_a_minute_or_half_the_limit() {
        let policy = parse("user a idle=10m\nuser b idle=40s\nuser c idle=1h warn=off\nuser d hard=8h\n");
        assert_eq!(policy.errors, vec![]);
        assert_eq!(policy.rules[0].limits.warn, Some(60));
        assert_eq!(policy.rules[1].limits.warn, Some(20));
        assert_eq!(policy.rules[2].limits.warn, None);
        assert_eq!(
            policy.rules[3].limits,
            Limits { idle: None, warn: Some(60), hard: Some(8 * 3600), ..Default::default() }
        );
    }

    #[test]
    fn comments_and_blank_lines() {
        let policy = parse("\n   \n# all comment\nuser a idle=5m # trailing\n\t*\tidle=1m\n");
        assert_eq!(policy.errors, vec![]);
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.rules[0].line, 4);
        assert_eq!(policy.rules[1].line, 5);
    }

    #[test]
    fn each_error_names_file_line_and_problem() {
        let text = "\
user
group admins
frobnicate x idle=1m
user a idle=5x
user a idle=5m idle=6m
user a color=red
user a idle
user a idle=0
user a idle=1m warn=2m
user a warn=1m
user a idle=
keepalive
keepalive interval=0
keepalive count-max=-1
keepalive speed=1
user good idle=1m
";
        let policy = parse(text);
        let got: Vec<String> = policy.errors.iter().map(|e| e.to_string()).collect();
        let f = "/etc/security/sshidle.conf";
        let expected = vec![
            format!("{f}:1: 'user' needs a name"),
            format!("{f}:2: 'group admins' has no settings (expected idle=, warn=, hard=, end=)"),
            format!(
                "{f}:3: unknown selector 'frobnicate' (expected user NAME, group NAME, from PATTERNS, *, keepalive or metrics)"
            ),
            format!("{f}:4: idle: invalid duration '5x': units are s, m, h, d, w"),
            format!("{f}:5: 'idle' is set twice"),
            format!("{f}:6: unknown setting 'color' (expected idle=, warn=, hard=, end= or unused=)"),
            format!("{f}:7: expected KEY=VALUE, found 'idle'"),
            format!("{f}:8: idle=0 would disconnect at once; use idle=off for no limit"),
            format!("{f}:9: warn=2m must be shorter than the limit it warns of (1m)"),
            format!("{f}:10: warn= needs idle= or hard="),
            format!("{f}:11: 'idle=' needs a value"),
            format!("{f}:12: keepalive has no settings (expected interval=, count-max=, unused=)"),
            format!("{f}:13: interval=0 would turn keepalives off; remove the line instead"),
            format!("{f}:14: count-max: '-1' is not a whole number"),
            format!("{f}:15: unknown keepalive setting 'speed' (expected interval=, count-max=, unused=)"),
        ];
        assert_eq!(got, expected);
        // The good line still applies.
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].line, 16);
    }

    #[test]
    fn end_is_logout_unless_a_rule_says_session() {
        let policy =
            parse("user a idle=5m\nuser b idle=5m end=session\nuser c end=logout idle=1m\nuser d end=session\n");
        assert_eq!(policy.errors, vec![]);
        let ends: Vec<End> = policy.rules.iter().map(|r| r.limits.end).collect();
        assert_eq!(ends, vec![End::Logout, End::Session, End::Logout, End::Session]);
        assert_eq!(policy.rules[0].limits.to_string(), "idle=5m warn=1m hard=off");
        assert_eq!(policy.rules[1].limits.to_string(), "idle=5m warn=1m hard=off end=session");
        // No rule: no limit, and the default ending.
        assert_eq!(resolve_for(&policy, "zed", &[]).limits.end, End::Logout);
        let bad = parse("user a idle=5m end=kill\nuser b idle=5m end=session end=logout\n");
        let got: Vec<String> = bad.errors.iter().map(|e| e.to_string()).collect();
        let f = "/etc/security/sshidle.conf";
        assert_eq!(
            got,
            vec![format!("{f}:1: end=kill: expected end=logout or end=session"), format!("{f}:2: 'end' is set twice")]
        );
    }

    #[test]
    fn from_combines_with_user_and_group_and_all_must_match() {
        let policy = parse(
            "group ops from 10.0.0.0/8 user a* idle=1h\n\
             from 127.0.0.2/32 idle=2m\n\
             from ::1 idle=3m\n\
             user carol from *,!192.0.2.0/24 idle=4m\n\
             * idle=5m\n",
        );
        assert_eq!(policy.errors, vec![]);
        let at = |user: &str, rhost: &str, groups: &[&str]| {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            policy.resolve(user, rhost, &mut || groups.clone()).rule.map(|r| r.line)
        };
        assert_eq!(at("alice", "10.1.1.1", &["ops"]), Some(1));
        assert_eq!(at("alice", "10.1.1.1", &["dev"]), Some(5), "group must match too");
        assert_eq!(at("bob", "10.1.1.1", &["ops"]), Some(5), "user must match too");
        assert_eq!(at("alice", "11.1.1.1", &["ops"]), Some(5), "from must match too");
        assert_eq!(at("x", "127.0.0.2", &[]), Some(2));
        assert_eq!(at("x", "127.0.0.1", &[]), Some(5));
        assert_eq!(at("x", "::1", &[]), Some(3));
        assert_eq!(at("carol", "198.51.100.1", &[]), Some(4));
        assert_eq!(at("carol", "192.0.2.9", &[]), Some(5), "negated");
        assert_eq!(
            policy.rules[0].selector.to_string(),
            "user a* group ops from 10.0.0.0/8",
            "shown in one order whatever the line's"
        );
        // The groups are read only when the rest of a group line matched.
        let mut asked = 0;
        policy.resolve("bob", "192.0.2.1", &mut || {
            asked += 1;
            vec![]
        });
        assert_eq!(asked, 0);
    }

    #[test]
    fn bad_from_lines_name_the_problem() {
        let bad = parse(
            "from 10.0.0.0/33 idle=1m\nfrom idle=1m\nfrom\nuser a from ::1 from ::2 idle=1m\n\
             user a idle=1m from ::1\nfrom 10.0.0.1/8 idle=1m\n* from ::1 idle=1m\n",
        );
        let got: Vec<String> = bad.errors.iter().map(|e| e.to_string()).collect();
        let f = "/etc/security/sshidle.conf";
        assert_eq!(
            got,
            vec![
                format!("{f}:1: from: '10.0.0.0/33' is not a valid CIDR network (ADDRESS/BITS)"),
                format!("{f}:2: 'from' needs a pattern list before the settings, found 'idle=1m'"),
                format!("{f}:3: 'from' needs a pattern list"),
                format!("{f}:4: 'from' is given twice on one line"),
                format!("{f}:5: expected KEY=VALUE, found 'from'"),
                format!("{f}:6: from: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
                format!("{f}:7: 'from' must come before the settings"),
            ]
        );
        assert!(bad.rules.is_empty());
    }

    #[test]
    fn bad_line_does_not_shadow_later_rules() {
        let policy = parse("user alice idle=bogus\n* idle=5m\n");
        assert_eq!(policy.errors.len(), 1);
        assert_eq!(resolve_for(&policy, "alice", &[]).limits.idle, Some(300));
    }

    #[test]
    fn keepalive_settings() {
        let policy = parse("keepalive interval=30 count-max=4 unused=1h\ngroup ops idle=1h unused=10m\n");
        assert_eq!(policy.errors, vec![]);
        assert_eq!(
            policy.keepalive,
            KeepaliveSettings {
                interval: Some(30),
                count_max: Some(4),
                unused_connection_timeout: Some(3600),
                at: Some(("/etc/security/sshidle.conf".into(), 1))
            }
        );
        assert_eq!(policy.rules[0].unused_connection_timeout, Some(600));
        let twice = parse("keepalive interval=30\nkeepalive count-max=2\n");
        assert_eq!(twice.errors[0].to_string(), "/etc/security/sshidle.conf:2: keepalive is already set on line 1");
        assert_eq!(twice.keepalive.interval, Some(30));
    }

    #[test]
    fn metrics_settings() {
        let policy = parse("metrics textfile-dir=/var/lib/prometheus/node-exporter\n");
        assert_eq!(policy.errors, vec![]);
        assert_eq!(policy.metrics.textfile_dir.as_deref(), Some(Path::new("/var/lib/prometheus/node-exporter")));
        let f = "/etc/security/sshidle.conf";
        let bad = parse(
            "metrics\nmetrics textfile-dir=rel\nmetrics port=9\nmetrics textfile-dir=/a\nmetrics textfile-dir=/b\n",
        );
        let got: Vec<String> = bad.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            vec![
                format!("{f}:1: metrics has no settings (expected textfile-dir=DIR)"),
                format!("{f}:2: textfile-dir=rel: not an absolute path"),
                format!("{f}:3: unknown metrics setting 'port' (expected textfile-dir=)"),
                format!("{f}:5: metrics is already set at {f}:4"),
            ]
        );
        assert_eq!(bad.metrics.textfile_dir.as_deref(), Some(Path::new("/a")));
    }

    #[test]
    fn limits_display() {
        let l = Limits { idle: Some(900), warn: Some(60), hard: None, ..Default::default() };
        assert_eq!(l.to_string(), "idle=15m warn=1m hard=off");
    }
}

#[cfg(test)]
mod dropins {
    use super::*;
    use std::fs;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("sshidle-policy-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("sshidle.conf.d")).unwrap();
            Dir(dir)
        }
        fn main(&self) -> PathBuf {
            self.0.join("sshidle.conf")
        }
        fn dropin(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join("sshidle.conf.d").join(name);
            fs::write(&path, text).unwrap();
            path
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn who(policy: &Policy, user: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        policy.resolve(user, "192.0.2.1", &mut || groups.clone()).describe()
    }

    #[test]
    fn dropin_dir_is_path_dot_d() {
        assert_eq!(dropin_dir(Path::new("/etc/security/sshidle.conf")), Path::new("/etc/security/sshidle.conf.d"));
        assert_eq!(dropin_dir(Path::new("p")), Path::new("p.d"));
    }

    #[test]
    fn dropins_stand_before_the_main_file_in_c_locale_order() {
        let dir = Dir::new("order");
        fs::write(dir.main(), "user alice idle=1h\n* idle=30m\n").unwrap();
        let b = dir.dropin("20-b.conf", "group ops idle=2h\n");
        let a = dir.dropin("10-a.conf", "\nuser alice idle=5m\n");
        // C locale: upper case before lower case ("Z" < "a"), digits first.
        let upper = dir.dropin("Z.conf", "user zed idle=1m\n");
        let lower = dir.dropin("a.conf", "user zed idle=2m\nuser amy idle=3m\n");
        // Not drop-ins: other suffixes, hidden files, editor backups, a bare ".conf".
        for ignored in ["notes.txt", ".hidden.conf", "10-a.conf~", "10-a.conf.dpkg-old", ".conf"] {
            dir.dropin(ignored, "* idle=1s\n");
        }
        let policy = Policy::load(&dir.main()).unwrap();
        assert_eq!(policy.errors, vec![]);
        assert_eq!(policy.files, vec![a.clone(), b.clone(), upper.clone(), lower.clone(), dir.main()]);
        assert!(policy.main_file_read());
        let main = dir.main().display().to_string();
        // A drop-in's rule beats the main file's rule for the same user...
        assert_eq!(who(&policy, "alice", &[]), format!("{}:2: user alice", a.display()));
        assert_eq!(who(&policy, "bob", &["ops"]), format!("{}:1: group ops", b.display()));
        assert_eq!(who(&policy, "zed", &[]), format!("{}:1: user zed", upper.display()));
        assert_eq!(who(&policy, "amy", &[]), format!("{}:2: user amy", lower.display()));
        // ...and the main file's catch-all stays last.
        assert_eq!(who(&policy, "carol", &[]), format!("{main}:2: *"));
    }

    #[test]
    fn errors_name_the_drop_in_and_its_line_and_the_rest_applies() {
        let dir = Dir::new("errors");
        fs::write(dir.main(), "* idle=30m\nuser x idle=5q\n").unwrap();
        let bad = dir.dropin("50-team.conf", "# team\ngroup\nuser eve idle=5m\n");
        fs::create_dir(dir.0.join("sshidle.conf.d/60-dir.conf")).unwrap();
        let policy = Policy::load(&dir.main()).unwrap();
        let got: Vec<String> = policy.errors.iter().map(|e| e.to_string()).collect();
        let d = dir.0.join("sshidle.conf.d");
        assert_eq!(
            got,
            vec![
                format!("{}:2: 'group' needs a name", bad.display()),
                format!("{}/60-dir.conf: cannot read: not a regular file", d.display()),
                format!("{}:2: idle: invalid duration '5q': units are s, m, h, d, w", dir.main().display()),
            ]
        );
        assert_eq!(who(&policy, "eve", &[]), format!("{}:3: user eve", bad.display()));
    }

    #[test]
    fn keepalive_first_one_wins_a_second_is_reported_with_its_place() {
        let dir = Dir::new("keepalive");
        fs::write(dir.main(), "keepalive interval=60\n").unwrap();
        let first = dir.dropin("10-net.conf", "keepalive interval=15 count-max=2\n");
        let policy = Policy::load(&dir.main()).unwrap();
        assert_eq!(policy.keepalive.interval, Some(15));
        assert_eq!(policy.keepalive.at, Some((first.clone(), 1)));
        assert_eq!(
            policy.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            vec![format!("{}:1: keepalive is already set at {}:1", dir.main().display(), first.display())]
        );
    }

    #[test]
    fn missing_main_file() {
        let dir = Dir::new("nomain");
        assert_eq!(Policy::load(&dir.main()).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        let only = dir.dropin("x.conf", "* idle=9m\n");
        let policy = Policy::load(&dir.main()).unwrap();
        assert!(!policy.main_file_read());
        assert_eq!(policy.files, vec![only]);
        assert_eq!(policy.resolve("anyone", "192.0.2.1", &mut Vec::new).limits.idle, Some(540));
    }

    #[test]
    fn a_drop_in_path_that_is_not_a_directory_is_reported() {
        let dir = Dir::new("notdir");
        fs::remove_dir(dir.0.join("sshidle.conf.d")).unwrap();
        fs::write(dir.0.join("sshidle.conf.d"), "* idle=1s\n").unwrap();
        fs::write(dir.main(), "* idle=30m\n").unwrap();
        let policy = Policy::load(&dir.main()).unwrap();
        assert_eq!(policy.errors.len(), 1, "{:?}", policy.errors);
        assert!(policy.errors[0].to_string().starts_with(&format!("{}.d: cannot read", dir.main().display())));
        assert_eq!(policy.rules.len(), 1);
    }

    #[test]
    fn the_fingerprint_sees_drop_ins_added_changed_and_removed() {
        let dir = Dir::new("fingerprint");
        fs::write(dir.main(), "* idle=30m\n").unwrap();
        let first = fingerprint(&dir.main());
        assert_eq!(fingerprint(&dir.main()), first);
        let added = dir.dropin("10-a.conf", "user a idle=1m\n");
        let with_dropin = fingerprint(&dir.main());
        assert_ne!(with_dropin, first);
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&added, "user a idle=2m\n").unwrap();
        assert_ne!(fingerprint(&dir.main()), with_dropin);
        dir.dropin("notes.txt", "ignored");
        let ignored = fingerprint(&dir.main());
        fs::remove_file(dir.0.join("sshidle.conf.d/notes.txt")).unwrap();
        assert_eq!(fingerprint(&dir.main()), ignored);
        fs::remove_file(&added).unwrap();
        assert_eq!(fingerprint(&dir.main()), first);
    }

    #[test]
    fn at_most_max_dropins_are_read() {
        let dir = Dir::new("many");
        fs::write(dir.main(), "* idle=30m\n").unwrap();
        for i in 0..MAX_DROPINS + 3 {
            dir.dropin(&format!("{i:04}.conf"), &format!("user u{i} idle=1m\n"));
        }
        let policy = Policy::load(&dir.main()).unwrap();
        assert_eq!(policy.files.len(), MAX_DROPINS + 1);
        assert_eq!(policy.errors.len(), 3);
        assert!(policy.errors[0].message.contains("more than"), "{:?}", policy.errors[0]);
        assert_eq!(policy.errors[0].path, dir.0.join(format!("sshidle.conf.d/{MAX_DROPINS:04}.conf")));
    }

    #[test]
    fn a_file_too_large_is_reported_not_read() {
        let dir = Dir::new("large");
        fs::write(dir.main(), "* idle=30m\n").unwrap();
        let big = dir.dropin("big.conf", &"# padding\n".repeat((MAX_FILE_BYTES / 10 + 1) as usize));
        let policy = Policy::load(&dir.main()).unwrap();
        assert_eq!(policy.errors.len(), 1);
        assert_eq!(policy.errors[0].path, big);
        assert!(policy.errors[0].message.contains("larger than"), "{:?}", policy.errors[0]);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    #[test]
    fn random_policies_never_panic_and_report_lines_in_range() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let pieces = [
            "user",
            "group",
            "*",
            "keepalive",
            "idle=",
            "warn=",
            "hard=",
            "unused=",
            "off",
            "1h30m",
            "=",
            " ",
            "\t",
            "\n",
            "#",
            "x?",
            "é",
            "9999999999999999999w",
            "interval=",
            "count-max=",
            "0",
            "from",
            "end=",
            "session",
            "logout",
            "10.0.0.0/8",
            "::1/129",
            "!",
            ",",
            "/",
        ];
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..(seed % 30) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let policy = Policy::parse(Path::new("p"), &text);
            let lines = text.lines().count();
            assert!(policy.errors.iter().all(|e| e.line >= 1 && e.line <= lines), "{text:?}");
            let _ = policy.resolve("user", "10.1.2.3", &mut || vec!["x1".into()]);
        }
    }
}
