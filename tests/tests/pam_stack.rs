//! pam_sshidle.so inside a real libpam stack (pam_start_confdir): exact
//! return codes, arguments, broken policy and state, and what reaches syslog.

use sshidle::state::StateDir;
use sshidle_tests::pam::{PAM_IGNORE, PAM_SUCCESS};
use sshidle_tests::syslog::facility;
use sshidle_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LOG_AUTHPRIV: i32 = 10 << 3;

/// A confdir with one service whose only session line is our module.
struct Stack {
    conf: PamConfDir,
    service: String,
    state_dir: PathBuf,
    policy: PathBuf,
    args: String,
}

impl Stack {
    fn new(tag: &str, control: &str, args: &str) -> Stack {
        let conf = PamConfDir::new(tag);
        let state_dir = conf.dir.join("state");
        let policy = conf.dir.join("sshidle.conf");
        let service = unique_name("svc");
        // The module watches only `sshd` unless told: this stack's own name.
        let args = format!(
            "{} services={service}",
            args.replace("STATE", &state_dir.display().to_string()).replace("POLICY", &policy.display().to_string())
        );
        conf.service(
            &service,
            &format!("session {control} {} {args}\nsession required pam_permit.so\n", module_path().display()),
        );
        Stack { conf, service, state_dir, policy, args }
    }

    fn start(&self, user: &str) -> PamSession {
        PamSession::start(self.conf.path(), &self.service, user, Some("198.51.100.9")).expect("pam_start")
    }

    /// The module's own return code for `hook`, called with this stack's arguments.
    fn hook(&self, pam: &mut PamSession, hook: &str) -> i32 {
        let args: Vec<&str> = self.args.split_whitespace().collect();
        pam.call_hook(&module_path(), hook, &args)
    }

    fn sessions(&self) -> Vec<sshidle::SessionRecord> {
        StateDir::open(&self.state_dir, false).and_then(|s| s.load()).map(|s| s.sessions).unwrap_or_default()
    }
}

#[test]
fn open_records_and_close_removes() {
    if !e2e_enabled() {
        return;
    }
    let group = TestGroup::create("spg");
    let user = TestUser::create("spu", &[&group.name]);
    let stack = Stack::new("pam-cycle", "required", "conf=POLICY state=STATE");
    std::fs::write(
        &stack.policy,
        format!("user nobody idle=1m\ngroup {} idle=10m warn=1m hard=8h\n* idle=15m\n", group.name),
    )
    .unwrap();
    let mut pam = stack.start(&user.name);
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    let sessions = stack.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let record = &sessions[0];
    assert_eq!(record.user, user.name);
    assert_eq!(record.uid, user.uid);
    assert_eq!(record.rhost, "198.51.100.9");
    assert_eq!(record.service, stack.service);
    assert_eq!(record.key.pid, std::process::id() as i32);
    assert!(record.key.is_alive());
    assert!((sshidle::now_unix() - record.login_time).abs() < 5);
    assert_eq!(
        record.limits,
        sshidle::Limits { idle: Some(600), warn: Some(60), hard: Some(8 * 3600), ..Default::default() }
    );
    assert_eq!(record.rule, format!("{}:2: group {}", stack.policy.display(), group.name));
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&stack.state_dir), 0o700);
    assert_eq!(mode(&stack.state_dir.join("sessions")), 0o600);
    assert_eq!(pam.close_session(), PAM_SUCCESS);
    assert_eq!(stack.sessions(), vec![]);
    // The module's own return code, not just the stack's. (A direct call
    // cannot use pam_set_data, so close is only checked through the stack.)
    let mut pam = stack.start(&user.name);
    assert_eq!(stack.hook(&mut pam, "pam_sm_open_session"), PAM_SUCCESS);
    assert_eq!(stack.sessions().len(), 1);
}

#[test]
fn close_without_open_is_ignored() {
    let stack = Stack::new("pam-noopen", "required", "conf=POLICY state=STATE");
    let mut pam = stack.start("root");
    assert_eq!(stack.hook(&mut pam, "pam_sm_close_session"), PAM_IGNORE);
    assert_eq!(pam.close_session(), PAM_SUCCESS);
}

#[test]
fn unknown_user_is_ignored_not_refused() {
    let stack = Stack::new("pam-nouser", "required", "conf=POLICY state=STATE");
    let mut pam = stack.start("no-such-user-sshidle");
    assert_eq!(stack.hook(&mut pam, "pam_sm_open_session"), PAM_IGNORE);
    // Even on a `required` line the login goes on.
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    assert_eq!(pam.close_session(), PAM_SUCCESS);
    assert_eq!(stack.sessions(), vec![]);
}

