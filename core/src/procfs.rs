//! Reading `/proc`: a process's start time, which together with its PID
//! names it uniquely (PIDs are reused, start times are not).

use std::collections::HashMap;
use std::fs;
use std::io::Write;

/// Start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` when the process does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = read_stat_line(pid)?;
    stat_field(&stat, 22)?.parse().ok()
}

/// The process title (`/proc/PID/cmdline`, NULs as spaces), lossily decoded;
/// sshd rewrites it to say what each of its processes does.
pub fn title(pid: i32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
    Some(text.trim_end().to_string())
}

/// Parent PID (field 4 of `/proc/PID/stat`).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = read_stat_line(pid)?;
    stat_field(&stat, 4)?.parse().ok()
}

/// `/proc/PID/stat`, read lossily: a command name that is not UTF-8 (a user
/// can choose it) must not make a process invisible.
///
/// One `read(2)` into a stack buffer (a stat line is a few hundred bytes;
/// the kernel hands it out whole): this runs on the login path.
fn read_stat_line(pid: i32) -> Option<String> {
    use std::io::Read;
    if pid <= 0 {
        return None;
    }
    let mut file = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 4096];
    let n = file.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
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
    let Some(stat) = read_stat_line(pid) else { return false };
    !matches!(stat_field(&stat, 3), Some("Z") | Some("X"))
        && stat_field(&stat, 22).and_then(|s| s.parse().ok()) == Some(start)
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

/// The fields of `/proc/PID/stat` the enforcer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// Command name (field 2), at most 15 bytes; sshd's forked children
    /// share their monitor's.
    pub comm: String,
    pub ppid: i32,
    /// Session id (field 6): the PID of the session's leader.
    pub session: i32,
    /// Controlling terminal as a device number (field 7); 0 when none.
    pub tty_nr: u32,
    /// Start time in clock ticks since boot (field 22).
    pub start: u64,
}

/// Parses a `/proc/PID/stat` line.
pub fn parse_stat(pid: i32, stat: &str) -> Option<ProcStat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let tty_nr: i64 = stat_field(stat, 7)?.parse().ok()?;
    Some(ProcStat {
        pid,
        comm,
        ppid: stat_field(stat, 4)?.parse().ok()?,
        session: stat_field(stat, 6)?.parse().ok()?,
        tty_nr: tty_nr as u32,
        start: stat_field(stat, 22)?.parse().ok()?,
    })
}

/// Reads `/proc/PID/stat`.
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(pid, &read_stat_line(pid)?)
}

/// The PIDs of all processes (not threads).
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// `rchar` + `wchar` of `/proc/PID/io`: every byte the process read or
/// wrote through any file descriptor (ttys, pipes, sockets, files).
pub fn io_bytes(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let mut total = 0u64;
    let mut seen = 0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("rchar: ").or_else(|| line.strip_prefix("wchar: ")) {
            total = total.wrapping_add(v.trim().parse().ok()?);
            seen += 1;
        }
    }
    (seen == 2).then_some(total)
}

/// The audit session id that `pam_loginuid` gave the process's login
/// (`/proc/PID/sessionid`); `None` when unset.
pub fn audit_session(pid: i32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/sessionid")).ok()?;
    text.trim().parse().ok().filter(|id| *id != u32::MAX)
}

/// The login uid (`/proc/PID/loginuid`); `None` when unset.
pub fn login_uid(pid: i32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/loginuid")).ok()?;
    text.trim().parse().ok().filter(|id| *id != u32::MAX)
}

/// The real uid of the process (first field of `Uid:` in `/proc/PID/status`):
/// who it runs as, which `sudo`/`su` change and a setuid program does not.
pub fn real_uid(pid: i32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_real_uid(&text)
}

/// The real uid from the text of `/proc/PID/status`.
pub fn parse_real_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_ascii_whitespace().next()?.parse().ok()
}

