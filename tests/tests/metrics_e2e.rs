//! Metrics for node_exporter (issue 12): the shipped alert rules pass
//! Prometheus's own `promtool check rules` and their unit tests
//! (`promtool test rules`).

use sshidle_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("contrib/prometheus")
}

fn promtool(args: &[&str]) -> std::process::Output {
    assert!(Path::new("/usr/bin/promtool").exists(), "promtool is missing: install prometheus (.ci/packages)");
    Command::new("/usr/bin/promtool").args(args).current_dir(contrib()).output().expect("promtool")
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !e2e_enabled() {
        return;
    }
    let out = promtool(&["check", "rules", "sshidle.rules.yml"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 4 rules found"), "{}", describe(&out));
    let out = promtool(&["test", "rules", "sshidle.rules.test.yml"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn promtool_unit_tests_can_fail() {
    if !e2e_enabled() {
        return;
    }
    // The same tests against rules whose threshold is off by one: must fail.
    let temp = TempDir::new("promtool");
    let rules = std::fs::read_to_string(contrib().join("sshidle.rules.yml")).unwrap();
    let broken = rules.replace("[10m])) > 10", "[10m])) > 30");
    assert_ne!(broken, rules);
    std::fs::write(temp.join("sshidle.rules.yml"), broken).unwrap();
    std::fs::copy(contrib().join("sshidle.rules.test.yml"), temp.join("sshidle.rules.test.yml")).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["test", "rules", "sshidle.rules.test.yml"])
        .current_dir(&temp.path)
        .output()
        .expect("promtool");
    assert!(!out.status.success(), "promtool passed broken rules: {}", describe(&out));
}
