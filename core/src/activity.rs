//! How idle a recorded session is: its ttys and the time since its last
//! input (see "What counts as idle" in the spec). Filled in by the enforcer
//! work; the controller's `status` and the enforcer both use it.

use crate::state::SessionRecord;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The session's terminals, as `pts/N`.
    pub ttys: Vec<String>,
    /// Seconds since the session's last activity.
    pub idle_secs: u64,
}

/// Observes a session now. A stand-in until the enforcer lands: no ttys, idle
/// since login.
pub fn observe(record: &SessionRecord, now: i64) -> Activity {
    Activity { ttys: Vec::new(), idle_secs: (now - record.login_time).max(0) as u64 }
}
