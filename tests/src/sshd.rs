//! A private sshd on 127.0.0.1 whose PAM service loads the built module.
//!
//! Each sshd has a PAM service of its own, `/etc/pam.d/<service>`, so the
//! system's `/etc/pam.d/sshd` is never read nor touched. OpenSSH up to 9.7
//! takes the service name from the basename of argv[0], so sshd is started
//! through a symlink named after the service; 9.8 and later always use
//! `sshd` unless `PAMServiceName` says otherwise, so the config names it too
//! where sshd knows the option. The module line says `services=<service>`
//! (it watches only `sshd` by default).

use crate::accounts::TestUser;
use crate::util::{
    descendants, ensure_runtime_dirs, free_port, module_path, run, signal, sshidlectl, unique_name, wait_until, TempDir,
};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

#[derive(Default, Clone)]
pub struct SshdOptions {
    /// Contents of the policy file the module and sshidlectl read.
    pub policy: String,
    /// Extra sshd_config lines.
    pub sshd_extra: String,
    /// Extra module arguments after `conf=... state=... debug`.
    pub module_args: String,
    /// PAM session lines before and after the module's.
    pub pam_before: String,
    pub pam_after: String,
    /// A command that execs its arguments (sshd) in another context, e.g.
    /// `nsenter -t PID -m --` for a mount namespace of the test's own.
    pub launcher: Vec<String>,
    /// `session required pam_loginuid.so` instead of `optional`: a login
    /// whose audit session cannot be set is refused, so a test that relies
    /// on `/proc/PID/sessionid` cannot pass without one.
    pub loginuid_required: bool,
    /// sshd logs to syslog (no `-e`), with each message's priority, so a
    /// test can tell its error lines from the others; [`Sshd::log`] is then
    /// empty.
    pub syslog: bool,
}

pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    pub service: String,
    pub state_dir: PathBuf,
    pub policy_path: PathBuf,
    pub config_path: PathBuf,
    pub client_key: PathBuf,
    pub pam_file: PathBuf,
    pub pid: i32,
    child: Child,
    _temp: TempDir,
}

impl Sshd {
    pub fn start(tag: &str, opts: SshdOptions) -> Sshd {
        ensure_runtime_dirs();
        let temp = TempDir::new(tag);
        let dir = temp.path.clone();
        let service = unique_name(&format!("sshidle-{tag}-"));
        let state_dir = dir.join("state");
        let policy_path = dir.join("sshidle.conf");
        std::fs::write(&policy_path, &opts.policy).expect("policy");
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        for key in [&host_key, &client_key] {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(key));
        }
        std::fs::create_dir_all(dir.join("authorized_keys")).expect("keys dir");
        let pam_file = PathBuf::from("/etc/pam.d").join(&service);
        let service_name_line =
            if knows_pam_service_name() { format!("PAMServiceName {service}\n") } else { String::new() };
        std::fs::write(
            &pam_file,
            format!(
                "# sshidle test service, removed by the test\n\
                 auth     required pam_deny.so\n\
                 account  required pam_permit.so\n\
                 password required pam_deny.so\n\
                 session  {} pam_loginuid.so\n\
                 {}\n\
                 session  optional {} conf={} state={} services={} debug {}\n\
                 {}\n\
                 {}\n",
                if opts.loginuid_required { "required" } else { "optional" },
                opts.pam_before,
                module_path().display(),
                policy_path.display(),
                state_dir.display(),
                service,
                opts.module_args,
                opts.pam_after,
                crate::logouts::pam_session_line()
            ),
        )
        .expect("pam service file");
        let binary = dir.join(&service);
        std::os::unix::fs::symlink("/usr/sbin/sshd", &binary).expect("sshd symlink");
        let config_path = dir.join("sshd_config");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(
                &config_path,
                format!(
                    "{extra}\n\
                     Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host}\n\
                     PidFile {dir}/sshd.pid\n\
                     UsePAM yes\n\
                     {service_name_line}\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     AuthorizedKeysFile {dir}/authorized_keys/%u\n\
                     StrictModes no\n\
                     PermitRootLogin prohibit-password\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     MaxStartups 200\n\
                     MaxSessions 50\n\
                     LogLevel VERBOSE\n\
                     Subsystem sftp internal-sftp\n",
                    extra = opts.sshd_extra,
                    host = host_key.display(),
                    dir = dir.display(),
                ),
            )
            .expect("sshd_config");
            let pid_file = dir.join("sshd.pid");
            let _ = std::fs::remove_file(&pid_file);
            let log = std::fs::File::create(dir.join("sshd.log")).expect("log");
            let mut command = match opts.launcher.split_first() {
                Some((launcher, args)) => {
                    let mut c = Command::new(launcher);
                    c.args(args).arg(&binary);
                    c
                }
                None => Command::new(&binary),
            };
            let mut child = command
                .args(if opts.syslog { &["-D", "-f"][..] } else { &["-D", "-e", "-f"][..] })
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            if listening(&mut child, port, &pid_file) {
                let pid = child.id() as i32;
                return Sshd {
                    port,
                    dir,
                    service,
                    state_dir,
                    policy_path,
                    config_path,
                    client_key,
                    pam_file,
                    pid,
                    child,
                    _temp: temp,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        }
        let _ = std::fs::remove_file(&pam_file);
        panic!("sshd did not start:\n{last_log}");
    }

