//! A system of its own for the tests that install sshidle (`sshidlectl
//! install`, the Debian package): they never touch this machine's real
//! installation, which may be enforcing while they run.
//!
//! The test runs again, alone, as PID 1 of a private PID and mount namespace
//! (`unshare --mount --pid --fork --mount-proc`). There every directory
//! install, dpkg and useradd write to (`/etc`, `/usr`, `/var`, `/home`,
//! `/root`, `/opt`) is an overlay whose upper layer is a tmpfs, and `/run` is
//! a fresh tmpfs: no pidfile, no state, no `/run/systemd` of the real system.
//! The real enforcer's process is not even visible, so no init script or
//! signal can reach it. Whatever the test left behind (files, users, the
//! enforcer it started, sshd) vanishes with the namespace when the test ends,
//! also when it fails or is killed. `/tmp` and `/dev` stay shared. The
//! network is the namespace's own (loopback only): the machine's own sshd,
//! which answers on port 22 of a server where the tests run after `make
//! install`, is not the private system's (keepalive would find a listener
//! its PID file does not name), and cargo runs offline inside.
//!
//! Inside, an installation of sshidle the real system has (by `make install`
//! or the package) is first taken away, so the test starts from a machine
//! without sshidle.

use crate::util::{describe, ensure_runtime_dirs, TempDir};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Set in the inner run: the directory holding the overlays' upper layers.
const PRIVATE_SYSTEM_VAR: &str = "SSHIDLE_PRIVATE_SYSTEM";
/// What becomes an overlay (when it is a real directory, not a symlink).
const OVERLAID: [&str; 10] = ["/etc", "/usr", "/var", "/home", "/root", "/opt", "/srv", "/lib", "/lib64", "/sbin"];

/// Whether this is the private system's run of the test.
///
/// ```text
/// if !private_system::inside() {
///     private_system::run("my_test"); // the test again, in its own system
///     return;
/// }
/// private_system::set_up();
/// ```
pub fn inside() -> bool {
    std::env::var_os(PRIVATE_SYSTEM_VAR).is_some()
}

/// Sets up the private system and takes sshidle away in it. Only as PID 1
/// of the namespace `run` made: it never mounts over the real system.
pub fn set_up() {
    let upper = std::env::var(PRIVATE_SYSTEM_VAR).expect("only inside a private system");
    assert_eq!(std::process::id(), 1, "{PRIVATE_SYSTEM_VAR} set outside a private system");
    let out = Command::new("ip").args(["link", "set", "lo", "up"]).output().expect("ip (iproute2)");
    assert!(out.status.success(), "loopback of the private system: {}", describe(&out));
    mount_overlays(Path::new(&upper));
    take_away_installation(Path::new(&upper));
}

/// Runs the test function `test` (its name, as `cargo test --exact` takes
/// it) again, alone, in a private system, and fails unless it ran and passed.
pub fn run(test: &str) {
    let upper = TempDir::new("private-system");
    let exe = std::env::current_exe().expect("test executable");
    let out = Command::new("unshare")
        .args(["--mount", "--pid", "--net", "--fork", "--mount-proc", "--propagation", "private", "--"])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(PRIVATE_SYSTEM_VAR, &upper.path)
        .env("CARGO_NET_OFFLINE", "true")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare (util-linux)");
    eprintln!("--- the test in its private system:\n{}", describe(&out));
    assert!(out.status.success(), "{test} failed in its private system (output above)");
    let ran = String::from_utf8_lossy(&out.stdout);
    assert!(ran.contains("test result: ok. 1 passed"), "{test} did not run in its private system:\n{ran}");
}

/// Starts `sh -c SCRIPT` in a new mount namespace whose mounts propagate
/// nowhere (`unshare --mount --propagation private EXTRA...`): the script
/// mounts what the test needs, prints one line when it is ready and then
/// holds the namespace open (`exec sleep ...`). Returns the holder and that
/// line (empty when the script failed first). Killing the holder (and
/// whatever else runs inside) ends the namespace and its mounts.
pub fn hold_namespace(extra: &[&str], script: &str) -> (Child, String) {
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .args(extra)
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("unshare (util-linux)");
    let mut line = String::new();
    let _ = BufReader::new(holder.stdout.take().expect("piped stdout")).read_line(&mut line);
    (holder, line)
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("mount");
    assert!(out.status.success(), "mount {args:?}: {}", describe(&out));
}

