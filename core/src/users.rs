//! Account and group lookups through NSS (getpwnam_r, getgrouplist), so that
//! LDAP/SSSD users and supplementary groups count like local ones.
//!
//! A directory that does not answer makes NSS block for as long as its own
//! timeouts say (nslcd, sssd: often tens of seconds). [`group_names_within`]
//! bounds that for the login path: the lookup runs in a forked child, and the
//! caller stops waiting at a deadline of its own.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a login waits for the user's groups unless `nss_timeout=` says
/// otherwise.
pub const DEFAULT_NSS_TIMEOUT: Duration = Duration::from_secs(2);

/// The most a group lookup may return (names, NUL-separated): far beyond any
/// real account, small enough to read at once.
const MAX_GROUPS_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Calls a reentrant NSS lookup (`getpwnam_r` and friends) with a buffer that
/// grows while the call answers ERANGE. `call` returns the C return code and
/// whether a result was found.
fn with_nss_buffer<T>(mut call: impl FnMut(&mut [u8]) -> (libc::c_int, Option<T>)) -> Option<T> {
    let mut buf = vec![0u8; 4096];
    loop {
        match call(&mut buf) {
            (libc::ERANGE, _) if buf.len() < (1 << 22) => buf.resize(buf.len() * 4, 0),
            (0, found) => return found,
            _ => return None,
        }
    }
}

/// Looks up `name`; `None` when there is no such user (or NSS failed).
pub fn lookup_user(name: &str) -> Option<Account> {
    let cname = CString::new(name).ok()?;
    with_nss_buffer(|buf| {
        // SAFETY: passwd is plain data; all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers point to live, correctly sized buffers.
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        (rc, (!result.is_null()).then(|| Account { name: name.to_string(), uid: pwd.pw_uid, gid: pwd.pw_gid }))
    })
}

/// Looks up a uid's name.
pub fn user_name(uid: u32) -> Option<String> {
    with_nss_buffer(|buf| {
        // SAFETY: passwd is plain data; all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers point to live, correctly sized buffers.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        // SAFETY: on success pw_name is a NUL-terminated string inside buf.
        (rc, (!result.is_null()).then(|| unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned()))
    })
}

/// Names of the account's primary and supplementary groups.
pub fn group_names(account: &Account) -> Vec<String> {
    let Ok(cname) = CString::new(account.name.as_str()) else { return Vec::new() };
    let mut gids: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut count = gids.len() as libc::c_int;
        // SAFETY: gids has room for `count` entries.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), account.gid, gids.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            gids.truncate(count.max(0) as usize);
            break;
        }
        if gids.len() >= 65_536 {
            gids.clear();
            break;
        }
        let wanted = (count.max(0) as usize).max(gids.len() * 2);
        gids.resize(wanted, 0);
    }
    if !gids.contains(&account.gid) {
        gids.insert(0, account.gid);
    }
    gids.into_iter().filter_map(group_name).collect()
}

/// Why the groups of an account are not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsUnknown(pub String);

impl std::fmt::Display for GroupsUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// [`group_names`], but never waiting longer than `timeout`.
///
/// The lookup runs in a forked child that writes the names into a pipe; at
/// the deadline the child is killed and reaped. A fork, not a thread: a
/// thread stuck in NSS could not be stopped, would outlive the PAM call
/// inside sshd's monitor (running code of a module that `pam_end` unloads),
/// and could hold NSS locks across sshd's next fork. The child only does the
/// lookup and `_exit`s; it dies with its parent (PR_SET_PDEATHSIG) and, as a
/// last resort, by its own alarm. Meant for single-threaded callers (sshd's
/// monitor, sshidlectl).
///
/// When NSS takes groups only from local sources (see [`local_groups_only`])
/// there is nothing to wait for, and the lookup runs in this process.
pub fn group_names_within(account: &Account, timeout: Duration) -> Result<Vec<String>, GroupsUnknown> {
    let nsswitch = crate::files::read_regular_file(Path::new(NSSWITCH_CONF), NSSWITCH_MAX_BYTES).unwrap_or_default();
    if local_groups_only(&String::from_utf8_lossy(&nsswitch)) {
        return Ok(group_names(account));
    }
    group_names_forked(account, timeout)
}

const NSSWITCH_CONF: &str = "/etc/nsswitch.conf";
/// Far beyond any real nsswitch.conf; a larger one reads as missing (glibc's default, files).
const NSSWITCH_MAX_BYTES: u64 = 1 << 20;

