//! Issues 10 and 19: the Debian package on a real systemd, on each supported
//! release. A root made by debootstrap (cached under the cargo target
//! directory) is booted with systemd-nspawn on an overlay, so every run
//! starts from the same pristine system: Debian 12 (OpenSSH 9.2, systemd
//! 252, utmp and wtmp) and Debian 13 (OpenSSH 10.0, systemd 257, wtmpdb, no
//! utmp), each in a test of its own (they run side by side); sid (OpenSSH
//! 10.6) the same way, by hand (`-- --ignored`). The `.deb` built on this
//! Debian 12 machine is installed inside, and everything is checked through
//! real ssh logins inside the container (commands run in its namespaces with
//! nsenter), against that release's own sshd:
//! - the package's PAM line comes through pam-auth-update (common-session);
//!   `/etc/pam.d/sshd`, openssh-server's conffile, is never edited;
//! - the hardened unit starts and stays up;
//! - an idle pty is warned and disconnected on time, a notty command too (its
//!   command ended), a typist on a pty kept, through close_session;
//! - the logout is recorded where the release records logouts (`last` on 12,
//!   `wtmpdb last` on 13 and sid);
//! - sshd logs no error for the enforced disconnects that it does not log
//!   for an ordinary logout;
//! - `systemctl reload sshidle` and `restart` keep the open sessions known;
//! - `sshidlectl keepalive` reloads sshd through systemctl and `sshd -T`
//!   shows the values, the listener answers, and sshd logs no error for it;
//! - the enforcer's lines reach the journal once, with their priority;
//! - `dpkg -r` takes the PAM line and the keepalive drop-in away (no phantom
//!   LSB unit left), reinstalling works, `dpkg -P` removes the rest, and
//!   `/etc/pam.d`, `/etc/ssh` end byte for byte as they began.
//!
//! Debian 13's root also builds the project with that release's own gcc,
//! rustc and cargo (`cargo build --workspace --all-targets`, then the unit tests), in a
//! chroot on an overlay (cargo may need crates.io: nspawn's private network
//! would not do); the crates come from this machine's cargo registry,
//! mounted read-only, when it has them.
//!
//! The container (and its overlay mount, which lives only in the mount
//! namespace nspawn runs in) is torn down on drop, also when a check fails.

use sshidle_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What every root has besides debootstrap's minimal base (sid's
/// openssh-server no longer brings the client the checks log in with).
macro_rules! base {
    () => {
        "systemd,systemd-sysv,dbus,openssh-server,openssh-client,libpam-systemd,tmux,procps"
    };
}
/// Debian 13 and later: logins recorded in wtmpdb (what a Debian 13 install
/// has; minbase does not), and the toolchain that builds the project.
macro_rules! newer {
    () => {
        concat!(base!(), ",libpam-wtmpdb,wtmpdb,cargo,rustc,gcc,libc6-dev,libpam0g-dev,ca-certificates")
    };
}

/// A supported release, booted for the checks.
struct Release {
    /// debootstrap's suite.
    suite: &'static str,
    /// For messages.
    name: &'static str,
    /// Packages besides debootstrap's minimal base.
    include: &'static str,
    /// Logouts go to wtmpdb (`wtmpdb last`), not utmp/wtmp (`last`).
    wtmpdb: bool,
}

const BOOKWORM: Release = Release { suite: "bookworm", name: "Debian 12", include: base!(), wtmpdb: false };
const TRIXIE: Release = Release { suite: "trixie", name: "Debian 13", include: newer!(), wtmpdb: true };
const SID: Release = Release { suite: "sid", name: "Debian sid", include: newer!(), wtmpdb: true };

const DEB_MOUNT: &str = "/mnt/sshidle-deb";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Debian mirror apt uses on this machine (deb822 `URIs:` or a `deb` line).
fn apt_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(content) = std::fs::read_to_string(&file) else { continue };
        for line in content.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let uri = match words.as_slice() {
                ["URIs:", uri, ..] => Some(*uri),
                ["deb", rest @ ..] => rest.iter().find(|w| w.contains("://")).copied(),
                _ => None,
            };
            if let Some(uri) = uri.filter(|u| !u.contains("security")) {
                return uri.to_string();
            }
        }
    }
    panic!("no Debian mirror in /etc/apt/sources.list*");
}

