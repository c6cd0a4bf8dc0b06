//! The controller's log sink: stderr for the admin, and syslog (authpriv).

use sshidle::{Level, LogSink};
use std::ffi::CString;
use std::sync::Once;

/// Logs to stderr and to syslog with the ident `sshidlectl`.
pub struct Logger {
    pub stderr: bool,
    pub syslog: bool,
}

impl Logger {
    pub fn new(stderr: bool, syslog: bool) -> Logger {
        Logger { stderr, syslog }
    }
}

impl LogSink for Logger {
    fn log(&self, level: Level, message: &str) {
        if self.stderr {
            eprintln!("sshidlectl: {message}");
        }
        if self.syslog {
            to_syslog(level, message);
        }
    }
}

/// Writes one message to syslog, facility authpriv.
pub fn to_syslog(level: Level, message: &str) {
    static OPEN: Once = Once::new();
    // SAFETY: openlog keeps the ident pointer: it is a 'static string.
    OPEN.call_once(|| unsafe {
        libc::openlog(c"sshidlectl".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_AUTHPRIV)
    });
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: "%s" keeps the message out of the format string.
    unsafe { libc::syslog(libc::LOG_AUTHPRIV | level.syslog_priority(), c"%s".as_ptr(), text.as_ptr()) };
}