/// The file the process runs (`/proc/PID/exe`).
pub fn exe(pid: i32) -> Option<std::path::PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The identity (device, inode) of the file the process runs, following
/// `/proc/PID/exe`: unlike the command name or the title, a process cannot
/// choose it without running that very file.
pub fn exe_id(pid: i32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    if pid <= 0 {
        return None;
    }
    let meta = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The pty masters a process holds open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtyMasters {
    /// The indexes N of their ptys (`/dev/pts/N`), sorted, no duplicates.
    pub indexes: Vec<u32>,
    /// Masters whose fdinfo names no pty (kernels without `tty-index`).
    pub unnamed: usize,
}

/// The pty masters `pid` holds: fds on `/dev/ptmx` (or `/dev/pts/ptmx`), with
/// the `tty-index` their fdinfo names. Unreadable fds are skipped.
pub fn pty_masters(pid: i32) -> PtyMasters {
    let mut out = PtyMasters::default();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return out };
    for entry in dir.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        if target.file_name().is_none_or(|n| n != "ptmx") {
            continue;
        }
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy()));
        match info.ok().as_deref().and_then(parse_tty_index) {
            Some(index) => out.indexes.push(index),
            None => out.unnamed += 1,
        }
    }
    out.indexes.sort_unstable();
    out.indexes.dedup();
    out
}

/// The `tty-index:` line of a ptmx fd's fdinfo.
pub fn parse_tty_index(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| l.strip_prefix("tty-index:"))?.trim().parse().ok()
}

/// What the process's I/O counters say (`/proc/PID/io`), with the minor
/// faults of the children it reaped (`cminflt`, field 11 of stat) read before
/// and after them: that number moves whenever a reaped child's counters were
/// added to the process's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCounters {
    pub rchar: u64,
    pub wchar: u64,
    pub cminflt_before: u64,
    pub cminflt_after: u64,
}

/// The I/O counters of `pid` if it is still the process that started at
/// `start` (and not a zombie).
pub fn io_counters(pid: i32, start: u64) -> Option<IoCounters> {
    let cminflt_before = reaped_minflt(pid, start)?;
    let (rchar, wchar) = parse_chars(&fs::read_to_string(format!("/proc/{pid}/io")).ok()?)?;
    Some(IoCounters { rchar, wchar, cminflt_before, cminflt_after: reaped_minflt(pid, start)? })
}

/// The minor faults of the children `pid` reaped (`cminflt`, field 11 of
/// stat), if it is still the process that started at `start` and not a
/// zombie.
fn reaped_minflt(pid: i32, start: u64) -> Option<u64> {
    let stat = read_stat_line(pid)?;
    if matches!(stat_field(&stat, 3), Some("Z") | Some("X")) || stat_field(&stat, 22)?.parse::<u64>().ok()? != start {
        return None;
    }
    stat_field(&stat, 11)?.parse().ok()
}

/// `(rchar, wchar)` from the text of `/proc/PID/io`.
fn parse_chars(io: &str) -> Option<(u64, u64)> {
    let field = |name: &str| io.lines().find_map(|l| l.strip_prefix(name))?.trim().parse::<u64>().ok();
    Some((field("rchar:")?, field("wchar:")?))
}

/// Descriptors the enforcer keeps open between looks (pidfds, pty handles,
/// I/O probes), counted so that they never take the last ones: with
/// [`FD_RESERVE`] left under the soft limit none is kept, and the caller
/// reads by path instead.
static KEPT_FDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Descriptors left for everything else (files, /proc scans, sockets).
pub const FD_RESERVE: u64 = 256;

/// A descriptor kept open between looks, within the budget above.
#[derive(Debug)]
pub struct KeptFd(std::os::fd::OwnedFd);

impl KeptFd {
    /// Keeps `fd` if the budget allows; else closes it and says `None`.
    pub fn keep(fd: std::os::fd::OwnedFd) -> Option<KeptFd> {
        use std::sync::atomic::Ordering;
        // SAFETY: plain data.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: a writable rlimit.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
        if KEPT_FDS.load(Ordering::Relaxed) + FD_RESERVE >= soft {
            return None;
        }
        KEPT_FDS.fetch_add(1, Ordering::Relaxed);
        Some(KeptFd(fd))
    }
}

