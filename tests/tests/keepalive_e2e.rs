//! End to end: `sshidlectl keepalive` against real sshd configurations and a
//! real sshd on 127.0.0.1 (issue 4). Each test has its own sshd, config tree,
//! users and temp dir; the system's sshd configuration is never touched.

use sshidle_tests::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `sshd -T -f CONFIG [-C SPEC]` as keyword (lower case: OpenSSH 10.6
/// prints mixed case) → first value.
fn effective(config: &Path, spec: Option<&str>) -> BTreeMap<String, String> {
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.arg("-T").arg("-f").arg(config);
    if let Some(spec) = spec {
        cmd.arg("-C").arg(spec);
    }
    let out = run(&mut cmd);
    let mut map = BTreeMap::new();
    for line in text(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_ascii_lowercase()).or_insert_with(|| v.to_string());
        }
    }
    map
}

fn keepalive_values(config: &Path) -> (String, String) {
    let e = effective(config, None);
    (e["clientaliveinterval"].clone(), e["clientalivecountmax"].clone())
}

/// Every file under `dir` with its exact bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Inodes of the sockets a process holds (they change when sshd re-executes on SIGHUP).
fn socket_inodes(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .filter(|t| t.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn keepalive(sshd: &Sshd, args: &[&str]) -> Output {
    let config = sshd.config_path.display().to_string();
    let mut all = vec!["keepalive", "--sshd-config", &config];
    all.extend_from_slice(args);
    sshd.ctl(&all)
}

fn assert_login_works(sshd: &Sshd, user: &TestUser) {
    let out = sshd.ssh(&user.name, "echo still-in");
    assert!(
        out.status.success() && text(&out.stdout).contains("still-in"),
        "login failed: {}\n{}",
        describe(&out),
        sshd.log()
    );
}

/// A configuration tree of the test's own (no sshd running for it).
struct Tree {
    dir: TempDir,
    main: PathBuf,
    policy: PathBuf,
}

impl Tree {
    /// Main file: HostKey and PidFile (lines 1-2), then `body`; `{dir}` in
    /// `body` is the tree's directory.
    fn new(tag: &str, body: &str) -> Tree {
        let dir = TempDir::new(tag);
        ensure_runtime_dirs();
        run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join("host_key")));
        std::fs::create_dir_all(dir.join("conf.d")).expect("conf.d");
        let d = dir.path.display().to_string();
        let main = dir.join("sshd_config");
        std::fs::write(&main, format!("HostKey {d}/host_key\nPidFile {d}/sshd.pid\n{}", body.replace("{dir}", &d)))
            .expect("main");
        let policy = dir.join("sshidle.conf");
        std::fs::write(&policy, "").expect("policy");
        Tree { dir, main, policy }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, contents.replace("{dir}", &self.dir.path.display().to_string())).expect("write");
        p
    }

    fn keepalive(&self, args: &[&str]) -> Output {
        sshidlectl(&self.policy, &self.dir.join("state"))
            .arg("keepalive")
            .arg("--sshd-config")
            .arg(&self.main)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("sshidlectl")
    }
}

