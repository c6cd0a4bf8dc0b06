//! Issue 5, on this machine as a new admin would: `sshidlectl install`, a real
//! ssh login to the system's own PAM service `sshd` (a private sshd started as
//! `/usr/sbin/sshd`, so argv[0] is `sshd`, reading the real `/etc/pam.d/sshd`)
//! recorded in `/run/sshidle` and disconnected by the installed enforcer
//! service; install twice is idempotent; `uninstall` restores `/etc/pam.d/sshd`
//! byte for byte and removes every file it added; the `.deb` install / remove /
//! purge round trip; the man pages render without warnings.
//!
//! These are the only tests that change `/etc/pam.d/sshd` and the system's
//! directories, so they run in ONE test function, in sequence, and in a
//! system of its own (`private_system`: private mount and PID namespaces,
//! overlays over the directories they change): a real installation of sshidle
//! on this machine keeps running and enforcing, and is exactly as it was
//! afterwards, which the test checks from outside.

use sshidle_tests::private_system;
use sshidle_tests::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PAM_FILE: &str = "/etc/pam.d/sshd";
const POLICY: &str = "/etc/security/sshidle.conf";
const MANIFEST: &str = "/var/lib/sshidle/installed";
const STATE_DIR: &str = "/run/sshidle";
const PIDFILE: &str = "/run/sshidle-enforce.pid";
const INSTALLED_CTL: &str = "/usr/local/sbin/sshidlectl";
const PAM_MARKER: &str = "# sshidle: record SSH sessions for their idle limits (added by sshidlectl install)";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Every path install or the package may touch, with type, mode, owner and a
/// content hash. Shared directories are filtered to names containing
/// "sshidle", so that other tests running in parallel do not disturb it.
fn snapshot() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let whole = ["/usr/local", "/etc/security", "/etc/init.d", "/var/lib/sshidle", "/etc/systemd/system"];
    let rc_dirs: Vec<String> =
        ["0", "1", "2", "3", "4", "5", "6", "S"].iter().map(|r| format!("/etc/rc{r}.d")).collect();
    let filtered = [
        "/lib/x86_64-linux-gnu/security",
        "/usr/lib/x86_64-linux-gnu/security",
        "/usr/lib64/security",
        "/usr/sbin",
        "/usr/share/man/man5",
        "/usr/share/man/man8",
        "/usr/share/bash-completion/completions",
        "/usr/share/zsh/vendor-completions",
        "/usr/share/fish/vendor_completions.d",
        "/usr/share/doc",
        "/lib/systemd/system",
    ];
    let mut stack: Vec<(PathBuf, bool)> = whole.iter().map(|d| (PathBuf::from(d), false)).collect();
    stack.extend(rc_dirs.iter().map(|d| (PathBuf::from(d), false)));
    stack.extend(filtered.iter().map(|d| (PathBuf::from(d), true)));
    while let Some((dir, filter)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if filter && !entry.file_name().to_string_lossy().contains("sshidle") {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default())
            } else if meta.is_dir() {
                stack.push((path.clone(), false));
                "dir".to_string()
            } else {
                format!("file {:016x}", fnv(&std::fs::read(&path).unwrap_or_default()))
            };
            out.insert(
                path.display().to_string(),
                format!("{what} mode={:o} owner={}:{}", meta.mode(), meta.uid(), meta.gid()),
            );
        }
    }
    for single in [PAM_FILE, POLICY, STATE_DIR, PIDFILE] {
        if let Ok(meta) = std::fs::symlink_metadata(single) {
            let content = if meta.is_file() { fnv(&std::fs::read(single).unwrap_or_default()) } else { 0 };
            out.insert(single.to_string(), format!("{:016x} mode={:o}", content, meta.mode()));
        }
    }
    out
}

/// Every file under `dir`, with type, mode, owner and a content hash.
fn snapshot_of(dir: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let content = if meta.is_file() { fnv(&std::fs::read(&path).unwrap_or_default()) } else { 0 };
            out.insert(
                path.display().to_string(),
                format!("{content:016x} mode={:o} owner={}:{}", meta.mode(), meta.uid(), meta.gid()),
            );
        }
    }
    out
}

