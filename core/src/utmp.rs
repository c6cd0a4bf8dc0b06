//! Reading utmp (`/run/utmp`): the logins that exist, with sshd's `[priv]`
//! monitor as `ut_pid`. The enforcer uses it for sessions opened before
//! `pam_sshidle.so` was installed, which have no record of their own.

use std::io;
use std::path::Path;

pub const DEFAULT_UTMP: &str = "/run/utmp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtmpEntry {
    pub pid: i32,
    pub user: String,
    /// `pts/N`
    pub line: String,
    pub host: String,
    /// Login time, unix seconds.
    pub time: i64,
}

/// The `USER_PROCESS` entries of a utmp file. A missing file is an empty list.
pub fn read(path: &Path) -> io::Result<Vec<UtmpEntry>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    Ok(parse(&bytes))
}

pub fn parse(bytes: &[u8]) -> Vec<UtmpEntry> {
    let size = std::mem::size_of::<libc::utmpx>();
    bytes
        .chunks_exact(size)
        .filter_map(|chunk| {
            // SAFETY: the chunk is exactly one struct's size, utmpx is plain
            // old data (integers and byte arrays) and read_unaligned copes
            // with any alignment.
            let u: libc::utmpx = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
            (u.ut_type == libc::USER_PROCESS && u.ut_pid > 0).then(|| UtmpEntry {
                pid: u.ut_pid,
                user: text(&u.ut_user),
                line: text(&u.ut_line),
                host: text(&u.ut_host),
                time: i64::from(u.ut_tv.tv_sec),
            })
        })
        .collect()
}

fn text(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field.iter().map(|c| *c as u8).take_while(|b| *b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: libc::c_short, pid: i32, user: &str, line: &str, sec: i32) -> Vec<u8> {
        // SAFETY: all-zero is a valid utmpx.
        let mut u: libc::utmpx = unsafe { std::mem::zeroed() };
        u.ut_type = kind;
        u.ut_pid = pid;
        for (dst, src) in u.ut_user.iter_mut().zip(user.bytes()) {
            *dst = src as libc::c_char;
        }
        for (dst, src) in u.ut_line.iter_mut().zip(line.bytes()) {
            *dst = src as libc::c_char;
        }
        u.ut_tv.tv_sec = sec as _;
        let size = std::mem::size_of::<libc::utmpx>();
        // SAFETY: reading the struct's own bytes.
        unsafe { std::slice::from_raw_parts((&u as *const libc::utmpx).cast::<u8>(), size) }.to_vec()
    }

    #[test]
    fn user_processes_only() {
        assert_eq!(std::mem::size_of::<libc::utmpx>(), 384);
        let mut bytes = entry(libc::BOOT_TIME, 0, "reboot", "~", 5);
        bytes.extend(entry(libc::USER_PROCESS, 4242, "alice", "pts/3", 1_700_000_000));
        bytes.extend(entry(libc::DEAD_PROCESS, 4243, "", "pts/4", 6));
        bytes.extend([1, 2, 3]); // a torn tail is ignored
        assert_eq!(
            parse(&bytes),
            vec![UtmpEntry {
                pid: 4242,
                user: "alice".into(),
                line: "pts/3".into(),
                host: String::new(),
                time: 1_700_000_000
            }]
        );
        assert_eq!(read(Path::new("/nonexistent/utmp")).unwrap(), vec![]);
    }
}
