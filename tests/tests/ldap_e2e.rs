//! Directory users and groups (issue 12), against the real thing: Debian's
//! `slapd` holds a user and two groups that exist only in the directory, and
//! NSS reaches it through `libnss-ldapd`/`nslcd`.
//!
//! The machine's NSS configuration is never changed: `nslcd` and the test's
//! sshd run inside a private mount namespace where `/etc/nsswitch.conf`,
//! `/etc/nslcd.conf` and `/run/nslcd` are the test's own (bind mounts that
//! vanish with the namespace). The test checks that both files are byte for
//! byte what they were, and that the directory's user is unknown outside.

use sshidle_tests::private_system;
use sshidle_tests::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "dc=sshidle,dc=test";
/// The module's bound in this test (`nss_timeout=`).
const BOUND: Duration = Duration::from_secs(1);
/// nslcd's own limits: a stopped server makes it wait several times this,
/// far past BOUND, as a real directory outage does.
const NSLCD_TIMELIMIT_SECS: u32 = 2;

struct Slapd {
    child: Child,
    port: u16,
}

impl Slapd {
    /// A slapd of the test's own on 127.0.0.1, loaded with `ldif`.
    fn start(dir: &Path, ldif: &str) -> Slapd {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 pidfile {dir}/slapd.pid\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"{BASE}\"\n\
                 rootdn \"cn=admin,{BASE}\"\n\
                 directory {db}\n",
                dir = dir.display(),
                db = db.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("data.ldif"), ldif).unwrap();
        run(Command::new("slapadd").args(["-q", "-f"]).arg(&conf).arg("-l").arg(dir.join("data.ldif")));
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.join("slapd.log")).unwrap();
            let mut child = Command::new("slapd")
                .args(["-d", "0", "-h", &format!("ldap://127.0.0.1:{port}/"), "-f"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("slapd (Debian package slapd)");
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_))) || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Slapd { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.join("slapd.log")).unwrap_or_default();
        }
        panic!("slapd did not start:\n{last}");
    }

    fn signal(&self, sig: i32) {
        signal(self.child.id() as i32, sig);
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mount namespace whose NSS reads the directory: a holder process keeps
/// it alive, nslcd runs inside it.
struct NssNamespace {
    holder: Child,
    nslcd: i32,
    made_run_nslcd: bool,
}

impl NssNamespace {
    fn start(dir: &Path, ldap_port: u16) -> NssNamespace {
        let system = std::fs::read_to_string("/etc/nsswitch.conf").expect("/etc/nsswitch.conf");
        let nsswitch: String = system
            .lines()
            .map(|line| match line.split(':').next().map(str::trim) {
                Some("passwd") => "passwd: files ldap".to_string(),
                Some("group") => "group: files ldap".to_string(),
                _ => line.to_string(),
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(dir.join("nsswitch.conf"), nsswitch).unwrap();
        std::fs::write(
            dir.join("nslcd.conf"),
            format!(
                "uid nslcd\ngid nslcd\nuri ldap://127.0.0.1:{ldap_port}/\nbase {BASE}\n\
                 timelimit {NSLCD_TIMELIMIT_SECS}\nbind_timelimit {NSLCD_TIMELIMIT_SECS}\n"
            ),
        )
        .unwrap();
        // nslcd's socket path is fixed (/run/nslcd/socket); the namespace gets
        // a tmpfs there, and the mount point is made if the system lacks it.
        let made_run_nslcd = !Path::new("/run/nslcd").exists();
        if made_run_nslcd {
            std::fs::create_dir("/run/nslcd").expect("mkdir /run/nslcd");
        }
        let script = format!(
            "set -e\n\
             mount --bind {d}/nsswitch.conf /etc/nsswitch.conf\n\
             mount --bind {d}/nslcd.conf /etc/nslcd.conf\n\
             mount -t tmpfs -o mode=0755 sshidle-test /run/nslcd\n\
             chown nslcd:nslcd /run/nslcd\n\
             /usr/sbin/nslcd -n 2>{d}/nslcd.log &\n\
             echo nslcd=$!\n\
             exec sleep 100000\n",
            d = dir.display()
        );
        let (holder, line) = private_system::hold_namespace(&[], &script);
        let nslcd = line.trim().strip_prefix("nslcd=").and_then(|p| p.parse().ok()).unwrap_or(0);
        let ns = NssNamespace { holder, nslcd, made_run_nslcd };
        assert!(ns.nslcd > 0, "namespace setup failed: {line:?}");
        ns
    }

    /// `nsenter -t HOLDER -m --`: runs a command inside the namespace.
    fn enter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"].map(String::from).to_vec()
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let enter = self.enter();
        let mut cmd = Command::new(&enter[0]);
        cmd.args(&enter[1..]).arg(program);
        cmd
    }
}

impl Drop for NssNamespace {
    fn drop(&mut self) {
        if self.nslcd > 0 {
            signal(self.nslcd, libc::SIGKILL);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        if self.made_run_nslcd {
            // Empty on the system side: the namespace's tmpfs went with it.
            let _ = wait_until(Duration::from_secs(2), || std::fs::remove_dir("/run/nslcd").is_ok());
        }
    }
}

/// A child killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ldif(user: &str, uid: u32, primary: &str, team: &str, home: &Path) -> String {
    format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: sshidle test\ndc: sshidle\n\n\
         dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: uid={user},ou=people,{BASE}\nobjectClass: account\nobjectClass: posixAccount\n\
         uid: {user}\ncn: {user}\nuidNumber: {uid}\ngidNumber: {uid}\nhomeDirectory: {home}\nloginShell: /bin/sh\n\n\
         dn: cn={primary},ou=groups,{BASE}\nobjectClass: posixGroup\ncn: {primary}\ngidNumber: {uid}\n\n\
         dn: cn={team},ou=groups,{BASE}\nobjectClass: posixGroup\ncn: {team}\ngidNumber: {gid}\nmemberUid: {user}\n",
        home = home.display(),
        gid = uid + 1
    )
}

/// Logs `user` in with a long-running command and returns the session's row
/// of `status --json` once it is recorded, with the ssh client still running.
fn login_recorded(sshd: &Sshd, user: &str, within: Duration) -> (Child, serde_json::Value) {
    let args = sshd.ssh_args(user);
    let client = Command::new(&args[0])
        .args(&args[1..])
        .arg("echo in; sleep 120")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut row = None;
    wait_until(within, || {
        // From 127.0.0.1: not the PAM-driven session (192.0.2.7).
        row = sshd
            .status_json()
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["user"] == user && r["from"] == "127.0.0.1")
            .cloned();
        row.is_some()
    });
    let Some(row) = row else {
        let mut client = client;
        let _ = client.kill();
        let out = client.wait_with_output().unwrap();
        panic!("{user}: no session recorded within {within:?}\n{}\nsshd log:\n{}", describe(&out), sshd.log());
    };
    (client, row)
}

