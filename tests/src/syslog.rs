//! A syslog receiver bound at /dev/log for the duration of a test.
//!
//! These machines have no syslog daemon. Only one receiver can own /dev/log,
//! so captures are serialised by an flock held for their lifetime (this also
//! serialises them across test processes).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const DEV_LOG: &str = "/dev/log";
const SAVED: &str = "/dev/log.sshidle-test-saved";
const LOCK: &str = "/tmp/sshidle-test-syslog.lock";

pub struct SyslogCapture {
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    _lock: std::fs::File,
    restored: bool,
}

impl SyslogCapture {
    pub fn start() -> SyslogCapture {
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).expect("syslog lock");
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
        let mut restored = false;
        if Path::new(DEV_LOG).exists() || std::fs::symlink_metadata(DEV_LOG).is_ok() {
            // A live daemon's socket is moved aside and put back afterwards;
            // a stale one is replaced.
            if UnixDatagram::unbound().and_then(|s| s.connect(DEV_LOG)).is_ok() {
                std::fs::rename(DEV_LOG, SAVED).expect("move /dev/log aside");
                restored = true;
            } else {
                let _ = std::fs::remove_file(DEV_LOG);
            }
        }
        let socket = UnixDatagram::bind(DEV_LOG).expect("bind /dev/log");
        // Writable by everyone, as a syslog daemon's is: sshd's user child
        // logs as the user.
        std::fs::set_permissions(DEV_LOG, std::os::unix::fs::PermissionsExt::from_mode(0o666)).expect("chmod /dev/log");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (messages, stop) = (messages.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        messages.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
            })
        };
        SyslogCapture { messages, stop, reader: Some(reader), _lock: lock, restored }
    }

    /// Every datagram received so far (`<PRI>TIMESTAMP ident: text`).
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until a message containing `needle` arrives; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        crate::util::wait_until(timeout, || {
            found = self.messages().into_iter().find(|m| m.contains(needle));
            found.is_some()
        });
        found
    }
}

/// The facility of a raw syslog datagram (`<PRI>...`, PRI = facility*8 + severity).
pub fn facility(message: &str) -> Option<i32> {
    let pri: i32 = message.strip_prefix('<')?.split('>').next()?.parse().ok()?;
    Some(pri & !7)
}

/// The severity of a raw syslog datagram (`libc::LOG_ERR`, ...).
pub fn severity(message: &str) -> Option<i32> {
    let pri: i32 = message.strip_prefix('<')?.split('>').next()?.parse().ok()?;
    Some(pri & 7)
}

impl Drop for SyslogCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(DEV_LOG);
        if self.restored {
            let _ = std::fs::rename(SAVED, DEV_LOG);
        }
    }
}
