//! Reading `/proc`: a process's start time, which together with its PID
//! names it uniquely (PIDs are reused, start times are not).

use std::fs;

/// Start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` when the process does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 22)?.parse().ok()
}

/// Parent PID (field 4 of `/proc/PID/stat`).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 4)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line. The command
/// name (field 2) may contain spaces and parentheses, so fields after it are
/// counted from the last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    if n < 3 {
        return None;
    }
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_ascii_whitespace().nth(n - 3)
}

/// True when `pid` is alive (not a zombie) and still the process that
/// started at `start`.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    !matches!(stat_field(&stat, 3), Some("Z") | Some("X")) && stat_field(&stat, 22).and_then(|s| s.parse().ok()) == Some(start)
}

/// Clock ticks per second, for converting start times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable_and_identifies_us() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("own stat");
        assert_eq!(start_time(me), Some(start));
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert_eq!(start_time(-1), None);
        assert_eq!(parent_pid(me), Some(unsafe { libc::getppid() }));
    }

    #[test]
    fn comm_with_parens_and_spaces() {
        let stat = "42 (evil) name) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 123456 0";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("1"));
        assert_eq!(stat_field(stat, 22), Some("123456"));
    }
}
