//! The module under valgrind memcheck inside a real libpam: 1,000 full
//! cycles (pam_start .. pam_end, so the module is loaded and unloaded each
//! time) with a hostile remote host; zero errors and no definite leaks.

use sshidle_tests::*;
use std::process::Command;

#[test]
fn a_thousand_cycles_under_memcheck_have_no_errors_and_no_definite_leaks() {
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(valgrind.is_ok_and(|o| o.status.success()), "valgrind is missing: install it (it is in .ci/packages)");
    let conf = PamConfDir::new("vg");
    let policy = conf.dir.join("sshidle.conf");
    std::fs::write(&policy, "user nobody idle=off\ngroup root idle=2h warn=5m\n* idle=15m warn=1m hard=8h\n").unwrap();
    let state = conf.dir.join("state");
    // The module without its debug info (the code is the same): valgrind
    // reads an object's DWARF at every load, 1,000 loads of 10 MB would take
    // minutes.
    let module = conf.dir.join("pam_sshidle.so");
    run(Command::new("objcopy").arg("--strip-debug").arg(module_path()).arg(&module));
    conf.service(
        "vg",
        &format!(
            "session required pam_permit.so\nsession required {} conf={} state={} services=vg debug\n",
            module.display(),
            policy.display(),
            state.display()
        ),
    );
    // 1,000 cycles in four processes side by side: memcheck translates the
    // module's code again at every load, so one process would take minutes.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new("valgrind")
                .args([
                    "--tool=memcheck",
                    "--error-exitcode=99",
                    "--leak-check=full",
                    "--show-leak-kinds=definite",
                    "--errors-for-leak-kinds=definite",
                    "--track-origins=no",
                ])
                .arg(target_dir().join("pam_cycles"))
                .arg(conf.path())
                .args(["vg", "root", "250"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("valgrind")
        })
        .collect();
    for child in runs {
        let out = child.wait_with_output().expect("valgrind");
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
        assert!(
            !report.contains("definitely lost:") || report.contains("definitely lost: 0 bytes in 0 blocks"),
            "{report}"
        );
    }
    // Every session was recorded and removed again.
    let left = sshidle::StateDir::open(&state, false).unwrap().load().unwrap();
    assert!(left.sessions.is_empty(), "{:?}", left.sessions);
}
