//! What the login's bounded group lookup costs: `users::group_names` (NSS in
//! the calling process) against `users::group_names_forked` (the same lookup
//! in a forked child, read through a pipe, reaped), for one account.
//! `group_names_within` forks only when nsswitch.conf names a source that is
//! not local (ldap, sss, ...); with local sources it costs what the first does.
//!
//! Run: `cargo build --release --workspace && target/release/bench_groups [USER] [ITERATIONS]`
//! (default root, 2,000). The fork copies the caller's page tables, so the
//! figure grows with the caller's size; sshd's monitor is small.

use sshidle::users;
use std::time::{Duration, Instant};

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!("p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs", us(pct(0.5)), us(pct(0.9)), us(pct(0.99)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let user = args.next().unwrap_or_else(|| "root".into());
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let Some(account) = users::lookup_user(&user) else {
        eprintln!("bench_groups: no such user: {user}");
        std::process::exit(2);
    };
    let expected = users::group_names(&account);
    let (mut direct, mut bounded) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        let names = users::group_names(&account);
        direct.push(t.elapsed());
        assert_eq!(names, expected);
        let t = Instant::now();
        let names = users::group_names_forked(&account, users::DEFAULT_NSS_TIMEOUT).expect("answer");
        bounded.push(t.elapsed());
        assert_eq!(names, expected);
    }
    println!("{user}: {} groups, {iterations} lookups each", expected.len());
    println!("group_names (in process):       {}", stats(direct));
    println!("group_names_forked:             {}", stats(bounded));
}