/// Where the roots (and the Debian 13 build tree) are kept: beside the
/// cargo profile directories, in the work tree.
fn cache_dir() -> PathBuf {
    let cache = target_dir().parent().expect("target dir").join("systemd-e2e");
    std::fs::create_dir_all(&cache).expect("cache dir");
    cache
}

/// A pristine debootstrapped root of `release`, made once and kept in the
/// target dir (one lock per release: two releases are made side by side).
fn pristine_root(release: &Release) -> PathBuf {
    let cache = cache_dir();
    let lock = std::fs::File::create(cache.join(format!("{}.lock", release.suite))).expect("lock");
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    let root = cache.join(release.suite);
    let stamp = cache.join(format!("{}.done", release.suite));
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(release.include) {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    let started = Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={}", release.include), release.suite])
        .arg(&root)
        .arg(apt_mirror())
        .output()
        .expect("debootstrap (in .ci/packages)");
    assert!(out.status.success(), "debootstrap {}: {}", release.suite, describe(&out));
    eprintln!("{}: debootstrap took {:?}", release.name, started.elapsed());
    std::fs::write(&stamp, release.include).expect("stamp");
    root
}

/// A booted container on an overlay of the pristine root.
struct Container {
    nspawn: Child,
    leader: i32,
    dir: TempDir,
}

impl Container {
    fn boot(pristine: &Path, deb_dir: &Path) -> Container {
        let dir = TempDir::new("nspawn");
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let log = std::fs::File::create(dir.join("console.log")).unwrap();
        let machine = unique_name("sshidle-");
        // The overlay is mounted in a mount namespace of nspawn's own: it
        // goes away with nspawn, whatever happens to this test.
        let script = format!(
            "mount -t overlay overlay -o lowerdir={p},upperdir={d}/upper,workdir={d}/work {d}/root && \
             exec systemd-nspawn -q -D {d}/root -M {machine} -b --keep-unit --register=no --private-network \
             --console=pipe --bind-ro={deb}:{DEB_MOUNT}",
            p = pristine.display(),
            d = dir.path.display(),
            deb = deb_dir.display(),
        );
        let nspawn = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare + systemd-nspawn");
        let mut container = Container { nspawn, leader: 0, dir };
        let nspawn_pid = container.nspawn.id() as i32;
        // The container's PID 1 (systemd) is nspawn's child.
        let found = wait_until(Duration::from_secs(30), || {
            container.leader = descendants(nspawn_pid)
                .into_iter()
                .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd"))
                .unwrap_or(0);
            container.leader != 0 || matches!(container.nspawn.try_wait(), Ok(Some(_)))
        });
        assert!(found && container.leader != 0, "the container did not start:\n{}", container.console());
        let booted = wait_until(Duration::from_secs(90), || {
            let state = container.sh("systemctl is-system-running");
            matches!(text(&state.stdout).trim(), "running" | "degraded")
        });
        assert!(
            booted,
            "the container did not finish booting: {}\n{}",
            text(&container.sh("systemctl --failed --no-pager").stdout),
            container.console()
        );
        container
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// Runs a shell script in the container's namespaces.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm")
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Runs a script that must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "in the container: {script}\n{}", describe(&out));
        text(&out.stdout)
    }

    /// Every path under `dir` inside: type, mode, owner, and a file's md5.
    fn tree(&self, dir: &str) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .ok(&format!("find {dir} -printf '%p\\t%y %m %U:%G\\n'"))
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(path, what)| (path.to_string(), what.to_string()))
            .collect();
        for line in self.ok(&format!("find {dir} -type f -exec md5sum {{}} +")).lines() {
            if let Some((sum, path)) = line.split_once("  ") {
                if let Some(what) = out.get_mut(path) {
                    what.push(' ');
                    what.push_str(sum);
                }
            }
        }
        out
    }

    fn main_pid(&self) -> String {
        self.ok("systemctl show -p MainPID --value sshidle").trim().to_string()
    }

    fn status_users(&self) -> Vec<String> {
        let out = self.ok("sshidlectl status --json");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("status JSON");
        rows.iter().filter_map(|r| r["user"].as_str().map(String::from)).collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks nspawn to shut the container down; then it is killed.
        signal(self.nspawn.id() as i32, libc::SIGTERM);
        let gone = wait_until(Duration::from_secs(15), || matches!(self.nspawn.try_wait(), Ok(Some(_))));
        if !gone {
            if self.leader > 0 {
                signal(self.leader, libc::SIGKILL);
            }
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

/// The `login=` time the module recorded for `user` in the state journal.
fn recorded_login(c: &Container, user: &str) -> Option<i64> {
    let journal = c.sh("cat /run/sshidle/sessions");
    text(&journal.stdout).lines().filter(|l| l.starts_with("open\t")).find_map(|l| {
        let fields: BTreeMap<&str, &str> = l.split('\t').filter_map(|f| f.split_once('=')).collect();
        (fields.get("user") == Some(&user)).then(|| fields.get("login").and_then(|t| t.parse().ok())).flatten()
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// The enforcer's journal entries: (message, priority, transport).
fn enforcer_journal(c: &Container) -> Vec<(String, String, String)> {
    c.ok("journalctl -u sshidle -o json --no-pager")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["_COMM"] == "sshidlectl" || e["SYSLOG_IDENTIFIER"].as_str().is_some_and(|s| s.contains("sshidle"))
        })
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (field("MESSAGE"), field("PRIORITY"), field("_TRANSPORT"))
        })
        .collect()
}

/// The journal's cursor now.
fn journal_cursor(c: &Container) -> String {
    c.ok("journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'").trim().to_string()
}

/// sshd's journal lines after `cursor`: the listener's (ssh.service), and
/// those of each connection's processes, which pam_systemd has moved into
/// the login's session scope (`-u ssh` misses them); OpenSSH 10 names them
/// sshd-session and sshd-auth.
fn sshd_journal_since(c: &Container, cursor: &str) -> String {
    c.ok(&format!("journalctl -t sshd -t sshd-session -t sshd-auth --no-pager -o cat --after-cursor='{cursor}'"))
}

/// The lines of an sshd log that say error (sshd prefixes its error() and
/// fatal() lines so), with numbers blanked: the same message for another
/// PID or session compares equal.
fn error_lines(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("fatal")
        })
        .map(|l| l.chars().map(|ch| if ch.is_ascii_digit() { '#' } else { ch }).collect())
        .collect()
}

