//! The soak test's ordinary day (`sshidle_tests::soak`, issue 18), for as
//! long as asked, with its figures: logins of each kind, pty numbers and
//! PIDs reused, typists kept, how late past the limit each idler was ended,
//! how often `status` was checked against the truth, and the enforcer's
//! RSS, descriptors and inotify watches over the day (one enforcer,
//! restarted once at 45 %).
//!
//! Run as root, by hand (not part of `make test`):
//! ```text
//! cargo build --release --workspace
//! nice target/release/bench_soak [--minutes 60] [--logins N]
//! ```
//! It runs the debug or release `sshidlectl` next to it.

use sshidle_tests::soak::{run_day, Day};
use std::time::Duration;

fn main() {
    let mut minutes = 60.0;
    let mut logins = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--minutes" => minutes = value().parse().expect("--minutes MINUTES"),
            "--logins" => logins = Some(value().parse().expect("--logins N")),
            other => {
                eprintln!("usage: bench_soak [--minutes 60] [--logins N] ({other}?)");
                std::process::exit(2);
            }
        }
    }
    let day = Day { length: Duration::from_secs_f64(minutes * 60.0), max_logins: logins, verbose: true };
    let report = run_day(&day);
    println!("enforcer over the day (seconds, RSS KiB, descriptors, inotify watches, sessions), every ~2 min:");
    let every = (report.enforcer.len() / 30).max(1);
    for (i, s) in report.enforcer.iter().enumerate() {
        if i % every == 0 || i + 1 == report.enforcer.len() {
            println!("  {:7.0} {:6} {:4} {:4} {:4}", s.0, s.1, s.2, s.3, s.4);
        }
    }
    for f in &report.failures {
        println!("failure: {f}");
    }
    println!("{}", report.summary());
}
