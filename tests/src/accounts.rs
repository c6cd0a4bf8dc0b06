//! Real users and groups, created with useradd/groupadd and removed on drop.

use crate::util::{run, unique_name};
use std::process::Command;
use std::time::Duration;

pub struct TestGroup {
    pub name: String,
}

impl TestGroup {
    pub fn create(prefix: &str) -> TestGroup {
        let name = unique_name(prefix);
        run(Command::new("groupadd").arg(&name));
        TestGroup { name }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    /// A user with a home directory, bash, a locked password (key logins
    /// work) and the given supplementary groups.
    pub fn create(prefix: &str, groups: &[&str]) -> TestUser {
        let name = unique_name(prefix);
        let mut cmd = Command::new("useradd");
        cmd.args(["-m", "-s", "/bin/bash"]);
        if !groups.is_empty() {
            cmd.arg("-G").arg(groups.join(","));
        }
        run(cmd.arg(&name));
        let uid = sshidle::users::lookup_user(&name).expect("new user").uid;
        TestUser { name, uid }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Processes first, or userdel refuses. Only those of this PID
        // namespace: a container's or a private system's processes may have
        // the same numeric uid (systemd_e2e and install_e2e run beside).
        let own = std::process::id().to_string();
        for _ in 0..3 {
            let _ = Command::new("pkill").args(["--ns", &own, "--nslist", "pid", "-KILL", "-u", &self.name]).output();
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("userdel").args(["-r", "-f", &self.name]).output();
    }
}