/// NSS sources that answer from this machine: files, and systemd's and
/// glibc's local databases. Anything else (ldap, sss, winbind, nis, ...)
/// may wait on the network.
const LOCAL_SOURCES: [&str; 4] = ["files", "compat", "systemd", "db"];

/// Whether `nsswitch.conf` text takes group memberships (the `initgroups`
/// database, else `group`, which glibc's getgrouplist uses) only from local
/// sources. Unreadable or missing lines count as glibc's default
/// (`files`); any source not known to be local makes it false.
pub fn local_groups_only(nsswitch: &str) -> bool {
    local_sources_only(nsswitch, &["initgroups", "group"])
}

/// Whether the first of `databases` that nsswitch.conf names (none: glibc's
/// default, `files`) has only local sources.
fn local_sources_only(nsswitch: &str, databases: &[&str]) -> bool {
    let sources = |db: &str| {
        nsswitch.lines().map(|l| l.split('#').next().unwrap_or("")).find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == db).then(|| rest.to_string())
        })
    };
    let Some(line) = databases.iter().find_map(|db| sources(db)) else { return true };
    // Actions like [NOTFOUND=return] are not sources.
    let mut depth = 0;
    let mut words = String::new();
    for c in line.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => words.push(c),
            _ => {}
        }
    }
    words.split_whitespace().all(|source| LOCAL_SOURCES.contains(&source))
}

/// The forked, bounded lookup (see [`group_names_within`]).
pub fn group_names_forked(account: &Account, timeout: Duration) -> Result<Vec<String>, GroupsUnknown> {
    forked(timeout, || group_names(account))
}

/// [`lookup_user`], but never waiting longer than `timeout` (as
/// [`group_names_within`]: in a forked child unless nsswitch.conf's `passwd`
/// sources are all local). `Ok(None)`: no such user.
pub fn lookup_user_within(name: &str, timeout: Duration) -> Result<Option<Account>, GroupsUnknown> {
    let nsswitch = std::fs::read_to_string(NSSWITCH_CONF).unwrap_or_default();
    if local_sources_only(&nsswitch, &["passwd"]) {
        return Ok(lookup_user(name));
    }
    let fields = forked(timeout, || match lookup_user(name) {
        Some(a) => vec![a.uid.to_string(), a.gid.to_string()],
        None => Vec::new(),
    })?;
    match fields.as_slice() {
        [] => Ok(None),
        [uid, gid] => match (uid.parse(), gid.parse()) {
            (Ok(uid), Ok(gid)) => Ok(Some(Account { name: name.to_string(), uid, gid })),
            _ => Err(GroupsUnknown("the lookup process answered nonsense".into())),
        },
        _ => Err(GroupsUnknown("the lookup process answered nonsense".into())),
    }
}

/// Runs `lookup` in a forked child and reads its answer (a list of
/// strings) until `timeout`; past it the child is killed.
fn forked(timeout: Duration, lookup: impl FnOnce() -> Vec<String>) -> Result<Vec<String>, GroupsUnknown> {
    let started = Instant::now();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(GroupsUnknown(format!("pipe: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: pipe2 succeeded; each descriptor is owned exactly once.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child runs only the lookup below and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(GroupsUnknown(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        drop(reader);
        lookup_child(lookup, &writer, timeout);
    }
    drop(writer);
    let answer = read_until(&reader, started + timeout);
    reap(pid, answer.is_err());
    answer.map_err(|why| {
        GroupsUnknown(match why {
            ReadEnd::Deadline => format!("NSS did not answer within {:.1}s", timeout.as_secs_f64()),
            ReadEnd::Incomplete => "the lookup process ended without an answer".to_string(),
            ReadEnd::Failed(err) => format!("reading the lookup's answer: {err}"),
        })
    })
}

/// In the forked child: look up, write `name\0name\0...\n`, `_exit`. Never
/// returns and never unwinds into the parent's code.
fn lookup_child(lookup: impl FnOnce() -> Vec<String>, writer: &OwnedFd, timeout: Duration) -> ! {
    // SAFETY: plain syscalls on our own process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::alarm(timeout.as_secs().saturating_add(5).min(3600) as libc::c_uint);
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut answer = Vec::new();
        for name in lookup() {
            if answer.len() + name.len() + 2 > MAX_GROUPS_BYTES {
                break;
            }
            answer.extend_from_slice(name.as_bytes());
            answer.push(0);
        }
        answer.push(b'\n');
        write_all(writer, &answer)
    }));
    let code = if matches!(outcome, Ok(true)) { 0 } else { 1 };
    // SAFETY: leave without atexit handlers or stdio flushes of the parent's.
    unsafe { libc::_exit(code) }
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: bytes is a live slice.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