#[test]
fn applied_values_drop_a_stopped_client_and_its_record() {
    if !e2e_enabled() {
        return;
    }
    let dropins = TempDir::new("kadrop");
    let sshd = Sshd::start(
        "kalive",
        SshdOptions {
            // No flags: the policy file's keepalive line applies.
            policy: "keepalive interval=2 count-max=1\n".into(),
            sshd_extra: format!("Include {}/*.conf\n", dropins.path.display()),
            ..Default::default()
        },
    );
    let user = TestUser::create("kau", &[]);
    sshd.authorize(&user);
    let sockets_before = socket_inodes(sshd.pid);

    let out = keepalive(&sshd, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("reloaded sshd: SIGHUP to sshd PID"), "{stdout}");
    let dropin = dropins.join("10-sshidle.conf");
    let written = text(&std::fs::read(&dropin).expect("drop-in written"));
    assert!(written.contains("\nClientAliveInterval 2\nClientAliveCountMax 1\n"), "{written}");
    assert_eq!(keepalive_values(&sshd.config_path), ("2".into(), "1".into()));
    // It was really reloaded: the listener re-executed (new sockets), same PID.
    assert!(process_alive(sshd.pid));
    assert_ne!(socket_inodes(sshd.pid), sockets_before);

    let out = keepalive(&sshd, &["--show"]);
    assert!(out.status.success(), "{}", describe(&out));
    let show = text(&out.stdout);
    assert!(
        show.contains(&format!("ClientAliveInterval      2      ({}:5, written by sshidle)", dropin.display())),
        "{show}"
    );
    assert!(show.contains("dropped about 8 s after its last packet"), "{show}");

    // A new connection; its client is stopped (no FIN, no answers).
    let mut args = sshd.ssh_args(&user.name);
    args.insert(1, "-N".to_string());
    let mut client = Command::new(&args[0]).args(&args[1..]).stdin(Stdio::null()).spawn().expect("ssh");
    let journal = JournalWatch::start(&sshd.state_dir);
    let mut pid = 0;
    let recorded = wait_until(Duration::from_secs(10), || {
        let status = sshd.status_json();
        let row = status.as_array().and_then(|a| a.iter().find(|s| s["user"] == user.name.as_str()).cloned());
        pid = row.map_or(0, |r| r["pid"].as_i64().unwrap() as i32);
        pid != 0
    });
    assert!(recorded, "login not recorded: {}", sshd.log());
    let marker = format!("Timeout, client not responding from user {}", user.name);
    assert!(!sshd.log().contains(&marker));
    signal(client.id() as i32, libc::SIGSTOP);
    let stopped = Instant::now();
    let dropped = wait_until(Duration::from_secs(20), || sshd.log().contains(&marker));
    let elapsed = stopped.elapsed();
    signal(client.id() as i32, libc::SIGCONT);
    let _ = client.kill();
    let _ = client.wait();
    assert!(dropped, "sshd did not drop the stopped client:\n{}", sshd.log());
    // 2 × 2 s × (1 + 1) = 8 s after its last packet, which came before the stop.
    // Its last packet came shortly before the stop (the login was just recorded),
    // so the drop cannot come much earlier than 8 s either.
    assert!(elapsed <= Duration::from_millis(9500), "dropped only after {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(4), "dropped already after {elapsed:?}");
    eprintln!("stopped client dropped {elapsed:?} after SIGSTOP (Interval 2, CountMax 1)");
    // sshd ran close_session for the dropped connection: the module wrote
    // the close (status alone would hide a record whose monitor is gone).
    journal.assert_closed(pid, Duration::from_secs(5));
}

#[test]
fn main_file_without_include_changes_only_the_clientalive_lines() {
    if !e2e_enabled() {
        return;
    }
    let sshd = Sshd::start("kamain", SshdOptions::default());
    let user = TestUser::create("kmu", &[]);
    sshd.authorize(&user);
    let before = std::fs::read(&sshd.config_path).expect("config");
    // Mode and owner survive the atomic replace.
    std::fs::set_permissions(&sshd.config_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&sshd.config_path, Some(0), Some(user.uid)).unwrap();
    let mode_owner = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.uid(), m.gid())
    };
    let attrs = mode_owner(&sshd.config_path);

    let out = keepalive(&sshd, &["--interval", "30", "--count-max", "4", "--dry-run"]);
    assert!(out.status.success(), "{}", describe(&out));
    let diff = text(&out.stdout);
    assert!(diff.contains(&format!("--- a{}", sshd.config_path.display())), "{diff}");
    assert!(diff.contains("\n+ClientAliveInterval 30\n+ClientAliveCountMax 4\n"), "{diff}");
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before, "--dry-run changed the file");

    let out = keepalive(&sshd, &["--interval", "30", "--count-max", "4"]);
    assert!(out.status.success(), "{}", describe(&out));
    let after = text(&std::fs::read(&sshd.config_path).unwrap());
    // The change is exactly one marked block of two ClientAlive lines; every
    // other byte is as before.
    let original = text(&before);
    let added: Vec<&str> = after.lines().filter(|l| !original.lines().any(|o| o == *l)).collect();
    assert_eq!(added.len(), 4, "{added:?}");
    assert!(added[0].starts_with("# BEGIN sshidle keepalive"));
    assert_eq!(&added[1..], ["ClientAliveInterval 30", "ClientAliveCountMax 4", "# END sshidle keepalive"]);
    let without_block: String =
        after.split_inclusive('\n').filter(|l| !added.contains(&l.trim_end_matches('\n'))).collect();
    assert_eq!(without_block, original);
    assert_eq!(keepalive_values(&sshd.config_path), ("30".into(), "4".into()));
    assert_eq!(mode_owner(&sshd.config_path), attrs);
    assert_login_works(&sshd, &user);

    let out = keepalive(&sshd, &["--interval", "30", "--count-max", "4"]);
    assert!(text(&out.stdout).contains("nothing to change"), "{}", describe(&out));

    let out = keepalive(&sshd, &["--off"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before, "--off did not restore the file byte for byte");
    assert_eq!(mode_owner(&sshd.config_path), attrs);
    assert_eq!(keepalive_values(&sshd.config_path), ("0".into(), "3".into()));
    assert_login_works(&sshd, &user);
}

