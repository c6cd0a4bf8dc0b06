//! `sshidlectl check`, `explain` and `status` against policy and state files
//! of the test's own, plus exit codes for bad usage.

use sshidle_tests::*;
use std::process::Output;

fn ctl(dir: &TempDir, args: &[&str]) -> Output {
    sshidlectl(&dir.join("sshidle.conf"), &dir.join("state")).args(args).output().expect("sshidlectl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_good_policy() {
    let dir = TempDir::new("cli-good");
    std::fs::write(
        dir.join("sshidle.conf"),
        "user backup idle=off\ngroup admins idle=2h warn=5m\n* idle=15m warn=1m\n",
    )
    .unwrap();
    let out = ctl(&dir, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(text(&out.stdout).contains("3 rules, no errors"), "{}", describe(&out));
}

#[test]
fn check_reports_every_bad_line_as_file_line_message() {
    let dir = TempDir::new("cli-bad");
    let path = dir.join("sshidle.conf");
    std::fs::write(&path, "# ok\nuser alice idle=10q\n* idle=15m\ngroup\n").unwrap();
    let out = ctl(&dir, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{}:2: idle: invalid duration '10q': units are s, m, h, d, w", path.display()),
            format!("{}:4: 'group' needs a name", path.display()),
        ]
    );
}

#[test]
fn check_of_a_missing_file_fails() {
    let dir = TempDir::new("cli-missing");
    let out = ctl(&dir, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("No such file"), "{}", describe(&out));
}

#[test]
fn explain_names_the_rule_and_limits() {
    let dir = TempDir::new("cli-explain");
    let path = dir.join("sshidle.conf");
    std::fs::write(&path, "user nobody idle=1m\ngroup root idle=2h warn=5m hard=1d\n* idle=15m\n").unwrap();
    let out = ctl(&dir, &["explain", "root"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("rule:   {}:2: group root", path.display())), "{stdout}");
    assert!(stdout.contains("limits: idle=2h warn=5m hard=1d"), "{stdout}");
    let out = ctl(&dir, &["explain", "no-such-user-sshidle"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no such user"));
}

#[test]
fn explain_without_a_matching_rule_says_no_limit() {
    let dir = TempDir::new("cli-nomatch");
    std::fs::write(dir.join("sshidle.conf"), "user nobody idle=1m\n").unwrap();
    let out = ctl(&dir, &["explain", "root"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("none matches; no limit") && stdout.contains("idle=off"), "{stdout}");
}

#[test]
fn check_and_explain_cover_the_drop_ins() {
    let dir = TempDir::new("cli-dropins");
    let main = dir.join("sshidle.conf");
    let dropins = dir.join("sshidle.conf.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(&main, "* idle=15m\n").unwrap();
    std::fs::write(dropins.join("20-ops.conf"), "# ops team\ngroup root idle=2h warn=5m\n").unwrap();
    std::fs::write(dropins.join("10-svc.conf"), "user nobody idle=off\n").unwrap();
    let out = ctl(&dir, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("3 rules (with 2 drop-ins), no errors"), "{stdout}");
    // Read in first-match order: the drop-ins (C-locale order), then the main file.
    let read: Vec<&str> = stdout.lines().filter_map(|l| l.trim().strip_prefix("read ")).collect();
    let expected = [dropins.join("10-svc.conf"), dropins.join("20-ops.conf"), main.clone()];
    assert_eq!(read, expected.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>());
    // The drop-in's group rule decides for root, ahead of the main file's catch-all.
    let out = ctl(&dir, &["explain", "root"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("rule:   {}:2: group root", dropins.join("20-ops.conf").display())), "{stdout}");
    assert!(stdout.contains("limits: idle=2h warn=5m hard=off"), "{stdout}");
    // A bad line in a drop-in: FILE:LINE: message, exit 1.
    std::fs::write(dropins.join("30-bad.conf"), "\nuser eve idle=10q\n").unwrap();
    let out = ctl(&dir, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!("{}:2: idle: invalid duration '10q': units are s, m, h, d, w", dropins.join("30-bad.conf").display())
    );
}

#[test]
fn status_of_an_empty_state() {
    let dir = TempDir::new("cli-status");
    let out = ctl(&dir, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
    let out = ctl(&dir, &["status"]);
    assert!(text(&out.stdout).starts_with("ID  USER"), "{}", describe(&out));
    // Reading never creates the state directory.
    assert!(!dir.join("state").exists());
}

#[test]
fn status_lists_live_sessions_and_hides_dead_ones() {
    let dir = TempDir::new("cli-live");
    let state = sshidle::StateDir::open(&dir.join("state"), true).unwrap();
    let me = sshidle::SessionKey::current_process().unwrap();
    let record = |key, user: &str| sshidle::SessionRecord {
        key,
        uid: 0,
        user: user.into(),
        rhost: "192.0.2.4".into(),
        service: "sshd".into(),
        login_time: sshidle::now_unix() - 30,
        limits: sshidle::Limits { idle: Some(600), warn: Some(60), hard: None, ..Default::default() },
        rule: "x:1: *".into(),
        warned_at_ms: None,
    };
    state.record_open(&record(me, "alive")).unwrap();
    state.record_open(&record(sshidle::SessionKey { pid: me.pid, start: me.start + 1 }, "reused-pid")).unwrap();
    let out = ctl(&dir, &["status", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let users: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["user"].as_str().unwrap()).collect();
    assert_eq!(users, vec!["alive"], "{rows:#}");
    assert_eq!(rows[0]["id"], me.pid.to_string());
    assert_eq!(rows[0]["from"], "192.0.2.4");
    assert!(rows[0]["time_left_secs"].as_i64().unwrap() <= 600);
}

#[test]
fn bad_usage_exits_2() {
    let dir = TempDir::new("cli-usage");
    for args in [&["frobnicate"][..], &["status", "--format", "xml"], &["explain"], &[]] {
        let out = ctl(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
}
