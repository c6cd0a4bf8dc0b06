//! What `pam_sm_open_session` and `pam_sm_close_session` do, independent of
//! PAM so it can be unit-tested: the shim passes the PAM items in and a log
//! sink that writes through `pam_syslog`.

use crate::policy::{Policy, DEFAULT_POLICY_PATH};
use crate::state::{SessionKey, SessionRecord, StateDir, DEFAULT_STATE_DIR};
use crate::{users, Level, LogSink};
use std::path::PathBuf;
use std::time::Duration;

/// The longest `nss_timeout=` accepted: longer would defeat its purpose.
pub const MAX_NSS_TIMEOUT_SECS: u64 = 60;

/// The PAM services the module watches unless `services=` says otherwise.
pub const DEFAULT_SERVICES: &str = "sshd";

/// Module arguments: `conf=PATH state=DIR services=LIST nss_timeout=DUR tiocsti=allow|deny debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleArgs {
    pub conf: PathBuf,
    /// `conf=` was given: a missing file is then an error, not "no policy".
    pub conf_explicit: bool,
    pub state_dir: PathBuf,
    pub debug: bool,
    /// Longest wait for the user's groups (`nss_timeout=`); past it, group
    /// rules are skipped for this login.
    pub nss_timeout: Duration,
    /// Take `TIOCSTI` away from the session (`tiocsti=deny`, the default;
    /// `tiocsti=allow` leaves it): see [`crate::tiocsti`].
    pub deny_tiocsti: bool,
    /// The PAM services whose sessions are recorded (`services=a,b`,
    /// default `sshd`): installed through pam-auth-update the module sits in
    /// common-session, which su, cron, login... share with sshd.
    pub services: Vec<String>,
}

impl Default for ModuleArgs {
    fn default() -> Self {
        ModuleArgs {
            conf: PathBuf::from(DEFAULT_POLICY_PATH),
            conf_explicit: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            debug: false,
            nss_timeout: users::DEFAULT_NSS_TIMEOUT,
            deny_tiocsti: true,
            services: vec![DEFAULT_SERVICES.to_string()],
        }
    }
}

impl ModuleArgs {
    /// Parses the arguments of the PAM line. Unknown ones are logged and ignored.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>, log: &dyn LogSink) -> ModuleArgs {
        let mut parsed = ModuleArgs::default();
        for arg in args {
            if let Some(path) = arg.strip_prefix("conf=").filter(|p| !p.is_empty()) {
                parsed.conf = PathBuf::from(path);
                parsed.conf_explicit = true;
            } else if let Some(dir) = arg.strip_prefix("state=").filter(|p| !p.is_empty()) {
                parsed.state_dir = PathBuf::from(dir);
            } else if arg == "debug" {
                parsed.debug = true;
            } else if let Some(list) = arg.strip_prefix("services=") {
                let names: Vec<String> = list.split(',').filter(|n| !n.is_empty()).map(String::from).collect();
                if names.is_empty() {
                    log.log(
                        Level::Warning,
                        &format!("'{arg}' names no service; watching {}", parsed.services.join(",")),
                    );
                } else {
                    parsed.services = names;
                }
            } else if let Some(value) = arg.strip_prefix("nss_timeout=") {
                match crate::parse_duration(value) {
                    Ok(secs) if (1..=MAX_NSS_TIMEOUT_SECS).contains(&secs) => {
                        parsed.nss_timeout = Duration::from_secs(secs)
                    }
                    _ => log.log(
                        Level::Warning,
                        &format!(
                            "'{arg}' ignored: expected 1s to {MAX_NSS_TIMEOUT_SECS}s; waiting at most {}s",
                            parsed.nss_timeout.as_secs()
                        ),
                    ),
                }
            } else if let Some(value) = arg.strip_prefix("tiocsti=") {
                match value {
                    "deny" => parsed.deny_tiocsti = true,
                    "allow" => parsed.deny_tiocsti = false,
                    _ => log.log(
                        Level::Warning,
                        &format!(
                            "'{arg}' ignored: expected tiocsti=allow or tiocsti=deny; TIOCSTI is {}",
                            if parsed.deny_tiocsti { "denied" } else { "allowed" }
                        ),
                    ),
                }
            } else {
                log.log(Level::Warning, &format!("unknown argument '{arg}' ignored"));
            }
        }
        parsed
    }

    /// Whether sessions of the PAM service `service` are recorded.
    pub fn watches(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// The PAM items of a login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginItems {
    pub user: String,
    pub rhost: String,
    pub service: String,
}