/// Ends the client and waits until sshd has closed the session's record.
fn end(sshd: &Sshd, mut client: Child, row: &serde_json::Value) {
    let _ = client.kill();
    let _ = client.wait();
    let gone = wait_until(Duration::from_secs(30), || {
        !sshd.status_json().as_array().unwrap().iter().any(|r| r["id"] == row["id"])
    });
    assert!(gone, "session {} still recorded after its client ended", row["id"]);
}

/// Seconds between the last lines of the `before` and `after` mark files: the
/// time the module's open_session took inside sshd, measured by pam_exec
/// lines around it, not by sshidle.
fn module_time(dir: &Path) -> f64 {
    let last = |name: &str| -> f64 {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no mark in {name}"))
    };
    last("after") - last("before")
}

#[test]
fn directory_users_and_groups_and_a_directory_that_does_not_answer() {
    if !e2e_enabled() {
        return;
    }
    for tool in ["/usr/sbin/slapd", "/usr/sbin/slapadd", "/usr/sbin/nslcd", "/usr/bin/unshare", "/usr/bin/nsenter"] {
        assert!(Path::new(tool).exists(), "{tool} is missing: install slapd, nslcd, libnss-ldapd (.ci/deps)");
    }
    let saved: Vec<(PathBuf, Option<Vec<u8>>)> =
        ["/etc/nsswitch.conf", "/etc/nslcd.conf"].iter().map(|p| (PathBuf::from(p), std::fs::read(p).ok())).collect();
    let temp = TempDir::new("ldap");
    let dir = temp.path.clone();
    let tag = unique_name("");
    let (ldap_user, primary, team) = (format!("ldu{tag}"), format!("ldp{tag}"), format!("ldt{tag}"));
    let uid = 3_000_000 + std::process::id() % 1_000_000;
    let slapd = Slapd::start(&dir, &ldif(&ldap_user, uid, &primary, &team, &dir));
    let ns = NssNamespace::start(&dir, slapd.port);
    let inside = |name: &str| ns.command("getent").args(["passwd", name]).output().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || inside(&ldap_user).status.success()),
        "nslcd does not answer for {ldap_user}:\n{}",
        std::fs::read_to_string(dir.join("nslcd.log")).unwrap_or_default()
    );
    assert!(sshidle::users::lookup_user(&ldap_user).is_none(), "the directory leaked out of the test's namespace");

    let local_group = TestGroup::create("sil");
    let local = TestUser::create("sil", &[&local_group.name]);
    std::fs::write(dir.join("mark.sh"), "#!/bin/sh\ndate +%s.%N >> \"$1\"\n").unwrap();
    let mark = |name: &str| {
        format!(
            "session optional pam_exec.so quiet type=open_session /bin/sh {} {}",
            dir.join("mark.sh").display(),
            dir.join(name).display()
        )
    };
    let sshd = Sshd::start(
        "ldap",
        SshdOptions {
            policy: format!(
                "group {team} idle=7m warn=1m\ngroup {} idle=11m warn=1m\n* idle=13m warn=1m\n",
                local_group.name
            ),
            module_args: format!("nss_timeout={}", BOUND.as_secs()),
            pam_before: mark("before"),
            pam_after: mark("after"),
            launcher: ns.enter(),
            ..SshdOptions::default()
        },
    );
    let policy = sshd.policy_path.display().to_string();
    std::fs::write(
        sshd.dir.join("authorized_keys").join(&ldap_user),
        std::fs::read(sshd.client_key.with_extension("pub")).unwrap(),
    )
    .unwrap();
    sshd.authorize(&local);

    // The directory answers: the directory-only user gets the rule of a
    // directory-only group that is one of its supplementary groups.
    // An enforcer in the namespace too (its NSS reads the directory).
    let enforcer_log = dir.join("enforcer.log");
    let enforcer = Guard(
        ns.command(sshidlectl_path())
            .args(["--config", &policy, "--state-dir"])
            .arg(&sshd.state_dir)
            .args(["enforce", "--utmp", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&enforcer_log).unwrap())
            .spawn()
            .expect("enforcer"),
    );
    let enforcer_output = || std::fs::read_to_string(&enforcer_log).unwrap_or_default();
    // Kept open: the enforcer looks at this session again while the directory is down.
    let (ldap_client, ldap_row) = login_recorded(&sshd, &ldap_user, Duration::from_secs(20));
    assert_eq!(ldap_row["rule"], format!("{policy}:1: group {team}"), "{ldap_row:#}");
    assert_eq!(ldap_row["idle_limit_secs"], 420, "{ldap_row:#}");
    let explain = ns.command(sshidlectl_path()).args(["--config", &policy, "explain", &ldap_user]).output().unwrap();
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(
        text.contains(&format!("rule:   {policy}:1: group {team}")) && text.contains(&primary),
        "{}",
        describe(&explain)
    );
    let (client, row) = login_recorded(&sshd, &local.name, Duration::from_secs(20));
    assert_eq!(row["rule"], format!("{policy}:2: group {}", local_group.name), "{row:#}");
    end(&sshd, client, &row);
    let answered = module_time(&dir);
    assert!(answered < BOUND.as_secs_f64(), "with the directory up the module took {answered:.3}s");

    // The directory stops answering (the server is stopped, its socket still
    // accepts): nslcd waits its own timeouts (seconds, several times over).
    // A session opened now through the real PAM stack of the sshd service,
    // in the namespace, is the first to ask: the module waits BOUND, no more,
    // and records the session with the rule that needs no groups.
    slapd.signal(libc::SIGSTOP);
    // explain, the first to ask, says what a login gets meanwhile.
    let explain = ns.command(sshidlectl_path()).args(["--config", &policy, "explain", &local.name]).output().unwrap();
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(
        text.contains("groups: not read") && text.contains(&format!("{policy}:3: * (groups unread)")),
        "{}",
        describe(&explain)
    );

    let bound = BOUND.as_secs_f64();
    let started = Instant::now();
    let mut driver = ns
        .command(target_dir().join("pam_driver"))
        .args(["/etc/pam.d", &sshd.service, &local.name, "1", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("pam_driver");
    let mut line = String::new();
    let _ = BufReader::new(driver.stdout.take().unwrap()).read_line(&mut line);
    let opened_after = started.elapsed();
    let _ = driver.wait();
    let session: i32 = line.trim().parse().unwrap_or_else(|_| panic!("pam_driver: {line:?}"));
    let waited = module_time(&dir);
    eprintln!(
        "directory stopped: open_session through PAM took {opened_after:?}, the module {waited:.3}s (bound {bound}s)"
    );
    let row = sshd.status_json().as_array().unwrap().iter().find(|r| r["pid"] == session).cloned();
    signal(session, libc::SIGKILL);
    let row = row.unwrap_or_else(|| panic!("session {session} of {} not recorded", local.name));
    assert_eq!(row["rule"], format!("{policy}:3: * (groups unread)"), "{row:#}");
    assert_eq!(row["idle_limit_secs"], 780, "{row:#}");
    assert!(waited >= bound - 0.05, "the module gave up before its bound: {waited:.3}s");
    assert!(waited <= bound + 1.5, "the module delayed the session by {waited:.3}s, bound {bound}s");

    // The policy changes while the directory is down: the enforcer waits for
    // the directory user's account once (its bound, 2 s), keeps the
    // session's limits, stops asking for a minute, and stays responsive.
    let policy_text = std::fs::read_to_string(&sshd.policy_path).unwrap();
    let touched = Instant::now();
    std::fs::write(&sshd.policy_path, format!("{policy_text}# changed\n")).unwrap();
    let told =
        wait_until(Duration::from_secs(10), || enforcer_output().contains("no account or group lookups for 60s"));
    let took = touched.elapsed();
    assert!(told, "the enforcer did not give up on the directory:\n{}", enforcer_output());
    assert!(took <= Duration::from_secs(6), "the enforcer waited {took:?} for the directory");
    let row = sshd.status_json().as_array().unwrap().iter().find(|r| r["id"] == ldap_row["id"]).cloned();
    let row = row.unwrap_or_else(|| panic!("the directory user's session is gone:\n{}", enforcer_output()));
    assert_eq!(
        (row["idle_limit_secs"].as_u64(), row["rule"].as_str()),
        (Some(420), ldap_row["rule"].as_str()),
        "{row:#}"
    );
    eprintln!("directory stopped: the enforcer gave up on it after {took:?}");

    // A real ssh login of the local user meanwhile: sshd's own lookups wait
    // for nslcd (not sshidle's to bound); the module adds at most BOUND, and
    // the login is recorded, with its group rule if NSS answered by then
    // (nslcd gives up on the server after a while), else without groups.
    let started = Instant::now();
    let (client, row) = login_recorded(&sshd, &local.name, Duration::from_secs(120));
    let recorded_after = started.elapsed();
    let waited = module_time(&dir);
    eprintln!("directory stopped: ssh login recorded after {recorded_after:?}, the module took {waited:.3}s of it");
    let rule = row["rule"].as_str().unwrap().to_string();
    assert!(
        rule == format!("{policy}:3: * (groups unread)") || rule == format!("{policy}:2: group {}", local_group.name),
        "{row:#}"
    );
    assert!(waited <= bound + 1.5, "the module delayed the login by {waited:.3}s, bound {bound}s");
    end(&sshd, client, &row);
    slapd.signal(libc::SIGCONT);
    end(&sshd, ldap_client, &ldap_row);
    drop(enforcer);
    drop(sshd);
    drop(ns);
    drop(slapd);
    for (path, before) in saved {
        assert_eq!(std::fs::read(&path).ok(), before, "{} changed", path.display());
    }
}