/// Opens a session of `user` through the stack in a process of its own
/// (`pam_driver`, run through `launcher`, e.g. `setpriv ...`), as sshd's
/// monitor does, and returns that process's `Seccomp:` mode (0 none, 2 a
/// filter) while it holds the session open; `None` if open_session failed.
fn seccomp_after_open(stack: &Stack, user: &str, launcher: &[&str]) -> Option<String> {
    use std::io::BufRead;
    let driver = target_dir().join("pam_driver");
    let mut command = match launcher.split_first() {
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(&driver);
            c
        }
        None => std::process::Command::new(&driver),
    };
    let mut child = command
        .arg(stack.conf.path())
        .args([stack.service.as_str(), user, "1", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pam_driver");
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let _ = child.wait();
    let session: i32 = line.trim().parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{session}/status")).unwrap_or_default();
    signal(session, libc::SIGKILL);
    let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|m| m.trim().to_string());
    Some(mode.unwrap_or_else(|| panic!("no Seccomp field in the session's status:\n{status}")))
}

/// open_session takes TIOCSTI away from the process that opens the session
/// (sshd's monitor, from which the session's processes are forked):
/// a seccomp filter is in place after it, unless `tiocsti=allow`.
#[test]
fn the_tiocsti_filter_is_installed_unless_allowed() {
    if !e2e_enabled() {
        return;
    }
    for (args, want) in [
        ("conf=POLICY state=STATE", "2"),
        ("conf=POLICY state=STATE tiocsti=deny", "2"),
        ("conf=POLICY state=STATE tiocsti=allow", "0"),
    ] {
        let stack = Stack::new("pam-tiocsti", "required", args);
        std::fs::write(&stack.policy, "* idle=5m\n").unwrap();
        let mode = seccomp_after_open(&stack, "root", &[]).unwrap_or_else(|| panic!("{args}: open_session failed"));
        assert_eq!(mode, want, "{args}: Seccomp mode of the session's process");
        assert_eq!(stack.sessions().len(), 1, "{args}: the session was not recorded");
    }
}