impl std::os::fd::AsRawFd for KeptFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for KeptFd {
    fn drop(&mut self) {
        KEPT_FDS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `/proc/PID/io` of one process, kept open: a read is one `pread(2)`, with
/// no path to look up, and it can only ever be that process's (the open file
/// is bound to it: once it is gone the read fails, a reused PID is another
/// file). The enforcer samples the commands of sessions without a terminal
/// with these.
#[derive(Debug)]
pub struct IoProbe {
    io: KeptFd,
    pid: i32,
    start: u64,
}

impl IoProbe {
    /// Opens the counters of `pid` if it is the process that started at
    /// `start` (checked after the open, so the file is that process's).
    pub fn open(pid: i32, start: u64) -> Option<IoProbe> {
        if pid <= 0 {
            return None;
        }
        let io = KeptFd::keep(fs::File::open(format!("/proc/{pid}/io")).ok()?.into())?;
        is_same_process(pid, start).then_some(IoProbe { io, pid, start })
    }

    /// `(rchar, wchar)` now; `None` once the process is gone.
    pub fn chars(&self) -> Option<(u64, u64)> {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 512];
        // SAFETY: the buffer is writable for its length; a descriptor we own.
        let n = unsafe { libc::pread(self.io.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        parse_chars(std::str::from_utf8(buf.get(..n)?).ok()?)
    }

    /// The minor faults of the children the process reaped (`cminflt`), if
    /// it is alive and not a zombie.
    pub fn cminflt(&self) -> Option<u64> {
        reaped_minflt(self.pid, self.start)
    }

    /// The counters as [`io_counters`] reads them, judged against `before`
    /// (this process's previous sample), reading `/proc/PID/stat` only when
    /// the judgement needs it: when only `rchar` moved (was it a reaped
    /// child's?), or when `before` has no `cminflt` read before its counters.
    /// `cminflt_before` is carried over from `before` while it is still a
    /// reading from before these counters (sound: it can only make a read
    /// not count, never count one that was not); [`CMINFLT_UNKNOWN`] when it
    /// cannot be, so the next sample reads it first.
    pub fn sample(&self, before: Option<&IoCounters>) -> Option<IoCounters> {
        let fresh_before = match before {
            Some(b) if b.cminflt_before != CMINFLT_UNKNOWN => None,
            _ => Some(self.cminflt()?),
        };
        let (rchar, wchar) = self.chars()?;
        let carried = before.map(|b| b.cminflt_before).filter(|c| *c != CMINFLT_UNKNOWN);
        let cminflt_before = fresh_before.or(carried).unwrap_or(CMINFLT_UNKNOWN);
        let Some(b) = before else {
            return Some(IoCounters { rchar, wchar, cminflt_before, cminflt_after: cminflt_before });
        };
        if rchar > b.rchar && wchar == b.wchar {
            // Only reads: they count when no child was reaped meanwhile.
            let after = self.cminflt()?;
            let unchanged = after == cminflt_before;
            return Some(IoCounters {
                rchar,
                wchar,
                cminflt_before: if unchanged { cminflt_before } else { CMINFLT_UNKNOWN },
                cminflt_after: after,
            });
        }
        // Nothing moved, or it wrote: cminflt adds nothing to the judgement.
        Some(IoCounters { rchar, wchar, cminflt_before, cminflt_after: b.cminflt_before })
    }
}

/// `cminflt_before` of an [`IoCounters`] not known to precede its counters.
pub const CMINFLT_UNKNOWN: u64 = u64::MAX;

/// A process file descriptor (`pidfd_open(2)`) of a process known by PID and
/// start time: whether it still runs is one `poll(2)`, without reading
/// `/proc` and without any doubt about PID reuse.
#[derive(Debug)]
pub struct Pidfd(KeptFd);

impl Pidfd {
    /// `None` when the process is not (or no longer) the one that started at
    /// `start`, or the kernel has no pidfds (before Linux 5.3).
    pub fn open(pid: i32, start: u64) -> Option<Pidfd> {
        use std::os::fd::FromRawFd;
        if pid <= 0 {
            return None;
        }
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor just returned to us, owned from here on.
        let fd = KeptFd::keep(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })?;
        // Checked after the open: the pidfd is of the process seen here.
        is_same_process(pid, start).then_some(Pidfd(fd))
    }

    /// The descriptor, to poll many at once (readable once the process has
    /// exited).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// True once the process has exited (a zombie too).
    pub fn exited(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents != 0
    }
}

/// `pts/N` for a Unix98 pty slave device number (majors 136-143), else `None`.
pub fn pts_name(tty_nr: u32) -> Option<String> {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    (136..=143).contains(&major).then(|| format!("pts/{}", (major - 136) * 256 + minor))
}

/// Now on the clock of the processes' start times: clock ticks since boot
/// (`CLOCK_BOOTTIME`, as the kernel keeps start times), rounded down as the
/// kernel rounds them: a process forked after this call starts no earlier.
pub fn boot_ticks() -> u64 {
    // SAFETY: plain data, filled by the call.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid timespec to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return 0;
    }
    let ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    ns / (1_000_000_000 / clock_ticks_per_second())
}

/// `SSH_CONNECTION` of the process's environment (`/proc/PID/environ`, as
/// it stands in the process's memory): the connection sshd started it for,
/// or its ancestor, "CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT".
pub fn ssh_connection(pid: i32) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let value = env.split(|b| *b == 0).find_map(|var| var.strip_prefix(b"SSH_CONNECTION="))?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// Boot time in unix seconds (`btime` of `/proc/stat`).
pub fn boot_time() -> Option<i64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// A process's start time in unix seconds, from its start in clock ticks.
pub fn start_unix(start_ticks: u64) -> Option<i64> {
    Some(boot_time()? + (start_ticks / clock_ticks_per_second()) as i64)
}

/// A PID namespace: the device and inode of its `/proc/PID/ns/pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PidNs {
    pub dev: u64,
    pub ino: u64,
}

