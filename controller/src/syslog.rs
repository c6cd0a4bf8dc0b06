//! The controller's logging, through the `log` facade, with one backend
//! ([`init`]) that writes to the admin's stderr and to syslog (facility
//! authpriv, ident `sshidlectl`, by the `syslog` crate).
//!
//! Under systemd (`JOURNAL_STREAM` set: stderr is the journal) a message
//! goes to stderr only, with its sd-daemon `<N>` priority prefix, and not to
//! syslog too: journald would otherwise store every line twice.
//!
//! `log` has no NOTICE level; [`Logger`] (the controller's
//! [`sshidle::LogSink`]) marks it, and where a message goes, in the record's
//! target.

use sshidle::{Level, LogSink};
use std::io::Write;
use std::sync::Mutex;

const TARGET: &str = "sshidlectl";
/// Target suffixes: stderr only, syslog only, NOTICE priority.
const ONLY_STDERR: &str = "::stderr";
const ONLY_SYSLOG: &str = "::syslog";
const NOTICE: &str = "::notice";

/// A [`LogSink`] for the controller: to stderr and/or syslog.
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
        let route = match (self.stderr, self.syslog) {
            (true, true) => "",
            (true, false) => ONLY_STDERR,
            (false, true) => ONLY_SYSLOG,
            (false, false) => return,
        };
        let notice = if level == Level::Notice { NOTICE } else { "" };
        let target = format!("{TARGET}{route}{notice}");
        log::log!(target: &target, to_log_level(level), "{message}");
    }
}

/// Writes one message to syslog only (the admin already read it on stderr).
pub fn to_syslog(level: Level, message: &str) {
    Logger::new(false, true).log(level, message)
}

fn to_log_level(level: Level) -> log::Level {
    match level {
        Level::Error => log::Level::Error,
        Level::Warning => log::Level::Warn,
        Level::Notice | Level::Info => log::Level::Info,
        Level::Debug => log::Level::Debug,
    }
}

/// Our level back from a record (see the module comment).
fn level_of(record: &log::Record) -> Level {
    match record.level() {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warning,
        log::Level::Info if record.target().ends_with(NOTICE) => Level::Notice,
        log::Level::Info => Level::Info,
        log::Level::Debug | log::Level::Trace => Level::Debug,
    }
}

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

struct Backend {
    /// stderr is the journal: `<N>` prefixes, no syslog.
    journal: bool,
    /// Connected on first use, and again after a failed send (the daemon
    /// restarted), like libc's syslog.
    syslog: Mutex<Option<Syslog>>,
}

impl Backend {
    fn send_syslog(&self, level: Level, message: &str) {
        let Ok(mut slot) = self.syslog.lock() else { return };
        for _attempt in 0..2 {
            if slot.is_none() {
                let formatter = syslog::Formatter3164 {
                    facility: syslog::Facility::LOG_AUTHPRIV,
                    hostname: None,
                    process: TARGET.into(),
                    pid: std::process::id(),
                };
                *slot = syslog::unix(formatter).ok();
            }
            let Some(writer) = slot.as_mut() else { return };
            let sent = match level {
                Level::Error => writer.err(message),
                Level::Warning => writer.warning(message),
                Level::Notice => writer.notice(message),
                Level::Info => writer.info(message),
                Level::Debug => writer.debug(message),
            };
            if sent.is_ok() {
                return;
            }
            *slot = None;
        }
    }
}

impl log::Log for Backend {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let target = record.target();
        let to_stderr = !target.contains(ONLY_SYSLOG);
        let to_syslog = !target.contains(ONLY_STDERR);
        let level = level_of(record);
        let message = record.args().to_string();
        if self.journal {
            if !to_stderr {
                // Syslog-only copies of what was printed: the journal has it.
                return;
            }
            // One line per message, each with its priority (sd-daemon(3)).
            let mut err = std::io::stderr().lock();
            for line in message.lines() {
                let _ = writeln!(err, "<{}>{TARGET}: {line}", level.syslog_priority());
            }
            return;
        }
        if to_stderr {
            eprintln!("{TARGET}: {message}");
        }
        if to_syslog {
            self.send_syslog(level, &message);
        }
    }

    fn flush(&self) {}
}

/// Installs the backend; call once, first thing in `main`.
pub fn init() {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty());
    let backend = Backend { journal, syslog: Mutex::new(None) };
    if log::set_boxed_logger(Box::new(backend)).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_routes_survive_the_facade() {
        for level in [Level::Error, Level::Warning, Level::Notice, Level::Info, Level::Debug] {
            let notice = if level == Level::Notice { NOTICE } else { "" };
            let target = format!("{TARGET}{ONLY_SYSLOG}{notice}");
            let args = format_args!("x");
            let record = log::Record::builder().level(to_log_level(level)).target(&target).args(args).build();
            assert_eq!(level_of(&record), level);
        }
    }
}