/// Loads the policy (drop-ins, then the main file) for a login. Every
/// problem is logged; none stops the login.
pub fn load_policy(args: &ModuleArgs, log: &dyn LogSink) -> Policy {
    let no_limit = |err: &dyn std::fmt::Display| {
        log.log(Level::Error, &format!("{}: {err}; this login gets no limit", args.conf.display()));
        Policy::empty(&args.conf)
    };
    match Policy::load_logged(&args.conf, log, "") {
        Ok(Some(policy)) => {
            if args.conf_explicit && !policy.main_file_read() {
                log.log(Level::Error, &format!("{}: no such file; only its drop-ins apply", args.conf.display()));
            }
            policy
        }
        Ok(None) if !args.conf_explicit => {
            if args.debug {
                log.log(Level::Debug, &format!("{}: no policy file, no limits", args.conf.display()));
            }
            Policy::empty(&args.conf)
        }
        Ok(None) => no_limit(&std::io::Error::from_raw_os_error(libc::ENOENT)),
        Err(err) => no_limit(&err),
    }
}

/// What the login logic asks of the system: the clock, the identity of the
/// calling process, and the account lookups. Passed in (kanidm style) so
/// that the logic is unit-testable without root, real users or `/proc`.
pub trait Host {
    /// Now, in unix seconds.
    fn now(&self) -> i64;
    /// The calling process (sshd's monitor), as the record keys it.
    fn current_process(&self) -> Option<SessionKey>;
    fn lookup_user(&self, name: &str) -> Option<users::Account>;
    /// The account's group names, or why they are not known within `timeout`.
    fn group_names(&self, account: &users::Account, timeout: Duration) -> Result<Vec<String>, users::GroupsUnknown>;
    /// A login went unrecorded: the enforcer should look for it now
    /// ([`crate::state::nudge_enforcer`]).
    fn nudge_enforcer(&self, state_dir: &std::path::Path);
    /// Takes `TIOCSTI` away from the calling process and what it forks
    /// ([`crate::tiocsti::deny_tiocsti`]).
    fn deny_tiocsti(&self) -> std::io::Result<()>;
}

/// The real system: the wall clock, `/proc/self`, NSS.
pub struct System;

impl Host for System {
    fn now(&self) -> i64 {
        crate::now_unix()
    }
    fn current_process(&self) -> Option<SessionKey> {
        SessionKey::current_process()
    }
    fn lookup_user(&self, name: &str) -> Option<users::Account> {
        users::lookup_user(name)
    }
    fn group_names(&self, account: &users::Account, timeout: Duration) -> Result<Vec<String>, users::GroupsUnknown> {
        users::group_names_within(account, timeout)
    }
    fn nudge_enforcer(&self, state_dir: &std::path::Path) {
        crate::state::nudge_enforcer(state_dir)
    }
    fn deny_tiocsti(&self) -> std::io::Result<()> {
        crate::tiocsti::deny_tiocsti()
    }
}

/// Records a new session for the calling process. Returns the key recorded,
/// or `None` when nothing could be recorded (already logged).
pub fn open_session(args: &ModuleArgs, items: &LoginItems, log: &dyn LogSink) -> Option<SessionKey> {
    open_session_on(&System, args, items, log)
}

