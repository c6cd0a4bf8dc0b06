//! What counts as input: the judgement itself, pure (observations and the
//! clock in, "quiet since" out). The enforcer's tty watcher and the session
//! observer feed it; see "What counts as idle" in the spec and
//! sshidle.conf(5).
//!
//! **Terminals.** Input from the SSH client reaches a session's programs as
//! data they read from the pty slave that sshd allocated. Every such read
//! makes the kernel send `IN_ACCESS` to an inotify watch on `/dev/pts/N`, so
//! the last input is known to the moment it was read. The same event is also
//! sent by a `utimensat` that sets the atime (`touch -a`), which the user can
//! do, since sshd makes the user the pty's owner. The two are told apart by
//! the ctime: the kernel's read path never touches it, every attribute change
//! (`touch`, `chmod`/`mesg`) sets it to now. So an `IN_ACCESS` after which the
//! ctime is what it was is input; one after which it moved is not. Output,
//! ptys created inside the session and whatever is fed into them never reach
//! this watch at all. What remains is `TIOCSTI`: bytes a process pushes into
//! its own terminal's input are read like typed ones, so the module takes it
//! away from the session at login ([`crate::tiocsti`]); where it could not,
//! [`tiocsti_allowed`] says whether the kernel still allows it.
//!
//! **Without a history** (the watch was just set up: an enforcer that
//! started, a new pty): the atime is the only witness. The kernel sets it, in
//! whole seconds, when a read falls into a later 8-second block than the
//! atime it had; a read in the same block leaves it. An atime is trusted only
//! when it is that: whole seconds, set after the last attribute change (a
//! `utimensat` moves the ctime to the time of the call, so an atime it set
//! into the past is older than the ctime), and not in the future. Then the
//! last input was before the end of the atime's block ([`block_end`]);
//! otherwise nothing is known and the pty counts as active until now. Either
//! way, never later than now: faked timestamps buy at most one limit from the
//! moment the watch was set up.
//!
//! **Commands without a terminal.** Their I/O counters (`/proc/PID/io`),
//! sampled: a process seen in two samples that wrote, or read, did I/O. A
//! process starting or exiting is not I/O: new processes are only counted
//! from their second sample, and a parent's counters grow by a reaped child's
//! (its start-up reads included), so a read counts only when the process
//! reaped no child in between (`cminflt` unchanged from before the first
//! reading of the counters to after the second).

use crate::procfs::IoCounters;
use std::collections::BTreeMap;

/// The kernel moves a tty's atime/mtime only when the time crosses into
/// another block of this many seconds (`tty_update_time`).
pub const TTY_TIME_GRANULARITY: i64 = 8;

/// A timestamp as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Stamp {
    pub sec: i64,
    pub nsec: i64,
}

impl Stamp {
    pub fn new(sec: i64, nsec: i64) -> Stamp {
        Stamp { sec, nsec }
    }
}

/// A pty slave's timestamps that the judgement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PtyTimes {
    pub atime: Stamp,
    pub ctime: Stamp,
}

/// The end of the 8-second block holding `sec`: a read after `sec` in the
/// same block leaves the atime at `sec`.
pub fn block_end(sec: i64) -> i64 {
    // Saturating: an atime set near i64::MAX (`touch -d`) must not overflow.
    (sec.div_euclid(TTY_TIME_GRANULARITY) * TTY_TIME_GRANULARITY).saturating_add(TTY_TIME_GRANULARITY)
}

/// sshd sets the pty's owner and mode right after creating it, at the login:
/// attribute changes until this long after the login time are its own.
pub const PTY_SETTLE_SECS: i64 = 2;

/// The atime (unix seconds) when it tells when input was last read, for a pty
/// of a session logged in at `login_time`: not after `now`, and either
/// set by the kernel's read path (whole seconds, not older than the last
/// attribute change), or untouched since sshd set the pty up (the last
/// attribute change within [`PTY_SETTLE_SECS`] of the login, and the atime
/// not newer than it: the pty's creation, or a read before sshd's `chown`).
/// Either way no read fell into a later 8-s block without moving it.
pub fn kernel_atime(times: &PtyTimes, now: i64, login_time: i64) -> Option<i64> {
    let (a, c) = (times.atime, times.ctime);
    let read_since_change = a.nsec == 0 && c <= a;
    let untouched =
        c.sec <= login_time.saturating_add(PTY_SETTLE_SECS) && a <= c && a.sec >= login_time.saturating_sub(1);
    (a.sec <= now && (read_since_change || untouched)).then_some(a.sec)
}

