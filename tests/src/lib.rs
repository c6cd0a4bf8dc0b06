//! Test harness for sshidle's integration and end-to-end tests: real libpam
//! stacks, a private sshd on 127.0.0.1, real users, real ptys through tmux,
//! and a syslog receiver. Everything a test creates is removed on drop, also
//! when the test fails, and names and ports are unique so tests can run in
//! parallel threads.

pub mod accounts;
pub mod deb;
pub mod journal;
pub mod logouts;
pub mod pam;
pub mod private_system;
pub mod session;
pub mod soak;
pub mod sshd;
pub mod syslog;
pub mod tmux;
pub mod util;

pub use accounts::{TestGroup, TestUser};
pub use journal::JournalWatch;
pub use pam::{PamConfDir, PamSession};
pub use sshd::{Sshd, SshdOptions};
pub use syslog::SyslogCapture;
pub use tmux::Tmux;
pub use util::*;
