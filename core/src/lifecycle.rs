//! The life of a recorded session as the enforcer sees it, as a pure state
//! machine: no I/O and no clock (`now_ms` is passed in).
//!
//! Moments are unix milliseconds (`_ms`): the last input is known to the
//! moment it was read, and the warning and the end are due to the
//! millisecond, not at the next whole second. Limits are whole seconds, and
//! so is the login time (recorded rounded down).
//!
//! Observations go in: the session's record (limits, rule, login time, when it
//! was warned), when it has certainly been quiet since ([`Observation`], from
//! whatever source tells the last real input), and `now`. Actions come out
//! ([`Step`]): wait until the next check, look again with a fresh view of the
//! session's processes, warn, end (with a typed [`Cause`]); and, from the
//! bookkeeping of [`Lifecycle`], which sessions to forget, which are due and
//! when to wake up next.
//!
//! `sshidlectl enforce` feeds it and performs what it says; `sshidlectl
//! status` asks the same functions when a session will end ([`outlook`]), so
//! both show the same judgement.

use crate::policy::Limits;
use crate::state::{SessionKey, SessionRecord};
use std::collections::BTreeMap;

/// New sessions are first looked at this long after their login, when their
/// terminal or command exists.
pub const FIRST_LOOK_SECS: i64 = 1;

/// Whole seconds (a limit, a login time) in milliseconds.
pub fn secs_ms(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}

/// Milliseconds as whole seconds, rounded up: what is left of a lead, said
/// to the user (a warning due in 3.995 s says 4 s).
pub fn ceil_secs(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
}

/// Why sshidle ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Quiet for longer than `idle=`.
    Idle,
    /// Logged in for longer than `hard=`.
    Hard,
}

impl From<Cause> for crate::state::EndCause {
    fn from(cause: Cause) -> Self {
        match cause {
            Cause::Idle => crate::state::EndCause::Idle,
            Cause::Hard => crate::state::EndCause::Hard,
        }
    }
}

/// What is known of a session's activity now.
///
/// Any source of "last real input" plugs in here: it only has to say from
/// when on the session has certainly been quiet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Unix milliseconds from which on the session has certainly been idle
    /// (later than any input it had). `None` when its idleness is not judged
    /// (no terminal and no command: sshd's `UnusedConnectionTimeout` covers
    /// it).
    pub quiet_since_ms: Option<i64>,
    /// The session has terminals.
    pub ttys: bool,
    /// The session has commands without a terminal, whose activity is only
    /// seen when sampled.
    pub commands: bool,
    /// Made from a fresh look at the session's processes. Nothing is done to
    /// a session on an older view: a terminal or command opened since would
    /// be missed.
    pub fresh: bool,
}

/// What a session needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until [`Session::next_check_ms`]. `rescan`: the session has no
    /// channel yet; look for its processes afresh at the next check.
    Wait { rescan: bool },
    /// Something is due, but the observation is not fresh: look at the
    /// session's processes again and step again.
    Refresh,
    /// Write the warning now; the session ends at `ends_at_ms` unless it
    /// becomes active (for [`Cause::Idle`]).
    Warn { cause: Cause, ends_at_ms: i64 },
    /// End the session now.
    End(Cause),
}

/// What the rules say of a session now (before the enforcer's own
/// bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing before this moment (unix ms); `None`: no limit applies.
    Wait(Option<i64>),
    /// Warn now; the session will end at `ends_at_ms` unless it becomes
    /// active (for `Idle`).
    Warn { cause: Cause, ends_at_ms: i64 },
    /// End it now.
    End(Cause),
}

/// The deadline (unix ms) a session is ended at, and why, before any warning
/// delay: `quiet_since + idle`, or `login + hard` (plus the second the login
/// time was rounded down by).
pub fn deadline(limits: &Limits, login_time: i64, quiet_since_ms: Option<i64>) -> Option<(i64, Cause)> {
    let idle = limits.idle.zip(quiet_since_ms).map(|(l, q)| (q.saturating_add(secs_ms(l as i64)), Cause::Idle));
    // +1: the login time is recorded in whole seconds, rounded down; never end early.
    let hard = limits.hard.map(|h| (secs_ms(login_time.saturating_add(h as i64 + 1)), Cause::Hard));
    match (idle, hard) {
        (Some(i), Some(h)) => Some(if h.0 <= i.0 { h } else { i }),
        (i, h) => i.or(h),
    }
}

