//! sshd process control, for `keepalive` and `install`: running `sshd -t`
//! and `sshd -T`, finding the listener (PidFile, its listening sockets, its
//! command line), reloading or restarting it, and checking that it answers
//! with an SSH banner afterwards.

use crate::keepalive::DEFAULT_SSHD_CONFIG;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd binary (sshd must be started by an absolute path).
pub const SSHD: &str = "/usr/sbin/sshd";

pub fn sshd_binary() -> &'static str {
    SSHD
}

/// `sshd MODE -f MAIN` (`-t` or `-T`), run to completion.
pub fn run_sshd(mode: &str, main: &Path) -> Result<std::process::Output, String> {
    Command::new(sshd_binary())
        .arg(mode)
        .arg("-f")
        .arg(main)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", sshd_binary()))
}

/// `sshd -t -f MAIN`: Ok, or sshd's complaint.
pub fn sshd_test(main: &Path) -> Result<(), String> {
    let out = run_sshd("-t", main)?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if text.is_empty() { format!("sshd -t exited with {}", out.status) } else { text })
    }
}

/// `sshd -T -f MAIN`: keyword (lower case) → values, in order.
pub fn sshd_effective(main: &Path) -> Result<BTreeMap<String, Vec<String>>, String> {
    let out = run_sshd("-T", main)?;
    if !out.status.success() {
        return Err(format!("sshd -T -f {} failed: {}", main.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(parse_effective(&String::from_utf8_lossy(&out.stdout)))
}

/// `sshd -T`'s output as keyword → values, in order. Keywords are folded to
/// lower case: OpenSSH up to 10.0 prints them so (`clientaliveinterval 0`),
/// 10.6 in mixed case (`ClientAliveInterval 0`).
pub fn parse_effective(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.entry(k.to_ascii_lowercase()).or_default().push(v.to_string());
        }
    }
    map
}

pub fn first<'a>(map: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(|v| v.first()).map(String::as_str)
}

/// Whether this sshd knows `UnusedConnectionTimeout` (OpenSSH 9.2+): `sshd
/// -t` on a one-line config; an unknown keyword is reported before anything
/// else is checked.
pub fn supports_unused_timeout() -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A new file (O_EXCL: never through someone's symlink in /tmp).
    let mut created = None;
    for attempt in 0..20 {
        let path = std::env::temp_dir().join(format!("sshidle-probe-{}-{attempt}.conf", std::process::id()));
        if let Ok(mut f) = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            if f.write_all(b"UnusedConnectionTimeout 1\n").is_ok() {
                created = Some(path);
            } else {
                let _ = fs::remove_file(&path);
            }
            break;
        }
    }
    let Some(path) = created else { return false };
    let out = run_sshd("-t", &path);
    let _ = fs::remove_file(&path);
    match out {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).to_ascii_lowercase();
            !(err.contains("bad configuration option") || err.contains("unsupported option"))
        }
        Err(_) => false,
    }
}

pub struct ReloadError {
    pub message: String,
    pub reloaded: bool,
    /// The listener exited after the reload: its command line, to start it again.
    pub died: Option<Vec<OsString>>,
}

/// The listener's command line, to start it again if it dies. sshd
/// overwrites its argv with a title, `NAME: ARGV... [listener] 0 of 10-100
/// startups`, so the words are taken from that (arguments with spaces are
/// lost); a first word that is not an existing absolute path is replaced by
/// the running binary.
pub fn listener_argv(pid: i32) -> Vec<OsString> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut words = argv_from_cmdline(&bytes);
    let usable = words.first().is_some_and(|w| Path::new(w).is_absolute() && Path::new(w).exists());
    if !usable {
        if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
            let exe = exe.to_string_lossy();
            let exe = OsString::from(exe.strip_suffix(" (deleted)").unwrap_or(&exe));
            match words.first_mut() {
                Some(first) => *first = exe,
                None => words.push(exe),
            }
        }
    }
    words
}

