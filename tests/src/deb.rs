//! The Debian package, built once per test process with Debian's own tooling
//! (`packaging/build-deb.sh`: dpkg-buildpackage and debhelper, cargo inside),
//! into the cargo target directory (`target/debian/`): nothing is written
//! outside the work tree.

use crate::util::{describe, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The freshly built `sshidle_VERSION_ARCH.deb`.
pub fn built_deb() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out_dir = target_dir().parent().expect("target dir").join("debian");
        std::fs::create_dir_all(&out_dir).expect("target/debian");
        // One build at a time, also across test processes (the private
        // system's run of a test is another process).
        let lock = std::fs::File::create(out_dir.join("build.lock")).expect("build lock");
        // SAFETY: flock on a descriptor we own; released when `lock` drops.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
        let out = Command::new("sh")
            .arg(workspace_root().join("packaging/build-deb.sh"))
            .arg(&out_dir)
            .output()
            .expect("packaging/build-deb.sh");
        assert!(out.status.success(), "building the package: {}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let deb = PathBuf::from(stdout.lines().last().expect("the .deb's path"));
        assert!(deb.is_file(), "no {}", deb.display());
        deb
    })
    .clone()
}