/// The warning given for the current deadline, if any: one given at or after
/// `deadline − warn` (and, for idleness, after the last activity).
fn valid_warning(cause: Cause, warn_at: i64, quiet_since_ms: Option<i64>, warned_at_ms: Option<i64>) -> Option<i64> {
    warned_at_ms.filter(|w| *w >= warn_at && (cause == Cause::Hard || Some(*w) >= quiet_since_ms))
}

/// Decides what to do with a session. `warned_at_ms` is when it was last
/// warned; moments in unix ms.
///
/// The user always gets the warning's full lead: a warning given late (the
/// enforcer was down, the policy changed) postpones the end to
/// `warned_at_ms + warn`.
pub fn decide(
    limits: &Limits,
    login_time: i64,
    quiet_since_ms: Option<i64>,
    warned_at_ms: Option<i64>,
    now_ms: i64,
) -> Decision {
    let Some((end, cause)) = deadline(limits, login_time, quiet_since_ms) else { return Decision::Wait(None) };
    let warn = secs_ms(limits.warn.unwrap_or(0) as i64);
    if warn <= 0 {
        return if now_ms >= end { Decision::End(cause) } else { Decision::Wait(Some(end)) };
    }
    let warn_at = end - warn;
    match valid_warning(cause, warn_at, quiet_since_ms, warned_at_ms) {
        Some(w) => {
            let end = end.max(w + warn);
            if now_ms >= end {
                Decision::End(cause)
            } else {
                Decision::Wait(Some(end))
            }
        }
        None if now_ms >= warn_at => Decision::Warn { cause, ends_at_ms: end.max(now_ms + warn) },
        None => Decision::Wait(Some(warn_at)),
    }
}

/// When (unix ms) the session will be ended, and why, if nothing changes (no
/// input, no new policy), never before `now`: what `status` shows as time
/// left. `None`: never.
pub fn outlook(
    limits: &Limits,
    login_time: i64,
    quiet_since_ms: Option<i64>,
    warned_at_ms: Option<i64>,
    now_ms: i64,
) -> Option<(i64, Cause)> {
    let (end, cause) = deadline(limits, login_time, quiet_since_ms)?;
    let warn = secs_ms(limits.warn.unwrap_or(0) as i64);
    let end = if warn <= 0 {
        end
    } else {
        match valid_warning(cause, end - warn, quiet_since_ms, warned_at_ms) {
            Some(w) => end.max(w + warn),
            // Warned at the next check, with the full lead.
            None => end.max(now_ms + warn),
        }
    };
    // Past due: ended at the next check.
    Some((end.max(now_ms), cause))
}

/// The longest time between two readings of a session's commands' counters:
/// how late, at most, a session without a terminal is ended (1,000 idle
/// sessions, 200 of them without one: 0.14 CPU-s an hour; 2 minutes saved
/// little more and doubled the lateness of a 20-minute limit).
pub const SAMPLE_MAX_SECS: i64 = 60;

/// How often (ms) the I/O counters of a session's commands are read: a tenth
/// of its idle limit, in whole seconds between 1 s and [`SAMPLE_MAX_SECS`]. A
/// change is credited when it is seen, so a session without a terminal is
/// disconnected at most this late.
pub fn sample_every(limits: &Limits) -> Option<i64> {
    limits.idle.map(|l| secs_ms((l as i64 / 10).clamp(1, SAMPLE_MAX_SECS)))
}

/// The next reading after `now` at this interval (both ms): on whole
/// multiples of it, so that the sessions sampled at the same interval are
/// read in one wake-up (never more than `every` apart).
pub fn next_sample(now_ms: i64, every: i64) -> i64 {
    (now_ms.div_euclid(every) + 1).saturating_mul(every)
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Looked at, warned when due.
    Watched,
    /// Its end was decided: nothing more is decided about it (with
    /// `--dry-run`, it was said it would end).
    Ending,
}

/// One session's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The record, with the limits and warning time the enforcer holds.
    pub record: SessionRecord,
    /// When to look again (unix ms).
    pub next_check_ms: i64,
    pub phase: Phase,
}

/// A change of limits, for the enforcer to record and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    pub before: Limits,
    pub after: Limits,
}

impl Session {
    /// A session read from the state file: first looked at just after its
    /// login. A `warned_at_ms` it carries (the enforcer restarted) is kept.
    pub fn recorded(record: SessionRecord, now_ms: i64) -> Session {
        let next_check_ms = secs_ms(record.login_time + FIRST_LOOK_SECS).max(now_ms);
        Session { record, next_check_ms, phase: Phase::Watched }
    }

    /// A session found without a record (utmp): looked at now.
    pub fn adopted(record: SessionRecord, now_ms: i64) -> Session {
        Session { record, next_check_ms: now_ms, phase: Phase::Watched }
    }