/// Tests that look at syslog share /dev/log, so they run in one function.
#[test]
fn problems_are_logged_to_authpriv_and_logins_go_on() {
    if !e2e_enabled() {
        return;
    }
    let syslog = SyslogCapture::start();
    // Without CAP_SYS_ADMIN (an sshd in a container, say) the filter cannot
    // be installed: logged as an error, and the login is recorded all the
    // same. First: the sessions opened below in this thread install the
    // filter on it, and pam_driver would inherit it.
    let stack = Stack::new("pam-nocap", "required", "conf=POLICY state=STATE");
    std::fs::write(&stack.policy, "* idle=5m\n").unwrap();
    let no_sys_admin = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"];
    let mode = seccomp_after_open(&stack, "root", &no_sys_admin).expect("open_session failed without CAP_SYS_ADMIN");
    assert_eq!(mode, "0");
    let msg = syslog
        .wait_for("cannot take TIOCSTI away from this session (Permission denied", Duration::from_secs(5))
        .expect("the filter's failure logged");
    assert_eq!(facility(&msg), Some(LOG_AUTHPRIV), "{msg}");
    assert!(msg.contains("login continues"), "{msg}");
    assert_eq!(stack.sessions().len(), 1);

    // Unknown arguments: logged, ignored.
    let stack = Stack::new("pam-args", "required", "conf=POLICY state=STATE bogus frob=1 debug");
    std::fs::write(&stack.policy, "* idle=5m\n").unwrap();
    let mut pam = stack.start("root");
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    let msg =
        syslog.wait_for("unknown argument 'frob=1' ignored", Duration::from_secs(5)).expect("unknown argument logged");
    assert_eq!(facility(&msg), Some(LOG_AUTHPRIV), "{msg}");
    assert!(msg.contains("pam_sshidle"), "{msg}");
    syslog.wait_for("unknown argument 'bogus' ignored", Duration::from_secs(5)).expect("bogus logged");
    syslog.wait_for("recorded: idle=5m", Duration::from_secs(5)).expect("debug line");
    assert_eq!(pam.close_session(), PAM_SUCCESS);
    syslog.wait_for("closed", Duration::from_secs(5)).expect("close logged");

    // An explicit conf= that does not exist: error logged, login unlimited.
    let stack = Stack::new("pam-noconf", "required", "conf=/nonexistent/sshidle.conf state=STATE");
    let mut pam = stack.start("root");
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    syslog.wait_for("/nonexistent/sshidle.conf: No such file", Duration::from_secs(5)).expect("missing conf logged");
    assert!(stack.sessions()[0].limits.is_unlimited());
    assert_eq!(pam.close_session(), PAM_SUCCESS);

    // A bad policy line: FILE:LINE: message, and the good lines still apply.
    let stack = Stack::new("pam-badline", "required", "conf=POLICY state=STATE");
    std::fs::write(&stack.policy, "user root idle=5x\n* idle=7m\n").unwrap();
    let mut pam = stack.start("root");
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    let expected = format!("{}:1: idle: invalid duration '5x'", stack.policy.display());
    syslog.wait_for(&expected, Duration::from_secs(5)).expect("bad line logged");
    assert_eq!(stack.sessions()[0].limits.idle, Some(420));
    assert_eq!(pam.close_session(), PAM_SUCCESS);

    // A garbage state file: moved aside, logged, login recorded in a new one.
    let stack = Stack::new("pam-garbage", "required", "conf=POLICY state=STATE");
    std::fs::create_dir_all(&stack.state_dir).unwrap();
    std::fs::write(stack.state_dir.join("sessions"), b"\x7fELF\x00\x00garbage\nopen\tpid=1\n").unwrap();
    let mut pam = stack.start("root");
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    syslog.wait_for("corrupt state file moved aside", Duration::from_secs(5)).expect("corrupt logged");
    assert_eq!(stack.sessions().len(), 1);
    let aside: Vec<_> = std::fs::read_dir(&stack.state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sessions.corrupt."))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(pam.close_session(), PAM_SUCCESS);

    // A state directory that is a symlink, or belongs to someone else:
    // refused, logged, and the login still succeeds.
    let stack = Stack::new("pam-symlink", "required", "conf=POLICY state=STATE");
    let elsewhere = TempDir::new("pam-elsewhere");
    std::os::unix::fs::symlink(&elsewhere.path, &stack.state_dir).unwrap();
    let mut pam = stack.start("root");
    assert_eq!(stack.hook(&mut pam, "pam_sm_open_session"), PAM_IGNORE);
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    syslog.wait_for("is a symlink", Duration::from_secs(5)).expect("symlink logged");
    assert_eq!(std::fs::read_dir(&elsewhere.path).unwrap().count(), 0, "nothing written through the symlink");
    drop(pam);

    let stack = Stack::new("pam-owner", "required", "conf=POLICY state=STATE");
    std::fs::create_dir_all(&stack.state_dir).unwrap();
    std::os::unix::fs::chown(&stack.state_dir, Some(65534), Some(65534)).unwrap();
    let mut pam = stack.start("root");
    assert_eq!(stack.hook(&mut pam, "pam_sm_open_session"), PAM_IGNORE);
    assert_eq!(pam.open_session(), PAM_SUCCESS);
    syslog.wait_for("is owned by uid 65534", Duration::from_secs(5)).expect("owner logged");
    assert_eq!(std::fs::read_dir(&stack.state_dir).unwrap().count(), 0);
}

/// Installed through pam-auth-update, the module sits in common-session,
/// which su, cron, login and sudo share with sshd: it records only the
/// services `services=` names (default `sshd`) and, for the others, returns
/// PAM_IGNORE before reading anything (no policy read, no state directory).
#[test]
fn only_the_services_named_are_recorded() {
    let conf = PamConfDir::new("pam-services");
    let policy = conf.dir.join("sshidle.conf");
    std::fs::write(&policy, "* idle=15m\n").unwrap();
    // An explicit conf= that does not exist is logged (and the state directory
    // made) by a watched service: an ignored one reads neither.
    let missing = conf.dir.join("missing.conf");
    let cases = [
        ("sshd", "", &policy, true),
        ("su", "", &missing, false),
        ("cron", "", &missing, false),
        ("sshd-other", "", &missing, false),
        ("cron", "services=sshd,cron", &policy, true),
        ("sshd", "services=login", &missing, false),
    ];
    for (i, (service, extra, conf_file, recorded)) in cases.into_iter().enumerate() {
        let state_dir = conf.dir.join(format!("state-{i}"));
        let args = format!("conf={} state={} {extra}", conf_file.display(), state_dir.display());
        conf.service(
            service,
            &format!("session required {} {args}\nsession required pam_permit.so\n", module_path().display()),
        );
        let what = format!("service {service} with '{extra}'");
        let mut pam = PamSession::start(conf.path(), service, "root", Some("198.51.100.9")).expect("pam_start");
        let args: Vec<&str> = args.split_whitespace().collect();
        let load = || StateDir::open(&state_dir, false).and_then(|s| s.load()).map(|s| s.sessions).unwrap_or_default();
        if recorded {
            assert_eq!(pam.open_session(), PAM_SUCCESS, "{what}");
            let sessions = load();
            assert_eq!(sessions.len(), 1, "{what}: {sessions:?}");
            assert_eq!(sessions[0].service, service, "{what}");
            assert_eq!(pam.close_session(), PAM_SUCCESS, "{what}");
            assert_eq!(load(), vec![], "{what}: closed");
        } else {
            // The module's own answer, then through libpam on a `required`
            // line: the login goes on.
            assert_eq!(pam.call_hook(&module_path(), "pam_sm_open_session", &args), PAM_IGNORE, "{what}");
            assert_eq!(pam.open_session(), PAM_SUCCESS, "{what}");
            assert!(!state_dir.exists(), "{what}: the state directory was made");
            assert_eq!(pam.call_hook(&module_path(), "pam_sm_close_session", &args), PAM_IGNORE, "{what}");
            assert_eq!(pam.close_session(), PAM_SUCCESS, "{what}");
        }
    }
}