/// The logout records of `user`: `wtmpdb last` (Debian 13, sid) or `last`
/// from wtmp (Debian 12).
fn logouts(c: &Container, release: &Release, user: &str) -> Vec<String> {
    let records = if release.wtmpdb { c.ok("wtmpdb last") } else { c.ok("last -w -F") };
    records.lines().filter(|l| l.split_whitespace().next() == Some(user)).map(String::from).collect()
}

/// Waits for `pane`'s screen to show `what`.
fn wait_screen(c: &Container, pane: &str, what: &str, timeout: Duration) -> bool {
    wait_until(timeout, || c.ok(&format!("tmux capture-pane -p -t {pane}")).contains(what))
}

/// The package's `libc6 (>= V)` dependency (as "libc6 (>= V)") when the
/// container's libc6 is older than V: a package built on a later release.
fn libc_too_old(c: &Container, deb: &Path) -> Option<String> {
    let out = Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends").output().expect("dpkg-deb");
    let depends = text(&out.stdout);
    let wanted = depends.split(',').map(str::trim).find(|d| d.starts_with("libc6 (>= "))?;
    let version = wanted.trim_start_matches("libc6 (>= ").trim_end_matches(')');
    let ok = c.sh(&format!("dpkg --compare-versions \"$(dpkg-query -W -f '${{Version}}' libc6)\" ge '{version}'"));
    (!ok.status.success()).then(|| wanted.to_string())
}

