//! The Ansible role `contrib/ansible/roles/sshidle` (issue 12), run by a real
//! `ansible-playbook` against this machine with a local connection.
//!
//! The machine is shared with other tests, so the role runs inside private
//! mount and PID namespaces: overlays (upper layers on a tmpfs) over every
//! directory it changes (/etc, /usr/local, the PAM module directory, /var/lib,
//! /var/cache), a tmpfs over /run, and its own /proc, so that the enforcer it
//! starts sees no other test's sessions. Everything goes with the namespace;
//! the real /etc/pam.d/sshd is checked byte for byte afterwards.

use sshidle_tests::private_system;
use sshidle_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

const OVERLAID: [&str; 6] =
    ["etc", "usr/local", "usr/lib/x86_64-linux-gnu/security", "lib/x86_64-linux-gnu/security", "var/lib", "var/cache"];

struct Namespace {
    unshare: Child,
    /// PID (in our namespace) of the namespace's init.
    init: i32,
}

impl Namespace {
    fn start(dir: &Path) -> Namespace {
        let ovl = dir.join("ovl");
        std::fs::create_dir_all(&ovl).unwrap();
        let mut script = format!("set -e\nmount -t tmpfs sshidle-test {}\n", ovl.display());
        for (i, d) in OVERLAID.iter().enumerate() {
            // Debian 12 has merged /usr: /lib/... may be the same directory as
            // /usr/lib/...; overlay each real directory once.
            script.push_str(&format!(
                "if [ -d /{d} ] && ! [ -e {o}/seen-$(stat -c %d-%i /{d}) ]; then\n\
                 touch {o}/seen-$(stat -c %d-%i /{d}); mkdir -p {o}/{i}/up {o}/{i}/work\n\
                 mount -t overlay sshidle-test -o lowerdir=/{d},upperdir={o}/{i}/up,workdir={o}/{i}/work /{d}\nfi\n",
                o = ovl.display()
            ));
        }
        script.push_str("mount -t tmpfs -o mode=0755 sshidle-test /run\n");
        // An installation on the real system (make install) is taken away
        // inside only (fresh /run, own PID namespace: the real enforcer is
        // out of reach), so that the role starts from a machine without it.
        script.push_str(&format!("{{\n{}}} >/dev/null 2>&1\n", private_system::take_away_script(&ovl)));
        script.push_str("echo ready\nexec sleep 100000\n");
        let (unshare, line) = private_system::hold_namespace(&["--pid", "--fork", "--mount-proc"], &script);
        let pid = unshare.id();
        let init = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        let ns = Namespace { unshare, init };
        assert!(line.trim() == "ready" && ns.init > 0, "namespace setup failed: {line:?}");
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-m", "-p", "--", program]);
        cmd
    }

    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let out = self.command("cat").arg(path).output().unwrap();
        out.status.success().then_some(out.stdout)
    }

    fn exists(&self, path: &str) -> bool {
        self.command("test").args(["-e", path]).status().unwrap().success()
    }

    /// Command lines of the processes inside the namespace.
    fn processes(&self) -> String {
        String::from_utf8_lossy(&self.command("ps").args(["-eo", "stat,args"]).output().unwrap().stdout).into_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The namespace's init takes every process of the namespace with it.
        signal(self.init, libc::SIGKILL);
        let _ = self.unshare.wait();
    }
}

struct Playbook<'a> {
    ns: &'a Namespace,
    dir: PathBuf,
    roles: PathBuf,
}