fn package_configured() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "sshidle"])
        .output()
        .map(|o| o.stdout == b"install ok installed")
        .unwrap_or(false)
}

/// Puts the system back as it was, whatever happened.
struct SystemGuard {
    pam: Vec<u8>,
    pam_mode: u32,
    policy: Option<(Vec<u8>, u32)>,
}

impl SystemGuard {
    fn take() -> SystemGuard {
        let pam = std::fs::read(PAM_FILE).expect("/etc/pam.d/sshd (openssh-server is in .ci/deps)");
        let pam_mode = std::fs::metadata(PAM_FILE).expect("pam file").mode() & 0o7777;
        let policy = std::fs::read(POLICY).ok().map(|b| (b, std::fs::metadata(POLICY).unwrap().mode() & 0o7777));
        // Install must write its default: move an existing policy aside.
        if policy.is_some() {
            std::fs::remove_file(POLICY).expect("move the policy aside");
        }
        SystemGuard { pam, pam_mode, policy }
    }
}

impl Drop for SystemGuard {
    fn drop(&mut self) {
        if Path::new(MANIFEST).exists() {
            let ctl = if Path::new(INSTALLED_CTL).exists() { PathBuf::from(INSTALLED_CTL) } else { sshidlectl_path() };
            let _ = Command::new(ctl).arg("uninstall").output();
        }
        if private_system::package_installed() {
            let _ = Command::new("dpkg").args(["-P", "sshidle"]).output();
        }
        if std::fs::read(PAM_FILE).ok().as_deref() != Some(&self.pam[..]) {
            let _ = std::fs::write(PAM_FILE, &self.pam);
            let _ = std::fs::set_permissions(PAM_FILE, std::os::unix::fs::PermissionsExt::from_mode(self.pam_mode));
        }
        match &self.policy {
            Some((bytes, mode)) => {
                let _ = std::fs::write(POLICY, bytes);
                let _ = std::fs::set_permissions(POLICY, std::os::unix::fs::PermissionsExt::from_mode(*mode));
            }
            None => {
                let _ = std::fs::remove_file(POLICY);
            }
        }
    }
}

/// A private sshd started as `/usr/sbin/sshd` itself: PAM service `sshd`,
/// the real `/etc/pam.d/sshd`.
struct SystemSshd {
    port: u16,
    dir: TempDir,
    child: Child,
}