/// The words of a /proc/PID/cmdline: NUL-separated, or an sshd title.
pub fn argv_from_cmdline(bytes: &[u8]) -> Vec<OsString> {
    let parts: Vec<&[u8]> = bytes.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    match parts.as_slice() {
        [title] if title.windows(11).any(|w| w == b" [listener]") => {
            let title = String::from_utf8_lossy(title);
            let title = title.split(" [listener]").next().unwrap_or("");
            let title = title.split_once(": ").map_or(title, |(_, rest)| rest);
            title.split_whitespace().map(OsString::from).collect()
        }
        _ => parts.iter().map(|a| OsStr::from_bytes(a).to_os_string()).collect(),
    }
}

/// The running sshd listener of a config: the PID in its PidFile, checked to
/// be sshd and to hold listening TCP sockets.
#[derive(Debug, Clone)]
pub struct Listener {
    pid: i32,
    sockets: BTreeSet<u64>,
    addrs: Vec<SocketAddr>,
}

pub fn socket_inodes(pid: i32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        out.insert(n);
                    }
                }
            }
        }
    }
    out
}

/// The remote address of `pid`'s established TCP connection (an sshd
/// monitor's client), from its sockets and its network namespace's
/// `/proc/PID/net/tcp*`; for a connection found without a record.
pub fn peer_of(pid: i32) -> Option<String> {
    let sockets = socket_inodes(pid);
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        if let Some(addr) = established_peer(&text, v6, &sockets) {
            return Some(addr);
        }
    }
    None
}

/// The remote address of the first ESTABLISHED line of a /proc/net/tcp*
/// text whose socket is one of `sockets` (an IPv4-mapped address as IPv4).
pub fn established_peer(text: &str, v6: bool, sockets: &BTreeSet<u64>) -> Option<String> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "01" || !f[9].parse::<u64>().is_ok_and(|i| sockets.contains(&i)) {
            return None;
        }
        let ip = parse_proc_addr(f[2], v6)?.ip();
        Some(match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()),
            v4 => v4.to_string(),
        })
    })
}

/// Listening TCP sockets of this network namespace: inode → local address.
pub fn listening_sockets() -> BTreeMap<u64, SocketAddr> {
    let mut out = BTreeMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let (Some(addr), Ok(inode)) = (parse_proc_addr(f[1], v6), f[9].parse::<u64>()) else { continue };
            out.insert(inode, addr);
        }
    }
    out
}

/// `0100007F:08AE` (IPv4) or 32 hex digits + port (IPv6), as /proc/net/tcp*
/// prints them: each 32-bit word in host (little-endian) order.
pub fn parse_proc_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_le_bytes);
    let ip = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::from(word(ip)?))
    };
    Some(SocketAddr::new(ip, port))
}

/// The process runs the sshd binary (also one replaced by an upgrade since it
/// started, which the kernel shows as `PATH (deleted)`).
pub fn is_sshd_process(pid: i32) -> bool {
    let (Ok(exe), Ok(sshd)) = (fs::read_link(format!("/proc/{pid}/exe")), fs::canonicalize(sshd_binary())) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Path::new(exe) == sshd
}

pub fn listener_of(pid: i32) -> Option<Listener> {
    if pid <= 1 || !is_sshd_process(pid) {
        return None;
    }
    let listening = listening_sockets();
    let mine = socket_inodes(pid);
    let sockets: BTreeSet<u64> = mine.into_iter().filter(|i| listening.contains_key(i)).collect();
    if sockets.is_empty() {
        return None;
    }
    let addrs = sockets.iter().filter_map(|i| listening.get(i).copied()).collect();
    Some(Listener { pid, sockets, addrs })
}

/// The process exists and is not a zombie (a listener whose parent has not
/// reaped it yet is gone all the same).
pub fn process_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !matches!(sshidle::procfs::stat_field(&stat, 3), Some("Z" | "X") | None))
}

pub fn read_pidfile(path: &str) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Where to connect to test a listening address (wildcards → loopback).
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

