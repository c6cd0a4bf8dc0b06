//! Watching the state journal (`STATE_DIR/sessions`) for what the module
//! really wrote.
//!
//! `status` leaves out records whose monitor is gone, and the enforcer
//! compacts the journal (a rename over the file) when it drops dead sessions,
//! so neither says whether `close_session` wrote its `close`. A watcher reads
//! the journal every few milliseconds from the start of a test, holding the
//! file open: a compaction renames a new file over it, and the old one, with
//! every line appended to it, stays readable through the held descriptor.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One journal line: its kind (`open`, `close`, `warned`, ...) and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLine {
    pub kind: String,
    pub pid: i32,
    pub start: u64,
    pub user: Option<String>,
    pub text: String,
}

#[derive(Default)]
struct Seen {
    lines: Vec<JournalLine>,
    unique: HashSet<String>,
}

pub struct JournalWatch {
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl JournalWatch {
    /// Starts watching `state_dir/sessions` (it need not exist yet).
    pub fn start(state_dir: &Path) -> JournalWatch {
        let path = state_dir.join(sshidle::state::STATE_FILE);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, seen, stop) = (path.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tail = Tail::default();
                while !stop.load(Ordering::SeqCst) {
                    tail.poll(&path, &seen);
                    std::thread::sleep(Duration::from_millis(10));
                }
                tail.poll(&path, &seen);
            })
        };
        JournalWatch { path, seen, stop, reader: Some(reader) }
    }

    /// Every distinct line seen so far, in the order first seen. (A
    /// compaction rewrites the open sessions: their lines are seen once.)
    pub fn lines(&self) -> Vec<JournalLine> {
        self.seen.lock().unwrap().lines.clone()
    }

    /// The `open` lines of `pid` (one per start time seen).
    pub fn opens_of(&self, pid: i32) -> Vec<JournalLine> {
        self.lines().into_iter().filter(|l| l.kind == "open" && l.pid == pid).collect()
    }

    /// True once a `close` was written for the session recorded with this
    /// PID (and the start time its `open` line gave).
    pub fn closed(&self, pid: i32) -> bool {
        let lines = self.lines();
        let starts: Vec<u64> = lines.iter().filter(|l| l.kind == "open" && l.pid == pid).map(|l| l.start).collect();
        lines.iter().any(|l| l.kind == "close" && l.pid == pid && starts.contains(&l.start))
    }

    /// Waits until `close` of session `pid` is written; panics, showing the
    /// journal as seen, when it is not within `timeout`.
    pub fn assert_closed(&self, pid: i32, timeout: Duration) {
        let ok = crate::util::wait_until(timeout, || self.closed(pid));
        assert!(ok, "no close written for session {pid} in {}:\n{}", self.path.display(), self.dump());
    }

    /// The lines seen, for assertion messages.
    pub fn dump(&self) -> String {
        self.lines().iter().map(|l| format!("  {}", l.text)).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for JournalWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The file being read (kept open across a rename over its path; its
/// offset is how far it was read) and an unfinished last line.
#[derive(Default)]
struct Tail {
    file: Option<File>,
    partial: Vec<u8>,
}

impl Tail {
    fn poll(&mut self, path: &Path, seen: &Mutex<Seen>) {
        let current = std::fs::symlink_metadata(path).ok().map(|m| m.ino());
        let held = self.file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino());
        // Whatever was appended to the held file before it was replaced.
        self.read_held(seen);
        if current != held {
            self.file = None;
            self.partial.clear();
            if current.is_some() {
                self.file = File::open(path).ok();
                self.read_held(seen);
            }
        }
    }

    fn read_held(&mut self, seen: &Mutex<Seen>) {
        let Some(file) = self.file.as_mut() else { return };
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() || bytes.is_empty() {
            return;
        }
        self.partial.extend_from_slice(&bytes);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        let mut seen = seen.lock().unwrap();
        for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let text = String::from_utf8_lossy(line).into_owned();
            if let Some(parsed) = parse(&text) {
                if seen.unique.insert(text) {
                    seen.lines.push(parsed);
                }
            }
        }
    }
}

fn parse(text: &str) -> Option<JournalLine> {
    let mut fields = text.split('\t');
    let kind = fields.next()?.to_string();
    let (mut pid, mut start, mut user) = (None, None, None);
    for field in fields {
        match field.split_once('=') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("start", v)) => start = v.parse().ok(),
            Some(("user", v)) => user = Some(v.to_string()),
            _ => {}
        }
    }
    Some(JournalLine { kind, pid: pid?, start: start?, user, text: text.to_string() })
}