    pub fn key(&self) -> SessionKey {
        self.record.key
    }

    /// Takes what the state file says of the session again: a newer warning
    /// (written by another enforcer) counts.
    pub fn merge(&mut self, from_file: &SessionRecord) {
        if from_file.warned_at_ms > self.record.warned_at_ms {
            self.record.warned_at_ms = from_file.warned_at_ms;
        }
    }

    /// Gives the session the limits the current policy resolves for it. A
    /// warning already given stays valid when it still falls within the new
    /// warning lead. Returns the change, `None` when nothing changed.
    pub fn apply_policy(&mut self, limits: Limits, rule: &str, now_ms: i64) -> Option<PolicyChange> {
        if limits == self.record.limits && rule == self.record.rule {
            return None;
        }
        let before = self.record.limits;
        self.record.limits = limits;
        self.record.rule = rule.to_string();
        self.next_check_ms = now_ms;
        Some(PolicyChange { before, after: limits })
    }

    /// Decides, from what is observed now, what the session needs, and moves
    /// it on (warned, ending, next check).
    pub fn step(&mut self, seen: &Observation, now_ms: i64) -> Step {
        if self.phase == Phase::Ending {
            return Step::Wait { rescan: false };
        }
        let r = &self.record;
        match decide(&r.limits, r.login_time, seen.quiet_since_ms, r.warned_at_ms, now_ms) {
            Decision::Wait(until) => {
                let mut next = until.unwrap_or(i64::MAX);
                let mut rescan = false;
                if let Some(every) = sample_every(&r.limits) {
                    if seen.commands {
                        next = next.min(next_sample(now_ms, every));
                    } else if !seen.ttys {
                        // No channel (yet): look for one again now and then.
                        next = next.min(now_ms + (every * 3).clamp(secs_ms(2), secs_ms(60)));
                        rescan = true;
                    }
                }
                self.next_check_ms = next;
                Step::Wait { rescan }
            }
            Decision::Warn { .. } | Decision::End(_) if !seen.fresh => Step::Refresh,
            Decision::Warn { cause, ends_at_ms } => {
                self.record.warned_at_ms = Some(now_ms);
                self.next_check_ms = ends_at_ms;
                if let Some(every) = sample_every(&self.record.limits).filter(|_| seen.commands) {
                    self.next_check_ms = ends_at_ms.min(next_sample(now_ms, every));
                }
                Step::Warn { cause, ends_at_ms }
            }
            Decision::End(cause) => {
                self.phase = Phase::Ending;
                Step::End(cause)
            }
        }
    }

    /// When (unix ms) the session will end if nothing changes (see
    /// [`outlook`]).
    pub fn outlook(&self, quiet_since_ms: Option<i64>, now_ms: i64) -> Option<(i64, Cause)> {
        let r = &self.record;
        outlook(&r.limits, r.login_time, quiet_since_ms, r.warned_at_ms, now_ms)
    }
}

/// A tracked session and what the observer keeps of it (`T`: its processes,
/// counters, ... ; opaque here).
#[derive(Debug, Clone)]
pub struct Tracked<T> {
    pub session: Session,
    pub seen: T,
}

/// Every session the enforcer looks after.
#[derive(Debug, Clone)]
pub struct Lifecycle<T> {
    sessions: BTreeMap<SessionKey, Tracked<T>>,
}

impl<T> Default for Lifecycle<T> {
    fn default() -> Self {
        Lifecycle { sessions: BTreeMap::new() }
    }
}

impl<T> Lifecycle<T> {
    pub fn new() -> Lifecycle<T> {
        Lifecycle::default()
    }

    /// Takes the open sessions of the state file: new ones are tracked
    /// (`observe` makes what the observer keeps of them), known ones merged,
    /// and those no longer recorded forgotten unless `keep` says otherwise
    /// (adopted sessions are in no file). Returns the new sessions' keys.
    pub fn sync(
        &mut self,
        records: Vec<SessionRecord>,
        now_ms: i64,
        mut observe: impl FnMut(&SessionRecord) -> T,
        keep: impl Fn(&Session) -> bool,
    ) -> Vec<SessionKey> {
        let present: std::collections::HashSet<SessionKey> = records.iter().map(|r| r.key).collect();
        let mut new = Vec::new();
        for record in records {
            match self.sessions.get_mut(&record.key) {
                Some(t) => t.session.merge(&record),
                None => {
                    new.push(record.key);
                    let seen = observe(&record);
                    self.sessions.insert(record.key, Tracked { session: Session::recorded(record, now_ms), seen });
                }
            }
        }
        self.sessions.retain(|k, t| present.contains(k) || keep(&t.session));
        new
    }