/// What the check says to sshd after its banner: our identification, then a
/// clean SSH_MSG_DISCONNECT, so that sshd logs "Received disconnect ...:
/// sshidlectl keepalive: listener check" at INFO level, not the
/// `error: kex_exchange_identification: Connection closed` of a client that
/// hung up without a word.
pub fn check_goodbye() -> Vec<u8> {
    const IDENTIFICATION: &[u8] = b"SSH-2.0-sshidlectl_check\r\n";
    const SSH_MSG_DISCONNECT: u8 = 1;
    const SSH_DISCONNECT_BY_APPLICATION: u32 = 11;
    let reason = b"sshidlectl keepalive: listener check";
    let mut payload = vec![SSH_MSG_DISCONNECT];
    payload.extend_from_slice(&SSH_DISCONNECT_BY_APPLICATION.to_be_bytes());
    payload.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    payload.extend_from_slice(reason);
    // The language tag: none.
    payload.extend_from_slice(&0u32.to_be_bytes());
    // RFC 4253 6: length, padding length, payload, at least 4 bytes of
    // padding, the whole a multiple of 8 (no cipher, no MAC yet).
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = IDENTIFICATION.to_vec();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// Connects, reads sshd's identification line (`SSH-2.0-...`) and says
/// goodbye properly.
pub fn ssh_banner(addr: SocketAddr) -> Result<String, String> {
    let target = connect_addr(addr);
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(|e| format!("{target}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 255 {
        match stream.read(&mut byte) {
            Ok(1) => {
                if byte[0] == b'\n' {
                    break;
                }
                buf.push(byte[0]);
            }
            Ok(_) => break,
            Err(e) => return Err(format!("{target}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
    if line.starts_with("SSH-") {
        // The listener answered; a failed goodbye changes nothing of that.
        let _ = std::io::Write::write_all(&mut stream, &check_goodbye());
        // Read until sshd hangs up (or a second passes): closing with its
        // KEXINIT unread would reset the connection instead.
        let deadline = Instant::now() + Duration::from_secs(1);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut sink = [0u8; 2048];
        while Instant::now() < deadline && matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        Ok(line)
    } else {
        Err(format!("{target}: no SSH banner (got {line:?})"))
    }
}

/// Addresses from `sshd -T` (`listenaddress 0.0.0.0:22`, `[::]:22`).
pub fn configured_addrs(effective: &BTreeMap<String, Vec<String>>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for v in effective.get("listenaddress").into_iter().flatten() {
        let text = v.split_whitespace().next().unwrap_or("");
        if let Ok(a) = text.parse::<SocketAddr>() {
            out.push(a);
        }
    }
    out
}

pub fn is_system_config(main: &Path) -> bool {
    fs::canonicalize(DEFAULT_SSHD_CONFIG).is_ok_and(|p| p == main)
}

/// Reloads the sshd that runs with `main` and checks it listens again.
/// Ok: a sentence saying how. Not running at all is Ok (nothing to reload).
pub fn reload_sshd(main: &Path) -> Result<String, ReloadError> {
    let err = |message: String| ReloadError { message, reloaded: false, died: None };
    let effective = sshd_effective(main).map_err(err)?;
    let pidfile = first(&effective, "pidfile").unwrap_or("none").to_string();
    let listener = if pidfile == "none" { None } else { read_pidfile(&pidfile).and_then(listener_of) };
    let Some(before) = listener else {
        for addr in configured_addrs(&effective) {
            if let Ok(banner) = ssh_banner(addr) {
                return Err(err(format!(
                    "an SSH server answers on {} ({banner}), but PidFile {pidfile} does not name a running sshd listener, so it cannot be reloaded",
                    connect_addr(addr)
                )));
            }
        }
        return Ok(format!(
            "sshd is not running (PidFile {pidfile} names no sshd listener, nothing answers on its ports): nothing to reload; the values apply when it starts"
        ));
    };
    let argv = listener_argv(before.pid);
    let system = is_system_config(main);
    let mut how: Option<String> = None;
    if system && Path::new("/run/systemd/system").is_dir() {
        for unit in ["ssh.service", "sshd.service"] {
            let active = Command::new("systemctl").args(["is-active", "--quiet", unit]).status();
            if active.is_ok_and(|s| s.success()) {
                let reload = Command::new("systemctl").args(["reload", unit]).status();
                if reload.is_ok_and(|s| s.success()) && wait_reexec(&before, Duration::from_secs(10)).is_ok() {
                    how = Some(format!("systemctl reload {unit}"));
                }
                break;
            }
        }
    }
    if how.is_none() && system {
        for script in ["/etc/init.d/ssh", "/etc/init.d/sshd"] {
            if !Path::new(script).exists() {
                continue;
            }
            // The script signals the PID of its own pidfile: it "works" when
            // our listener re-executes.
            let ok = Command::new(script).arg("reload").output().is_ok_and(|o| o.status.success());
            if ok && wait_reexec(&before, Duration::from_secs(5)).is_ok() {
                how = Some(format!("{script} reload"));
            }
            break;
        }
    }
    if how.is_none() {
        // SAFETY: plain kill(2) on a PID just checked to be an sshd listener.
        if unsafe { libc::kill(before.pid, libc::SIGHUP) } != 0 {
            return Err(err(format!(
                "cannot send SIGHUP to sshd PID {}: {}",
                before.pid,
                std::io::Error::last_os_error()
            )));
        }
        how = Some(format!("SIGHUP to sshd PID {} (PidFile {pidfile})", before.pid));
    }
    let how = how.unwrap_or_default();
    let reloaded = |message: String| ReloadError {
        message,
        reloaded: true,
        died: if process_running(before.pid) { None } else { Some(argv.clone()) },
    };
    let after = wait_reexec(&before, Duration::from_secs(10)).map_err(reloaded)?;
    let mut banners = Vec::new();
    for addr in &after.addrs {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ssh_banner(*addr) {
                Ok(b) => {
                    banners.push(format!("{} ({b})", connect_addr(*addr)));
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(reloaded(format!("sshd does not answer after the reload ({how}): {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(format!("reloaded sshd: {how}; it answers again on {}", banners.join(", ")))
}

/// Starts sshd again after its listener exited: the service manager for the
/// system's configuration, else the listener's own command line (detached).
/// Ok once an sshd listener of `main` answers.
pub fn restart_sshd(main: &Path, argv: &[OsString]) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let system = is_system_config(main);
    let mut how: Option<String> = None;
    if system && Path::new("/run/systemd/system").is_dir() {
        for unit in ["ssh.service", "sshd.service"] {
            if Command::new("systemctl").args(["restart", unit]).status().is_ok_and(|s| s.success()) {
                how = Some(format!("systemctl restart {unit}"));
                break;
            }
        }
    }
    if how.is_none() && system {
        for script in ["/etc/init.d/ssh", "/etc/init.d/sshd"] {
            if Path::new(script).exists()
                && Command::new(script).arg("start").output().is_ok_and(|o| o.status.success())
            {
                how = Some(format!("{script} start"));
                break;
            }
        }
    }
    if how.is_none() {
        let Some((program, rest)) = argv.split_first() else {
            return Err("the listener's command line is unknown".to_string());
        };
        let mut cmd = Command::new(program);
        cmd.args(rest).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the new sshd leaves our session.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        // Not waited for: it runs on as sshd.
        cmd.spawn().map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
        let line: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        how = Some(line.join(" "));
    }
    let how = how.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let effective = sshd_effective(main)?;
        let pidfile = first(&effective, "pidfile").unwrap_or("none").to_string();
        if let Some(l) = read_pidfile(&pidfile).and_then(listener_of) {
            let banners: Result<Vec<String>, String> = l.addrs.iter().map(|a| ssh_banner(*a)).collect();
            if let Ok(b) = banners {
                return Ok(format!("{how}: PID {} answers: {}", l.pid, b.join(", ")));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("ran {how}, but no sshd listener answers after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the listener re-executed: same PID, new listening sockets.
pub fn wait_reexec(before: &Listener, timeout: Duration) -> Result<Listener, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if !process_running(before.pid) {
            return Err(format!("sshd PID {} exited after the reload", before.pid));
        }
        if let Some(now) = listener_of(before.pid) {
            if now.sockets.is_disjoint(&before.sockets) {
                return Ok(now);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "sshd PID {} did not re-read its configuration within {} s (it kept its listening sockets)",
                before.pid,
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_t_keywords_are_read_in_any_case() {
        // OpenSSH 9.2/10.0 print keywords in lower case, 10.6 in mixed case.
        let lower = "port 22\nclientaliveinterval 0\nclientalivecountmax 3\nlistenaddress [::]:22\nlistenaddress 0.0.0.0:22\nusepam yes\n";
        let mixed = "Port 22\nClientAliveInterval 0\nClientAliveCountMax 3\nListenAddress [::]:22\nListenAddress 0.0.0.0:22\nUsePAM yes\n";
        let (l, m) = (parse_effective(lower), parse_effective(mixed));
        assert_eq!(l, m);
        assert_eq!(first(&m, "clientaliveinterval"), Some("0"));
        assert_eq!(first(&m, "clientalivecountmax"), Some("3"));
        assert_eq!(first(&m, "usepam"), Some("yes"));
        assert_eq!(configured_addrs(&m).len(), 2, "both ListenAddress values, in order");
        assert!(m.keys().all(|k| k.bytes().all(|b| !b.is_ascii_uppercase())), "{m:?}");
    }

    #[test]
    fn check_goodbye_is_an_identification_and_one_well_formed_packet() {
        let bytes = check_goodbye();
        let ident_end = bytes.windows(2).position(|w| w == b"\r\n").expect("CRLF") + 2;
        assert!(bytes[..ident_end].starts_with(b"SSH-2.0-"));
        let packet = &bytes[ident_end..];
        let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
        assert_eq!(packet.len(), 4 + length);
        assert_eq!(packet.len() % 8, 0, "a multiple of the block size");
        let padding = packet[4] as usize;
        assert!(padding >= 4);
        let payload = &packet[5..packet.len() - padding];
        assert_eq!(payload[0], 1, "SSH_MSG_DISCONNECT");
        assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), 11);
        let reason_len = u32::from_be_bytes(payload[5..9].try_into().unwrap()) as usize;
        assert_eq!(&payload[9..9 + reason_len], b"sshidlectl keepalive: listener check");
        assert_eq!(&payload[9 + reason_len..], &[0, 0, 0, 0], "empty language tag");
    }

    #[test]
    fn the_peer_of_an_established_socket() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:0016 0500000A:D431 01 00000000:00000000 02:000A7D6D 00000000     0        0 222 2
   2: 0100007F:0016 0600000A:D432 01 00000000:00000000 02:000A7D6D 00000000     0        0 333 2
";
        assert_eq!(established_peer(text, false, &BTreeSet::from([333])), Some("10.0.0.6".into()));
        assert_eq!(established_peer(text, false, &BTreeSet::from([111])), None, "listening, not established");
        assert_eq!(established_peer(text, false, &BTreeSet::from([9])), None);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0016 0000000000000000FFFF00000500000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 444 1
";
        assert_eq!(established_peer(v6, true, &BTreeSet::from([444])), Some("10.0.0.5".into()));
    }

    #[test]
    fn proc_net_addresses() {
        assert_eq!(parse_proc_addr("0100007F:08AE", false), Some("127.0.0.1:2222".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000:0016", false), Some("0.0.0.0:22".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0016", true), Some("[::1]:22".parse().unwrap()));
        assert_eq!(parse_proc_addr("zz:1", false), None);
        assert_eq!(connect_addr("0.0.0.0:22".parse().unwrap()), "127.0.0.1:22".parse().unwrap());
        assert_eq!(connect_addr("[::]:22".parse().unwrap()), "[::1]:22".parse().unwrap());
    }

    #[test]
    fn listener_command_lines() {
        let words =
            |b: &[u8]| argv_from_cmdline(b).iter().map(|w| w.to_string_lossy().into_owned()).collect::<Vec<_>>();
        assert_eq!(
            words(b"sshd: /usr/sbin/sshd -D -f /etc/ssh/sshd_config [listener] 0 of 10-100 startups"),
            ["/usr/sbin/sshd", "-D", "-f", "/etc/ssh/sshd_config"]
        );
        assert_eq!(words(b"/usr/sbin/sshd -D [listener] 1 of 10-100 startups"), ["/usr/sbin/sshd", "-D"]);
        assert_eq!(words(b"/usr/sbin/sshd\0-D\0-e\0"), ["/usr/sbin/sshd", "-D", "-e"]);
        assert!(words(b"").is_empty());
    }

    #[test]
    fn listener_of_rejects_non_sshd() {
        // This test process is not sshd.
        assert!(listener_of(std::process::id() as i32).is_none());
        assert!(listener_of(1).is_none());
    }
}