/// [`open_session`] on a given [`Host`]. A login that could not be recorded
/// (already logged) nudges the enforcer to look for it among sshd's processes.
/// `TIOCSTI` is taken away from every session, recorded or not, whatever its
/// limits: the enforcer adopts unrecorded ones, and a changed policy applies
/// to sessions already running.
pub fn open_session_on(
    host: &dyn Host,
    args: &ModuleArgs,
    items: &LoginItems,
    log: &dyn LogSink,
) -> Option<SessionKey> {
    if args.deny_tiocsti {
        deny_tiocsti(host, args, log);
    }
    let recorded = record_login(host, args, items, log);
    if recorded.is_none() {
        host.nudge_enforcer(&args.state_dir);
    }
    recorded
}

/// Installs the filter; a failure is logged and the login goes on.
fn deny_tiocsti(host: &dyn Host, args: &ModuleArgs, log: &dyn LogSink) {
    match host.deny_tiocsti() {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {
            if args.debug {
                log.log(Level::Debug, "TIOCSTI not filtered: this build knows no seccomp filter for this architecture")
            }
        }
        Err(err) => log.log(
            Level::Error,
            &format!(
                "cannot take TIOCSTI away from this session ({err}): input its processes push into \
                 their terminal would count as typed; login continues"
            ),
        ),
    }
}

fn record_login(host: &dyn Host, args: &ModuleArgs, items: &LoginItems, log: &dyn LogSink) -> Option<SessionKey> {
    let Some(account) = host.lookup_user(&items.user) else {
        log.log(Level::Error, &format!("user '{}' not found; session not recorded", items.user));
        return None;
    };
    let Some(key) = host.current_process() else {
        log.log(Level::Error, "cannot read own start time from /proc; session not recorded");
        return None;
    };
    let policy = load_policy(args, log);
    let mut unread = None;
    let resolution = policy.resolve_with(&account.name, &items.rhost, &mut || {
        host.group_names(&account, args.nss_timeout).map_err(|why| unread = Some(why)).ok()
    });
    if let (true, Some(why)) = (resolution.groups_skipped, &unread) {
        log.log(
            Level::Warning,
            &format!(
                "groups of {} not read ({why}); group rules skipped, the login gets {}",
                account.name,
                resolution.describe()
            ),
        );
    }
    let record = SessionRecord {
        key,
        uid: account.uid,
        user: account.name.clone(),
        rhost: items.rhost.clone(),
        service: items.service.clone(),
        login_time: host.now(),
        limits: resolution.limits,
        rule: resolution.describe(),
        warned_at_ms: None,
    };
    let state = match StateDir::open(&args.state_dir, true) {
        Ok(state) => state,
        Err(err) => {
            log.log(Level::Error, &format!("{err}; session of {} not recorded", items.user));
            log_unrecorded(&record, &err, log);
            return None;
        }
    };
    match state.record_login(&record) {
        Ok(moved) => {
            if let Some(moved) = moved {
                log.log(Level::Error, &format!("corrupt state file moved aside to {}", moved.display()));
            }
        }
        Err(err) => {
            log.log(Level::Error, &format!("{err}; session of {} not recorded", items.user));
            log_unrecorded(&record, &err, log);
            return None;
        }
    }
    if args.debug {
        log.log(
            Level::Debug,
            &format!(
                "session {key} of {} from {} recorded: {} (rule {})",
                record.user, record.rhost, record.limits, record.rule
            ),
        );
    }
    Some(key)
}

/// The audit line of a session the module could not record (the enforcer
/// adopts it later): `event=refusal`, cause `unsafe-state` when the state
/// directory was refused (symlink, foreign owner), else `state-error`.
fn log_unrecorded(record: &SessionRecord, err: &crate::state::StateError, log: &dyn LogSink) {
    let cause = match err {
        crate::state::StateError::Unsafe(_) => "unsafe-state",
        _ => "state-error",
    };
    let line = crate::audit::AuditLine {
        user: Some(&record.user),
        session: Some(record.key.to_string()),
        rhost: Some(&record.rhost),
        limit: record.limits.idle.or(record.limits.hard),
        rule: Some(&record.rule),
        cause: Some(cause),
        extra: vec![("reason", err.to_string())],
        ..Default::default()
    };
    log.log(Level::Warning, &line.format(crate::audit::Event::Refusal));
}