impl SystemSshd {
    fn start(user: &TestUser) -> SystemSshd {
        ensure_runtime_dirs();
        let dir = TempDir::new("install-sshd");
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join(key)));
        }
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::copy(dir.join("client_key.pub"), dir.join("keys").join(&user.name)).unwrap();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(
                dir.join("sshd_config"),
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                     UsePAM yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nAuthorizedKeysFile {d}/keys/%u\nStrictModes no\nUseDNS no\n\
                     PrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
                    d = dir.path.display()
                ),
            )
            .unwrap();
            let pid_file = dir.join("sshd.pid");
            let _ = std::fs::remove_file(&pid_file);
            let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start /usr/sbin/sshd");
            if sshidle_tests::sshd::listening(&mut child, port, &pid_file) {
                return SystemSshd { port, dir, child };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start:\n{last_log}");
    }

    fn ssh(&self, user: &str, remote: &str) -> Child {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(self.dir.join("client_key"))
            .args(["-p", &self.port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .arg(format!("{user}@127.0.0.1"))
            .arg(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SystemSshd {
    fn drop(&mut self) {
        let children = descendants(self.child.id() as i32);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            signal(pid, libc::SIGKILL);
        }
    }
}

fn ctl(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().expect("sshidlectl")
}

fn enforcer_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()?;
    process_alive(pid).then_some(pid)
}

/// Sessions of `user` listed by the installed `sshidlectl status --json`.
fn sessions_of(user: &str) -> Vec<serde_json::Value> {
    let out = ctl(Path::new(INSTALLED_CTL), &["status", "--json"]);
    assert!(out.status.success(), "status --json: {}", describe(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("status JSON");
    rows.into_iter().filter(|r| r["user"] == user).collect()
}

/// A session as the module recorded it in the state journal.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    pid: String,
    start: String,
    login: i64,
}

/// The journal's lines of one kind (`open`, `warned`), as field maps.
fn journal_lines(kind: &str) -> Vec<BTreeMap<String, String>> {
    let bytes = std::fs::read(format!("{STATE_DIR}/sessions")).unwrap_or_default();
    text(&bytes)
        .lines()
        .filter_map(|l| l.strip_prefix(kind).and_then(|rest| rest.strip_prefix('\t')))
        .map(|fields| fields.split('\t').filter_map(|f| f.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
        .collect()
}

/// The `open` line the module wrote for `user`'s login, if any.
fn recorded_open(user: &str) -> Option<Recorded> {
    journal_lines("open").into_iter().find(|f| f.get("user").map(String::as_str) == Some(user)).map(|f| Recorded {
        pid: f["pid"].clone(),
        start: f["start"].clone(),
        login: f["login"].parse().expect("login time"),
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Checks the PAM file is the original plus our two lines, after every other
/// session line.
fn assert_pam_line_added(original: &[u8]) {
    let now = std::fs::read_to_string(PAM_FILE).unwrap();
    let ours = "session    optional     pam_sshidle.so";
    assert_eq!(now.matches("pam_sshidle.so").count(), 1, "{now}");
    let without: String =
        now.split_inclusive('\n').filter(|l| l.trim_end() != PAM_MARKER && l.trim_end() != ours).collect();
    assert_eq!(without.as_bytes(), original, "everything else kept byte for byte");
    let lines: Vec<&str> = now.lines().collect();
    let at = lines.iter().position(|l| *l == ours).expect("our line");
    assert_eq!(lines[at - 1], PAM_MARKER);
    let last_other_session = lines
        .iter()
        .rposition(|l| {
            let w = l.split_whitespace().next().unwrap_or("");
            (w == "session" || w == "-session" || l.starts_with("@include common-session")) && *l != ours
        })
        .expect("Debian's sshd stack has session lines");
    assert_eq!(at, last_other_session + 2, "right after the last session line:\n{now}");
}

/// The package's PAM line goes through pam-auth-update: its profile adds the
/// line to common-session (which /etc/pam.d/sshd includes), and
/// /etc/pam.d/sshd, openssh-server's conffile, is never edited.
struct PamAuthUpdate {
    common_session: Vec<u8>,
    seen: Vec<u8>,
}

const COMMON_SESSION: &str = "/etc/pam.d/common-session";
const PAM_AUTH_SEEN: &str = "/var/lib/pam/seen";

impl PamAuthUpdate {
    fn take() -> PamAuthUpdate {
        PamAuthUpdate {
            common_session: std::fs::read(COMMON_SESSION).expect("common-session (libpam-runtime)"),
            seen: std::fs::read(PAM_AUTH_SEEN).unwrap_or_default(),
        }
    }

    /// The one line in common-session's Additional block, nothing else
    /// changed there; /etc/pam.d/sshd as it was; the interactive stack only.
    fn assert_line_added(&self, sshd_pam: &[u8]) {
        assert_eq!(std::fs::read(PAM_FILE).unwrap(), sshd_pam, "the package edited /etc/pam.d/sshd");
        assert!(
            text(sshd_pam).lines().any(|l| l.trim() == "@include common-session"),
            "/etc/pam.d/sshd includes common-session"
        );
        let now = std::fs::read_to_string(COMMON_SESSION).unwrap();
        let ours: Vec<&str> = now.lines().filter(|l| l.contains("pam_sshidle.so")).collect();
        assert_eq!(ours.len(), 1, "{now}");
        assert_eq!(ours[0].split_whitespace().collect::<Vec<_>>(), ["session", "optional", "pam_sshidle.so"]);
        let additional = now.find("(the \"Additional\" block)").expect("pam-auth-update's Additional block");
        assert!(now.find(ours[0]).unwrap() > additional, "in the Additional block:\n{now}");
        let without: String = now.split_inclusive('\n').filter(|l| !l.contains("pam_sshidle.so")).collect();
        assert_eq!(without.as_bytes(), &self.common_session[..], "common-session otherwise as it was");
        let noninteractive = std::fs::read_to_string("/etc/pam.d/common-session-noninteractive").unwrap_or_default();
        assert!(!noninteractive.contains("pam_sshidle"), "{noninteractive}");
        assert!(Path::new("/usr/share/pam-configs/sshidle").is_file());
    }

    fn assert_as_before(&self, after: &str) {
        assert_eq!(
            text(&std::fs::read(COMMON_SESSION).unwrap()),
            text(&self.common_session),
            "{after}: common-session as it began"
        );
        assert_eq!(
            text(&std::fs::read(PAM_AUTH_SEEN).unwrap_or_default()),
            text(&self.seen),
            "{after}: pam-auth-update's record as it began"
        );
    }
}

#[test]
fn install_login_enforce_uninstall_and_deb_round_trip() {
    if !e2e_enabled() {
        return;
    }
    if !private_system::inside() {
        // On the real system: run in a private one, and check that the real
        // system (and an installation of sshidle on it) is untouched.
        let before = snapshot();
        let enforcer = enforcer_pid();
        private_system::run("install_login_enforce_uninstall_and_deb_round_trip");
        assert_eq!(differences(&before, &snapshot()), Vec::<String>::new(), "the test changed the real system");
        assert_eq!(enforcer_pid(), enforcer, "the real enforcer was disturbed");
        return;
    }
    private_system::set_up();
    ensure_runtime_dirs();
    let guard = SystemGuard::take();
    let before = snapshot();
    let built_ctl = sshidlectl_path();
    let module = module_path();
    let module_arg = module.display().to_string();

    // --dry-run: says everything, changes nothing.
    let out = ctl(&built_ctl, &["install", "--dry-run", "--module", &module_arg]);
    assert!(out.status.success(), "{}", describe(&out));
    let said = text(&out.stdout);
    for expected in ["would install PAM module", "would add to /etc/pam.d/sshd", "would install default policy"] {
        assert!(said.contains(expected), "dry run lacks {expected:?}:\n{said}");
    }
    assert_eq!(differences(&before, &snapshot()), Vec::<String>::new(), "a dry run changed the system");

    // Install.
    let out = ctl(&built_ctl, &["install", "--module", &module_arg]);
    assert!(out.status.success(), "install: {}", describe(&out));
    let module_dir = ["/lib/x86_64-linux-gnu/security", "/usr/lib64/security", "/lib/security"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("pam_unix.so").exists())
        .expect("PAM module dir");
    let installed_module = module_dir.join("pam_sshidle.so");
    assert_eq!(std::fs::read(&installed_module).unwrap(), std::fs::read(&module).unwrap());
    assert_eq!(std::fs::metadata(&installed_module).unwrap().mode() & 0o777, 0o644);
    assert_pam_line_added(&guard.pam);
    let default_policy = std::fs::read_to_string(workspace_root().join("packaging/sshidle.conf")).unwrap();
    assert_eq!(std::fs::read_to_string(POLICY).unwrap(), default_policy);
    let pid = enforcer_pid().unwrap_or_else(|| panic!("no enforcer running after install:\n{}", describe(&out)));
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), Path::new(INSTALLED_CTL));
    for page in ["pam_sshidle", "sshidle.conf", "sshidlectl"] {
        let found = Command::new("man").args(["-w", page]).output().unwrap();
        let path = std::fs::canonicalize(text(&found.stdout).trim()).unwrap_or_default();
        assert!(path.starts_with("/usr/local/share/man/"), "man -w {page}: {}", describe(&found));
    }

    // Install again: the same state, the same enforcer.
    let installed = snapshot();
    let out = ctl(Path::new(INSTALLED_CTL), &["install", "--module", &module_arg]);
    assert!(out.status.success(), "second install: {}", describe(&out));
    let mut again = snapshot();
    // The state dir may have been made by the enforcer in between: runtime.
    again.remove(STATE_DIR);
    let mut installed_cmp = installed.clone();
    installed_cmp.remove(STATE_DIR);
    assert_eq!(differences(&installed_cmp, &again), Vec::<String>::new(), "install is not idempotent");
    assert_eq!(enforcer_pid(), Some(pid), "a second install must not restart an unchanged enforcer");

    // A real login to the system's PAM service sshd is recorded and enforced.
    let user = TestUser::create("sii", &[]);
    std::fs::write(POLICY, format!("user {} idle=5s warn=2s\n", user.name)).unwrap();
    let sshd = SystemSshd::start(&user);
    // The module's close_session logs to syslog: the witness that the session
    // ended through sshd's PAM path.
    let syslog = SyslogCapture::start();
    let journal = sshidle_tests::journal::JournalWatch::start(Path::new(STATE_DIR));
    let mut client = sshd.ssh(&user.name, "sleep 120");
    let mut session = None;
    let recorded = wait_until(Duration::from_secs(10), || {
        session = recorded_open(&user.name);
        session.is_some()
    });
    assert!(recorded, "login not recorded in {STATE_DIR}; sshd log:\n{}", sshd.log());
    let session = session.expect("recorded");
    let row = sessions_of(&user.name).remove(0);
    assert_eq!(row["service"], "sshd", "{row}");
    assert_eq!(row["idle_limit_secs"], 5, "{row}");
    assert_eq!(row["login_time"], session.login, "{row}");
    let ended = wait_until(Duration::from_secs(60), || matches!(client.try_wait(), Ok(Some(_))));
    let ended_at = unix_now();
    if !ended {
        let _ = client.kill();
    }
    let _ = client.wait();
    assert!(ended, "the idle session was not disconnected within 60 s; sshd log:\n{}", sshd.log());
    // The login was recorded in whole seconds (the real instant is within the
    // second after). Not before the 5 s limit; at most a few seconds after it:
    // the enforcer's sweep, I/O sampling, a loaded machine.
    let past_login = ended_at - session.login as f64;
    eprintln!("idle=5s session disconnected {past_login:.1} s after its recorded login");
    assert!(past_login >= 5.0, "disconnected {past_login:.1} s after login, before its 5 s idle limit");
    assert!(past_login <= 5.0 + 1.0 + 8.0, "disconnected {past_login:.1} s after login: 5 s limit overshot");
    journal.assert_closed(session.pid.parse().expect("pid"), Duration::from_secs(10));
    let closed = format!("session {} of {} closed: ended by sshidle: idle", session.pid, user.name);
    assert!(
        syslog.wait_for(&closed, Duration::from_secs(10)).is_some(),
        "close_session did not log {closed:?}: {:#?}\nsshd log:\n{}",
        syslog.messages(),
        sshd.log()
    );
    drop(syslog);
    let prom = ctl(Path::new(INSTALLED_CTL), &["status", "--format", "prometheus"]);
    assert!(
        text(&prom.stdout).contains("sshidle_disconnects_total{cause=\"idle\"} 1\n"),
        "the disconnect is counted: {}",
        describe(&prom)
    );
    drop(sshd);

    // One owner: the package does not install over an installation from
    // source (its preinst stops, nothing is unpacked).
    let deb = sshidle_tests::deb::built_deb();
    let from_source = snapshot();
    let refused = Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .expect("dpkg");
    assert!(!refused.status.success(), "dpkg -i over an installation from source: {}", describe(&refused));
    assert!(text(&refused.stderr).contains("sshidlectl uninstall"), "says what to do: {}", describe(&refused));
    assert!(!private_system::package_installed(), "the package was installed over an installation from source");
    let mut now = snapshot();
    let mut from_source_cmp = from_source.clone();
    for runtime in [STATE_DIR, PIDFILE] {
        now.remove(runtime);
        from_source_cmp.remove(runtime);
    }
    assert_eq!(differences(&from_source_cmp, &now), Vec::<String>::new(), "the refused dpkg -i changed files");

    // The admin edits /etc/pam.d/sshd after install, with bytes that are not
    // UTF-8 (a Latin-1 comment): uninstall takes out our two lines only.
    let installed_pam = std::fs::read(PAM_FILE).unwrap();
    let mut edited = b"# edited by the admin after install: caf\xe9\n".to_vec();
    edited.extend_from_slice(&installed_pam);
    edited.extend_from_slice(b"# \xff end of the admin's edit\n");
    std::fs::write(PAM_FILE, &edited).unwrap();

    // The keepalive settings sshidlectl writes go with uninstall; while
    // sshd's configuration fails `sshd -t`, uninstall keeps them and says why.
    let ssh_before = snapshot_of("/etc/ssh");
    let out = ctl(Path::new(INSTALLED_CTL), &["keepalive", "--interval", "45", "--count-max", "2"]);
    assert!(out.status.success(), "keepalive: {}", describe(&out));
    let with_keepalive = snapshot_of("/etc/ssh");
    assert_ne!(with_keepalive, ssh_before, "keepalive wrote nothing");
    let main_config = std::fs::read("/etc/ssh/sshd_config").unwrap();
    let mut broken = main_config.clone();
    broken.extend_from_slice(b"NoSuchSshdKeyword yes\n");
    std::fs::write("/etc/ssh/sshd_config", &broken).unwrap();
    let out = ctl(Path::new(INSTALLED_CTL), &["uninstall", "--dry-run"]);
    assert!(text(&out.stdout).contains("would remove"), "dry run: {}", describe(&out));
    let kept = ctl(Path::new(INSTALLED_CTL), &["uninstall"]);
    assert_eq!(kept.status.code(), Some(1), "uninstall with a broken sshd config: {}", describe(&kept));
    assert!(text(&kept.stderr).contains("kept sshd's keepalive settings"), "says why: {}", describe(&kept));
    std::fs::write("/etc/ssh/sshd_config", &main_config).unwrap();
    assert_eq!(snapshot_of("/etc/ssh"), with_keepalive, "the drop-in kept, and nothing else changed");
    // The rest of uninstall was done; once sshd's config is right again:
    let out = ctl(&built_ctl, &["keepalive", "--off"]);
    assert!(out.status.success(), "keepalive --off: {}", describe(&out));
    assert_eq!(differences(&ssh_before, &snapshot_of("/etc/ssh")), Vec::<String>::new(), "/etc/ssh as before");

    // Uninstall: back byte for byte (with the admin's edit); the edited policy is kept.
    assert!(text(&kept.stdout).contains("kept: policy"), "{}", describe(&kept));
    let out = ctl(&built_ctl, &["uninstall"]);
    assert!(out.status.success(), "a second uninstall: {}", describe(&out));
    let mut expected = b"# edited by the admin after install: caf\xe9\n".to_vec();
    expected.extend_from_slice(&guard.pam);
    expected.extend_from_slice(b"# \xff end of the admin's edit\n");
    assert_eq!(
        std::fs::read(PAM_FILE).unwrap(),
        expected,
        "/etc/pam.d/sshd: not the admin's file byte for byte after uninstall"
    );
    std::fs::write(PAM_FILE, &guard.pam).unwrap();
    assert!(std::fs::read_to_string(POLICY).unwrap().starts_with("user "), "edited policy kept");
    assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)), "enforcer {pid} still running");
    let left = differences(&before, &snapshot());
    assert!(
        left.len() == 1 && left[0].starts_with("/etc/security/sshidle.conf:"),
        "uninstall left more than the edited policy: {left:#?}"
    );

    // The Debian package. The admin's edited policy, kept by uninstall, is
    // still there: a non-interactive dpkg -i must not stop at a prompt (the
    // policy is not a conffile) and must leave it alone.
    let admins_policy = std::fs::read(POLICY).unwrap();
    let ssh_before = snapshot_of("/etc/ssh");
    let dpkg = |args: &[&str]| {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .expect("dpkg");
        assert!(out.status.success(), "dpkg {args:?}: {}", describe(&out));
        out
    };
    let deb_arg = deb.display().to_string();
    let pam_auth = PamAuthUpdate::take();
    dpkg(&["-i", &deb_arg]);
    assert!(package_configured(), "dpkg -i left the package unconfigured");
    pam_auth.assert_line_added(&guard.pam);
    assert_eq!(std::fs::read(POLICY).unwrap(), admins_policy, "the package changed the admin's policy");
    // ... and an installation from source does not go over the package.
    let with_package = snapshot();
    let out = ctl(&built_ctl, &["install", "--module", &module_arg]);
    assert_eq!(out.status.code(), Some(1), "sshidlectl install over the package: {}", describe(&out));
    assert!(text(&out.stderr).contains("the sshidle Debian package is installed"), "{}", describe(&out));
    assert_eq!(differences(&with_package, &snapshot()), Vec::<String>::new(), "the refused install changed files");
    // Reinstalling (prerm upgrade, postinst configure again) changes nothing.
    let installed = snapshot();
    dpkg(&["-i", &deb_arg]);
    pam_auth.assert_line_added(&guard.pam);
    let mut again = snapshot();
    let mut installed_cmp = installed.clone();
    for runtime in [STATE_DIR, PIDFILE] {
        again.remove(runtime);
        installed_cmp.remove(runtime);
    }
    assert_eq!(differences(&installed_cmp, &again), Vec::<String>::new(), "dpkg -i twice is not idempotent");
    for path in [
        "/lib/x86_64-linux-gnu/security/pam_sshidle.so",
        "/usr/sbin/sshidlectl",
        "/lib/systemd/system/sshidle.service",
        "/etc/init.d/sshidle",
        "/usr/share/man/man8/pam_sshidle.8.gz",
        "/usr/share/man/man5/sshidle.conf.5.gz",
        "/usr/share/man/man8/sshidlectl.8.gz",
        "/usr/share/bash-completion/completions/sshidlectl",
    ] {
        assert!(Path::new(path).exists(), "the package did not install {path}");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "sshidle"]));
    let conffiles: Vec<String> =
        text(&conffiles.stdout).lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect();
    assert_eq!(conffiles, vec!["/etc/init.d/sshidle".to_string()], "the policy is not a conffile");
    // The keepalive drop-in sshidlectl writes goes with the package.
    let out = ctl(Path::new("/usr/sbin/sshidlectl"), &["keepalive", "--interval", "45", "--count-max", "2"]);
    assert!(out.status.success(), "keepalive: {}", describe(&out));
    assert_ne!(snapshot_of("/etc/ssh"), ssh_before, "keepalive wrote nothing");

    let out = dpkg(&["-r", "sshidle"]);
    assert_eq!(std::fs::read(PAM_FILE).unwrap(), guard.pam, "dpkg -r left /etc/pam.d/sshd changed: {}", describe(&out));
    pam_auth.assert_as_before("dpkg -r");
    assert_eq!(
        differences(&ssh_before, &snapshot_of("/etc/ssh")),
        Vec::<String>::new(),
        "dpkg -r left /etc/ssh changed"
    );
    // What Debian keeps until purge: the conffile (made not executable, so
    // that systemd makes no phantom LSB unit of it), its boot links and the
    // unit's enablement link (both dangling), the policy and its record.
    let left: Vec<String> = differences(&before, &snapshot());
    let kept_until_purge = |d: &String| {
        d.starts_with("/etc/init.d/sshidle:")
            || (d.starts_with("/etc/rc") && d.contains("sshidle: None -> Some(\"link ../init.d/sshidle "))
            || d.starts_with("/etc/systemd/system/multi-user.target.wants/sshidle.service:")
            || d.starts_with("/etc/security/sshidle.conf:")
            || d.starts_with("/var/lib/sshidle")
    };
    assert!(left.iter().all(kept_until_purge), "dpkg -r left more than Debian keeps until purge: {left:#?}");
    let mode = std::fs::metadata("/etc/init.d/sshidle").unwrap().mode();
    assert_eq!(mode & 0o111, 0, "after dpkg -r the init script is not executable (no phantom service)");
    dpkg(&["-P", "sshidle"]);
    assert!(!private_system::package_installed());
    pam_auth.assert_as_before("dpkg -P");
    assert_eq!(std::fs::read(POLICY).unwrap(), admins_policy, "purge removed the admin's own policy");
    std::fs::remove_file(POLICY).unwrap();
    assert_eq!(differences(&before, &snapshot()), Vec::<String>::new(), "dpkg -P left something behind");

    // Without a policy the package writes its default, and purge removes it;
    // reinstalling after a remove works and brings the service back.
    dpkg(&["-i", &deb_arg]);
    let default_policy = std::fs::read_to_string(workspace_root().join("packaging/sshidle.conf")).unwrap();
    assert_eq!(std::fs::read_to_string(POLICY).unwrap(), default_policy);
    dpkg(&["-r", "sshidle"]);
    assert_eq!(std::fs::read_to_string(POLICY).unwrap(), default_policy, "dpkg -r keeps the policy");
    dpkg(&["-i", &deb_arg]);
    assert!(package_configured(), "reinstall after dpkg -r left the package unconfigured");
    pam_auth.assert_line_added(&guard.pam);
    let mode = std::fs::metadata("/etc/init.d/sshidle").unwrap().mode();
    assert_eq!(mode & 0o111, 0o111, "the init script is executable again after the reinstall");
    dpkg(&["-P", "sshidle"]);
    assert!(!private_system::package_installed());
    assert_eq!(std::fs::read(PAM_FILE).unwrap(), guard.pam);
    pam_auth.assert_as_before("dpkg -i, -r, -i, -P");
    assert_eq!(differences(&ssh_before, &snapshot_of("/etc/ssh")), Vec::<String>::new(), "/etc/ssh changed");
    assert_eq!(differences(&before, &snapshot()), Vec::<String>::new(), "dpkg -P left something behind");
    drop(guard);
}

#[test]
fn man_pages_render_without_warnings() {
    for (page, sections) in [
        ("pam_sshidle.8", &["OPTIONS", "RETURN VALUES", "FILES", "EXAMPLES"][..]),
        ("sshidle.conf.5", &["DESCRIPTION", "FILES", "EXAMPLES"][..]),
        ("sshidlectl.8", &["COMMANDS", "EXIT STATUS", "FILES", "EXAMPLES"][..]),
    ] {
        let path = workspace_root().join("man").join(page);
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env_remove("MANPAGER")
            .env("PAGER", "cat")
            .output()
            .expect("man (man-db is in .ci/deps)");
        assert!(out.status.success(), "{page}: {}", describe(&out));
        assert_eq!(text(&out.stderr), "", "{page} renders with warnings");
        // Bold and underline come as overstrikes (c BS c, _ BS c) through a pipe.
        let raw: Vec<char> = text(&out.stdout).chars().collect();
        let mut rendered = String::new();
        let mut i = 0;
        while i < raw.len() {
            if raw.get(i + 1) == Some(&'\u{8}') {
                i += 2;
                continue;
            }
            rendered.push(raw[i]);
            i += 1;
        }
        for section in sections {
            assert!(rendered.contains(&format!("\n{section}\n")), "{page} lacks {section}:\n{rendered}");
        }
        let widest = rendered.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= 80, "{page}: a line of {widest} columns at MANWIDTH=80");
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    // These machines run no systemd, but ship systemd-analyze, which checks
    // a unit file offline.
    if Command::new("systemd-analyze").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        skip_or_fail("systemd-analyze is missing (package systemd, in the package list)");
        return;
    }
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(workspace_root().join("packaging/sshidle.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/sbin/sshidlectl enforce\n"));
    let unit = unit
        .replace("ExecStart=/usr/sbin/sshidlectl", &format!("ExecStart={}", sshidlectl_path().display()))
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let path = dir.join("sshidle.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "systemd-analyze verify: {}", describe(&out));
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&path).output().unwrap();
    let report = text(&out.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for sshidle.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {}", describe(&out)));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(level <= 3.0, "exposure {level} (a root service that must signal, read /proc and write ttys)");
}
