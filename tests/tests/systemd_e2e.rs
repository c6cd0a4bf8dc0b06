//! Issue 10: the Debian package on a real systemd. A Debian 12 root made by
//! debootstrap (cached under the cargo target directory) is booted with
//! systemd-nspawn on an overlay, so every run starts from the same pristine
//! system; the freshly built `.deb` is installed inside, and everything is
//! checked through real ssh logins inside the container (commands run in its
//! namespaces with nsenter):
//! - the hardened unit starts and stays up;
//! - an idle pty is warned and disconnected, on time, through close_session;
//! - `systemctl reload sshidle` and `restart` keep the open sessions known;
//! - `sshidlectl keepalive` reloads sshd through systemctl, the listener
//!   answers, and sshd logs no error for the check;
//! - the enforcer's lines reach the journal once, with their priority;
//! - `dpkg -r` takes the PAM line and the keepalive drop-in away (no phantom
//!   LSB unit left), reinstalling works, `dpkg -P` removes the rest, and
//!   `/etc/pam.d/sshd` and `/etc/ssh` end byte for byte as they began.
//!
//! The container (and its overlay mount, which lives only in the mount
//! namespace nspawn runs in) is torn down on drop, also when a check fails.

use sshidle_tests::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What the root has besides debootstrap's minimal base.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,openssh-server,libpam-systemd,tmux,procps";
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

/// A pristine debootstrapped bookworm, made once and kept in the target dir.
fn pristine_root() -> PathBuf {
    let cache = target_dir().parent().expect("target dir").join("systemd-e2e");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let lock = std::fs::File::create(cache.join("lock")).expect("lock");
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    let root = cache.join("bookworm");
    let stamp = cache.join("bookworm.done");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(INCLUDE) {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    let started = Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), "bookworm"])
        .arg(&root)
        .arg(apt_mirror())
        .output()
        .expect("debootstrap (in .ci/packages)");
    assert!(out.status.success(), "debootstrap: {}", describe(&out));
    eprintln!("debootstrap took {:?}", started.elapsed());
    std::fs::write(&stamp, INCLUDE).expect("stamp");
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