fn mount_overlays(upper: &Path) {
    // The upper layers live in a tmpfs of this namespace only.
    mount(&["-t", "tmpfs", "-o", "mode=0700", "sshidle-private", &upper.display().to_string()]);
    for dir in OVERLAID {
        let real = Path::new(dir);
        if real.is_symlink() || !real.is_dir() {
            continue;
        }
        let name = dir.trim_start_matches('/');
        let (up, work) = (upper.join("upper").join(name), upper.join("work").join(name));
        std::fs::create_dir_all(&up).expect("overlay upper dir");
        std::fs::create_dir_all(&work).expect("overlay work dir");
        let options = format!("lowerdir={dir},upperdir={},workdir={}", up.display(), work.display());
        mount(&["-t", "overlay", "overlay", "-o", &options, dir]);
    }
    // A fresh /run, as after a boot without systemd.
    mount(&["-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "sshidle-private-run", "/run"]);
    std::fs::create_dir_all("/run/lock").expect("/run/lock");
    let _ = std::fs::set_permissions("/run/lock", std::os::unix::fs::PermissionsExt::from_mode(0o1777));
    ensure_runtime_dirs();
}

/// Whether dpkg has the sshidle package (installed, or removed but not purged).
pub fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", "sshidle"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty() && o.stdout != b"not-installed")
        .unwrap_or(false)
}

/// Takes away, inside, what the real system has of sshidle.
fn take_away_installation(upper: &Path) {
    let out = Command::new("sh").args(["-c", &take_away_script(upper)]).output().expect("sh");
    eprintln!("private system: the real installation taken away inside: {}", describe(&out));
    assert!(!package_installed(), "the sshidle package is still installed in the private system");
}

/// Shell commands that take away, inside a private system (a mount namespace
/// with its own `/run`), what the real system has of sshidle: `sshidlectl
/// uninstall` of a `make install`, `dpkg --purge` of the package, and what
/// is left of their records. There is no service manager inside: a
/// systemctl that does nothing stands in for the real one (in `scratch`), so
/// that no unit of the real system is stopped, and so that the uninstall of
/// a unit (on a machine that runs systemd) does not fail and leave its
/// record behind for the test's own installation to find.
pub fn take_away_script(scratch: &Path) -> String {
    let shim = systemctl_shim_script(scratch);
    let built = crate::util::sshidlectl_path();
    let built = built.display();
    [
        shim.as_str(),
        "if [ -f /var/lib/sshidle/installed ]; then",
        &format!("  for ctl in /usr/local/sbin/sshidlectl /usr/sbin/sshidlectl {built}; do"),
        r#"    if [ -x "$ctl" ]; then PATH="$shims:$PATH" "$ctl" uninstall || true; break; fi"#,
        "  done",
        "fi",
        r#"if [ "$(dpkg-query -W -f '${db:Status-Status}' sshidle 2>/dev/null)" = installed ]; then"#,
        r#"  PATH="$shims:$PATH" dpkg --purge sshidle || true"#,
        "fi",
        "rm -rf /var/lib/sshidle\n",
    ]
    .join("\n")
}

/// The systemctl of a private system: it never reaches a service manager.
/// Enabling and disabling are done on the files (`--root=/`, the overlays),
/// so that a unit the real installation enabled is disabled inside too;
/// anything else does nothing.
const SYSTEMCTL_SHIM: &str = r#"#!/bin/sh
case "$1" in enable|disable|is-enabled) [ -x /usr/bin/systemctl ] && exec /usr/bin/systemctl --root=/ "$@" ;; esac
echo "systemctl $*: no service manager in this private system" >&2
"#;

/// Shell commands that put [`SYSTEMCTL_SHIM`] in `$shims` (`scratch/shims`).
fn systemctl_shim_script(scratch: &Path) -> String {
    format!(
        "shims={}\nmkdir -p \"$shims\"\ncat > \"$shims/systemctl\" <<'EOF'\n{SYSTEMCTL_SHIM}EOF\nchmod 755 \"$shims/systemctl\"",
        scratch.join("shims").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_away_script_is_shell_that_shims_systemctl() {
        let script = take_away_script(Path::new("/scratch"));
        let out = Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{script}\n{}", describe(&out));
        assert!(script.starts_with("shims=/scratch/shims\n"), "{script}");
        assert!(script.contains(r#"PATH="$shims:$PATH" "$ctl" uninstall"#), "{script}");
        // The shim itself, as sh writes it (the rest of the script only ever
        // runs inside a private system).
        let dir = TempDir::new("shim");
        let out = Command::new("sh").args(["-c", &systemctl_shim_script(&dir.path)]).output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let shim = std::fs::read_to_string(dir.join("shims/systemctl")).unwrap();
        assert_eq!(shim, SYSTEMCTL_SHIM);
        let out = Command::new(dir.join("shims/systemctl")).args(["stop", "x"]).output().unwrap();
        assert!(out.status.success() && out.stdout.is_empty(), "{}", describe(&out));
        assert!(describe(&out).contains("systemctl stop x: no service manager"), "{}", describe(&out));
    }
}