/// What the enforcer knows of one sshd-allocated pty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtyInput {
    /// The ctime at the last look: another one means an attribute change.
    ctime: Stamp,
    /// Unix milliseconds from which on the pty has certainly had no input.
    quiet_since_ms: i64,
    /// When input was last seen as it happened (unix ms); `None` until then.
    last_input_ms: Option<i64>,
    /// The login time of the session the pty belongs to.
    login_time: i64,
}

impl PtyInput {
    /// The first look at a pty (its watch was just set up), from its
    /// timestamps alone.
    pub fn first_look(times: &PtyTimes, now_ms: i64, login_time: i64) -> PtyInput {
        let now = now_ms.div_euclid(1000);
        let quiet_since_ms = match kernel_atime(times, now, login_time) {
            Some(a) => block_end(a).saturating_mul(1000).min(now_ms),
            None => now_ms,
        };
        PtyInput { ctime: times.ctime, quiet_since_ms, last_input_ms: None, login_time }
    }

    /// Takes one batch of inotify events on the pty: `access` when an
    /// `IN_ACCESS` was among them, with the timestamps read after the batch.
    /// Returns true when it was input.
    pub fn events(&mut self, access: bool, times: &PtyTimes, now_ms: i64) -> bool {
        let attributes_changed = times.ctime != self.ctime;
        self.ctime = times.ctime;
        let input = access && !attributes_changed;
        if input {
            self.quiet_since_ms = self.quiet_since_ms.max(now_ms);
            self.last_input_ms = Some(now_ms);
        }
        input
    }

    /// After events were lost (the inotify queue overflowed): only what the
    /// atime proves is credited, never more than now.
    pub fn events_lost(&mut self, times: &PtyTimes, now_ms: i64) {
        if let Some(a) = kernel_atime(times, now_ms.div_euclid(1000), self.login_time) {
            self.quiet_since_ms = self.quiet_since_ms.max(block_end(a).saturating_mul(1000).min(now_ms));
        }
        self.ctime = times.ctime;
    }

    /// What the enforcer knew of the pty when it last saved it (`saved_ms`),
    /// taken up again by the next enforcer. Sound only while nothing moved:
    /// with the same ctime no attribute changed; with the same atime no read
    /// fell into a later block than the atime's, so after the end of that
    /// block nothing was read at all. Otherwise it is a [`first_look`].
    ///
    /// [`first_look`]: PtyInput::first_look
    pub fn restore(saved: &PtySaved, times: &PtyTimes, now_ms: i64, login_time: i64) -> PtyInput {
        if saved.times != *times || saved.saved_ms > now_ms {
            return PtyInput::first_look(times, now_ms, login_time);
        }
        let block_end_ms = block_end(times.atime.sec).saturating_mul(1000);
        let quiet_since_ms = if saved.saved_ms >= block_end_ms {
            saved.quiet_since_ms
        } else {
            // Reads until the end of the block would not have shown.
            saved.quiet_since_ms.max(block_end_ms.min(now_ms))
        };
        PtyInput { ctime: times.ctime, quiet_since_ms: quiet_since_ms.min(now_ms), last_input_ms: None, login_time }
    }

    /// What to save of the pty now, with its timestamps as they are.
    pub fn saved(&self, times: &PtyTimes, now_ms: i64) -> PtySaved {
        PtySaved { times: *times, quiet_since_ms: self.quiet_since_ms, saved_ms: now_ms }
    }

    /// Unix milliseconds from which on the pty has certainly had no input:
    /// the moment the last input was read, not the second after it.
    pub fn quiet_since_ms(&self) -> i64 {
        self.quiet_since_ms
    }