/// The PID namespace of `pid` (one `stat(2)`); `None` when it cannot be read
/// (the process is gone, or no ptrace access to it).
pub fn pid_namespace(pid: i32) -> Option<PidNs> {
    if pid <= 0 {
        return None;
    }
    ns_of(&format!("/proc/{pid}/ns/pid"))
}

/// This process's PID namespace.
pub fn own_pid_namespace() -> Option<PidNs> {
    ns_of("/proc/self/ns/pid")
}

fn ns_of(path: &str) -> Option<PidNs> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    Some(PidNs { dev: meta.dev(), ino: meta.ino() })
}

/// Whether a process in PID namespace `theirs` is one of ours, for a reader
/// in `own`: our `/proc` also shows the processes of the PID namespaces below
/// ours (containers: systemd-nspawn, LXC, Docker), which run sshds and
/// sessions of their own, under their own policy. Known to be another
/// namespace: not ours. Not known (a kernel without namespace files, a
/// reader without ptrace access, which then cannot read what else a session
/// needs either): ours, as before namespaces were looked at.
pub fn in_namespace(own: Option<PidNs>, theirs: Option<PidNs>) -> bool {
    match (own, theirs) {
        (Some(own), Some(theirs)) => own == theirs,
        _ => true,
    }
}

/// Which processes of a [`ProcTable`] are of another PID namespace.
#[derive(Debug, Default)]
enum Foreign {
    /// None is (a table built from given processes).
    #[default]
    None,
    /// Those whose `/proc/PID/ns/pid` is not `own`, read on first need: one
    /// `stat(2)` per process a walk reaches, not per process of the machine.
    Read { own: PidNs, known: std::cell::RefCell<HashMap<i32, bool>> },
    /// These (tests).
    Given(std::collections::HashSet<i32>),
}

/// One reading of every process's stat line, with the parent -> children
/// index that `/proc` itself does not offer (no `CONFIG_PROC_CHILDREN` on
/// many kernels).
///
/// The walks that find a session's processes ([`ProcTable::children`],
/// [`ProcTable::descendants`], [`ProcTable::audit_members`]) see only the
/// processes of the reader's own PID namespace ([`in_namespace`]): another
/// namespace's process is never counted nor signalled as a session's, nor
/// is anything below it (a namespace's descendants are all in it or below).
#[derive(Debug, Default)]
pub struct ProcTable {
    pub procs: HashMap<i32, ProcStat>,
    children: HashMap<i32, Vec<i32>>,
    audit: std::cell::OnceCell<HashMap<u32, Vec<i32>>>,
    foreign: Foreign,
    /// When the reading began ([`boot_ticks`]): a process missing from it
    /// started no earlier. 0 for a table made of given processes.
    scanned: u64,
}

