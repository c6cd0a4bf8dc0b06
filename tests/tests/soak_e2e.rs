//! A server's ordinary day in two minutes (issue 18): see `sshidle_tests::soak`
//! for what runs and what must hold. `bench_soak` runs the same day for an
//! hour and prints the figures.

use sshidle_tests::soak::{run_day, Day};
use sshidle_tests::*;
use std::time::Duration;

#[test]
fn an_ordinary_day_keeps_every_promise() {
    if !e2e_enabled() {
        return;
    }
    let _timed = session::timed();
    let report = run_day(&Day { length: Duration::from_secs(100), max_logins: None, verbose: true });
    eprintln!("{}", report.summary());
    assert!(report.failures.is_empty(), "{:#?}\n{}", report.failures, report.summary());
    // The day was a day: numbers and PIDs came back, every kind of login came.
    assert!(report.ptys_reused >= 5, "pty numbers reused only {} times", report.ptys_reused);
    assert!(report.pids_reused >= 1, "no PID of a session reused (kernel.ns_last_pid not writable?)");
    for kind in [
        "typist",
        "typist (disconnected)",
        "idler",
        "controlmaster",
        "notty busy",
        "notty idle",
        "sftp busy",
        "sftp idle",
    ] {
        assert!(report.logins.get(kind).is_some_and(|n| *n >= 1), "no {kind} login: {:?}", report.logins);
    }
    assert!(report.status_rows_checked >= 20, "status checked on {} rows only", report.status_rows_checked);
    assert!(report.typists_kept >= 3);
}