enum ReadEnd {
    Deadline,
    Incomplete,
    Failed(std::io::Error),
}

/// Reads the child's answer until end of file or the deadline.
fn read_until(reader: &OwnedFd, deadline: Instant) -> Result<Vec<String>, ReadEnd> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Deadline);
        }
        let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let wait_ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(ReadEnd::Failed(err));
        }
        if ready == 0 {
            continue;
        }
        // SAFETY: chunk is a live buffer of its length.
        let n = unsafe { libc::read(reader.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        match n {
            0 => break,
            n if n > 0 => {
                answer.extend_from_slice(&chunk[..n as usize]);
                if answer.len() > MAX_GROUPS_BYTES + 1 {
                    return Err(ReadEnd::Incomplete);
                }
            }
            _ => {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(ReadEnd::Failed(err));
            }
        }
    }
    // A complete answer ends with the newline the child writes last.
    match answer.pop() {
        Some(b'\n') => Ok(answer
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect()),
        _ => Err(ReadEnd::Incomplete),
    }
}

/// Reaps the lookup child, killing it first when it did not answer. Waits at
/// most a short while: a child SIGKILLed is gone in microseconds, and one
/// somebody else (a SIGCHLD handler of the host process) reaped is fine too.
fn reap(pid: libc::pid_t, kill_first: bool) {
    if kill_first {
        // SAFETY: pid is our own child, not yet reaped by us.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        let mut status = 0;
        // SAFETY: status is a live int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 || Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn group_name(gid: u32) -> Option<String> {
    with_nss_buffer(|buf| {
        // SAFETY: group is plain data; all-zero is a valid value.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers point to live, correctly sized buffers.
        let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        // SAFETY: on success gr_name is a NUL-terminated string inside buf.
        (rc, (!result.is_null()).then(|| unsafe { CStr::from_ptr(grp.gr_name) }.to_string_lossy().into_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_is_in_group_root() {
        let root = lookup_user("root").expect("root");
        assert_eq!(root.uid, 0);
        assert!(group_names(&root).contains(&"root".to_string()));
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn bounded_lookup_answers_like_the_direct_one() {
        let root = lookup_user("root").expect("root");
        let started = Instant::now();
        let bounded = group_names_forked(&root, Duration::from_secs(10)).expect("answer");
        assert_eq!(bounded, group_names(&root));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn bounded_lookup_gives_up_at_its_deadline() {
        // A zero deadline can never be met: the child is killed, not waited for.
        let root = lookup_user("root").expect("root");
        let started = Instant::now();
        let err = group_names_forked(&root, Duration::ZERO).unwrap_err();
        assert!(err.0.contains("did not answer within 0.0s"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }

    #[test]
    fn which_nsswitch_configurations_are_local() {
        let debian = "passwd:         files systemd\ngroup:          files systemd\nshadow: files\n";
        assert!(local_groups_only(debian));
        assert!(local_groups_only("group: files [NOTFOUND=return] db # comment ldap\n"));
        assert!(local_groups_only(""), "glibc's default is files");
        assert!(!local_groups_only("passwd: files ldap\ngroup: files ldap\n"));
        assert!(!local_groups_only("group: files sss\n"));
        assert!(!local_groups_only("group: sss [UNAVAIL=return] files\n"));
        // initgroups, when there, is what getgrouplist reads.
        assert!(local_groups_only("group: files ldap\ninitgroups: files\n"));
        assert!(!local_groups_only("group: files\ninitgroups: files winbind\n"));
        assert!(local_groups_only("groups: ldap\ngroup: files\n"), "only the exact database name counts");
    }

    #[test]
    fn bounded_user_lookup() {
        let forked = |name: &str| {
            forked(Duration::from_secs(10), || lookup_user(name).map(|a| vec![a.uid.to_string()]).unwrap_or_default())
        };
        assert_eq!(forked("root").unwrap(), vec!["0".to_string()]);
        assert_eq!(forked("no-such-user-sshidle").unwrap(), Vec::<String>::new());
        assert_eq!(lookup_user_within("root", Duration::from_secs(10)).unwrap().map(|a| a.uid), Some(0));
        assert_eq!(lookup_user_within("no-such-user-sshidle", Duration::from_secs(10)).unwrap(), None);
        assert!(local_sources_only("passwd: files systemd\n", &["passwd"]));
        assert!(!local_sources_only("passwd: files ldap\n", &["passwd"]));
    }

    #[test]
    fn unknown_user() {
        assert_eq!(lookup_user("no-such-user-sshidle"), None);
        assert_eq!(lookup_user("nul\0byte"), None);
    }
}