    /// Lets `user` log in with the test's client key.
    pub fn authorize(&self, user: &TestUser) {
        let public = std::fs::read_to_string(self.client_key.with_extension("pub")).expect("client key");
        std::fs::write(self.dir.join("authorized_keys").join(&user.name), public).expect("authorized key");
    }

    /// The full `ssh` argv for a login as `user`; append a remote command.
    pub fn ssh_args(&self, user: &str) -> Vec<String> {
        let mut args: Vec<String> = ["ssh", "-F", "/dev/null", "-i"].map(String::from).to_vec();
        args.push(self.client_key.display().to_string());
        args.extend(["-p".to_string(), self.port.to_string()]);
        for opt in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ] {
            args.extend(["-o".to_string(), opt.to_string()]);
        }
        args.push(format!("{user}@127.0.0.1"));
        args
    }

    /// Runs `remote` over ssh as `user` and waits for it.
    pub fn ssh(&self, user: &str, remote: &str) -> Output {
        let args = self.ssh_args(user);
        Command::new(&args[0]).args(&args[1..]).arg(remote).stdin(Stdio::null()).output().expect("ssh")
    }

    /// `sshidlectl --config <policy> --state-dir <state> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        sshidlectl(&self.policy_path, &self.state_dir).args(args).stdin(Stdio::null()).output().expect("sshidlectl")
    }

    /// `sshidlectl status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(out.status.success(), "status --json: {}", crate::util::describe(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// sshd's own log (it runs with -e).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

/// Whether this sshd has `PAMServiceName` (OpenSSH 9.8+), asked once:
/// `sshd -t` on a one-line config reports an unknown keyword before
/// anything else (a known one fails later, for want of host keys).
pub fn knows_pam_service_name() -> bool {
    static KNOWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWS.get_or_init(|| {
        let dir = TempDir::new("sshd-probe");
        let probe = dir.join("probe.conf");
        std::fs::write(&probe, "PAMServiceName sshd-probe\n").expect("probe config");
        let out = Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(&probe).output().expect("sshd -t");
        !String::from_utf8_lossy(&out.stderr).contains("Bad configuration option")
    })
}

/// Waits until the sshd just started as `child` listens on `port` (true),
/// or has exited, or 5 s have passed (false). It writes its `pid_file`
/// (removed before it started) once it has bound the port: a banner alone
/// may come from another test's sshd, given the same free port a moment
/// before.
pub fn listening(child: &mut Child, port: u16, pid_file: &Path) -> bool {
    let up = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_))) || (pid_file.exists() && banner(port))
    });
    up && matches!(child.try_wait(), Ok(None))
}

pub fn banner(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener's children (one monitor per connection) outlive it,
        // so collect them first.
        let children = descendants(self.pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            signal(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.pam_file);
    }
}
