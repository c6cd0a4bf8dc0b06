//! sshidle's core, shared by the PAM module (`pam_sshidle.so`) and the
//! controller (`sshidlectl`): the policy file, the session state file, and
//! what a login does with them.

pub mod activity;
pub mod audit;
pub mod discover;
pub mod duration;
pub mod files;
pub mod input;
pub mod lifecycle;
pub mod login;
pub mod patterns;
pub mod policy;
pub mod procfs;
pub mod props;
pub mod state;
pub mod terminate;
pub mod tiocsti;
pub mod users;
pub mod utmp;

pub use duration::{format_duration, parse_duration};
pub use policy::{Limits, Policy, DEFAULT_POLICY_PATH};
pub use state::{SessionKey, SessionRecord, StateDir, DEFAULT_STATE_DIR};

/// Severity of a log message, mapped to syslog priorities by each sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub fn syslog_priority(self) -> libc::c_int {
        match self {
            Level::Error => libc::LOG_ERR,
            Level::Warning => libc::LOG_WARNING,
            Level::Notice => libc::LOG_NOTICE,
            Level::Info => libc::LOG_INFO,
            Level::Debug => libc::LOG_DEBUG,
        }
    }
}

/// Where messages go: syslog through `pam_syslog` in the module, stderr and
/// syslog in the controller. The same text reaches the admin either way.
pub trait LogSink {
    fn log(&self, level: Level, message: &str);
}

/// A closure is a sink (`sshidlectl check` prints bare `FILE:LINE: message`).
impl<F: Fn(Level, &str)> LogSink for F {
    fn log(&self, level: Level, message: &str) {
        self(level, message)
    }
}

/// Current time in unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Current time in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