#[test]
fn the_package_on_a_real_systemd() {
    if !e2e_enabled() {
        return;
    }
    for tool in ["debootstrap", "systemd-nspawn", "nsenter", "unshare"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            skip_or_fail(&format!("{tool} is missing (it is in .ci/packages: make test installs it)"));
            return;
        }
    }
    let deb = sshidle_tests::deb::built_deb();
    let pristine = pristine_root();
    let started = Instant::now();
    let c = Container::boot(&pristine, deb.parent().expect("deb dir"));
    eprintln!("booted in {:?}", started.elapsed());
    let pam_before = c.ok("cat /etc/pam.d/sshd");
    c.ok("cp -p /etc/pam.d/sshd /root/pam-before");
    let ssh_before = c.tree("/etc/ssh");
    assert_eq!(c.ok("systemctl is-active ssh").trim(), "active", "sshd runs in the container");

    // Install.
    let deb_name = deb.file_name().unwrap().to_string_lossy().to_string();
    c.ok(&format!("DEBIAN_FRONTEND=noninteractive dpkg -i {DEB_MOUNT}/{deb_name} </dev/null"));
    assert!(c.ok("cat /etc/pam.d/sshd").contains("pam_sshidle.so"));
    assert_eq!(c.ok("systemctl is-active sshidle").trim(), "active");
    assert_eq!(c.ok("systemctl is-enabled sshidle").trim(), "enabled");
    let pid = c.main_pid();
    // What the package added is the package's: the admin's `sshidlectl
    // uninstall` leaves it and says so.
    let out = c.ok("sshidlectl uninstall");
    assert!(out.contains("the sshidle package added"), "{out}");
    assert!(c.ok("cat /etc/pam.d/sshd").contains("pam_sshidle.so"), "the package's PAM line kept");
    assert_eq!(c.main_pid(), pid, "the package's service kept");

    // /etc/pam.d/sshd replaced later (openssh-server installed or upgraded
    // after sshidle): the package's file trigger puts the line back.
    c.ok("cp -p /etc/pam.d/sshd /root/pam-with-line && cp -p /root/pam-before /etc/pam.d/sshd");
    c.ok("dpkg-trigger --no-await /etc/pam.d/sshd && dpkg --triggers-only --pending");
    assert_eq!(c.ok("cat /etc/pam.d/sshd"), c.ok("cat /root/pam-with-line"), "the trigger put the line back");

    // Two users: one idles on a pty, one runs a command with no limit.
    c.ok("useradd -m idler && useradd -m busy && ssh-keygen -q -t ed25519 -N '' -f /root/key && \
          for u in idler busy; do install -d -o $u -m 700 /home/$u/.ssh && \
          install -o $u -m 600 /root/key.pub /home/$u/.ssh/authorized_keys; done");
    c.ok("printf 'user idler idle=12s warn=6s\\nuser busy idle=off\\n' >/etc/security/sshidle.conf");
    let ssh = "ssh -i /root/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes";
    c.ok(&format!("tmux new-session -d -s busy -x 100 -y 20 '{ssh} busy@127.0.0.1 sleep 600'"));
    assert!(wait_until(Duration::from_secs(15), || c.status_users().contains(&"busy".to_string())));

    // Reload and restart: the sessions stay known.
    c.ok("systemctl reload sshidle");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.main_pid(), pid, "reload keeps the enforcer");
    assert!(c.status_users().contains(&"busy".to_string()), "busy's session known after reload");
    c.ok(&format!(
        "tmux new-session -d -s idle -x 100 -y 20 '{ssh} -t idler@127.0.0.1; echo SSH-EXITED $?; sleep 600'"
    ));
    let mut login = None;
    assert!(wait_until(Duration::from_secs(15), || {
        login = recorded_login(&c, "idler");
        login.is_some()
    }));
    let login = login.unwrap();
    c.ok("systemctl restart sshidle");
    let new_pid = c.main_pid();
    assert_ne!(new_pid, pid, "restart started a new enforcer");
    let users = c.status_users();
    assert!(users.contains(&"busy".to_string()) && users.contains(&"idler".to_string()), "after restart: {users:?}");

    // The idle pty: warned on its terminal, then disconnected, on time.
    let screen = || c.ok("tmux capture-pane -p -t idle");
    let warned = wait_until(Duration::from_secs(30), || screen().contains("sshidle: this session has been idle"));
    assert!(warned, "no warning on the pty:\n{}", screen());
    let ended = wait_until(Duration::from_secs(40), || screen().contains("SSH-EXITED"));
    let past_login = unix_now() - login as f64;
    assert!(ended, "the idle pty was not disconnected:\n{}", screen());
    eprintln!("idle=12s pty disconnected {past_login:.1} s after its recorded login");
    // Not before the limit; the kernel's 8-second tty timestamps, the sweep
    // and a loaded machine allow some seconds past it.
    assert!(past_login >= 12.0, "disconnected {past_login:.1} s after login, before its 12 s limit");
    assert!(past_login <= 12.0 + 1.0 + 8.0 + 5.0, "disconnected {past_login:.1} s after login");
    assert!(c.status_users().contains(&"busy".to_string()), "busy's session (no limit) kept");
    assert_eq!(c.main_pid(), new_pid, "the enforcer stayed up");
    assert_eq!(c.ok("systemctl show -p NRestarts --value sshidle").trim(), "0", "the enforcer never restarted itself");
    let denials = c.ok("journalctl -b --no-pager -o cat | grep -i -E 'apparmor=|seccomp|audit.*sshidlectl' || true");
    assert!(denials.trim().is_empty(), "denials under the unit's hardening:\n{denials}");

    // keepalive reloads sshd through systemctl; the listener answers; sshd
    // logs no error for the check.
    let cursor = c.ok("journalctl -u ssh -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'");
    let out = c.ok("sshidlectl keepalive --interval 45 --count-max 2");
    assert!(out.contains("systemctl"), "keepalive reloaded sshd through systemctl: {out}");
    assert!(c.ok("sshd -T | grep -i '^clientaliveinterval '").contains("45"));
    c.ok(&format!("{ssh} busy@127.0.0.1 true"));
    let sshd_log = c.ok(&format!("journalctl -u ssh --no-pager -o cat --after-cursor='{}'", cursor.trim()));
    assert!(
        !sshd_log.contains("error:") && !sshd_log.contains("kex_exchange_identification"),
        "sshd logged errors for keepalive's check:\n{sshd_log}"
    );

    // dpkg -r: the PAM line and the keepalive drop-in go (sshd reloaded); no
    // phantom LSB unit is left by the init script.
    c.ok("DEBIAN_FRONTEND=noninteractive dpkg -r sshidle </dev/null");
    assert_eq!(c.ok("cat /etc/pam.d/sshd"), pam_before, "dpkg -r: /etc/pam.d/sshd as it began");
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
        assert!(c.ok("cat /etc/pam.d/sshd").contains("pam_sshidle.so"), "reinstall {round}");
        if round == "after dpkg -r" {
            // The runtime state outlives a remove: the open session is still known.
            assert!(c.status_users().contains(&"busy".to_string()), "reinstall {round}: busy's session lost");
        }
        c.ok("DEBIAN_FRONTEND=noninteractive dpkg -P sshidle </dev/null");
        assert!(c.sh("test -e /etc/security/sshidle.conf || test -e /var/lib/sshidle").status.code() == Some(1));
        assert!(c.sh("systemctl cat sshidle").stdout.is_empty());
    }
    assert_eq!(c.ok("cat /etc/pam.d/sshd"), pam_before, "/etc/pam.d/sshd ends as it began");
    assert_eq!(differences(&ssh_before, &c.tree("/etc/ssh")), Vec::<String>::new(), "/etc/ssh ends as it began");
    // The journal (kept across remove and purge): each enforcer line once,
    // with its priority.
    let journal = enforcer_journal(&c);
    let disconnecting: Vec<_> =
        journal.iter().filter(|(m, _, _)| m.contains("disconnecting") && m.contains("idler")).collect();
    assert_eq!(disconnecting.len(), 1, "the disconnect is in the journal once: {journal:#?}");
    assert_eq!(disconnecting[0].1, "5", "logged as notice: {:?}", disconnecting[0]);
    let mut seen = BTreeMap::new();
    for (message, _, transport) in &journal {
        seen.entry(message.clone()).or_insert_with(Vec::new).push(transport.clone());
    }
    let twice: Vec<_> =
        seen.iter().filter(|(_, t)| t.iter().collect::<std::collections::BTreeSet<_>>().len() > 1).collect();
    assert!(twice.is_empty(), "enforcer lines in the journal through two transports: {twice:#?}");

    let _ = std::io::stderr().flush();
    eprintln!("systemd e2e: {:?} in all", started.elapsed());
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