impl ProcTable {
    pub fn scan() -> ProcTable {
        let scanned = boot_ticks();
        // Three system calls per process (open, read, close) into one reused
        // buffer: this is most of what a sweep costs.
        let mut buf = [0u8; 4096];
        let mut path = Vec::with_capacity(32);
        let procs = all_pids().into_iter().filter_map(|pid| {
            path.clear();
            let _ = write!(&mut path, "/proc/{pid}/stat\0");
            // SAFETY: path is NUL-terminated; buf is writable for its length.
            let n = unsafe {
                let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return None;
                }
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
                n
            };
            // Lossy: a command name that is not UTF-8 must not hide a process.
            parse_stat(pid, &String::from_utf8_lossy(buf.get(..usize::try_from(n).ok()?)?))
        });
        let mut table = ProcTable { scanned, ..ProcTable::from_procs(procs.collect::<Vec<_>>()) };
        if let Some(own) = own_pid_namespace() {
            table.foreign = Foreign::Read { own, known: Default::default() };
        }
        table
    }

    /// The table with `foreign` as the processes of another PID namespace.
    pub fn with_foreign(mut self, foreign: impl IntoIterator<Item = i32>) -> ProcTable {
        self.foreign = Foreign::Given(foreign.into_iter().collect());
        self
    }

    /// Whether `pid` is in the reader's PID namespace (see [`in_namespace`]).
    pub fn in_own_namespace(&self, pid: i32) -> bool {
        match &self.foreign {
            Foreign::None => true,
            Foreign::Given(foreign) => !foreign.contains(&pid),
            Foreign::Read { own, known } => {
                *known.borrow_mut().entry(pid).or_insert_with(|| in_namespace(Some(*own), pid_namespace(pid)))
            }
        }
    }

    pub fn from_procs(procs: impl IntoIterator<Item = ProcStat>) -> ProcTable {
        let procs: HashMap<i32, ProcStat> = procs.into_iter().map(|p| (p.pid, p)).collect();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in procs.values() {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        ProcTable { procs, children, audit: Default::default(), foreign: Foreign::None, scanned: 0 }
    }

    /// When the reading began, in clock ticks since boot (see [`boot_ticks`]).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    pub fn get(&self, pid: i32) -> Option<&ProcStat> {
        self.procs.get(&pid)
    }

    /// The direct children of `pid` in our PID namespace.
    pub fn children(&self, pid: i32) -> impl Iterator<Item = &ProcStat> {
        self.children
            .get(&pid)
            .into_iter()
            .flatten()
            .filter(|c| self.in_own_namespace(**c))
            .filter_map(|c| self.procs.get(c))
    }

    /// Every descendant of `pid` in our PID namespace, parents before their
    /// children.
    pub fn descendants(&self, pid: i32) -> Vec<&ProcStat> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::from([pid]);
        let mut queue = vec![pid];
        let mut i = 0;
        while i < queue.len() {
            let parent = queue[i];
            i += 1;
            for child in self.children.get(&parent).into_iter().flatten() {
                if seen.insert(*child) && self.in_own_namespace(*child) {
                    queue.push(*child);
                    if let Some(p) = self.procs.get(child) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// The processes in audit session `id` in our PID namespace (read on
    /// first use, once per table). Audit sessions are not namespaced: a
    /// container started from a login shares its audit session.
    pub fn audit_members(&self, id: u32) -> &[i32] {
        let map = self.audit.get_or_init(|| {
            let mut map: HashMap<u32, Vec<i32>> = HashMap::new();
            for pid in self.procs.keys() {
                if let Some(sid) = audit_session(*pid).filter(|_| self.in_own_namespace(*pid)) {
                    map.entry(sid).or_default().push(*pid);
                }
            }
            map
        });
        map.get(&id).map_or(&[], Vec::as_slice)
    }
}

/// Waits until `pid` sleeps in the system call that `/proc/PID/syscall`
/// shows starting with `call` (its number, then its arguments): then its exec
/// and the dynamic loader's reads of its libraries are done, and its I/O
/// counters stay still. Waiting only for a child's name to change left those
/// reads to land between two looks of a test, which then saw I/O (CI saw
/// activity at 1010 in `commands_io_is_activity`).
#[cfg(test)]
pub(crate) fn wait_in_syscall(pid: i32, call: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let in_call = || std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| s.starts_with(call));
    while !in_call() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(in_call(), "{pid} never waited in {call:?}");
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
        // SAFETY: getppid cannot fail.
        assert_eq!(parent_pid(me), Some(unsafe { libc::getppid() }));
    }

    #[test]
    fn pidfd_tells_when_the_process_exits() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        assert!(Pidfd::open(pid, start + 1).is_none(), "another start time is another process");
        let pidfd = Pidfd::open(pid, start).expect("pidfd");
        assert!(!pidfd.exited());
        child.kill().unwrap();
        // A zombie (not reaped yet) has exited too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pidfd.exited() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(pidfd.exited());
        child.wait().unwrap();
        assert!(pidfd.exited());
    }

    #[test]
    fn io_probe_reads_the_counters_of_that_process_only() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        // Its counters still while it sleeps, not while it loads libc.
        wait_in_syscall(pid, &format!("{} ", libc::SYS_clock_nanosleep));
        let start = start_time(pid).unwrap();
        assert!(IoProbe::open(pid, start + 1).is_none());
        let probe = IoProbe::open(pid, start).expect("probe");
        let first = probe.sample(None).expect("counters");
        let path = io_counters(pid, start).unwrap();
        assert_eq!((first.rchar, first.wchar), (path.rchar, path.wchar));
        assert_eq!(first.cminflt_before, path.cminflt_before);
        // Nothing moved: the same counters, the reading before them carried.
        assert_eq!(probe.sample(Some(&first)), Some(first));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(probe.sample(Some(&first)), None, "gone");
    }

    fn stat(pid: i32, ppid: i32) -> ProcStat {
        ProcStat { pid, comm: "p".into(), ppid, session: pid, tty_nr: 0, start: pid as u64 }
    }

    #[test]
    fn walks_leave_out_another_pid_namespace_and_all_below_it() {
        // 12 is a container's init under our 11, 13 its child.
        let table = ProcTable::from_procs([stat(10, 1), stat(11, 10), stat(12, 11), stat(13, 12), stat(14, 10)])
            .with_foreign([12, 13]);
        let pids = |v: Vec<&ProcStat>| {
            let mut pids: Vec<i32> = v.iter().map(|p| p.pid).collect();
            pids.sort_unstable();
            pids
        };
        assert_eq!(pids(table.descendants(10)), vec![11, 14]);
        assert_eq!(pids(table.children(11).collect()), Vec::<i32>::new());
        assert_eq!(pids(table.children(12).collect()), Vec::<i32>::new());
        assert!(table.in_own_namespace(11) && !table.in_own_namespace(12));
        // Looked up by PID, a process is still there (its start time is
        // what names it); only the walks leave it out.
        assert!(table.get(12).is_some());
    }

    #[test]
    fn a_namespace_is_another_only_when_both_are_known() {
        let a = Some(PidNs { dev: 4, ino: 4026531836 });
        let b = Some(PidNs { dev: 4, ino: 4026532000 });
        assert!(in_namespace(a, a));
        assert!(!in_namespace(a, b));
        assert!(in_namespace(a, None), "unreadable: counted, as before namespaces were looked at");
        assert!(in_namespace(None, b));
    }

    #[test]
    fn a_child_in_a_pid_namespace_of_its_own_is_left_out() {
        // Without root, a user namespace too. Not as root: the kernel makes
        // no user namespace in a chroot (systemd_e2e runs these tests in a
        // Debian 13 chroot).
        // SAFETY: geteuid has no preconditions.
        let user_ns: &[&str] = if unsafe { libc::geteuid() } == 0 { &[] } else { &["--user", "--map-root-user"] };
        let mut unshare = std::process::Command::new("unshare")
            .args(user_ns)
            .args(["--pid", "--fork", "--kill-child", "sleep", "30"])
            .spawn()
            .expect("unshare");
        let outer = unshare.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut inner = None;
        while inner.is_none() && std::time::Instant::now() < deadline {
            let table = ProcTable::scan();
            inner = table.procs.values().find(|p| p.ppid == outer && p.comm == "sleep").map(|p| p.pid);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let inner = inner.unwrap_or_else(|| panic!("no sleep in a PID namespace: unshare {:?}", unshare.try_wait()));
        let me = std::process::id() as i32;
        assert_eq!(pid_namespace(me), own_pid_namespace());
        assert_eq!(pid_namespace(outer), own_pid_namespace());
        assert!(pid_namespace(inner).is_some() && pid_namespace(inner) != own_pid_namespace());
        let table = ProcTable::scan();
        assert!(table.in_own_namespace(outer) && !table.in_own_namespace(inner));
        let below: Vec<i32> = table.descendants(me).iter().map(|p| p.pid).collect();
        assert!(below.contains(&outer) && !below.contains(&inner), "{below:?}");
        // Audit sessions are not namespaced: the namespace's process is in ours.
        if let Some(sid) = audit_session(me) {
            assert_eq!(audit_session(inner), Some(sid));
            let members = table.audit_members(sid);
            assert!(members.contains(&outer) && !members.contains(&inner), "{members:?}");
        }
        unshare.kill().unwrap();
        unshare.wait().unwrap();
    }

    #[test]
    fn comm_with_parens_and_spaces() {
        let stat = "42 (evil) name) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 123456 0";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("1"));
        assert_eq!(stat_field(stat, 22), Some("123456"));
    }
    #[test]
    fn processes_with_non_utf8_names_are_seen() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("sshidle-procfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(std::ffi::OsStr::from_bytes(b"evil\xff\xfe"));
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut child = std::process::Command::new(&link).arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let start = start_time(pid).expect("start time of a non-UTF-8 command");
        assert!(is_same_process(pid, start));
        assert_eq!(parent_pid(pid), Some(std::process::id() as i32));
        assert!(ProcTable::scan().get(pid).is_some_and(|p| p.start == start));
        assert!(read_stat(pid).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_stat_fields_and_pts_names() {
        let stat = "42 (sshd: a (x)) S 7 42 42 34816 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 123456 0";
        let p = parse_stat(42, stat).unwrap();
        assert_eq!((p.comm.as_str(), p.ppid, p.session, p.tty_nr, p.start), ("sshd: a (x)", 7, 42, 34816, 123456));
        assert_eq!(pts_name(34816), Some("pts/0".into()));
        assert_eq!(pts_name((136 << 8) | 5), Some("pts/5".into()));
        // Minor 300 of major 136: low byte in bits 0-7, the rest from bit 20.
        assert_eq!(pts_name((136 << 8) | 44 | (1 << 20)), Some("pts/300".into()));
        assert_eq!(pts_name((137 << 8) | 1), Some("pts/257".into()));
        assert_eq!(pts_name((4 << 8) | 1), None);
        assert_eq!(pts_name(0), None);
    }

    #[test]
    fn table_finds_descendants_and_io() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let table = ProcTable::scan();
        let kids: Vec<i32> = table.descendants(me).iter().map(|p| p.pid).collect();
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
        assert!(io_bytes(me).unwrap() > 0);
        assert!(boot_time().unwrap() > 1_000_000_000);
        let started = start_unix(start_time(me).unwrap()).unwrap();
        assert!((started - crate::now_unix()).abs() < 600, "{started}");
        child.kill().unwrap();
        child.wait().unwrap();
        let synthetic = ProcTable::from_procs([
            ProcStat { pid: 10, comm: "a".into(), ppid: 1, session: 10, tty_nr: 0, start: 1 },
            ProcStat { pid: 11, comm: "b".into(), ppid: 10, session: 10, tty_nr: 0, start: 2 },
            ProcStat { pid: 12, comm: "c".into(), ppid: 11, session: 10, tty_nr: 0, start: 3 },
            ProcStat { pid: 13, comm: "d".into(), ppid: 1, session: 13, tty_nr: 0, start: 4 },
        ]);
        let d: Vec<i32> = synthetic.descendants(10).iter().map(|p| p.pid).collect();
        assert_eq!(d, vec![11, 12]);
    }
}
