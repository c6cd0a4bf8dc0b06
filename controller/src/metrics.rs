//! The enforcer's Prometheus textfile for node_exporter's textfile collector
//! (`--textfile-dir DIR` or `metrics textfile-dir=DIR` in the policy):
//! `DIR/sshidle.prom`, replaced atomically (a dot `.tmp` name the collector
//! ignores, then `rename`) whenever something changes — a login, a logout, a
//! warning, a disconnect, an adoption — and at least every
//! [`HEARTBEAT`], so that a stale file means a dead enforcer. No cron job.

use crate::report::{prometheus_text, SessionRow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file's name in the collector's directory.
pub const TEXTFILE_NAME: &str = "sshidle.prom";

/// Longest time between two writes while the enforcer runs. The shipped
/// alert (`contrib/prometheus`) fires when the heartbeat is 180 s old.
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// What the enforcer counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub started: i64,
    pub warnings: u64,
    pub adoptions: u64,
}

/// The whole textfile: the enforcer's own families, then what
/// `status --format prometheus` prints. `adopted` is how many of `rows` are
/// sessions the module had not recorded. Pure: the time is passed in.
pub fn render(
    rows: &[SessionRow],
    adopted: usize,
    disconnects: &BTreeMap<String, u64>,
    counters: &Counters,
    up: bool,
    now: i64,
) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: i64| {
        out.push_str(&format!("# HELP sshidle_{name} {help}\n# TYPE sshidle_{name} {kind}\nsshidle_{name} {value}\n"));
    };
    family("enforcer_up", "gauge", "1 while the enforcer runs; 0 once it stopped cleanly.", i64::from(up));
    family("enforcer_start_time_seconds", "gauge", "Unix time the enforcer started.", counters.started);
    family(
        "enforcer_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of this file; rewritten at least every 60 s while the enforcer runs.",
        now,
    );
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    family("warnings_total", "counter", "Warnings written since the enforcer started.", count(counters.warnings));
    family(
        "adoptions_total",
        "counter",
        "Sessions the module had not recorded, adopted since the enforcer started.",
        count(counters.adoptions),
    );
    family(
        "sessions_adopted",
        "gauge",
        "Recorded sessions that the enforcer adopted (not recorded at login).",
        count(adopted as u64),
    );
    out.push_str(&prometheus_text(rows, disconnects));
    out
}

/// The textfile and when it was last written.
pub struct Textfile {
    path: PathBuf,
    written: Option<(Instant, String)>,
}

impl Textfile {
    pub fn new(dir: &Path) -> Textfile {
        Textfile { path: dir.join(TEXTFILE_NAME), written: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the heartbeat is due (nothing written for [`HEARTBEAT`]).
    pub fn heartbeat_due(&self, now: Instant) -> bool {
        self.written.as_ref().is_none_or(|(at, _)| now.duration_since(*at) >= HEARTBEAT)
    }

    /// When the next heartbeat is due.
    pub fn next_heartbeat(&self) -> Option<Instant> {
        self.written.as_ref().map(|(at, _)| *at + HEARTBEAT)
    }

    /// Replaces the file with `text` (mode 0644: node_exporter runs as its
    /// own user).
    pub fn write(&mut self, text: &str, now: Instant) -> std::io::Result<()> {
        // Not synced: rewritten at every change, and worthless after a crash.
        let how = sshidle::files::Replace { mode: 0o644, owner: None, sync: false };
        sshidle::files::write_atomic(&self.path, text.as_bytes(), &how)?;
        self.written = Some((now, text.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_the_enforcer_families_then_the_sessions() {
        let counters = Counters { started: 1_795_811_000, warnings: 2, adoptions: 1 };
        let counts = [("idle".to_string(), 3)].into_iter().collect();
        let rows = [SessionRow::example("42", "alice"), SessionRow::example("43", "bob")];
        let text = render(&rows, 1, &counts, &counters, true, 1_795_811_300);
        for line in [
            "sshidle_enforcer_up 1\n",
            "sshidle_enforcer_start_time_seconds 1795811000\n",
            "sshidle_enforcer_heartbeat_timestamp_seconds 1795811300\n",
            "sshidle_warnings_total 2\n",
            "sshidle_adoptions_total 1\n",
            "sshidle_sessions_adopted 1\n",
            "sshidle_sessions 2\n",
            "sshidle_disconnects_total{cause=\"idle\"} 3\n",
            "sshidle_session_idle_seconds{id=\"43\",user=\"bob\"} 30\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // Every family declared once, each series a name and a number.
        let mut names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let declared = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), declared, "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("sshidle_") && value.parse::<i64>().is_ok(), "{line}");
        }
        assert!(render(&[], 0, &counts, &counters, false, 0).contains("sshidle_enforcer_up 0\n"));
    }

    #[test]
    fn textfile_is_replaced_whole_with_a_heartbeat() {
        let dir = std::env::temp_dir().join(format!("sshidle-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = Textfile::new(&dir);
        let start = Instant::now();
        assert!(file.heartbeat_due(start));
        file.write("sshidle_sessions 1\n", start).unwrap();
        file.write("sshidle_sessions 2\n", start).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(TEXTFILE_NAME)).unwrap(), "sshidle_sessions 2\n");
        // Only the .prom file is left: the temporary file was renamed.
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec![TEXTFILE_NAME.to_string()]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(!file.heartbeat_due(start + HEARTBEAT - Duration::from_secs(1)));
        assert!(file.heartbeat_due(start + HEARTBEAT));
        assert_eq!(file.next_heartbeat(), Some(start + HEARTBEAT));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