fn package_on_a_real_systemd(release: &Release) {
    if !e2e_enabled() {
        return;
    }
    for tool in ["debootstrap", "systemd-nspawn", "nsenter", "unshare"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            skip_or_fail(&format!("{tool} is missing (it is in .ci/packages: make test installs it)"));
            return;
        }
    }
    let name = release.name;
    let deb = sshidle_tests::deb::built_deb();
    let pristine = pristine_root(release);
    let started = Instant::now();
    let c = Container::boot(&pristine, deb.parent().expect("deb dir"));
    eprintln!("{name}: booted in {:?}; {}", started.elapsed(), c.ok("sshd -V 2>&1 || true").trim());
    let pam_before = c.tree("/etc/pam.d");
    let sshd_pam = c.ok("cat /etc/pam.d/sshd");
    let common_before = c.ok("cat /etc/pam.d/common-session");
    let ssh_before = c.tree("/etc/ssh");
    assert_eq!(c.ok("systemctl is-active ssh").trim(), "active", "{name}: sshd runs in the container");
    let deb_name = deb.file_name().unwrap().to_string_lossy().to_string();
    if let Some(libc) = libc_too_old(&c, &deb) {
        // Built on a later release than this (the tests run on Debian 13):
        // Debian's way is a package built on each release. What this one
        // must do here is what dpkg promises: stay unconfigured, and leave
        // logins alone.
        let out = c.sh(&format!("DEBIAN_FRONTEND=noninteractive dpkg -i {DEB_MOUNT}/{deb_name} </dev/null"));
        let said = describe(&out);
        assert!(!out.status.success() && said.contains("sshidle depends on libc6"), "{name}: {said}");
        assert_eq!(c.ok("cat /etc/pam.d/common-session"), common_before, "{name}: an unconfigured package's PAM line");
        assert_ne!(c.ok("systemctl is-active sshidle || true").trim(), "active");
        c.ok("ssh-keygen -q -t ed25519 -N '' -f /root/key && useradd -m -u 59101 plain && \
              install -d -o plain -m 700 /home/plain/.ssh && install -o plain -m 600 /root/key.pub /home/plain/.ssh/authorized_keys");
        let login = c
            .ok("ssh -i /root/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
                          plain@127.0.0.1 echo LOGGED-IN");
        assert_eq!(login.trim(), "LOGGED-IN", "{name}: a login beside the unconfigured package");
        c.ok("dpkg --purge sshidle");
        assert_eq!(c.tree("/etc/pam.d"), pam_before, "{name}: /etc/pam.d after the purge");
        eprintln!(
            "{name}: the package built here needs {libc}: refused by dpkg, unconfigured, logins unaffected; \
             a package for {name} is built on {name} (CI does, on Debian 12)"
        );
        return;
    }

    // Install: the PAM line comes through pam-auth-update, in common-session
    // (which /etc/pam.d/sshd includes); /etc/pam.d/sshd is not touched.
    c.ok(&format!("DEBIAN_FRONTEND=noninteractive dpkg -i {DEB_MOUNT}/{deb_name} </dev/null"));
    let pam_line_in_common_session = || {
        let common = c.ok("cat /etc/pam.d/common-session");
        common
            .lines()
            .filter(|l| l.split_whitespace().collect::<Vec<_>>() == ["session", "optional", "pam_sshidle.so"])
            .count()
            == 1
    };
    assert!(pam_line_in_common_session(), "{name}: {}", c.ok("cat /etc/pam.d/common-session"));
    assert_eq!(c.ok("cat /etc/pam.d/sshd"), sshd_pam, "{name}: the package edited /etc/pam.d/sshd");
    assert!(sshd_pam.lines().any(|l| l.trim() == "@include common-session"), "{name}: {sshd_pam}");
    assert_eq!(c.ok("systemctl is-active sshidle").trim(), "active");
    assert_eq!(c.ok("systemctl is-enabled sshidle").trim(), "enabled");
    let pid = c.main_pid();
    // What the package added is the package's: the admin's `sshidlectl
    // uninstall` leaves it and says so.
    let out = c.ok("sshidlectl uninstall");
    assert!(out.contains("the sshidle package added"), "{out}");
    assert!(pam_line_in_common_session(), "{name}: the package's PAM line kept");
    assert_eq!(c.main_pid(), pid, "the package's service kept");

    // Users: an idler and a typist on ptys, a quiet command without a pty,
    // one with no limit, one whose ordinary logout shows what sshd logs
    // for one.
    // Their uids are far from those the host's tests give their users
    // (from 1000 up): the host sees the container's processes, and a host
    // test's checks and clean-up go by uid.
    c.ok("ssh-keygen -q -t ed25519 -N '' -f /root/key && uid=59100 && \
          for u in idler typist notty busy plain; do uid=$((uid + 1)) && useradd -m -u $uid $u && \
          install -d -o $u -m 700 /home/$u/.ssh && \
          install -o $u -m 600 /root/key.pub /home/$u/.ssh/authorized_keys; done");
    c.ok("printf 'user idler idle=12s warn=6s\\nuser typist idle=12s warn=6s\\nuser notty idle=12s warn=6s\\n\
          user busy idle=off\\nuser plain idle=off\\n' >/etc/security/sshidle.conf");
    let ssh = "ssh -i /root/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes";
    c.ok(&format!("tmux new-session -d -s busy -x 100 -y 20 '{ssh} busy@127.0.0.1 sleep 600'"));
    assert!(wait_until(Duration::from_secs(15), || c.status_users().contains(&"busy".to_string())));
    // The module took TIOCSTI away from the session before its first process
    // (sshd-session's user child on OpenSSH 10): busy's command runs under
    // the seccomp filter (core/src/tiocsti.rs).
    let seccomp = c.ok(
        "for i in $(seq 100); do p=$(pgrep -u busy -x sleep) && break; sleep 0.1; done; grep Seccomp: /proc/$p/status",
    );
    assert_eq!(seccomp.split_whitespace().nth(1), Some("2"), "{name}: busy's command has no filter: {seccomp}");

    // Reload: the sessions stay known.
    c.ok("systemctl reload sshidle");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.main_pid(), pid, "reload keeps the enforcer");
    assert!(c.status_users().contains(&"busy".to_string()), "busy's session known after reload");

    // Ordinary logouts, a pty's and a command's: what sshd logs for them.
    let cursor = journal_cursor(&c);
    c.ok(&format!(
        "tmux new-session -d -s plain -x 100 -y 20 '{ssh} -t plain@127.0.0.1; echo SSH-EXITED $?; sleep 600'"
    ));
    assert!(wait_until(Duration::from_secs(15), || c.status_users().contains(&"plain".to_string())));
    c.ok("tmux send-keys -t plain 'exit' Enter");
    assert!(wait_screen(&c, "plain", "SSH-EXITED 0", Duration::from_secs(15)), "{name}: the plain login did not end");
    c.ok(&format!("{ssh} plain@127.0.0.1 true"));
    std::thread::sleep(Duration::from_secs(1));
    let ordinary = error_lines(&sshd_journal_since(&c, &cursor));
    eprintln!("{name}: sshd's error lines for an ordinary logout: {ordinary:#?}");

    // The idler, the typist and the quiet command log in; the enforcer is
    // restarted under them and still knows them.
    let cursor = journal_cursor(&c);
    c.ok(&format!(
        "tmux new-session -d -s idle -x 100 -y 20 '{ssh} -t idler@127.0.0.1; echo SSH-EXITED $?; sleep 600'"
    ));
    c.ok(&format!(
        "tmux new-session -d -s typist -x 100 -y 20 '{ssh} -t typist@127.0.0.1; echo SSH-EXITED $?; sleep 600'"
    ));
    c.ok(&format!(
        "tmux new-session -d -s notty -x 100 -y 20 '{ssh} notty@127.0.0.1 sleep 600; echo SSH-EXITED $?; sleep 600'"
    ));
    let mut logins = BTreeMap::new();
    assert!(wait_until(Duration::from_secs(15), || {
        for user in ["idler", "typist", "notty"] {
            if let Some(login) = recorded_login(&c, user) {
                logins.insert(user, login);
            }
        }
        logins.len() == 3
    }));
    c.ok("systemctl restart sshidle");
    let new_pid = c.main_pid();
    assert_ne!(new_pid, pid, "restart started a new enforcer");
    let users = c.status_users();
    for user in ["busy", "idler", "typist", "notty"] {
        assert!(users.contains(&user.to_string()), "{name}: {user} unknown after restart: {users:?}");
    }

    // The typist types every 2 s throughout; the idler and the quiet
    // command are warned and disconnected, on time.
    let typing = std::sync::atomic::AtomicBool::new(true);
    let (idle_end, notty_end, typed) = std::thread::scope(|scope| {
        let typist = scope.spawn(|| {
            let mut n = 0;
            while typing.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                c.ok(&format!("tmux send-keys -t typist 'echo typed-{n}' Enter"));
                std::thread::sleep(Duration::from_secs(2));
            }
            n
        });
        let screen = |pane: &str| c.ok(&format!("tmux capture-pane -p -t {pane}"));
        let warned = wait_screen(&c, "idle", "sshidle: this session has been idle", Duration::from_secs(30));
        let (mut idle_end, mut notty_end) = (None, None);
        wait_until(Duration::from_secs(40), || {
            if idle_end.is_none() && screen("idle").contains("SSH-EXITED") {
                idle_end = Some(unix_now() - logins["idler"] as f64);
            }
            if notty_end.is_none() && screen("notty").contains("SSH-EXITED") {
                notty_end = Some(unix_now() - logins["notty"] as f64);
            }
            idle_end.is_some() && notty_end.is_some()
        });
        // Typing goes on until well past the typist's limit (twice over).
        while unix_now() - (logins["typist"] as f64) < 30.0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        typing.store(false, std::sync::atomic::Ordering::SeqCst);
        let typed = typist.join().expect("the typist's thread");
        assert!(warned, "{name}: no warning on the idle pty:\n{}", screen("idle"));
        (idle_end, notty_end, typed)
    });
    let past_login = idle_end.unwrap_or_else(|| panic!("{name}: the idle pty was not disconnected"));
    eprintln!("{name}: idle=12s pty disconnected {past_login:.1} s after its recorded login");
    // Not before the limit; the kernel's 8-second tty timestamps, the sweep
    // and a loaded machine allow some seconds past it.
    assert!(past_login >= 12.0, "{name}: disconnected {past_login:.1} s after login, before its 12 s limit");
    assert!(past_login <= 12.0 + 1.0 + 8.0 + 5.0, "{name}: disconnected {past_login:.1} s after login");
    let notty_past = notty_end.unwrap_or_else(|| panic!("{name}: the quiet command was not disconnected"));
    eprintln!("{name}: idle=12s command without a pty disconnected {notty_past:.1} s after its recorded login");
    // Its counters read every second (limit/10) from a second after login.
    assert!(notty_past >= 12.0, "{name}: the command was ended {notty_past:.1} s after login");
    assert!(notty_past <= 12.0 + 3.0 + 5.0, "{name}: the command was ended {notty_past:.1} s after login");
    let left = || c.ok("pgrep -u notty -a || true");
    assert!(wait_until(Duration::from_secs(8), || left().trim().is_empty()), "{name}: notty's processes: {}", left());
    let typist_screen = c.ok("tmux capture-pane -p -t typist");
    assert!(!typist_screen.contains("SSH-EXITED"), "{name}: the typist was disconnected:\n{typist_screen}");
    assert!(typist_screen.contains(&format!("typed-{typed}")), "{name}: the typing was not seen:\n{typist_screen}");
    let users = c.status_users();
    assert!(users.contains(&"typist".to_string()) && users.contains(&"busy".to_string()), "{name}: {users:?}");
    assert_eq!(c.main_pid(), new_pid, "the enforcer stayed up");
    assert_eq!(c.ok("systemctl show -p NRestarts --value sshidle").trim(), "0", "the enforcer never restarted itself");
    let denials = c.ok("journalctl -b --no-pager -o cat | grep -i -E 'apparmor=|seccomp|audit.*sshidlectl' || true");
    assert!(denials.trim().is_empty(), "{name}: denials under the unit's hardening:\n{denials}");

    // The logout is recorded where this release records logouts, as an
    // ordinary one is.
    let plain = logouts(&c, release, "plain");
    let idler = logouts(&c, release, "idler");
    eprintln!("{name}: logout records:\n  {}\n  {}", plain.join("\n  "), idler.join("\n  "));
    assert!(!idler.is_empty(), "{name}: no login of idler recorded");
    for line in &idler {
        assert!(
            !line.contains("still logged in") && !line.contains("gone") && !line.contains("crash"),
            "{name}: idler's logout not recorded: {line}"
        );
    }
    // sshd logs nothing for the enforced disconnects that it does not log
    // for an ordinary logout.
    let enforced = error_lines(&sshd_journal_since(&c, &cursor));
    eprintln!("{name}: sshd's error lines for the enforced disconnects: {enforced:#?}");
    // OpenSSH 10 logs `error: mm_reap: ... child terminated by signal 15`
    // for a session whose monitor got a SIGTERM (seen failing here before
    // issue 20 ended sessions the way a client's close does).
    let extra: Vec<&String> = enforced.difference(&ordinary).collect();
    assert!(extra.is_empty(), "{name}: sshd logged errors for the enforced disconnects only: {extra:#?}");

    // keepalive reloads sshd through systemctl; the listener answers; sshd
    // logs no error for the check.
    let cursor = journal_cursor(&c);
    let out = c.ok("sshidlectl keepalive --interval 45 --count-max 2");
    assert!(out.contains("systemctl"), "keepalive reloaded sshd through systemctl: {out}");
    assert!(c.ok("sshd -T | grep -i '^clientaliveinterval '").contains("45"));
    assert!(c.ok("sshd -T | grep -i '^clientalivecountmax '").contains('2'));
    c.ok(&format!("{ssh} busy@127.0.0.1 true"));
    let sshd_log = sshd_journal_since(&c, &cursor);
    assert!(
        !sshd_log.contains("error:") && !sshd_log.contains("kex_exchange_identification"),
        "{name}: sshd logged errors for keepalive's check:\n{sshd_log}"
    );
    let show = c.ok("sshidlectl keepalive --show");
    assert!(show.contains("ClientAliveInterval") && show.contains("45"), "{name}: keepalive --show: {show}");

    // dpkg -r: the PAM line and the keepalive drop-in go (sshd reloaded); no
    // phantom LSB unit is left by the init script.
    c.ok("DEBIAN_FRONTEND=noninteractive dpkg -r sshidle </dev/null");
    assert_eq!(c.ok("cat /etc/pam.d/common-session"), common_before, "dpkg -r: common-session as it began");
    assert_eq!(
        differences(&pam_before, &c.tree("/etc/pam.d")),
        Vec::<String>::new(),
        "dpkg -r: /etc/pam.d as it began"
    );
    assert_eq!(differences(&ssh_before, &c.tree("/etc/ssh")), Vec::<String>::new(), "dpkg -r: /etc/ssh as it began");
    assert!(c.ok("sshd -T | grep -i '^clientaliveinterval '").contains(" 0"), "sshd reloaded without the drop-in");
    let start = c.sh("systemctl start sshidle");
    assert!(!start.status.success(), "systemctl start sshidle after dpkg -r: {}", describe(&start));
    assert_ne!(c.sh("systemctl is-active sshidle").stdout, b"active\n");
    assert!(c.sh("systemctl cat sshidle").stdout.is_empty(), "a unit sshidle.service exists after dpkg -r");

    // Reinstall after remove, then purge; reinstall after purge, then purge.
    for round in ["after dpkg -r", "after dpkg -P"] {
        c.ok(&format!("DEBIAN_FRONTEND=noninteractive dpkg -i {DEB_MOUNT}/{deb_name} </dev/null"));
        assert_eq!(c.ok("systemctl is-active sshidle").trim(), "active", "reinstall {round}");
        assert!(pam_line_in_common_session(), "reinstall {round}");
        if round == "after dpkg -r" {
            // The runtime state outlives a remove: the open session is still known.
            assert!(c.status_users().contains(&"busy".to_string()), "reinstall {round}: busy's session lost");
        }
        c.ok("DEBIAN_FRONTEND=noninteractive dpkg -P sshidle </dev/null");
        assert!(c.sh("test -e /etc/security/sshidle.conf || test -e /var/lib/sshidle").status.code() == Some(1));
        assert!(c.sh("systemctl cat sshidle").stdout.is_empty());
    }
    assert_eq!(differences(&pam_before, &c.tree("/etc/pam.d")), Vec::<String>::new(), "/etc/pam.d ends as it began");
    assert_eq!(differences(&ssh_before, &c.tree("/etc/ssh")), Vec::<String>::new(), "/etc/ssh ends as it began");
    // The journal (kept across remove and purge): each enforcer line once,
    // with its priority.
    let journal = enforcer_journal(&c);
    for user in ["idler", "notty"] {
        let disconnecting: Vec<_> =
            journal.iter().filter(|(m, _, _)| m.contains("disconnecting") && m.contains(user)).collect();
        assert_eq!(disconnecting.len(), 1, "{name}: {user}'s disconnect is in the journal once: {journal:#?}");
        assert_eq!(disconnecting[0].1, "5", "logged as notice: {:?}", disconnecting[0]);
    }
    let mut seen = BTreeMap::new();
    for (message, _, transport) in &journal {
        seen.entry(message.clone()).or_insert_with(Vec::new).push(transport.clone());
    }
    let twice: Vec<_> = seen.iter().filter(|(_, t)| t.iter().collect::<BTreeSet<_>>().len() > 1).collect();
    assert!(twice.is_empty(), "enforcer lines in the journal through two transports: {twice:#?}");

    let _ = std::io::stderr().flush();
    eprintln!("{name}: systemd e2e: {:?} in all", started.elapsed());
}

