//! PAM open+close latency of pam_sshidle.so against a pam_permit-only stack,
//! with 0, 1,000 and 10,000 sessions already recorded.
//!
//! Run: `cargo build --release --workspace && target/release/bench_pam [ITERATIONS]`
//!
//! Two figures per stack: `open+close`, the two calls on one handle (what the
//! module itself adds), and `cycle`, pam_start + open + close + pam_end (what
//! sshd pays per connection, module loading included).

use sshidle::policy::Limits;
use sshidle::state::{SessionKey, SessionRecord, StateDir};
use sshidle_tests::pam::{PamSession, PAM_SUCCESS};
use sshidle_tests::{module_path, PamConfDir};
use std::time::{Duration, Instant};

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    format!("mean {:>7.1} µs  p50 {:>7.1} µs  p99 {:>7.1} µs", us(mean), us(pct(0.5)), us(pct(0.99)))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn measure(conf: &PamConfDir, service: &str, iterations: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut open_close = Vec::with_capacity(iterations);
    let mut cycle = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t0 = Instant::now();
        let mut pam = PamSession::start(conf.path(), service, "root", Some("192.0.2.1")).expect("pam_start");
        let t1 = Instant::now();
        assert_eq!(pam.open_session(), PAM_SUCCESS);
        assert_eq!(pam.close_session(), PAM_SUCCESS);
        let t2 = Instant::now();
        drop(pam);
        let t3 = Instant::now();
        open_close.push(t2 - t1);
        cycle.push(t3 - t0);
    }
    (open_close, cycle)
}

fn main() {
    let iterations: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let conf = PamConfDir::new("bench");
    let policy = conf.dir.join("sshidle.conf");
    std::fs::write(&policy, "user backup idle=off\ngroup admins idle=2h warn=5m\ngroup contractors idle=10m warn=1m hard=8h\n* idle=15m warn=1m\n")
        .unwrap();
    conf.service("permit", "session required pam_permit.so\n");
    println!("pam_sshidle.so: {}", module_path().display());
    println!("iterations per row: {iterations}\n");
    let (base_oc, base_cycle) = measure(&conf, "permit", iterations);
    println!("{:<28} open+close {}", "pam_permit only", stats(base_oc.clone()));
    println!("{:<28} cycle      {}", "", stats(base_cycle.clone()));
    let base_mean = us(base_oc.iter().sum::<Duration>() / base_oc.len() as u32);
    for recorded in [0usize, 1_000, 10_000] {
        let state_dir = conf.dir.join(format!("state-{recorded}"));
        let state = StateDir::open(&state_dir, true).unwrap();
        for i in 0..recorded {
            state
                .record_open(&SessionRecord {
                    key: SessionKey { pid: 4_000_000 + i as i32, start: 123_456 + i as u64 },
                    uid: 1000,
                    user: format!("user{i}"),
                    rhost: "203.0.113.50".into(),
                    service: "sshd".into(),
                    login_time: sshidle::now_unix(),
                    limits: Limits { idle: Some(900), warn: Some(60), hard: None },
                    rule: format!("{}:4: *", policy.display()),
                    warned_at: None,
                })
                .unwrap();
        }
        state.compact(&|_| true).unwrap();
        let service = format!("sshidle-{recorded}");
        conf.service(
            &service,
            &format!(
                "session required pam_permit.so\nsession optional {} conf={} state={}\n",
                module_path().display(),
                policy.display(),
                state_dir.display()
            ),
        );
        let (oc, cycle) = measure(&conf, &service, iterations);
        let added = us(oc.iter().sum::<Duration>() / oc.len() as u32) - base_mean;
        let label = format!("+ pam_sshidle, {recorded} recorded");
        println!("{label:<28} open+close {}   (+{added:.1} µs mean over pam_permit)", stats(oc));
        println!("{:<28} cycle      {}", "", stats(cycle));
        let left = state.load().unwrap().sessions.len();
        assert_eq!(left, recorded, "the benchmark's own sessions must all be closed");
    }
}