/// Removes the session's record and logs its end.
pub fn close_session(args: &ModuleArgs, items: &LoginItems, key: Option<SessionKey>, log: &dyn LogSink) {
    close_session_on(&System, args, items, key, log)
}

/// [`close_session`] on a given [`Host`].
pub fn close_session_on(
    host: &dyn Host,
    args: &ModuleArgs,
    items: &LoginItems,
    key: Option<SessionKey>,
    log: &dyn LogSink,
) {
    let Some(key) = key.or_else(|| host.current_process()) else {
        log.log(Level::Error, "cannot read own start time from /proc; session record left for the enforcer");
        return;
    };
    let state = match StateDir::open(&args.state_dir, false) {
        Ok(state) => state,
        Err(err) => {
            log.log(Level::Error, &format!("{err}; session {key} not removed"));
            return;
        }
    };
    if let Err(err) = state.record_logout(key) {
        log.log(Level::Error, &format!("{err}; session {key} not removed"));
    }
    match state.take_ending(key) {
        Some(reason) => {
            log.log(Level::Notice, &format!("session {key} of {} closed: ended by sshidle: {reason}", items.user))
        }
        None => log.log(Level::Info, &format!("session {key} of {} closed", items.user)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Collect(RefCell<Vec<(Level, String)>>);
    impl LogSink for Collect {
        fn log(&self, level: Level, message: &str) {
            self.0.borrow_mut().push((level, message.to_string()));
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sshidle-login-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The PAM line's arguments naming `conf=DIR/CONF` (explicitly) and
    /// `state=DIR/state`; `tiocsti=allow`, so that a test on the real
    /// [`System`] leaves its thread without a seccomp filter.
    fn explicit_conf_in(dir: &std::path::Path, conf: &str) -> ModuleArgs {
        ModuleArgs { conf: dir.join(conf), conf_explicit: true, ..no_filter(dir) }
    }

    /// `state=DIR/state tiocsti=allow`.
    fn no_filter(dir: &std::path::Path) -> ModuleArgs {
        ModuleArgs { state_dir: dir.join("state"), deny_tiocsti: false, ..ModuleArgs::default() }
    }

    #[test]
    fn args_parse_and_unknown_are_logged() {
        let log = Collect::default();
        let args = ModuleArgs::parse(["conf=/x.conf", "state=/tmp/s", "debug", "bogus=1", "nss_timeout=5"], &log);
        assert_eq!(
            args,
            ModuleArgs {
                conf: "/x.conf".into(),
                conf_explicit: true,
                state_dir: "/tmp/s".into(),
                debug: true,
                nss_timeout: Duration::from_secs(5),
                deny_tiocsti: true,
                services: vec!["sshd".to_string()],
            }
        );
        assert_eq!(log.0.borrow().as_slice(), &[(Level::Warning, "unknown argument 'bogus=1' ignored".to_string())]);
        let log = Collect::default();
        for bad in ["nss_timeout=0", "nss_timeout=2m", "nss_timeout=x"] {
            assert_eq!(ModuleArgs::parse([bad], &log).nss_timeout, users::DEFAULT_NSS_TIMEOUT);
        }
        assert_eq!(log.0.borrow().len(), 3);
        assert!(log.0.borrow()[0].1.contains("expected 1s to 60s; waiting at most 2s"), "{:?}", log.0.borrow());
        // TIOCSTI: denied unless the line says allow; a bad value changes nothing.
        let log = Collect::default();
        assert!(!ModuleArgs::parse(["tiocsti=allow"], &log).deny_tiocsti);
        assert!(ModuleArgs::parse(["tiocsti=allow", "tiocsti=deny"], &log).deny_tiocsti);
        assert!(!ModuleArgs::parse(["tiocsti=allow", "tiocsti=no"], &log).deny_tiocsti);
        assert_eq!(
            log.0.borrow().as_slice(),
            &[(
                Level::Warning,
                "'tiocsti=no' ignored: expected tiocsti=allow or tiocsti=deny; TIOCSTI is allowed".to_string()
            )]
        );
    }

    #[test]
    fn services_name_what_is_watched() {
        let log = Collect::default();
        let default = ModuleArgs::parse(["debug"], &log);
        assert!(default.watches("sshd"));
        for other in ["su", "sudo", "cron", "login", "sshd-other", "", "SSHD"] {
            assert!(!default.watches(other), "{other}");
        }
        let two = ModuleArgs::parse(["services=sshd,sshd-test-1"], &log);
        assert!(two.watches("sshd") && two.watches("sshd-test-1") && !two.watches("su"));
        let one = ModuleArgs::parse(["services=login"], &log);
        assert!(one.watches("login") && !one.watches("sshd"), "services= replaces the default");
        assert!(log.0.borrow().is_empty(), "{:?}", log.0.borrow());
        // Nothing named: the default stays, and the admin is told.
        for empty in ["services=", "services=,"] {
            assert!(ModuleArgs::parse([empty], &log).watches("sshd"));
        }
        assert_eq!(log.0.borrow().len(), 2);
        assert!(log.0.borrow()[0].1.contains("names no service; watching sshd"), "{:?}", log.0.borrow());
    }

    /// A scripted host: one user, a fixed clock and process, groups that
    /// answer or time out.
    struct Fake {
        groups: Result<Vec<String>, users::GroupsUnknown>,
        nudges: std::cell::Cell<u32>,
        /// Filters installed, and what installing one returns (an errno).
        filters: std::cell::Cell<u32>,
        filter_error: Option<i32>,
    }

    fn fake(groups: Result<Vec<String>, users::GroupsUnknown>) -> Fake {
        Fake { groups, nudges: Default::default(), filters: Default::default(), filter_error: None }
    }

    impl Host for Fake {
        fn now(&self) -> i64 {
            1_000_000
        }
        fn current_process(&self) -> Option<SessionKey> {
            Some(SessionKey { pid: 4242, start: 77 })
        }
        fn lookup_user(&self, name: &str) -> Option<users::Account> {
            (name == "alice").then(|| users::Account { name: name.into(), uid: 5000, gid: 5000 })
        }
        fn group_names(&self, _: &users::Account, _: Duration) -> Result<Vec<String>, users::GroupsUnknown> {
            self.groups.clone()
        }
        fn nudge_enforcer(&self, _: &std::path::Path) {
            self.nudges.set(self.nudges.get() + 1);
        }
        fn deny_tiocsti(&self) -> std::io::Result<()> {
            self.filters.set(self.filters.get() + 1);
            self.filter_error.map_or(Ok(()), |e| Err(std::io::Error::from_raw_os_error(e)))
        }
    }

    /// Every login gets the filter unless `tiocsti=allow`, also one that is
    /// not recorded; a filter that cannot be installed is logged as an
    /// error and the login is recorded all the same.
    #[test]
    fn tiocsti_is_taken_away_from_every_login_unless_allowed() {
        let dir = temp("tiocsti");
        std::fs::write(dir.join("policy"), "* idle=1h\n").unwrap();
        let args = ModuleArgs { deny_tiocsti: true, ..explicit_conf_in(&dir, "policy") };
        let alice = LoginItems { user: "alice".into(), ..Default::default() };
        let mallory = LoginItems { user: "mallory".into(), ..Default::default() };
        let log = Collect::default();
        let host = fake(Ok(vec![]));
        assert!(open_session_on(&host, &args, &alice, &log).is_some());
        assert!(open_session_on(&host, &args, &mallory, &log).is_none());
        assert_eq!(host.filters.get(), 2);
        let allowed = ModuleArgs { deny_tiocsti: false, ..args.clone() };
        assert!(open_session_on(&host, &allowed, &alice, &log).is_some());
        assert_eq!(host.filters.get(), 2, "tiocsti=allow installed a filter");
        assert!(log.0.borrow().iter().all(|(_, m)| !m.contains("TIOCSTI")), "{:?}", log.0);

        let refused = Fake { filter_error: Some(libc::EACCES), ..fake(Ok(vec![])) };
        let log = Collect::default();
        assert!(open_session_on(&refused, &args, &alice, &log).is_some(), "the login was not recorded");
        let logged = log.0.borrow();
        assert_eq!(
            logged[0],
            (
                Level::Error,
                "cannot take TIOCSTI away from this session (Permission denied (os error 13)): input its \
                 processes push into their terminal would count as typed; login continues"
                    .to_string()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_login_on_a_scripted_host() {
        let dir = temp("host");
        std::fs::write(dir.join("policy"), "group team idle=10m\n* idle=1h\n").unwrap();
        let args = explicit_conf_in(&dir, "policy");
        let items = LoginItems { user: "alice".into(), rhost: "192.0.2.1".into(), service: "sshd".into() };
        let log = Collect::default();
        let host = fake(Ok(vec!["team".into()]));
        assert_eq!(open_session_on(&host, &args, &items, &log), Some(SessionKey { pid: 4242, start: 77 }));
        let state = StateDir::open(&args.state_dir, false).unwrap();
        let r = state.load().unwrap().sessions.remove(0);
        assert_eq!((r.uid, r.login_time, r.limits.idle), (5000, 1_000_000, Some(600)));
        assert_eq!(r.rule, format!("{}:1: group team", dir.join("policy").display()));
        close_session_on(&host, &args, &items, None, &log);
        assert!(state.load().unwrap().sessions.is_empty());

        // Groups that cannot be read in time: group rules skipped, said so.
        let host = fake(Err(users::GroupsUnknown("timed out".into())));
        open_session_on(&host, &args, &items, &log).unwrap();
        assert_eq!(state.load().unwrap().sessions[0].limits.idle, Some(3600));
        assert!(log.0.borrow().iter().any(|(l, m)| *l == Level::Warning && m.contains("timed out")), "{:?}", log.0);

        // An unknown user is not recorded, and that is logged.
        let items = LoginItems { user: "mallory".into(), ..Default::default() };
        assert_eq!(open_session_on(&host, &args, &items, &log), None);
        assert!(log.0.borrow().iter().any(|(l, m)| *l == Level::Error && m.contains("'mallory' not found")));
        // Only the unrecorded login asked the enforcer to look for it.
        assert_eq!(host.nudges.get(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_then_close_records_and_removes() {
        let dir = temp("cycle");
        std::fs::write(dir.join("policy"), "user root idle=5m warn=1m\n").unwrap();
        let args = explicit_conf_in(&dir, "policy");
        let items = LoginItems { user: "root".into(), rhost: "127.0.0.1".into(), service: "sshd".into() };
        let log = Collect::default();
        let key = open_session(&args, &items, &log).expect("recorded");
        let state = StateDir::open(&args.state_dir, false).unwrap();
        let sessions = state.load().unwrap().sessions;
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].limits.idle, Some(300));
        assert_eq!(sessions[0].rule, format!("{}:1: user root", dir.join("policy").display()));
        close_session(&args, &items, Some(key), &log);
        assert!(state.load().unwrap().sessions.is_empty());
        assert!(log.0.borrow().iter().all(|(l, _)| *l > Level::Warning), "{:?}", log.0.borrow());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_explicit_conf_is_an_error_but_records_unlimited() {
        let dir = temp("noconf");
        let args = explicit_conf_in(&dir, "missing");
        let items = LoginItems { user: "root".into(), ..Default::default() };
        let log = Collect::default();
        assert!(open_session(&args, &items, &log).is_some());
        assert!(log.0.borrow().iter().any(|(l, m)| *l == Level::Error && m.contains("missing")));
        let state = StateDir::open(&args.state_dir, false).unwrap();
        assert!(state.load().unwrap().sessions[0].limits.is_unlimited());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_login_gets_the_drop_in_rule_even_without_the_main_file() {
        let dir = temp("dropin");
        std::fs::create_dir(dir.join("policy.d")).unwrap();
        std::fs::write(dir.join("policy.d/10-root.conf"), "user root idle=7m\n").unwrap();
        let args = explicit_conf_in(&dir, "policy");
        let items = LoginItems { user: "root".into(), ..Default::default() };
        let log = Collect::default();
        assert!(open_session(&args, &items, &log).is_some());
        let state = StateDir::open(&args.state_dir, false).unwrap();
        let record = &state.load().unwrap().sessions[0];
        assert_eq!(record.limits.idle, Some(420));
        assert_eq!(record.rule, format!("{}:1: user root", dir.join("policy.d/10-root.conf").display()));
        // The missing explicit main file is still an error in syslog.
        let logged = log.0.borrow();
        assert!(logged.iter().any(|(l, m)| *l == Level::Error && m.contains("only its drop-ins apply")), "{logged:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn groups_not_read_in_time_skip_group_rules_logged_and_recorded() {
        let dir = temp("nogroups");
        std::fs::write(dir.join("policy"), "group team idle=2h\n* idle=9m\n").unwrap();
        let args = ModuleArgs { conf: dir.join("policy"), ..no_filter(&dir) };
        let items = LoginItems { user: "alice".into(), ..Default::default() };
        let log = Collect::default();
        let why = "NSS did not answer within 2.0s";
        let host = fake(Err(users::GroupsUnknown(why.into())));
        assert!(open_session_on(&host, &args, &items, &log).is_some());
        let state = StateDir::open(&args.state_dir, false).unwrap();
        let record = &state.load().unwrap().sessions[0];
        assert_eq!(record.limits.idle, Some(540));
        assert_eq!(record.rule, format!("{}:2: * (groups unread)", dir.join("policy").display()));
        let logged = log.0.borrow();
        let warning = logged.iter().find(|(l, _)| *l == Level::Warning).expect("a warning");
        assert_eq!(
            warning.1,
            format!(
                "groups of alice not read ({why}); group rules skipped, the login gets {}:2: * (groups unread)",
                dir.join("policy").display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_state_directory_gives_an_audit_refusal() {
        let dir = temp("refused");
        std::fs::create_dir(dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("state")).unwrap();
        let args = ModuleArgs { conf: dir.join("none"), ..no_filter(&dir) };
        let items = LoginItems { user: "root".into(), rhost: "192.0.2.9".into(), service: "sshd".into() };
        let log = Collect::default();
        assert_eq!(open_session(&args, &items, &log), None);
        let logged = log.0.borrow();
        let audit = logged.iter().find(|(_, m)| m.starts_with("event=refusal ")).expect("an audit line");
        assert_eq!(audit.0, Level::Warning);
        let me = std::process::id();
        assert!(
            audit.1.starts_with(&format!(
                "event=refusal user=root session={me} rhost=192.0.2.9 tty=- idle=- limit=- rule=none cause=unsafe-state reason=\"refusing"
            )),
            "{audit:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_user_is_logged_not_recorded() {
        let dir = temp("nouser");
        let args = no_filter(&dir);
        let items = LoginItems { user: "no-such-user-sshidle".into(), ..Default::default() };
        let log = Collect::default();
        assert_eq!(open_session(&args, &items, &log), None);
        assert!(log.0.borrow()[0].1.contains("not found"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
