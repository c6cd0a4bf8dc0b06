//! `sshidlectl keepalive` killed (SIGKILL) at every step of a run never
//! leaves a configuration that the real `sshd -t` rejects, and the next run
//! undoes what the killed one left half done.

use sshidle_tests::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const ROLLBACK: &str = ".sshidle-keepalive.rollback";

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in [dir.to_path_buf(), dir.join("conf.d")] {
        for entry in std::fs::read_dir(&sub).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_file() && (name.starts_with("sshd_config") || sub.ends_with("conf.d")) {
                out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

fn restore(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir.join("conf.d")).unwrap().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
    }
    let _ = std::fs::remove_file(dir.join(ROLLBACK));
    for (path, bytes) in files {
        std::fs::write(path, bytes).unwrap();
    }
}

fn sshd_t(main: &Path) -> std::process::Output {
    Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(main).output().expect("sshd -t")
}

#[test]
fn killed_at_each_step_the_config_stays_valid_and_the_next_run_rolls_back() {
    if !e2e_enabled() {
        return;
    }
    ensure_runtime_dirs();
    let dir = TempDir::new("kakill");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join("host_key")));
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    let d = dir.path.display().to_string();
    let main = dir.join("sshd_config");
    let policy = dir.join("sshidle.conf");
    std::fs::write(&policy, "").unwrap();
    std::fs::write(&main, format!("HostKey {d}/host_key\nPidFile {d}/sshd.pid\nPort 22\n")).unwrap();
    let keepalive = |args: &[&str]| {
        let mut cmd = sshidlectl(&policy, &dir.join("state"));
        cmd.arg("keepalive").arg("--sshd-config").arg(&main).args(args).arg("--no-reload");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };
    // sshidle's block in the main file; then the admin adds an Include, so
    // the next run moves the settings into a drop-in: two files change.
    let out = keepalive(&["--interval", "30"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!("Include {d}/conf.d/*.conf\n"));
    std::fs::write(&main, text).unwrap();
    std::fs::write(dir.join("conf.d/50-admin.conf"), "PermitRootLogin no\n").unwrap();
    let before = snapshot(&dir.path);

    // An uninterrupted run: what every interrupted one must end up as.
    let started = Instant::now();
    let out = keepalive(&["--interval", "45"]).output().unwrap();
    let whole_run = started.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    let after = snapshot(&dir.path);
    assert_ne!(before, after);
    assert!(after.keys().any(|p| p.ends_with("conf.d/10-sshidle.conf")), "{after:?}");

    let mut interrupted = 0;
    let steps = 24;
    for step in 0..steps {
        restore(&dir.path, &before);
        let mut child = keepalive(&["--interval", "45"]).spawn().unwrap();
        std::thread::sleep(whole_run * step / steps);
        signal(child.id() as i32, libc::SIGKILL);
        let _ = child.wait();
        let check = sshd_t(&main);
        assert!(check.status.success(), "killed at step {step}/{steps}: sshd -t fails: {}", describe(&check));
        let left_journal = dir.join(ROLLBACK).exists();
        let out = keepalive(&["--interval", "45"]).output().unwrap();
        assert!(out.status.success(), "run after the kill at step {step}: {}", describe(&out));
        if left_journal {
            interrupted += 1;
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("an earlier run was interrupted"),
                "{}",
                describe(&out)
            );
        }
        assert_eq!(snapshot(&dir.path), after, "after the kill at step {step} and a new run");
        assert!(!dir.join(ROLLBACK).exists());
    }
    assert!(interrupted > 0, "no kill landed between the first write and the end of the run");
}