#[test]
fn earlier_settings_are_beaten_or_reported_with_file_and_line() {
    if !e2e_enabled() {
        return;
    }
    // Line 3 above the Include and a Match block (lines 5-6) would both win.
    let tree = Tree::new(
        "kaconf",
        "ClientAliveCountMax 2\nInclude {dir}/conf.d/*.conf\nMatch User nobody\n\tClientAliveInterval 0\n",
    );
    let before = snapshot(&tree.dir.path);
    let out = tree.keepalive(&["--count-max", "5", "--no-reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = text(&out.stderr);
    let main = tree.main.display();
    assert!(err.contains(&format!("{main}:3: ClientAliveCountMax 2 comes first")), "{err}");
    assert!(err.contains(&format!("{main}:6: ClientAliveInterval 0 inside the Match block at {main}:5")), "{err}");
    assert_eq!(snapshot(&tree.dir.path), before, "files changed");

    // An earlier drop-in: sshidle's drop-in is named to sort before it.
    let tree = Tree::new("kaconf2", "Include {dir}/conf.d/*.conf\n");
    let site = tree.write("conf.d/05-site.conf", "ClientAliveInterval 120\n");
    let out = tree.keepalive(&["--interval", "45", "--no-reload"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains(&format!("{}:1: ClientAliveInterval 120 no longer takes effect", site.display()))
    );
    assert!(tree.dir.join("conf.d/00-sshidle.conf").exists());
    assert!(!tree.dir.join("conf.d/10-sshidle.conf").exists());
    assert_eq!(keepalive_values(&tree.main), ("45".into(), "3".into()));

    // One that sorts before every name sshidle uses: reported, nothing changed.
    let early = tree.write("conf.d/0-early.conf", "# site\nclientalivecountmax=9\n");
    let before = snapshot(&tree.dir.path);
    let out = tree.keepalive(&["--interval", "45", "--no-reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains(&format!("{}:2: ClientAliveCountMax 9", early.display())), "{}", describe(&out));
    assert_eq!(snapshot(&tree.dir.path), before, "files changed");
    // --show says that sshidle's value does not take effect, and where the winner is.
    let out = tree.keepalive(&["--show"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let show = text(&out.stdout);
    assert!(show.contains(&format!("ClientAliveCountMax      9      ({}:2)", early.display())), "{show}");
    assert!(show.contains(&format!("does not take effect: {}:2 comes first", early.display())), "{show}");

    // --off removes exactly sshidle's drop-in.
    std::fs::remove_file(&early).unwrap();
    let out = tree.keepalive(&["--off", "--no-reload"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!tree.dir.join("conf.d/00-sshidle.conf").exists());
    assert_eq!(keepalive_values(&tree.main), ("120".into(), "3".into()));
}

#[test]
fn bad_values_exit_2_and_change_nothing() {
    if !e2e_enabled() {
        return;
    }
    let tree = Tree::new("kabad", "Include {dir}/conf.d/*.conf\n");
    let before = snapshot(&tree.dir.path);
    for args in [
        &["--interval", "abc"][..],
        &["--interval=-5"],
        &["--interval", "-5"],
        &["--interval", "0"],
        &["--interval", "1.5m"],
        &["--interval", "100000d"],
        &["--interval", "2d"],
        &["--count-max", "0"],
        &["--count-max=-1"],
        &["--count-max", "99999999999999999999"],
        &["--count-max", "1001"],
        &["--count-max", "three"],
        &["--show", "--off"],
    ] {
        let out = tree.keepalive(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(!text(&out.stderr).trim().is_empty(), "{args:?}: no message");
        assert_eq!(snapshot(&tree.dir.path), before, "{args:?} changed files");
    }
    let out = tree.keepalive(&["--interval", "abc"]);
    assert!(text(&out.stderr).contains("invalid value 'abc' for '--interval <DUR>'"), "{}", describe(&out));

    // A bad keepalive line in the policy file is a problem (exit 1), reported with its line.
    std::fs::write(&tree.policy, "* idle=1h\nkeepalive interval=0\n").unwrap();
    let before = snapshot(&tree.dir.path);
    let out = tree.keepalive(&["--no-reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains(&format!("{}:2: interval=0", tree.policy.display())), "{}", describe(&out));
    assert_eq!(snapshot(&tree.dir.path), before);
}

#[test]
fn broken_main_config_is_not_reloaded() {
    if !e2e_enabled() {
        return;
    }
    let sshd = Sshd::start("kabroken", SshdOptions::default());
    let user = TestUser::create("kbu", &[]);
    sshd.authorize(&user);
    let mut config = std::fs::read(&sshd.config_path).unwrap();
    config.extend_from_slice(b"NoSuchOption yes\n");
    std::fs::write(&sshd.config_path, &config).unwrap();
    let sockets = socket_inodes(sshd.pid);

    let out = keepalive(&sshd, &["--interval", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("Bad configuration option: NoSuchOption"), "{err}");
    assert!(err.contains("not changing anything and not reloading sshd"), "{err}");
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), config);
    // Not reloaded (a SIGHUP with this file would stop the listener).
    assert_eq!(socket_inodes(sshd.pid), sockets);
    assert_login_works(&sshd, &user);
}

#[test]
fn failed_reload_restores_the_files_and_sshd_stays_up() {
    if !e2e_enabled() {
        return;
    }
    let sshd = Sshd::start("kareload", SshdOptions::default());
    let user = TestUser::create("kru", &[]);
    sshd.authorize(&user);
    let before = std::fs::read(&sshd.config_path).unwrap();
    let pidfile = sshd.dir.join("sshd.pid");
    let real_pid = std::fs::read_to_string(&pidfile).unwrap();

    // The PidFile names a dead process while sshd answers on its port.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(&pidfile, format!("{}\n", gone.id())).unwrap();
    let out = keepalive(&sshd, &["--interval", "9"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("does not name a running sshd listener, so it cannot be reloaded"), "{err}");
    assert!(err.contains("restored the previous files byte for byte"), "{err}");
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before);
    assert_eq!(keepalive_values(&sshd.config_path).0, "0");

    // The PidFile names a live process that is not sshd: it gets no signal.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(&pidfile, format!("{}\n", bystander.id())).unwrap();
    let out = keepalive(&sshd, &["--interval", "9"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before);
    assert!(matches!(bystander.try_wait(), Ok(None)), "a process that is not sshd was signalled");
    let _ = bystander.kill();
    let _ = bystander.wait();

    std::fs::write(&pidfile, real_pid).unwrap();
    assert!(process_alive(sshd.pid));
    assert_login_works(&sshd, &user);
}

#[test]
fn concurrent_runs_give_one_result_never_a_mix() {
    if !e2e_enabled() {
        return;
    }
    let sshd = Sshd::start("kaconc", SshdOptions::default());
    let config = sshd.config_path.display().to_string();
    let spawn = |values: &[&str]| {
        Command::new(sshidlectl_path())
            .args(["--config", "/nonexistent", "keepalive", "--sshd-config", &config])
            .args(values)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sshidlectl")
    };
    // The lock itself: while another run holds it (an flock on the main
    // file's directory, which survives the file being renamed over), a run
    // waits and writes nothing; once it is released the run goes on. Without
    // the lock the run would finish at once.
    let before = std::fs::read(&sshd.config_path).unwrap();
    let dir = std::fs::File::open(sshd.config_path.parent().unwrap()).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) }, 0);
    let mut waiting = spawn(&["--interval", "33", "--count-max", "2"]);
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        assert!(matches!(waiting.try_wait(), Ok(None)), "a run did not wait for the lock held by another");
        assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before, "a run wrote while another held the lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(dir);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "once the lock was released: {}", describe(&out));
    assert_eq!(keepalive_values(&sshd.config_path), ("33".into(), "2".into()));

    let a = ["--interval", "11", "--count-max", "3"];
    let b = ["--interval", "22", "--count-max", "5"];
    let block = |interval: &str, count: &str| {
        vec![
            "# BEGIN sshidle keepalive (managed by sshidlectl; remove with `sshidlectl keepalive --off`)".to_string(),
            format!("ClientAliveInterval {interval}"),
            format!("ClientAliveCountMax {count}"),
            "# END sshidle keepalive".to_string(),
        ]
    };
    for round in 0..3 {
        // Two at once, then two more while they run (a run replaces the file
        // it locks against: the newcomers must still wait).
        let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let mut runs = vec![spawn(first), spawn(second)];
        std::thread::sleep(Duration::from_millis(30));
        runs.push(spawn(second));
        std::thread::sleep(Duration::from_millis(30));
        runs.push(spawn(first));
        for p in runs {
            let out = p.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", describe(&out));
        }
        let file = text(&std::fs::read(&sshd.config_path).unwrap());
        let managed: Vec<String> = file
            .lines()
            .filter(|l| {
                l.starts_with("ClientAlive") || l.starts_with("# BEGIN sshidle") || l.starts_with("# END sshidle")
            })
            .map(str::to_string)
            .collect();
        assert!(managed == block("11", "3") || managed == block("22", "5"), "round {round}: a mix:\n{file}");
        let (i, c) = keepalive_values(&sshd.config_path);
        assert_eq!(managed[1..3], block(&i, &c)[1..3], "round {round}: sshd -T says {i}/{c}:\n{file}");
    }
    assert!(process_alive(sshd.pid), "{}", sshd.log());
}

#[test]
fn unused_connection_timeout_per_group_from_the_policy() {
    if !e2e_enabled() {
        return;
    }
    let group = TestGroup::create("kag");
    let member = TestUser::create("kgm", &[&group.name]);
    let other = TestUser::create("kgo", &[]);
    let tree = Tree::new("kaunused", "Include {dir}/conf.d/*.conf\n");
    std::fs::write(
        &tree.policy,
        format!("keepalive interval=30 count-max=2 unused=1h\ngroup {} idle=1h unused=10m\n", group.name),
    )
    .unwrap();
    let out = tree.keepalive(&["--no-reload"]);
    assert!(out.status.success(), "{}", describe(&out));
    let spec = |u: &str| format!("user={u},host=client.example,addr=127.0.0.1");
    let m = effective(&tree.main, Some(&spec(&member.name)));
    assert_eq!(m["unusedconnectiontimeout"], "600");
    assert_eq!(m["clientaliveinterval"], "30");
    assert_eq!(m["clientalivecountmax"], "2");
    let o = effective(&tree.main, Some(&spec(&other.name)));
    assert_eq!(o["unusedconnectiontimeout"], "3600");
    let dropin = text(&std::fs::read(tree.dir.join("conf.d/10-sshidle.conf")).unwrap());
    assert!(dropin.contains(&format!("Match Group {}\n\tUnusedConnectionTimeout 600\n", group.name)), "{dropin}");
}

#[test]
fn reload_that_does_not_take_is_rolled_back_and_reloaded() {
    if !e2e_enabled() {
        return;
    }
    let sshd = Sshd::start("kahung", SshdOptions::default());
    let user = TestUser::create("khu", &[]);
    sshd.authorize(&user);
    let before = std::fs::read(&sshd.config_path).unwrap();
    let sockets = socket_inodes(sshd.pid);
    // A hung listener: the SIGHUP stays pending, sshd never re-reads its files.
    signal(sshd.pid, libc::SIGSTOP);
    let out = keepalive(&sshd, &["--interval", "13"]);
    signal(sshd.pid, libc::SIGCONT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("did not re-read its configuration"), "{err}");
    assert!(err.contains("restored the previous files byte for byte"), "{err}");
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before);
    // Once it runs again it handles the pending reload, with the restored files.
    let reexec = wait_until(Duration::from_secs(10), || {
        let now = socket_inodes(sshd.pid);
        !now.is_empty() && now != sockets
    });
    assert!(reexec, "{}", sshd.log());
    assert_eq!(keepalive_values(&sshd.config_path).0, "0");
    assert_login_works(&sshd, &user);
}

/// Kills, on drop, the sshd that sshidlectl started in place of the harness's.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 {
            for pid in descendants(self.0) {
                signal(pid, libc::SIGKILL);
            }
            signal(self.0, libc::SIGKILL);
        }
    }
}

fn sighup_pending(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 != 0)
}

#[test]
fn listener_that_dies_on_reload_is_started_again_with_the_old_files() {
    if !e2e_enabled() {
        return;
    }
    let sshd = Sshd::start("kadies", SshdOptions::default());
    let user = TestUser::create("kdu", &[]);
    sshd.authorize(&user);
    let before = std::fs::read(&sshd.config_path).unwrap();
    let pidfile = sshd.dir.join("sshd.pid");
    // Hold the listener, let sshidlectl send its SIGHUP, then kill the
    // listener: the reload "ended" with no sshd.
    signal(sshd.pid, libc::SIGSTOP);
    let config = sshd.config_path.display().to_string();
    let run = Command::new(sshidlectl_path())
        .args(["--config", "/nonexistent", "keepalive", "--sshd-config", &config, "--interval", "17"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sshidlectl");
    assert!(wait_until(Duration::from_secs(10), || sighup_pending(sshd.pid)), "no SIGHUP sent");
    signal(sshd.pid, libc::SIGKILL);
    let out = run.wait_with_output().unwrap();
    let restarted = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()).unwrap_or(0);
    let _guard = KillOnDrop(if restarted != sshd.pid { restarted } else { 0 });
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("sshd PID {} exited after the reload", sshd.pid)), "{err}");
    assert!(err.contains("restored the previous files byte for byte and started sshd again"), "{err}");
    assert_eq!(std::fs::read(&sshd.config_path).unwrap(), before);
    assert_ne!(restarted, sshd.pid);
    assert!(process_alive(restarted), "no new sshd");
    assert_login_works(&sshd, &user);
    assert_eq!(keepalive_values(&sshd.config_path).0, "0");
}