impl Playbook<'_> {
    fn run(&self, extra_vars: &str) -> (Output, String) {
        let out = self
            .ns
            .command("env")
            .arg(format!("HOME={}", self.dir.join("home").display()))
            .arg(format!("ANSIBLE_LOCAL_TEMP={}", self.dir.join("tmp").display()))
            .arg(format!("ANSIBLE_REMOTE_TEMP={}", self.dir.join("tmp").display()))
            .arg(format!("ANSIBLE_ROLES_PATH={}", self.roles.display()))
            .args(["ANSIBLE_NOCOLOR=1", "ANSIBLE_RETRY_FILES_ENABLED=0", "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3"])
            .args(["ansible-playbook", "-i", "localhost,", "-c", "local"])
            .arg(self.dir.join("play.yml"))
            .args(["-e", extra_vars])
            .output()
            .expect("ansible-playbook");
        let recap = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("localhost") && l.contains("changed="))
            .unwrap_or_default()
            .to_string();
        (out, recap)
    }
}

fn field(recap: &str, key: &str) -> u32 {
    recap
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {recap:?}"))
}

#[test]
fn role_installs_deploys_validates_is_idempotent_and_removes() {
    if !e2e_enabled() {
        return;
    }
    assert!(
        Path::new("/usr/bin/ansible-playbook").exists(),
        "ansible-playbook is missing: install ansible-core (.ci/packages)"
    );
    assert!(
        Path::new("/var/lib/prometheus/node-exporter").is_dir(),
        "no node_exporter textfile directory: install prometheus-node-exporter (.ci/packages)"
    );
    let real_pam = std::fs::read("/etc/pam.d/sshd").expect("/etc/pam.d/sshd");
    let temp = TempDir::new("ansible");
    let dir = temp.path.clone();
    for sub in ["home", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join("play.yml"),
        format!(
            "- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: sshidle\n      \
             sshidle_build_dir: {build}\n      sshidle_service_use: sysvinit\n",
            build = target_dir().display()
        ),
    )
    .unwrap();
    let good = r#"{"sshidle_rules": [{"selector": "user backup", "settings": "idle=off"},
                   {"selector": "*", "settings": "idle=15m warn=1m", "comment": "everyone else"}],
                   "sshidle_keepalive_settings": "interval=60 count-max=3",
                   "sshidle_textfile_dir": "/var/lib/prometheus/node-exporter",
                   "sshidle_dropins": [{"name": "50-dba", "rules": [{"selector": "group dba", "settings": "idle=1h warn=5m"}]}]}"#;
    let ns = Namespace::start(&dir);
    // As the namespace began (the real one less an installation of sshidle).
    let ns_pam = ns.read("/etc/pam.d/sshd").expect("/etc/pam.d/sshd in the namespace");
    let play = Playbook { ns: &ns, dir: dir.clone(), roles: repo.join("contrib/ansible/roles") };

    // First run: installed, policy and drop-in in place, enforcer running.
    let (out, recap) = play.run(good);
    assert!(out.status.success() && field(&recap, "failed") == 0, "first run: {}", describe(&out));
    assert!(field(&recap, "changed") > 0, "{recap}");
    let pam = String::from_utf8(ns.read("/etc/pam.d/sshd").unwrap()).unwrap();
    assert!(pam.lines().any(|l| l.split_whitespace().nth(2) == Some("pam_sshidle.so")), "{pam}");
    let policy = String::from_utf8(ns.read("/etc/security/sshidle.conf").expect("policy")).unwrap();
    assert!(
        policy.contains("user backup  idle=off\n") && policy.contains("keepalive  interval=60 count-max=3"),
        "{policy}"
    );
    assert!(ns.exists("/etc/security/sshidle.conf.d/50-dba.conf"));
    assert!(ns.exists("/lib/x86_64-linux-gnu/security/pam_sshidle.so"));
    let check = ns.command("/usr/local/sbin/sshidlectl").arg("check").output().unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("3 rules (with 1 drop-in), no errors"),
        "{}",
        describe(&check)
    );
    assert!(
        ns.processes().lines().any(|l| !l.starts_with('Z') && l.contains("/usr/local/sbin/sshidlectl enforce")),
        "no enforcer running:\n{}",
        ns.processes()
    );
    // The policy's metrics line: the enforcer keeps node_exporter's textfile.
    assert!(policy.contains("metrics  textfile-dir=/var/lib/prometheus/node-exporter\n"), "{policy}");
    let textfile = "/var/lib/prometheus/node-exporter/sshidle.prom";
    assert!(
        wait_until(std::time::Duration::from_secs(5), || ns
            .read(textfile)
            .is_some_and(|t| t.starts_with(b"# HELP sshidle_enforcer_up"))),
        "no {textfile} in the namespace"
    );
    assert!(!Path::new(textfile).exists(), "the textfile leaked out of the namespace");
    // Outside the namespace nothing changed.
    assert_eq!(std::fs::read("/etc/pam.d/sshd").unwrap(), real_pam);
    assert!(!Path::new("/etc/security/sshidle.conf.d/50-dba.conf").exists(), "the drop-in leaked out");

    // Second run: nothing to change.
    let (out, recap) = play.run(good);
    assert!(out.status.success(), "second run: {}", describe(&out));
    assert_eq!(field(&recap, "changed"), 0, "second run changed something: {}", describe(&out));

    // A bad policy variable: refused by validate, reported as FILE:LINE, nothing changed.
    let before = ns.read("/etc/security/sshidle.conf").unwrap();
    let bad = r#"{"sshidle_rules": [{"selector": "user backup", "settings": "idle=off"}, {"selector": "*", "settings": "idle=15q"}]}"#;
    let (out, recap) = play.run(bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && field(&recap, "failed") == 1, "bad policy accepted: {}", describe(&out));
    assert!(stdout.contains("failed to validate") && stdout.contains(":4: idle: invalid duration '15q'"), "{stdout}");
    assert_eq!(field(&recap, "changed"), 0, "{recap}");
    assert_eq!(ns.read("/etc/security/sshidle.conf").unwrap(), before, "the bad policy replaced the good one");
    let (out, recap) = play.run(good);
    assert_eq!(field(&recap, "changed"), 0, "after the refused run: {}", describe(&out));

    // Removed: the PAM file byte for byte as it was, nothing of sshidle left.
    let (out, recap) = play.run(&good.replacen('{', r#"{"sshidle_state": "absent", "#, 1));
    assert!(out.status.success() && field(&recap, "changed") > 0, "removal: {}", describe(&out));
    assert_eq!(ns.read("/etc/pam.d/sshd").unwrap(), ns_pam, "/etc/pam.d/sshd differs after removal");
    for gone in [
        "/etc/security/sshidle.conf",
        "/etc/security/sshidle.conf.d",
        "/lib/x86_64-linux-gnu/security/pam_sshidle.so",
        "/usr/local/sbin/sshidlectl",
        "/usr/local/lib/sshidle",
        "/etc/init.d/sshidle",
        "/var/lib/sshidle",
    ] {
        assert!(!ns.exists(gone), "{gone} left after removal");
    }
    assert!(
        !ns.processes().lines().any(|l| !l.starts_with('Z') && l.contains("sshidlectl enforce")),
        "enforcer still running after removal:\n{}",
        ns.processes()
    );
    let (out, recap) = play.run(&good.replacen('{', r#"{"sshidle_state": "absent", "#, 1));
    assert_eq!(field(&recap, "changed"), 0, "second removal: {}", describe(&out));

    drop(ns);
    assert_eq!(std::fs::read("/etc/pam.d/sshd").unwrap(), real_pam, "the real /etc/pam.d/sshd changed");
}

#[test]
fn example_playbook_passes_syntax_check() {
    if !e2e_enabled() {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let temp = TempDir::new("ansible-syntax");
    let out = Command::new("ansible-playbook")
        .env("HOME", &temp.path)
        .env("ANSIBLE_LOCAL_TEMP", &temp.path)
        .env("ANSIBLE_ROLES_PATH", repo.join("contrib/ansible/roles"))
        .args(["--syntax-check", "-i", "localhost,"])
        .arg(repo.join("contrib/ansible/example-playbook.yml"))
        .output()
        .expect("ansible-playbook");
    assert!(out.status.success(), "{}", describe(&out));
}
