//! Policy drop-ins end to end (issue 12): a real login through sshd, and a
//! running enforcer that notices drop-ins appear, change and go (the drop-in
//! directory made after it started, too) and applies them to the open
//! session, in first-match order before the main file.

use sshidle_tests::session::Enforcer;
use sshidle_tests::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn limits_of(sshd: &Sshd, user: &str) -> Option<(u64, String)> {
    let rows = sshd.status_json();
    let row = rows.as_array()?.iter().find(|r| r["user"] == user)?;
    Some((row["idle_limit_secs"].as_u64()?, row["rule"].as_str()?.to_string()))
}

/// Waits until the session shows `idle` and `rule`; how long that took.
fn shows(sshd: &Sshd, user: &str, idle: u64, rule: &str, enforcer: &Enforcer) -> Duration {
    let started = Instant::now();
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        last = limits_of(sshd, user);
        last.as_ref().is_some_and(|(i, r)| *i == idle && r == rule)
    });
    assert!(ok, "expected idle={idle} from {rule:?}, status shows {last:?}\n{}", enforcer.output());
    started.elapsed()
}

#[test]
fn enforcer_applies_drop_ins_as_they_appear_change_and_go() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("dri", &[]);
    let sshd = Sshd::start("dropin", SshdOptions { policy: "* idle=1h\n".into(), ..Default::default() });
    sshd.authorize(&user);
    let main = sshd.policy_path.display().to_string();
    let dir = sshidle::policy::dropin_dir(&sshd.policy_path);
    assert!(!dir.exists());
    let enforcer = Enforcer::start(&sshd, &["--utmp", "none"]);
    let args = sshd.ssh_args(&user.name);
    let mut client = Command::new(&args[0])
        .args(&args[1..])
        .arg("exec sleep 120")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    shows(&sshd, &user.name, 3600, &format!("{main}:1: *"), &enforcer);

    // The directory and a drop-in appear: its rule stands before the main file's.
    std::fs::create_dir(&dir).unwrap();
    let team = dir.join("50-team.conf");
    std::fs::write(&team, format!("# team\nuser {} idle=7m\n", user.name)).unwrap();
    let took = shows(&sshd, &user.name, 420, &format!("{}:2: user {}", team.display(), user.name), &enforcer);
    eprintln!("drop-in added: applied after {took:?}");
    // An earlier drop-in (C-locale order: "10" < "50") wins over it.
    let first = dir.join("10-first.conf");
    std::fs::write(&first, format!("user {} idle=8m\n", user.name)).unwrap();
    shows(&sshd, &user.name, 480, &format!("{}:1: user {}", first.display(), user.name), &enforcer);
    // Replaced by an editor (write a temporary file, rename it over).
    let tmp = dir.join(".10-first.conf.swp");
    std::fs::write(&tmp, format!("user {} idle=9m\n", user.name)).unwrap();
    std::fs::rename(&tmp, &first).unwrap();
    shows(&sshd, &user.name, 540, &format!("{}:1: user {}", first.display(), user.name), &enforcer);
    // A bad line in a drop-in is logged as FILE:LINE and skipped.
    std::fs::write(&first, format!("user {} idle=9q\n", user.name)).unwrap();
    shows(&sshd, &user.name, 420, &format!("{}:2: user {}", team.display(), user.name), &enforcer);
    assert!(
        enforcer.output().contains(&format!("{}:1: idle: invalid duration '9q'", first.display())),
        "{}",
        enforcer.output()
    );
    // Removed: back to the main file.
    std::fs::remove_file(&first).unwrap();
    std::fs::remove_file(&team).unwrap();
    shows(&sshd, &user.name, 3600, &format!("{main}:1: *"), &enforcer);
    // The directory goes and comes back.
    std::fs::remove_dir(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("20-again.conf"), format!("user {} idle=11m\n", user.name)).unwrap();
    shows(&sshd, &user.name, 660, &format!("{}:1: user {}", dir.join("20-again.conf").display(), user.name), &enforcer);

    let _ = client.kill();
    let _ = client.wait();
}