    /// When input was last seen as it happened (unix ms).
    pub fn last_input_ms(&self) -> Option<i64> {
        self.last_input_ms
    }
}

/// What an enforcer saved of a pty, for the next one ([`PtyInput::restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySaved {
    /// Its timestamps when saved.
    pub times: PtyTimes,
    /// Unix milliseconds from which on it had certainly had no input.
    pub quiet_since_ms: i64,
    /// When it was saved (unix milliseconds).
    pub saved_ms: i64,
}

/// The I/O counters of a session's commands at one sample, by (PID, start).
pub type IoSample = BTreeMap<(i32, u64), IoCounters>;

/// True when a process present in both samples did I/O in between: it
/// wrote, or it read without having reaped a child meanwhile. Processes that
/// appeared or went are not I/O.
pub fn did_io(before: &IoSample, after: &IoSample) -> bool {
    after.iter().any(|(id, now)| {
        before.get(id).is_some_and(|then| {
            now.wchar > then.wchar || (now.rchar > then.rchar && now.cminflt_after == then.cminflt_before)
        })
    })
}

/// How the running kernel treats `TIOCSTI` (pushing bytes into a terminal's
/// input), from `dev.tty.legacy_tiocsti`: `None` when the sysctl does not
/// exist (kernels before 6.2, where any process may do it on its own
/// controlling terminal), else whether it is allowed without
/// `CAP_SYS_ADMIN`.
pub fn tiocsti_allowed(legacy_tiocsti: Option<&str>) -> bool {
    legacy_tiocsti.is_none_or(|v| v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(a: (i64, i64), c: (i64, i64)) -> PtyTimes {
        PtyTimes { atime: Stamp::new(a.0, a.1), ctime: Stamp::new(c.0, c.1) }
    }

    #[test]
    fn blocks() {
        assert_eq!(block_end(800), 808);
        assert_eq!(block_end(807), 808);
        assert_eq!(block_end(808), 816);
        assert_eq!(block_end(-1), 0);
        // Whatever second of the block the last key was read in, the end of
        // the block is after it and at most 8 s after the atime.
        for atime in 800..808 {
            for typed in atime..808 {
                assert!(block_end(atime) > typed);
                assert!(block_end(atime) - atime <= TTY_TIME_GRANULARITY);
            }
        }
    }

    #[test]
    fn which_atimes_the_kernel_made() {
        // A read at 1000 after the pty was created at 990.25.
        assert_eq!(kernel_atime(&times((1000, 0), (990, 250_000_000)), 1005, 900), Some(1000));
        // Created (atime = ctime, with nanoseconds), never read since.
        assert_eq!(kernel_atime(&times((990, 250_000_000), (990, 250_000_000)), 1005, 900), None);
        // `touch -a`: atime = ctime = now, to the nanosecond.
        assert_eq!(kernel_atime(&times((1003, 5), (1003, 5)), 1005, 900), None);
        // `touch -a -d @1000` at 1003.5: whole seconds, but older than the ctime.
        assert_eq!(kernel_atime(&times((1000, 0), (1003, 500)), 1005, 900), None);
        // `touch -a -d @2000` (the future): not trusted while it is ahead.
        assert_eq!(kernel_atime(&times((2000, 0), (1003, 500)), 1005, 900), None);
        // A read at 1000.0, then `mesg n` at 1000.4: the atime could be a fake.
        assert_eq!(kernel_atime(&times((1000, 0), (1000, 400)), 1005, 900), None);
    }

    #[test]
    fn a_pty_untouched_since_sshd_set_it_up() {
        // Logged in at 990: created at 990.25, chown-ed by sshd at 990.26,
        // never read in a later block since.
        let fresh = times((990, 250_000_000), (990, 260_000_000));
        assert_eq!(kernel_atime(&fresh, 1005, 990), Some(990));
        assert_eq!(PtyInput::first_look(&fresh, 1_030_000, 990).quiet_since_ms(), 992_000);
        // Created and chown-ed in the same instant.
        assert_eq!(kernel_atime(&times((990, 5), (990, 5)), 1005, 990), Some(990));
        // Attributes changed later (`mesg n`, `touch`): not any more.
        assert_eq!(kernel_atime(&times((990, 5), (995, 1)), 1005, 990), None);
        assert_eq!(kernel_atime(&times((993, 7), (993, 7)), 1005, 990), None);
        // An atime from before the login is no creation.
        assert_eq!(kernel_atime(&times((900, 0), (991, 0)), 1005, 990), None);
    }

    #[test]
    fn first_look_never_ends_early_and_grants_at_most_now() {
        // Trusted atime 1000 seen at 1005.5: input may have been read until
        // 1007.999, but certainly not after now.
        let p = PtyInput::first_look(&times((1000, 0), (990, 1)), 1_005_500, 900);
        assert_eq!(p.quiet_since_ms(), 1_005_500);
        let p = PtyInput::first_look(&times((1000, 0), (990, 1)), 1_030_000, 900);
        assert_eq!(p.quiet_since_ms(), 1_008_000);
        // Faked in any way: quiet only from now.
        for fake in [times((5000, 0), (1000, 1)), times((1000, 0), (1001, 0)), times((1029, 7), (1029, 7))] {
            assert_eq!(PtyInput::first_look(&fake, 1_030_000, 900).quiet_since_ms(), 1_030_000, "{fake:?}");
        }
    }

    #[test]
    fn reads_are_input_attribute_changes_are_not() {
        let t0 = times((990, 1), (990, 1));
        let mut p = PtyInput::first_look(&t0, 1_000_000, 900);
        assert_eq!(p.quiet_since_ms(), 1_000_000);
        // A key read at 1002.3: the ctime did not move.
        assert!(p.events(true, &times((1002, 0), (990, 1)), 1_002_300));
        assert_eq!((p.quiet_since_ms(), p.last_input_ms()), (1_002_300, Some(1_002_300)));
        // `touch -a` at 1005: IN_ACCESS, but the ctime moved: not input.
        let touched = times((1005, 10), (1005, 10));
        assert!(!p.events(true, &touched, 1_005_000));
        assert_eq!(p.quiet_since_ms(), 1_002_300);
        // Touched again and again: never input.
        for s in 1006..1100 {
            assert!(!p.events(true, &times((s, 10), (s, 10)), s * 1000 + 1));
        }
        assert_eq!(p.quiet_since_ms(), 1_002_300);
        // A future atime once: not input either.
        assert!(!p.events(true, &times((9999, 0), (1100, 5)), 1_100_000));
        assert_eq!(p.quiet_since_ms(), 1_002_300);
        // The next real key after all that counts.
        assert!(p.events(true, &times((9999, 0), (1100, 5)), 1_101_200));
        assert_eq!(p.quiet_since_ms(), 1_101_200);
    }

    #[test]
    fn mesg_n_then_typing_counts() {
        let mut p = PtyInput::first_look(&times((990, 1), (990, 1)), 1_000_000, 900);
        // `mesg n`: IN_ATTRIB only (the Enter before it came in the same batch
        // and is lost with it: the ctime moved).
        assert!(!p.events(false, &times((990, 1), (1001, 7)), 1_001_000));
        assert!(!p.events(true, &times((990, 1), (1002, 7)), 1_002_000));
        // Typing afterwards: the ctime stays, every key counts.
        assert!(p.events(true, &times((1002, 0), (1002, 7)), 1_003_000));
        assert!(p.events(true, &times((1002, 0), (1002, 7)), 1_009_400));
        assert_eq!(p.quiet_since_ms(), 1_009_400);
    }

    #[test]
    fn lost_events_credit_only_what_the_atime_proves() {
        let mut p = PtyInput::first_look(&times((990, 1), (990, 1)), 1_000_000, 900);
        // A key was read at 1016 (atime moved, kernel-made) while events were lost.
        p.events_lost(&times((1016, 0), (990, 1)), 1_020_000);
        assert_eq!(p.quiet_since_ms(), 1_020_000);
        // Touched meanwhile: nothing credited, the ctime is taken as it is now.
        p.events_lost(&times((1030, 4), (1030, 4)), 1_040_000);
        assert_eq!(p.quiet_since_ms(), 1_020_000);
        assert!(p.events(true, &times((1030, 4), (1030, 4)), 1_041_000));
    }

    #[test]
    fn a_restarted_enforcer_takes_up_what_still_holds() {
        // Last key read at 1002.3 (atime 1000: same block as an earlier key),
        // saved at 1030 when the enforcer stopped.
        let t = times((1000, 0), (990, 1));
        let mut p = PtyInput::first_look(&times((990, 1), (990, 1)), 995_000, 900);
        assert!(p.events(true, &t, 1_002_300));
        let saved = p.saved(&t, 1_030_000);
        // Nothing moved when the next enforcer starts: to the second.
        assert_eq!(PtyInput::restore(&saved, &t, 1_040_000, 900).quiet_since_ms(), 1_002_300);
        // Saved within the atime's block: a read until its end would not show.
        let early = p.saved(&t, 1_005_000);
        assert_eq!(PtyInput::restore(&early, &t, 1_040_000, 900).quiet_since_ms(), 1_008_000);
        assert_eq!(PtyInput::restore(&early, &t, 1_006_000, 900).quiet_since_ms(), 1_006_000);
        // A key read since (atime moved, kernel-made): from the timestamps.
        let read = times((1035, 0), (990, 1));
        assert_eq!(PtyInput::restore(&saved, &read, 1_040_000, 900).quiet_since_ms(), 1_040_000);
        assert_eq!(PtyInput::restore(&saved, &read, 1_060_000, 900).quiet_since_ms(), 1_040_000);
        // Touched or chmod-ed since (ctime moved): from now.
        let touched = times((1000, 0), (1031, 5));
        assert_eq!(PtyInput::restore(&saved, &touched, 1_040_000, 900).quiet_since_ms(), 1_040_000);
        // A memory from the future (clock set back): not trusted.
        assert_eq!(PtyInput::restore(&saved, &t, 1_020_000, 900).quiet_since_ms(), 1_008_000);
    }

    fn io(r: u64, w: u64, c: u64) -> IoCounters {
        IoCounters { rchar: r, wchar: w, cminflt_before: c, cminflt_after: c }
    }

    #[test]
    fn command_io() {
        let before: IoSample = [((10, 1), io(100, 50, 0)), ((11, 2), io(7, 0, 0))].into();
        assert!(!did_io(&before, &before));
        // Output.
        assert!(did_io(&before, &[((10, 1), io(100, 51, 0))].into()));
        // Input read, no child reaped.
        assert!(did_io(&before, &[((10, 1), io(101, 50, 0))].into()));
        // A child started, read its libraries and was reaped: the parent's
        // rchar grew with its cminflt. Not I/O.
        assert!(!did_io(&before, &[((10, 1), io(7_100, 50, 230))].into()));
        // A child reaped while the counters were read: the read before the
        // reap, the counters after it; not I/O either, then or next time.
        let torn = IoCounters { rchar: 7_100, wchar: 50, cminflt_before: 0, cminflt_after: 230 };
        assert!(!did_io(&before, &[((10, 1), torn)].into()));
        assert!(!did_io(&[((10, 1), torn)].into(), &[((10, 1), io(7_100, 50, 230))].into()));
        assert!(did_io(&[((10, 1), io(7_100, 50, 230))].into(), &[((10, 1), io(7_101, 50, 230))].into()));
        // A reaped child that wrote: I/O.
        assert!(did_io(&before, &[((10, 1), io(7_100, 60, 230))].into()));
        // A process that went, one that came (with counters), a PID reused:
        // none of it is I/O.
        let after: IoSample = [((10, 1), io(100, 50, 0)), ((12, 3), io(9_000, 10, 0)), ((11, 9), io(8, 1, 0))].into();
        assert!(!did_io(&before, &after));
        assert!(!did_io(&IoSample::new(), &after));
    }

    #[test]
    fn tiocsti() {
        assert!(tiocsti_allowed(None));
        assert!(tiocsti_allowed(Some("1\n")));
        assert!(!tiocsti_allowed(Some("0\n")));
    }
}
