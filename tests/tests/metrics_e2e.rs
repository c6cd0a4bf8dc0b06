//! Metrics for node_exporter (issue 12): Debian's prometheus-node-exporter,
//! started by the test with the enforcer's textfile directory, shows
//! sshidle's series within a second of a login and of a disconnect; the
//! shipped alert rules pass Prometheus's own `promtool check rules` and their
//! unit tests (`promtool test rules`).

use sshidle_tests::session::Enforcer;
use sshidle_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    /// Only the textfile collector, on 127.0.0.1.
    fn start(textfile_dir: &Path, log: &Path) -> NodeExporter {
        let binary = "/usr/bin/prometheus-node-exporter";
        assert!(Path::new(binary).exists(), "{binary} is missing: install prometheus-node-exporter (.ci/packages)");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(binary)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(["--collector.disable-defaults", "--collector.textfile"])
                .arg(format!("--collector.textfile.directory={}", textfile_dir.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .expect("node_exporter");
            let mut ne = None;
            wait_until(Duration::from_secs(10), || {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return true;
                }
                ne = metrics(port);
                ne.is_some()
            });
            if ne.is_some() {
                return NodeExporter { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("node_exporter did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    }

    fn metrics(&self) -> String {
        metrics(self.port).unwrap_or_default()
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /metrics, HTTP/1.0, on 127.0.0.1.
fn metrics(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls until `done` holds for the exporter's /metrics; the time it took.
fn until(ne: &NodeExporter, within: Duration, done: impl Fn(&str) -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if done(&ne.metrics()) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn node_exporter_shows_a_login_and_a_disconnect_within_a_second() {
    if !e2e_enabled() {
        return;
    }
    let user = TestUser::create("nme", &[]);
    let sshd = Sshd::start(
        "metrics",
        SshdOptions { policy: format!("user {} idle=6s warn=off\n", user.name), ..Default::default() },
    );
    sshd.authorize(&user);
    let textfiles = TempDir::new("textfile");
    let ne = NodeExporter::start(&textfiles.path, &sshd.dir.join("node_exporter.log"));
    let journal = JournalWatch::start(&sshd.state_dir);
    let mut enforcer = Enforcer::start(&sshd, &["--utmp", "none", "--textfile-dir", textfiles.path.to_str().unwrap()]);
    assert!(
        until(&ne, Duration::from_secs(10), |m| value(m, "sshidle_enforcer_up") == Some(1.0)).is_some(),
        "no sshidle series in /metrics:\n{}\n{}",
        ne.metrics(),
        enforcer.output()
    );
    assert_eq!(value(&ne.metrics(), "sshidle_sessions"), Some(0.0));
    assert_eq!(value(&ne.metrics(), "node_textfile_scrape_error"), Some(0.0), "{}", ne.metrics());

    // A login: recorded by the module, then in /metrics within a second.
    let args = sshd.ssh_args(&user.name);
    let mut client = Command::new(&args[0])
        .args(&args[1..])
        .arg("echo in; exec sleep 120")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let mut line = String::new();
    let _ = BufReader::new(client.stdout.take().unwrap()).read_line(&mut line);
    assert_eq!(line.trim(), "in");
    let logged_in = Instant::now();
    let of_user = format!(",user=\"{}\"}} 6", user.name);
    let seen = until(&ne, Duration::from_secs(5), |m| {
        value(m, "sshidle_sessions") == Some(1.0)
            && m.lines().any(|l| l.starts_with("sshidle_session_idle_limit_seconds{") && l.ends_with(&of_user))
    });
    let took = logged_in.elapsed();
    assert!(seen.is_some(), "login not in /metrics after {took:?}:\n{}\n{}", ne.metrics(), enforcer.output());
    eprintln!("login in /metrics after {took:?}");
    assert!(took <= Duration::from_secs(1), "login in /metrics only after {took:?}");
    let rows = sshd.status_json();
    let id = rows[0]["id"].as_str().expect("the login is recorded").to_string();
    let series = format!("sshidle_session_idle_limit_seconds{{id=\"{id}\",user=\"{}\"}}", user.name);
    assert_eq!(value(&ne.metrics(), &series), Some(6.0), "{}", ne.metrics());

    // The enforcer disconnects the idle session. The disconnect is counted
    // in /metrics within a second of the client being dropped (the counter
    // is written when the enforcer acts, so usually before), and the session
    // is gone from it within a second of close_session's record.
    let pid: i32 = id.parse().unwrap();
    let (mut dropped, mut counted, mut closed, mut gone) = (None, None, None, None);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(40) && (dropped.is_none() || gone.is_none() || counted.is_none()) {
        let m = ne.metrics();
        let now = Instant::now();
        if dropped.is_none() && matches!(client.try_wait(), Ok(Some(_))) {
            dropped = Some(now);
        }
        if counted.is_none() && value(&m, "sshidle_disconnects_total{cause=\"idle\"}") == Some(1.0) {
            counted = Some(now);
        }
        if closed.is_none() && journal.closed(pid) {
            closed = Some(now);
        }
        if gone.is_none() && closed.is_some() && value(&m, "sshidle_sessions") == Some(0.0) {
            gone = Some(now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (Some(dropped), Some(counted), Some(closed), Some(gone)) = (dropped, counted, closed, gone) else {
        panic!(
            "dropped {dropped:?} counted {counted:?} closed {closed:?} gone {gone:?}:\n{}\n{}",
            ne.metrics(),
            enforcer.output()
        );
    };
    let count_after_drop = counted.saturating_duration_since(dropped);
    let gone_after_close = gone.saturating_duration_since(closed);
    eprintln!("disconnect counted {count_after_drop:?} after the client was dropped, session gone {gone_after_close:?} after its close");
    assert!(count_after_drop <= Duration::from_secs(1), "disconnect counted only {count_after_drop:?} after the drop");
    assert!(gone_after_close <= Duration::from_secs(1), "session in /metrics {gone_after_close:?} after its close");
    assert!(!ne.metrics().contains(&series), "the ended session's series is still there");
    // The audit line of the disconnect.
    let log = enforcer.output();
    assert!(
        log.lines().any(|l| l.contains(&format!("event=disconnect user={} session={id} rhost=127.0.0.1 ", user.name))
            && l.contains(" limit=6 ")
            && l.ends_with(" cause=idle end=logout")),
        "{log}"
    );

    // Stopped cleanly: up 0.
    enforcer.assert_alive();
    drop(enforcer);
    assert!(
        until(&ne, Duration::from_secs(5), |m| value(m, "sshidle_enforcer_up") == Some(0.0)).is_some(),
        "{}",
        ne.metrics()
    );
    let _ = client.wait();
}

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("contrib/prometheus")
}

fn promtool(args: &[&str]) -> std::process::Output {
    assert!(Path::new("/usr/bin/promtool").exists(), "promtool is missing: install prometheus (.ci/packages)");
    Command::new("/usr/bin/promtool").args(args).current_dir(contrib()).output().expect("promtool")
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !e2e_enabled() {
        return;
    }
    let out = promtool(&["check", "rules", "sshidle.rules.yml"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 4 rules found"), "{}", describe(&out));
    let out = promtool(&["test", "rules", "sshidle.rules.test.yml"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn promtool_unit_tests_can_fail() {
    if !e2e_enabled() {
        return;
    }
    // The same tests against rules whose threshold is off by one: must fail.
    let temp = TempDir::new("promtool");
    let rules = std::fs::read_to_string(contrib().join("sshidle.rules.yml")).unwrap();
    let broken = rules.replace("[10m])) > 10", "[10m])) > 30");
    assert_ne!(broken, rules);
    std::fs::write(temp.join("sshidle.rules.yml"), broken).unwrap();
    std::fs::copy(contrib().join("sshidle.rules.test.yml"), temp.join("sshidle.rules.test.yml")).unwrap();
    let out = Command::new("/usr/bin/promtool")
        .args(["test", "rules", "sshidle.rules.test.yml"])
        .current_dir(&temp.path)
        .output()
        .expect("promtool");
    assert!(!out.status.success(), "promtool passed broken rules: {}", describe(&out));
}