#[test]
fn the_package_on_debian_12() {
    package_on_a_real_systemd(&BOOKWORM);
}

#[test]
fn the_package_on_debian_13() {
    package_on_a_real_systemd(&TRIXIE);
}

/// sid moves under our feet (its OpenSSH, systemd and gcc change every few
/// weeks): checked by hand, and the result given in the issue.
#[test]
#[ignore = "Debian sid, by hand: cargo test -p sshidle-tests --test systemd_e2e -- --ignored"]
fn the_package_on_debian_sid() {
    package_on_a_real_systemd(&SID);
}

/// Builds the work tree in a chroot of `release`'s root (on an overlay, in a
/// mount namespace of its own, with this machine's /dev: the unit tests open
/// ptys) with that release's gcc, rustc and cargo:
/// `cargo build --workspace`, every target too (the tests and benches
/// `make test` builds: Debian 13's rustc 1.85 is the workspace's
/// rust-version, and an API stabilized later fails there only), then the
/// unit tests of the three crates. The build tree is kept under the target
/// dir for the next run.
fn builds_on(release: &Release) {
    if !e2e_enabled() {
        return;
    }
    let name = release.name;
    let pristine = pristine_root(release);
    let build = cache_dir().join(format!("{}-build", release.suite));
    std::fs::create_dir_all(&build).expect("build dir");
    let dir = TempDir::new("chroot-build");
    for sub in ["upper", "work", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    // The crates this machine's cargo downloaded for the same Cargo.lock,
    // read-only; without them cargo fetches from crates.io (with this
    // machine's CA bundle: a proxy's certificate may be in it only).
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let registry = cargo_home.join("registry");
    let (registry_mount, offline) = if registry.join("cache").is_dir() {
        (
            format!("mkdir -p $r/cargo/registry && mount --bind -o ro {} $r/cargo/registry", registry.display()),
            "--offline",
        )
    } else {
        ("true".to_string(), "")
    };
    let inside = format!(
        "cd /src && export CARGO_HOME=/cargo CARGO_TARGET_DIR=/build CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt \
         CARGO_TERM_COLOR=never && cargo --version && gcc --version | head -n 1 && \
         cargo build --workspace --locked {offline} && cargo build --workspace --all-targets --locked {offline} && \
         cargo test --locked {offline} -p sshidle-core -p sshidlectl -p pam-sshidle --lib --bins 2>&1"
    );
    let script = format!(
        "set -e; r={d}/root; \
         mount -t overlay overlay -o lowerdir={p},upperdir={d}/upper,workdir={d}/work $r; \
         mount -t proc proc $r/proc; \
         mount --rbind /dev $r/dev; \
         mkdir -p $r/src $r/build $r/cargo; \
         mount --bind -o ro {ws} $r/src; \
         mount --bind {build} $r/build; \
         {registry_mount}; \
         cp /etc/resolv.conf $r/etc/resolv.conf; \
         cp /etc/ssl/certs/ca-certificates.crt $r/etc/ssl/host-ca.crt; \
         exec chroot $r /bin/sh -c '{inside}'",
        d = dir.path.display(),
        p = pristine.display(),
        ws = workspace.display(),
        build = build.display(),
    );
    let started = Instant::now();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .expect("unshare + chroot");
    let log = text(&out.stdout);
    assert!(out.status.success(), "{name}: the build or its unit tests failed: {}", describe(&out));
    let results: Vec<&str> = log.lines().filter(|l| l.starts_with("test result:")).collect();
    let passed: usize = results
        .iter()
        .filter_map(|l| l.strip_prefix("test result: ok. ")?.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert!(results.len() >= 3 && results.iter().all(|l| l.starts_with("test result: ok.")), "{name}:\n{log}");
    assert!(passed >= 150, "{name}: {passed} unit tests passed:\n{log}");
    eprintln!(
        "{name}: {} built the workspace and passed its unit tests in {:?}",
        log.lines().next().unwrap_or("cargo"),
        started.elapsed()
    );
}

#[test]
fn the_project_builds_on_debian_13() {
    builds_on(&TRIXIE);
}

#[test]
#[ignore = "Debian sid, by hand: cargo test -p sshidle-tests --test systemd_e2e -- --ignored"]
fn the_project_builds_on_debian_sid() {
    builds_on(&SID);
}

#[test]
fn the_package_is_lintian_clean() {
    let deb = sshidle_tests::deb::built_deb();
    let changes = deb.with_extension("changes");
    let out = Command::new("lintian")
        .args(["--pedantic", "--fail-on", "none"])
        .arg(&changes)
        .output()
        .expect("lintian (in .ci/packages)");
    assert!(out.status.success(), "lintian: {}", describe(&out));
    let problems: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("P:"))
        .map(String::from)
        .collect();
    assert!(problems.is_empty(), "lintian on {}:\n{}", changes.display(), problems.join("\n"));
}