    /// Tracks a session found without a record. False when it is known.
    pub fn adopt(&mut self, record: SessionRecord, seen: T, now_ms: i64) -> bool {
        if self.sessions.contains_key(&record.key) {
            return false;
        }
        self.sessions.insert(record.key, Tracked { session: Session::adopted(record, now_ms), seen });
        true
    }

    /// The sessions to look at now (`all`: every one not ending).
    pub fn due(&self, now_ms: i64, all: bool) -> Vec<SessionKey> {
        self.sessions
            .iter()
            .filter(|(_, t)| t.session.phase == Phase::Watched && (all || t.session.next_check_ms <= now_ms))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The earliest next check of a session not ending (unix ms).
    pub fn next_check_ms(&self) -> Option<i64> {
        self.sessions
            .values()
            .filter(|t| t.session.phase == Phase::Watched)
            .map(|t| t.session.next_check_ms)
            .filter(|at| *at < i64::MAX)
            .min()
    }

    /// Stops tracking a session (its process is gone).
    pub fn forget(&mut self, key: &SessionKey) -> Option<Tracked<T>> {
        self.sessions.remove(key)
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Tracked<T>> {
        self.sessions.get(key)
    }

    pub fn get_mut(&mut self, key: &SessionKey) -> Option<&mut Tracked<T>> {
        self.sessions.get_mut(key)
    }

    pub fn contains(&self, key: &SessionKey) -> bool {
        self.sessions.contains_key(key)
    }

    pub fn keys(&self) -> Vec<SessionKey> {
        self.sessions.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SessionKey, &Tracked<T>)> {
        self.sessions.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&SessionKey, &mut Tracked<T>)> {
        self.sessions.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle: Option<u64>, warn: Option<u64>, hard: Option<u64>) -> Limits {
        Limits { idle, warn, hard, ..Default::default() }
    }

    fn record(pid: i32, login: i64, limits: Limits) -> SessionRecord {
        SessionRecord {
            key: SessionKey { pid, start: 7 },
            uid: 1000,
            user: "alice".into(),
            rhost: "10.0.0.5".into(),
            service: "sshd".into(),
            login_time: login,
            limits,
            rule: "x:1: *".into(),
            warned_at_ms: None,
        }
    }

    /// [`decide`] with its moments in whole seconds.
    fn decide_at(l: &Limits, login: i64, quiet: Option<i64>, warned: Option<i64>, now: i64) -> Decision {
        decide(l, login, quiet.map(secs_ms), warned.map(secs_ms), secs_ms(now))
    }

    /// A terminal session quiet since `q`, freshly observed.
    fn tty(q: i64) -> Observation {
        Observation { quiet_since_ms: Some(q), ttys: true, commands: false, fresh: true }
    }

    fn stale(seen: Observation) -> Observation {
        Observation { fresh: false, ..seen }
    }

    #[test]
    fn warn_then_end() {
        let l = limits(Some(20), Some(10), None);
        // Quiet since 1000: warn at 1010, end at 1020.
        assert_eq!(decide_at(&l, 990, Some(1000), None, 1005), Decision::Wait(Some(secs_ms(1010))));
        assert_eq!(
            decide_at(&l, 990, Some(1000), None, 1010),
            Decision::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1020) }
        );
        assert_eq!(decide_at(&l, 990, Some(1000), Some(1010), 1011), Decision::Wait(Some(secs_ms(1020))));
        assert_eq!(decide_at(&l, 990, Some(1000), Some(1010), 1020), Decision::End(Cause::Idle));
        // Active again after the warning: the warning is spent, a new one comes later.
        assert_eq!(decide_at(&l, 990, Some(1016), Some(1010), 1020), Decision::Wait(Some(secs_ms(1026))));
        // A late warning (enforcer was down) gives the full lead.
        assert_eq!(
            decide_at(&l, 990, Some(1000), None, 1050),
            Decision::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1060) }
        );
        assert_eq!(decide_at(&l, 990, Some(1000), Some(1050), 1055), Decision::Wait(Some(secs_ms(1060))));
        // No warning configured.
        let l = limits(Some(20), None, None);
        assert_eq!(decide_at(&l, 990, Some(1000), None, 1019), Decision::Wait(Some(secs_ms(1020))));
        assert_eq!(decide_at(&l, 990, Some(1000), None, 1020), Decision::End(Cause::Idle));
    }

    #[test]
    fn warned_and_ended_to_the_millisecond() {
        // The last key was read at 1002.300: with idle=8s the end is due at
        // 1010.300, not at the next whole second (1011, when the last input
        // was kept in seconds, rounded up).
        let l = limits(Some(8), None, None);
        assert_eq!(decide(&l, 990, Some(1_002_300), None, 1_010_299), Decision::Wait(Some(1_010_300)));
        assert_eq!(decide(&l, 990, Some(1_002_300), None, 1_010_300), Decision::End(Cause::Idle));
        // With warn=4s: warned at 1006.300, ended 4 s after the warning.
        let l = limits(Some(8), Some(4), None);
        assert_eq!(decide(&l, 990, Some(1_002_300), None, 1_006_299), Decision::Wait(Some(1_006_300)));
        let warn = Decision::Warn { cause: Cause::Idle, ends_at_ms: 1_010_300 };
        assert_eq!(decide(&l, 990, Some(1_002_300), None, 1_006_300), warn);
        // A warning written 50 ms late keeps its full lead.
        let late = Decision::Warn { cause: Cause::Idle, ends_at_ms: 1_010_350 };
        assert_eq!(decide(&l, 990, Some(1_002_300), None, 1_006_350), late);
        assert_eq!(decide(&l, 990, Some(1_002_300), Some(1_006_350), 1_010_349), Decision::Wait(Some(1_010_350)));
        assert_eq!(decide(&l, 990, Some(1_002_300), Some(1_006_350), 1_010_350), Decision::End(Cause::Idle));
        // A key read 1 ms after the warning spends it.
        assert_eq!(decide(&l, 990, Some(1_006_351), Some(1_006_350), 1_010_350), Decision::Wait(Some(1_010_351)));
        // A warning known to the second only (an older enforcer's journal
        // line, read as the start of its second) is not taken for one given
        // after 1006.300: the session is warned again, never ended unwarned.
        assert_eq!(
            decide(&l, 990, Some(1_002_300), Some(1_006_000), 1_010_300),
            Decision::Warn { cause: Cause::Idle, ends_at_ms: 1_014_300 }
        );
        // The status's time left: whole seconds, rounded up.
        assert_eq!(outlook(&l, 990, Some(1_002_300), Some(1_006_350), 1_007_000), Some((1_010_350, Cause::Idle)));
        assert_eq!((ceil_secs(3_350), ceil_secs(3_000), ceil_secs(1), ceil_secs(0)), (4, 3, 1, 0));
        assert_eq!(ceil_secs(-1), 0);
    }

    #[test]
    fn a_session_is_looked_at_when_due_to_the_millisecond() {
        let mut lc: Lifecycle<()> = Lifecycle::new();
        let r = record(1, 990, limits(Some(8), Some(4), None));
        lc.sync(vec![r.clone()], 1_000_000, |_| (), |_| false);
        let t = lc.get_mut(&r.key).unwrap();
        assert_eq!(t.session.step(&tty(1_002_300), 1_003_000), Step::Wait { rescan: false });
        assert_eq!(lc.next_check_ms(), Some(1_006_300));
        assert_eq!(lc.due(1_006_299, false), vec![]);
        assert_eq!(lc.due(1_006_300, false), vec![r.key]);
        let t = lc.get_mut(&r.key).unwrap();
        assert_eq!(
            t.session.step(&tty(1_002_300), 1_006_300),
            Step::Warn { cause: Cause::Idle, ends_at_ms: 1_010_300 }
        );
        assert_eq!((t.session.record.warned_at_ms, lc.next_check_ms()), (Some(1_006_300), Some(1_010_300)));
    }

    #[test]
    fn hard_and_off() {
        // Login at 999 (rounded down): the hard end is 999 + 60 + 1.
        let l = limits(None, Some(5), Some(60));
        assert_eq!(decide_at(&l, 999, Some(1059), None, 1050), Decision::Wait(Some(secs_ms(1055))));
        assert_eq!(
            decide_at(&l, 999, Some(1059), None, 1055),
            Decision::Warn { cause: Cause::Hard, ends_at_ms: secs_ms(1060) }
        );
        assert_eq!(decide_at(&l, 999, Some(1059), Some(1055), 1059), Decision::Wait(Some(secs_ms(1060))));
        assert_eq!(decide_at(&l, 999, Some(1059), Some(1055), 1060), Decision::End(Cause::Hard));
        // Typing does not help against hard=.
        assert_eq!(decide_at(&l, 999, Some(1060), Some(1055), 1060), Decision::End(Cause::Hard));
        // idle=off and no hard: never.
        assert_eq!(decide(&limits(None, None, None), 1000, Some(secs_ms(1000)), None, 99_999), Decision::Wait(None));
        // No channel: idleness is not judged, hard still is.
        assert_eq!(decide(&limits(Some(10), None, None), 1000, None, None, 99_999), Decision::Wait(None));
        assert_eq!(
            decide_at(&limits(Some(10), None, Some(30)), 999, None, None, 1029),
            Decision::Wait(Some(secs_ms(1030)))
        );
        assert_eq!(decide_at(&limits(Some(10), None, Some(30)), 999, None, None, 1030), Decision::End(Cause::Hard));
        // An earlier idle warning does not count for the hard end.
        let l = limits(Some(100), Some(10), Some(150));
        assert_eq!(
            decide_at(&l, 999, Some(1100), Some(1095), 1140),
            Decision::Warn { cause: Cause::Hard, ends_at_ms: secs_ms(1150) }
        );
    }

    #[test]
    fn sampling_interval() {
        let l = |idle| Limits { idle, warn: None, hard: None, ..Default::default() };
        assert_eq!(sample_every(&l(Some(20))), Some(secs_ms(2)));
        assert_eq!(sample_every(&l(Some(5))), Some(secs_ms(1)));
        assert_eq!(sample_every(&l(Some(7200))), Some(secs_ms(60)));
        assert_eq!(sample_every(&l(Some(900))), Some(secs_ms(60)));
        assert_eq!(sample_every(&l(Some(450))), Some(secs_ms(45)));
        assert_eq!(sample_every(&l(Some(300))), Some(secs_ms(30)));
        // On whole multiples: sessions at the same interval share a wake-up.
        let at = |now, every| next_sample(secs_ms(now), secs_ms(every)) / 1000;
        assert_eq!((at(1000, 60), at(1020, 60), at(1079, 60)), (1020, 1080, 1080));
        assert_eq!((at(1000, 1), at(1000, 10)), (1001, 1010));
        // Within a second too.
        assert_eq!(next_sample(1_000_400, 1000), 1_001_000);
        assert_eq!(sample_every(&l(None)), None);
    }

    #[test]
    fn a_quiet_session_is_warned_once_then_ended() {
        let mut s = Session::recorded(record(1, 990, limits(Some(20), Some(10), None)), secs_ms(995));
        assert_eq!(s.next_check_ms, secs_ms(995));
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1005)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1010));
        // Due, but on a stale view: look again first, nothing changes.
        assert_eq!(s.step(&stale(tty(secs_ms(1000))), secs_ms(1010)), Step::Refresh);
        assert_eq!((s.record.warned_at_ms, s.phase), (None, Phase::Watched));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1010)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1020) }
        );
        assert_eq!((s.record.warned_at_ms, s.next_check_ms), (Some(secs_ms(1010)), secs_ms(1020)));
        // Not warned twice for the same quiet spell.
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1015)), Step::Wait { rescan: false });
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1020)), Step::End(Cause::Idle));
        assert_eq!(s.phase, Phase::Ending);
        // Ending: nothing more is decided.
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(2000)), Step::Wait { rescan: false });
    }

    #[test]
    fn activity_after_a_warning_means_a_new_warning_later() {
        let mut s = Session::recorded(record(1, 990, limits(Some(20), Some(10), None)), secs_ms(1010));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1010)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1020) }
        );
        // The user typed at 1013 (quiet from the end of that 8-s block, 1016).
        assert_eq!(s.step(&tty(secs_ms(1016)), secs_ms(1020)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1026));
        assert_eq!(
            s.step(&tty(secs_ms(1016)), secs_ms(1026)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1036) }
        );
        assert_eq!(s.step(&tty(secs_ms(1016)), secs_ms(1036)), Step::End(Cause::Idle));
    }

    #[test]
    fn a_late_warning_postpones_the_end() {
        // The enforcer was down: quiet since 1000 with idle=20 would end at
        // 1020, but the user is warned only at 1050 and gets the full 10 s.
        let mut s = Session::recorded(record(1, 990, limits(Some(20), Some(10), None)), secs_ms(1050));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1050)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1060) }
        );
        assert_eq!(s.next_check_ms, secs_ms(1060));
        assert_eq!(s.outlook(Some(secs_ms(1000)), secs_ms(1055)), Some((secs_ms(1060), Cause::Idle)));
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1059)), Step::Wait { rescan: false });
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1060)), Step::End(Cause::Idle));
    }

    #[test]
    fn a_restart_keeps_the_warning() {
        // Warned at 1010 by an enforcer that then stopped; the new one reads
        // warned_at_ms from the state file and does not warn again.
        let mut r = record(1, 990, limits(Some(20), Some(10), None));
        r.warned_at_ms = Some(secs_ms(1010));
        let mut s = Session::recorded(r, secs_ms(1012));
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1012)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1020));
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1020)), Step::End(Cause::Idle));

        // A warning another enforcer wrote meanwhile is merged in on reload.
        let mut lc: Lifecycle<()> = Lifecycle::new();
        let mut r = record(2, 990, limits(Some(20), Some(10), None));
        lc.sync(vec![r.clone()], secs_ms(1000), |_| (), |_| false);
        r.warned_at_ms = Some(secs_ms(1011));
        assert_eq!(lc.sync(vec![r.clone()], secs_ms(1011), |_| (), |_| false), vec![]);
        assert_eq!(lc.get(&r.key).unwrap().session.record.warned_at_ms, Some(secs_ms(1011)));
        // An older one does not replace it.
        r.warned_at_ms = Some(secs_ms(1001));
        lc.sync(vec![r.clone()], secs_ms(1012), |_| (), |_| false);
        assert_eq!(lc.get(&r.key).unwrap().session.record.warned_at_ms, Some(secs_ms(1011)));
    }

    #[test]
    fn policy_change_during_a_warning() {
        let mut s = Session::recorded(record(1, 990, limits(Some(20), Some(10), None)), secs_ms(1010));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1010)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1020) }
        );
        // Same rule again: no change.
        assert_eq!(s.apply_policy(limits(Some(20), Some(10), None), "x:1: *", secs_ms(1012)), None);
        // A longer idle limit: the warning no longer counts (it was given
        // before the new warning time); checked now, warned again later.
        let change = s.apply_policy(limits(Some(60), Some(10), None), "x:2: *", secs_ms(1012)).unwrap();
        assert_eq!(
            change,
            PolicyChange { before: limits(Some(20), Some(10), None), after: limits(Some(60), Some(10), None) }
        );
        assert_eq!((s.next_check_ms, s.record.rule.as_str()), (secs_ms(1012), "x:2: *"));
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1012)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1050));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1050)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1060) }
        );

        // A shorter limit during a warning: the warning given stays valid
        // and the user still gets its full lead.
        let mut s = Session::recorded(record(2, 990, limits(Some(60), Some(10), None)), secs_ms(1050));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1050)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1060) }
        );
        s.apply_policy(limits(Some(52), Some(10), None), "x:3: *", secs_ms(1051)).unwrap();
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1051)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1060));
        // The limit dropped far below: still no end before the warning's lead.
        s.apply_policy(limits(Some(5), Some(10), None), "x:4: *", secs_ms(1052)).unwrap();
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1052)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1060));
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1060)), Step::End(Cause::Idle));

        // idle=off during a warning: never ended.
        let mut s = Session::recorded(record(3, 990, limits(Some(20), Some(10), None)), secs_ms(1010));
        assert_eq!(
            s.step(&tty(secs_ms(1000)), secs_ms(1010)),
            Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1020) }
        );
        s.apply_policy(limits(None, None, None), "x:5: user alice", secs_ms(1015)).unwrap();
        assert_eq!(s.step(&tty(secs_ms(1000)), secs_ms(1020)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, i64::MAX);
        assert_eq!(s.outlook(Some(secs_ms(1000)), secs_ms(1020)), None);
    }

    #[test]
    fn commands_are_sampled_and_channelless_sessions_rescanned() {
        let l = limits(Some(100), Some(10), None);
        let mut s = Session::recorded(record(1, 990, l), secs_ms(1000));
        let cmd = Observation { quiet_since_ms: Some(secs_ms(1000)), ttys: false, commands: true, fresh: true };
        assert_eq!(s.step(&cmd, secs_ms(1000)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1010), "a tenth of the idle limit");
        // Warned: still sampled while the warning runs.
        assert_eq!(s.step(&cmd, secs_ms(1090)), Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1100) });
        assert_eq!(s.next_check_ms, secs_ms(1100));
        // A long warning: the commands are still sampled while it runs.
        let mut s = Session::recorded(record(2, 990, limits(Some(300), Some(60), None)), secs_ms(1000));
        let cmd = Observation { quiet_since_ms: Some(secs_ms(1000)), ..cmd };
        s.step(&cmd, secs_ms(1225));
        assert_eq!(s.next_check_ms, secs_ms(1230), "the next multiple of the interval");
        assert_eq!(s.step(&cmd, secs_ms(1240)), Step::Warn { cause: Cause::Idle, ends_at_ms: secs_ms(1300) });
        assert_eq!(s.next_check_ms, secs_ms(1260));
        // Activity seen at the sample: the warning is spent.
        let busy = Observation { quiet_since_ms: Some(secs_ms(1270)), ..cmd };
        assert_eq!(s.step(&busy, secs_ms(1270)), Step::Wait { rescan: false });
        assert_eq!(s.next_check_ms, secs_ms(1290));

        // `ssh -N`: not judged for idleness, looked for a channel now and
        // then, never ended for idleness, and status shows no end.
        let mut s = Session::recorded(record(3, 990, limits(Some(20), Some(10), None)), secs_ms(1000));
        let none = Observation { quiet_since_ms: None, ttys: false, commands: false, fresh: true };
        assert_eq!(s.step(&none, secs_ms(5000)), Step::Wait { rescan: true });
        assert_eq!(s.next_check_ms, secs_ms(5006));
        assert_eq!(s.outlook(None, secs_ms(5000)), None);
        // With hard=, it still ends then.
        let mut s = Session::recorded(record(4, 999, limits(Some(20), None, Some(30))), secs_ms(1000));
        assert_eq!(s.outlook(None, secs_ms(1000)), Some((secs_ms(1030), Cause::Hard)));
        assert_eq!(s.step(&none, secs_ms(1030)), Step::End(Cause::Hard));
    }

    #[test]
    fn outlook_is_what_the_enforcer_does() {
        // Whatever the moment, a session nobody touches ends exactly at its
        // outlook, to the millisecond (stepping every millisecond, as an
        // enforcer woken at each deadline would), with its last input read
        // at 1000.300.
        let quiet = 1_000_300;
        for (l, warned) in [
            (limits(Some(20), Some(10), None), None),
            (limits(Some(20), Some(10), None), Some(1_012_250)),
            (limits(Some(20), None, Some(25)), None),
            (limits(Some(60), Some(30), Some(70)), None),
        ] {
            for start in [995_000, 1_005_000, 1_011_700, 1_030_000] {
                let mut r = record(1, 999, l);
                r.warned_at_ms = warned;
                let mut s = Session::recorded(r, start);
                let expected = s.outlook(Some(quiet), start).map(|(at, _)| at);
                let mut ended = None;
                for now in start..start + 100_000 {
                    if s.next_check_ms <= now {
                        if let Step::End(_) = s.step(&tty(quiet), now) {
                            ended = Some(now);
                            break;
                        }
                    }
                }
                assert_eq!(ended, expected, "{l} warned {warned:?} from {start}");
            }
        }
    }

    #[test]
    fn bookkeeping_of_recorded_and_adopted_sessions() {
        let l = limits(Some(20), Some(10), None);
        let mut lc: Lifecycle<u32> = Lifecycle::new();
        let (a, b) = (record(1, 990, l), record(2, 1000, l));
        // New sessions are first looked at just after their login.
        assert_eq!(lc.sync(vec![a.clone(), b.clone()], secs_ms(995), |_| 0, |_| false), vec![a.key, b.key]);
        assert_eq!(lc.get(&a.key).unwrap().session.next_check_ms, secs_ms(995));
        assert_eq!(lc.get(&b.key).unwrap().session.next_check_ms, secs_ms(1001));
        assert_eq!(lc.due(secs_ms(995), false), vec![a.key]);
        assert_eq!(lc.due(secs_ms(995), true), vec![a.key, b.key]);
        assert_eq!(lc.next_check_ms(), Some(secs_ms(995)));

        // A session in utmp only is adopted: due now, once.
        let mut u = record(3, 900, l);
        u.service = "utmp".into();
        assert!(lc.adopt(u.clone(), 0, secs_ms(996)));
        assert!(!lc.adopt(u.clone(), 0, secs_ms(996)));
        assert!(lc.due(secs_ms(996), false).contains(&u.key));
        // A reload of the state file (which does not hold it) keeps the
        // adopted session while `keep` says so, and forgets closed ones.
        let new = lc.sync(vec![b.clone()], secs_ms(997), |_| 0, |s| s.record.service == "utmp");
        assert_eq!(new, vec![]);
        assert_eq!(lc.keys(), vec![b.key, u.key]);
        lc.sync(vec![b.clone()], secs_ms(998), |_| 0, |_| false);
        assert_eq!(lc.keys(), vec![b.key]);

        // Ending sessions are neither due nor wake anybody up.
        let t = lc.get_mut(&b.key).unwrap();
        t.seen = 5;
        t.session.record.warned_at_ms = Some(secs_ms(1011));
        assert_eq!(t.session.step(&tty(secs_ms(1001)), secs_ms(1021)), Step::End(Cause::Idle));
        assert_eq!(lc.due(secs_ms(5000), true), vec![]);
        assert_eq!(lc.next_check_ms(), None);
        assert_eq!(lc.forget(&b.key).map(|t| t.seen), Some(5));
        assert!(lc.is_empty());
    }
}
