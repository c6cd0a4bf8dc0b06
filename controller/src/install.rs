//! `sshidlectl install` / `uninstall` (issue 5).
//!
//! `install` puts in place, in this order: the PAM module (atomically, in the
//! directory where `pam_unix.so` lives), `sshidlectl` itself in
//! `/usr/local/sbin` (so the service never runs a binary out of a build tree),
//! the man pages and shell completions under `/usr/local/share`, a commented
//! default policy when none exists, the `session optional pam_sshidle.so` line
//! in `/etc/pam.d/sshd` (after the existing session lines, with a backup), and
//! the enforcer service: a systemd unit where systemd runs, an `/etc/init.d`
//! script (registered with `update-rc.d` when present) elsewhere.
//!
//! Everything it adds is written to a manifest, `/var/lib/sshidle/installed`,
//! as it goes, so that `uninstall` takes away exactly that, in reverse order,
//! even after an install that stopped half way: files it created are removed,
//! files it replaced are restored from their backup, the PAM line is removed
//! so that `/etc/pam.d/sshd` is byte for byte what it was, and a policy file
//! the admin edited since is kept. Running `install` twice changes nothing the
//! second time.

use crate::{Cli, Paths, EXIT_OK, EXIT_PROBLEM};
use clap::{Args, CommandFactory};
use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Print each action that would be taken; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// The PAM module to install [default: pam_sshidle.so or libpam_sshidle.so
    /// next to the sshidlectl binary]
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// Only the Debian package's share, recorded as the package's: the
    /// default policy when there is none (the package's postinst runs this;
    /// its PAM line is a pam-auth-update profile)
    #[arg(long)]
    pub package: bool,
    /// PAM file of the sshd service
    #[arg(long, value_name = "PATH", default_value = "/etc/pam.d/sshd", hide = true)]
    pub pam_file: PathBuf,
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Print each action that would be taken; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Only what the Debian package's scripts added (the policy stays until
    /// the package is purged), and the keepalive drop-in (the package's
    /// prerm runs this)
    #[arg(long)]
    pub package: bool,
    /// PAM file of the sshd service
    #[arg(long, value_name = "PATH", default_value = "/etc/pam.d/sshd", hide = true)]
    pub pam_file: PathBuf,
}

impl UninstallArgs {
    fn as_install_args(&self) -> InstallArgs {
        InstallArgs { dry_run: self.dry_run, module: None, package: self.package, pam_file: self.pam_file.clone() }
    }
}

pub const MANIFEST_DIR: &str = "/var/lib/sshidle";
/// The Debian package's pam-auth-update profile: the package is installed.
pub const PAM_PROFILE: &str = "/usr/share/pam-configs/sshidle";
const SERVICE_NAME: &str = "sshidle";
const DEFAULT_POLICY: &str = include_str!("../../packaging/sshidle.conf");
const SYSTEMD_UNIT: &str = include_str!("../../packaging/sshidle.service");
const INIT_SCRIPT: &str = include_str!("../../packaging/sshidle.init");
const MAN_PAGES: [(&str, &str); 3] = [
    ("man8/pam_sshidle.8", include_str!("../../man/pam_sshidle.8")),
    ("man5/sshidle.conf.5", include_str!("../../man/sshidle.conf.5")),
    ("man8/sshidlectl.8", include_str!("../../man/sshidlectl.8")),
];
/// The comment written above the PAM line; it marks the line as ours.
pub const PAM_MARKER: &str = "# sshidle: record SSH sessions for their idle limits (added by sshidlectl install)";

/// How the enforcer is run as a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Systemd,
    SysV,
    /// Install no service (unit tests).
    None,
}

/// Who added what: `sshidlectl install` (the admin) or the Debian package's
/// maintainer scripts. Each has its own manifest and backups, and takes away
/// only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Admin,
    Package,
}

/// Every path install touches. `Layout::system` is the real machine; tests
/// build one under a temporary directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub pam_module_dir: PathBuf,
    pub pam_file: PathBuf,
    pub policy: PathBuf,
    pub state_dir: PathBuf,
    /// Where sshidlectl is copied (unless it already runs from a system bin dir).
    pub sbin_dir: PathBuf,
    pub man_dir: PathBuf,
    /// `$prefix/share`, for the completion scripts.
    pub share_dir: PathBuf,
    pub var_dir: PathBuf,
    /// The Debian package's pam-auth-update profile (its PAM line).
    pub pam_profile: PathBuf,
    /// Whose manifest this run reads and writes.
    pub owner: Owner,
    pub init_dir: PathBuf,
    pub systemd_dir: PathBuf,
    pub service: ServiceKind,
    /// The systemctl to run (tests give a fake).
    pub systemctl: PathBuf,
    /// The running sshidlectl.
    pub self_exe: PathBuf,
    /// Global options to repeat in the PAM line and the service command.
    pub conf_arg: Option<PathBuf>,
    pub state_arg: Option<PathBuf>,
}

impl Layout {
    pub fn system(paths: &Paths, args: &InstallArgs) -> Result<Layout, String> {
        let pam_module_dir = find_pam_module_dir().ok_or_else(|| {
            "cannot find the PAM module directory (no pam_unix.so in /lib/<triplet>/security, \
             /usr/lib64/security, /lib/security ...)"
                .to_string()
        })?;
        let self_exe = std::env::current_exe().map_err(|e| format!("cannot find the sshidlectl binary: {e}"))?;
        let service = if Path::new("/run/systemd/system").is_dir() { ServiceKind::Systemd } else { ServiceKind::SysV };
        Ok(Layout {
            pam_module_dir,
            pam_file: args.pam_file.clone(),
            policy: paths.config.clone(),
            state_dir: paths.state_dir.clone(),
            sbin_dir: "/usr/local/sbin".into(),
            man_dir: "/usr/local/share/man".into(),
            share_dir: "/usr/local/share".into(),
            var_dir: MANIFEST_DIR.into(),
            pam_profile: PAM_PROFILE.into(),
            owner: if args.package { Owner::Package } else { Owner::Admin },
            init_dir: "/etc/init.d".into(),
            systemd_dir: "/etc/systemd/system".into(),
            service,
            systemctl: "systemctl".into(),
            self_exe,
            conf_arg: (paths.config != Path::new(sshidle::DEFAULT_POLICY_PATH)).then(|| paths.config.clone()),
            state_arg: (paths.state_dir != Path::new(sshidle::DEFAULT_STATE_DIR)).then(|| paths.state_dir.clone()),
        })
    }

    fn manifest_path(&self) -> PathBuf {
        self.manifest_of(self.owner)
    }

    fn manifest_of(&self, owner: Owner) -> PathBuf {
        self.var_dir.join(match owner {
            Owner::Admin => "installed",
            Owner::Package => "package",
        })
    }

    fn backup_dir(&self) -> PathBuf {
        self.var_dir.join(match self.owner {
            Owner::Admin => "backup",
            Owner::Package => "package-backup",
        })
    }

    fn backup_path(&self, path: &Path) -> PathBuf {
        self.backup_dir().join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The sshidlectl the service runs: the running one when it already lives
    /// in a system directory (Debian package), else the copy in sbin_dir.
    fn daemon_path(&self) -> PathBuf {
        let parent = self.self_exe.parent().unwrap_or(Path::new(""));
        let system_dirs = [Path::new("/usr/sbin"), Path::new("/usr/bin"), Path::new("/sbin"), Path::new("/bin")];
        if system_dirs.contains(&parent) || parent == self.sbin_dir {
            self.self_exe.clone()
        } else {
            self.sbin_dir.join("sshidlectl")
        }
    }

    fn module_path(&self) -> PathBuf {
        self.pam_module_dir.join("pam_sshidle.so")
    }

    /// `session    optional     pam_sshidle.so [conf=..] [state=..]`
    pub fn pam_line(&self) -> String {
        let mut line = "session    optional     pam_sshidle.so".to_string();
        if let Some(conf) = &self.conf_arg {
            line.push_str(&format!(" conf={}", conf.display()));
        }
        if let Some(state) = &self.state_arg {
            line.push_str(&format!(" state={}", state.display()));
        }
        line
    }

    /// The arguments of the enforcer, after the program.
    fn daemon_args(&self) -> String {
        let mut args = String::new();
        if let Some(conf) = &self.conf_arg {
            args.push_str(&format!("--config {} ", conf.display()));
        }
        if let Some(state) = &self.state_arg {
            args.push_str(&format!("--state-dir {} ", state.display()));
        }
        args.push_str("enforce");
        args
    }

    fn daemon_command(&self) -> String {
        format!("{} {}", self.daemon_path().display(), self.daemon_args())
    }

    fn completion_files(&self) -> [(clap_complete::Shell, PathBuf); 3] {
        use clap_complete::Shell;
        [
            (Shell::Bash, self.share_dir.join("bash-completion/completions/sshidlectl")),
            (Shell::Zsh, self.share_dir.join("zsh/site-functions/_sshidlectl")),
            (Shell::Fish, self.share_dir.join("fish/vendor_completions.d/sshidlectl.fish")),
        ]
    }
}

/// Debian multiarch `/lib/<triplet>/security`, RHEL `/usr/lib64/security`, ...:
/// the first of the usual directories that holds `pam_unix.so`.
pub fn find_pam_module_dir() -> Option<PathBuf> {
    let triplet = multiarch_triplet();
    let mut candidates: Vec<PathBuf> =
        vec![format!("/lib/{triplet}/security").into(), format!("/usr/lib/{triplet}/security").into()];
    for base in ["/lib", "/usr/lib"] {
        if let Ok(entries) = fs::read_dir(base) {
            let mut more: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("-linux-"))
                .map(|e| e.path().join("security"))
                .collect();
            more.sort();
            candidates.extend(more);
        }
    }
    for dir in ["/usr/lib64/security", "/lib64/security", "/usr/lib/security", "/lib/security"] {
        candidates.push(dir.into());
    }
    candidates.into_iter().find(|dir| dir.join("pam_unix.so").exists())
}

fn multiarch_triplet() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "powerpc64" => "powerpc64le-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => "unknown-linux-gnu",
    }
}

// ---------------------------------------------------------------------------
// The manifest: what install added, one entry a line, in install order.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory install created; removed when empty.
    Dir(PathBuf),
    /// A file install created; removed.
    File(PathBuf),
    /// A file that existed and was different; restored from the backup.
    Replaced(PathBuf, PathBuf),
    /// The default policy, with the hash of what was written: removed only
    /// when unchanged.
    Policy(PathBuf, u64),
    /// Our block in a PAM file, and the backup of the file before.
    PamLine(PathBuf, PathBuf),
    /// The state directory did not exist: removed (it is runtime state).
    StateDir(PathBuf),
    /// A service that install enabled and started.
    Service(ServiceKind, String),
}

impl Entry {
    fn path(&self) -> Option<&Path> {
        match self {
            Entry::Dir(p) | Entry::File(p) | Entry::Replaced(p, _) | Entry::Policy(p, _) => Some(p),
            Entry::PamLine(p, _) | Entry::StateDir(p) => Some(p),
            Entry::Service(..) => None,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Dir(p) => write!(f, "dir\t{}", p.display()),
            Entry::File(p) => write!(f, "file\t{}", p.display()),
            Entry::Replaced(p, b) => write!(f, "replaced\t{}\t{}", p.display(), b.display()),
            Entry::Policy(p, h) => write!(f, "policy\t{}\t{h:016x}", p.display()),
            Entry::PamLine(p, b) => write!(f, "pam-line\t{}\t{}", p.display(), b.display()),
            Entry::StateDir(p) => write!(f, "state-dir\t{}", p.display()),
            Entry::Service(ServiceKind::Systemd, n) => write!(f, "service\tsystemd\t{n}"),
            Entry::Service(ServiceKind::SysV, n) => write!(f, "service\tsysv\t{n}"),
            Entry::Service(ServiceKind::None, n) => write!(f, "service\tnone\t{n}"),
        }
    }
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let fields: Vec<&str> = line.split('\t').collect();
        let p = |i: usize| fields.get(i).map(PathBuf::from);
        Some(match *fields.first()? {
            "dir" => Entry::Dir(p(1)?),
            "file" => Entry::File(p(1)?),
            "replaced" => Entry::Replaced(p(1)?, p(2)?),
            "policy" => Entry::Policy(p(1)?, u64::from_str_radix(fields.get(2)?, 16).ok()?),
            "pam-line" => Entry::PamLine(p(1)?, p(2)?),
            "state-dir" => Entry::StateDir(p(1)?),
            "service" => {
                let kind = match *fields.get(1)? {
                    "systemd" => ServiceKind::Systemd,
                    "sysv" => ServiceKind::SysV,
                    _ => ServiceKind::None,
                };
                Entry::Service(kind, fields.get(2)?.to_string())
            }
            _ => return None,
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn parse(text: &str) -> Manifest {
        Manifest { entries: text.lines().filter(|l| !l.starts_with('#')).filter_map(Entry::parse).collect() }
    }

    pub fn render(&self) -> String {
        let mut text = String::from(
            "# What `sshidlectl install` added to this system, in order; `sshidlectl uninstall`\n\
             # takes it away in reverse order. Do not edit.\n",
        );
        for entry in &self.entries {
            text.push_str(&format!("{entry}\n"));
        }
        text
    }

    fn records_path(&self, path: &Path) -> bool {
        self.entries.iter().any(|e| !matches!(e, Entry::Dir(_)) && e.path() == Some(path))
    }
}

use sshidle::files::fnv1a;

// ---------------------------------------------------------------------------
// The PAM file edit: pure functions on the text.

fn is_session_line(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.first() {
        Some(&"session") | Some(&"-session") => true,
        Some(&"@include") => words.get(1).is_some_and(|w| w.contains("session")),
        _ => false,
    }
}

/// The module of a (non-comment) session line, skipping a `[...]` control.
fn session_module(line: &str) -> Option<&str> {
    let content = line.split('#').next().unwrap_or("");
    let mut words = content.split_whitespace();
    let kind = words.next()?;
    if kind != "session" && kind != "-session" {
        return None;
    }
    let control = words.next()?;
    if control.starts_with('[') && !control.contains(']') {
        words.by_ref().find(|w| w.contains(']'))?;
    }
    words.next()
}

/// Whether the PAM file already loads pam_sshidle.so in its session stack.
pub fn pam_has_module(text: &[u8]) -> bool {
    pam_lines(text).any(|l| is_our_module(&String::from_utf8_lossy(l)))
}

/// The lines of a PAM file as raw bytes, each with its newline. PAM files are
/// not always UTF-8 (an admin's Latin-1 comment): lines are classified from a
/// lossy copy, but everything written back is the original bytes.
fn pam_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split_inclusive(|b| *b == b'\n')
}

fn is_our_module(line: &str) -> bool {
    session_module(line).is_some_and(|m| m.rsplit('/').next() == Some("pam_sshidle.so"))
}

/// Adds our marked block after the last session line (at the end when there is
/// none). `None` when the file already loads the module.
pub fn pam_add(text: &[u8], pam_line: &str) -> Option<Vec<u8>> {
    if pam_has_module(text) {
        return None;
    }
    let block = format!("{PAM_MARKER}\n{pam_line}\n");
    // Byte offsets of the end of each line (after its newline, if any).
    let mut insert_at = None;
    let mut offset = 0;
    for line in pam_lines(text) {
        offset += line.len();
        if is_session_line(&String::from_utf8_lossy(line)) {
            insert_at = Some(offset);
        }
    }
    let at = insert_at.unwrap_or(text.len());
    let mut out = Vec::with_capacity(text.len() + block.len() + 1);
    out.extend_from_slice(&text[..at]);
    if at == text.len() && !text.is_empty() && !text.ends_with(b"\n") {
        // The last line has no newline: ours go on lines of their own, and
        // the file still ends without one, so that removal restores it exactly.
        out.push(b'\n');
        out.extend_from_slice(block.trim_end_matches('\n').as_bytes());
    } else {
        out.extend_from_slice(block.as_bytes());
    }
    out.extend_from_slice(&text[at..]);
    Some(out)
}

/// Removes the block `pam_add` wrote, leaving every other byte as it is
/// (also lines the admin added or changed since). `None` when it is not there.
pub fn pam_remove(text: &[u8]) -> Option<Vec<u8>> {
    let lines: Vec<&[u8]> = pam_lines(text).collect();
    let mut offset = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.strip_suffix(b"\n").unwrap_or(line) == PAM_MARKER.as_bytes() {
            if let Some(next) = lines.get(i + 1) {
                if is_our_module(&String::from_utf8_lossy(next)) {
                    let end = offset + line.len() + next.len();
                    let mut out = Vec::with_capacity(text.len());
                    if !next.ends_with(b"\n") && offset > 0 {
                        // Added at the end of a file without a final newline.
                        out.extend_from_slice(&text[..offset - 1]);
                    } else {
                        out.extend_from_slice(&text[..offset]);
                    }
                    out.extend_from_slice(&text[end..]);
                    return Some(out);
                }
            }
        }
        offset += line.len();
    }
    None
}

// ---------------------------------------------------------------------------
// File helpers.

pub use sshidle::files::{write_atomic, Replace};

/// The run of one install or uninstall: prints each action, and records it
/// in the manifest unless it is a dry run.
struct Run<'a> {
    layout: &'a Layout,
    dry_run: bool,
    manifest: Manifest,
    /// Something the service runs changed: restart it.
    service_inputs_changed: bool,
    problems: usize,
    /// Directories a dry run would have created.
    planned_dirs: Vec<PathBuf>,
    /// Held for the whole run (see `lock_installation`).
    _lock: Option<sshidle::files::Flock<fs::File>>,
}

impl<'a> Run<'a> {
    /// Takes the installation lock, loads the manifest and announces a dry run.
    fn begin(layout: &'a Layout, dry_run: bool) -> Result<Run<'a>, String> {
        let lock = lock_installation(layout, dry_run)?;
        let manifest = load_manifest(layout)?;
        if dry_run {
            println!("dry run: nothing is changed");
        }
        Ok(Run {
            layout,
            dry_run,
            manifest,
            service_inputs_changed: false,
            problems: 0,
            planned_dirs: Vec::new(),
            _lock: lock,
        })
    }

    fn say(&self, what: &str) {
        if self.dry_run {
            println!("would {what}");
        } else {
            println!("{what}");
        }
    }

    fn fail(&mut self, what: &str) {
        eprintln!("sshidlectl: {what}");
        self.problems += 1;
    }

    fn record(&mut self, entry: Entry) -> std::io::Result<()> {
        if self.dry_run || self.manifest.entries.contains(&entry) {
            return Ok(());
        }
        self.manifest.entries.push(entry);
        self.save_manifest()
    }

    fn save_manifest(&self) -> std::io::Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let path = self.layout.manifest_path();
        if self.manifest.entries.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        fs::create_dir_all(&self.layout.var_dir)?;
        write_atomic(&path, self.manifest.render().as_bytes(), &Replace::synced(0o600, None))
    }

    /// Creates `dir` and its missing parents, recording each one created.
    fn ensure_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        let mut missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists() && !self.planned_dirs.iter().any(|p| p == d))
            .collect();
        missing.reverse();
        for d in missing {
            if self.dry_run {
                self.planned_dirs.push(d.to_path_buf());
            } else {
                fs::create_dir(d)?;
                fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
            }
            self.say(&format!("create directory {}", d.display()));
            self.record(Entry::Dir(d.to_path_buf()))?;
        }
        Ok(())
    }

    /// Puts `bytes` at `path` (atomically), backing up a different file that
    /// was there before install. Returns whether anything changed.
    fn put_file(&mut self, path: &Path, bytes: &[u8], mode: u32, what: &str) -> std::io::Result<bool> {
        let current = match fs::read(path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let same_mode = fs::metadata(path).map(|m| m.mode() & 0o7777 == mode).unwrap_or(false);
        if current.as_deref() == Some(bytes) && same_mode {
            println!("unchanged: {what} {}", path.display());
            return Ok(false);
        }
        if let Some(parent) = path.parent() {
            self.ensure_dir(parent)?;
        }
        let ours = self.manifest.records_path(path);
        match (&current, ours) {
            (None, _) => {
                self.say(&format!("install {what} {}", path.display()));
                if !self.dry_run {
                    write_atomic(path, bytes, &Replace::synced(mode, None))?;
                }
                if !ours {
                    self.record(Entry::File(path.to_path_buf()))?;
                }
            }
            (Some(_), true) => {
                self.say(&format!("update {what} {}", path.display()));
                if !self.dry_run {
                    write_atomic(path, bytes, &Replace::synced(mode, None))?;
                }
            }
            (Some(old), false) => {
                let backup = self.layout.backup_path(path);
                self.say(&format!("replace {what} {} (the old one is kept in {})", path.display(), backup.display()));
                if !self.dry_run {
                    let old_mode = fs::metadata(path)?.mode() & 0o7777;
                    fs::create_dir_all(backup.parent().unwrap_or(Path::new("/")))?;
                    write_atomic(&backup, old, &Replace::synced(old_mode, None))?;
                    write_atomic(path, bytes, &Replace::synced(mode, None))?;
                }
                self.record(Entry::Replaced(path.to_path_buf(), backup))?;
            }
        }
        Ok(true)
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file())).unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(name).is_file())
}

fn run_command(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let text = [&output.stderr[..], &output.stdout[..]]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().replace('\n', "; "))
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!("{program} {}: {}: {text}", args.join(" "), output.status))
}

fn find_module(args: &InstallArgs, layout: &Layout) -> Result<PathBuf, String> {
    if let Some(module) = &args.module {
        return Ok(module.clone());
    }
    let dir = layout.self_exe.parent().unwrap_or(Path::new("."));
    for name in ["pam_sshidle.so", "libpam_sshidle.so"] {
        if dir.join(name).is_file() {
            return Ok(dir.join(name));
        }
    }
    // Already installed (Debian package, or an earlier install).
    if layout.module_path().is_file() {
        return Ok(layout.module_path());
    }
    Err(format!(
        "no pam_sshidle.so or libpam_sshidle.so next to {}; build it (make release) or give --module PATH",
        layout.self_exe.display()
    ))
}

fn load_manifest(layout: &Layout) -> Result<Manifest, String> {
    match fs::read_to_string(layout.manifest_path()) {
        Ok(text) => Ok(Manifest::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(format!("{}: {e}", layout.manifest_path().display())),
    }
}

pub fn install(paths: &Paths, args: &InstallArgs) -> u8 {
    match Layout::system(paths, args) {
        Ok(layout) => {
            let code = install_with(&layout, args);
            if let Some(note) = crate::report::tiocsti_suggestion(crate::report::legacy_tiocsti().as_deref()) {
                println!("{note}");
            }
            if sshd_uses_pam() == Some(false) {
                eprintln!(
                    "sshidlectl: warning: sshd runs with UsePAM no, so it never calls pam_sshidle.so and no \
                     session is recorded; set UsePAM yes in sshd_config"
                );
            }
            code
        }
        Err(e) => {
            eprintln!("sshidlectl: {e}");
            EXIT_PROBLEM
        }
    }
}

/// sshd's effective UsePAM (`sshd -T`); `None` when it cannot be asked.
fn sshd_uses_pam() -> Option<bool> {
    let effective = crate::sshd_control::sshd_effective(Path::new(crate::keepalive::DEFAULT_SSHD_CONFIG)).ok()?;
    Some(crate::sshd_control::first(&effective, "usepam")?.trim() == "yes")
}

pub fn uninstall(paths: &Paths, args: &UninstallArgs) -> u8 {
    let args = args.as_install_args();
    match Layout::system(paths, &args) {
        Ok(layout) => {
            let code = uninstall_with(&layout, &args);
            code.max(remove_keepalive(&paths.config, args.dry_run))
        }
        Err(e) => {
            eprintln!("sshidlectl: {e}");
            EXIT_PROBLEM
        }
    }
}

/// `keepalive --off`: what `sshidlectl keepalive` wrote into sshd's
/// configuration goes with the rest (checked with `sshd -t`, sshd reloaded),
/// or stays, and uninstall says why.
fn remove_keepalive(config: &Path, dry_run: bool) -> u8 {
    if !Path::new(crate::keepalive::DEFAULT_SSHD_CONFIG).exists() {
        return EXIT_OK;
    }
    println!("keepalive: removing what sshidlectl keepalive wrote into sshd's configuration");
    let code = if crate::keepalive::remove(config, dry_run).is_ok() { EXIT_OK } else { EXIT_PROBLEM };
    if code != EXIT_OK {
        eprintln!(
            "sshidlectl: kept sshd's keepalive settings from sshidle (see above); \
             `sshidlectl keepalive --off` takes them away once that is fixed"
        );
    }
    code
}

/// Keeps two installs or uninstalls (or an install and a package script)
/// from interleaving: an flock on the directory of the PAM file, which both
/// edit. Locking the directory leaves no file behind. Dry runs do not lock.
fn lock_installation(layout: &Layout, dry_run: bool) -> Result<Option<sshidle::files::Flock<fs::File>>, String> {
    if dry_run {
        return Ok(None);
    }
    let dir = layout.pam_file.parent().unwrap_or(Path::new("/"));
    let Ok(handle) = fs::File::open(dir) else {
        // No directory to lock: the steps report the missing PAM file.
        return Ok(None);
    };
    match sshidle::files::lock_exclusive(handle, std::time::Duration::from_secs(60), &mut |_| {}) {
        Ok(lock) => Ok(Some(lock)),
        Err(sshidle::files::LockError::TimedOut(_)) => {
            Err(format!("{}: another install or uninstall is running; try again later", dir.display()))
        }
        Err(sshidle::files::LockError::Io(e)) => Err(format!("cannot lock {}: {e}", dir.display())),
    }
}

pub fn install_with(layout: &Layout, args: &InstallArgs) -> u8 {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !args.dry_run && !args.package && !root && layout.service != ServiceKind::None {
        eprintln!("sshidlectl: install must run as root (try --dry-run to see what it would do)");
        return EXIT_PROBLEM;
    }
    let mut run = match Run::begin(layout, args.dry_run) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("sshidlectl: {e}");
            return EXIT_PROBLEM;
        }
    };
    let result = if args.package {
        install_package_share(&mut run)
    } else if package_is_installed(layout) {
        // One owner for the module, the PAM line and the service.
        Err(format!(
            "the sshidle Debian package is installed here (its record: {}); it already puts the module, \
             the PAM line and the service in place. Nothing was changed; `dpkg -r sshidle` first to install \
             from source instead",
            layout.manifest_of(Owner::Package).display()
        ))
    } else {
        install_steps(&mut run, args)
    };
    if let Err(e) = result {
        run.fail(&e);
    }
    if run.problems > 0 {
        if !args.dry_run {
            eprintln!("sshidlectl: install is incomplete; `sshidlectl uninstall` takes away what it did add");
        }
        return EXIT_PROBLEM;
    }
    if !args.dry_run && !args.package {
        println!(
            "sshidle is installed. The policy is {} (see sshidle.conf(5); `sshidlectl check` validates it, \
             `sshidlectl explain USER` shows who gets what); `sshidlectl status` lists the sessions; \
             `sshidlectl uninstall` takes it all away again.",
            run.layout.policy.display()
        );
    }
    EXIT_OK
}

/// The package's record or its pam-auth-update profile (the record is
/// empty, so absent, when the admin's policy was there first), with the
/// package's module in place: installed (after `dpkg -r` only the record of
/// its policy is left, and no module).
fn package_is_installed(layout: &Layout) -> bool {
    (layout.manifest_of(Owner::Package).is_file() || layout.pam_profile.is_file()) && layout.module_path().exists()
}

fn install_steps(run: &mut Run, args: &InstallArgs) -> Result<(), String> {
    let layout = run.layout;
    let io = io_err;

    // Before changing anything: the PAM file must be there to be edited.
    if !layout.pam_file.is_file() {
        return Err(format!(
            "{}: not found (is openssh-server installed?); nothing was changed",
            layout.pam_file.display()
        ));
    }

    // 1. The module, before any PAM line names it.
    let source = find_module(args, layout)?;
    let module = fs::read(&source).map_err(io(&source))?;
    if !module.starts_with(b"\x7fELF") {
        return Err(format!("{}: not a shared object", source.display()));
    }
    let target = layout.module_path();
    if source != target {
        run.put_file(&target, &module, 0o644, "PAM module").map_err(io(&target))?;
    }

    // 2. sshidlectl itself, where the service can rely on it.
    let daemon = layout.daemon_path();
    if daemon != layout.self_exe {
        let exe = fs::read(&layout.self_exe).map_err(io(&layout.self_exe))?;
        if run.put_file(&daemon, &exe, 0o755, "controller").map_err(io(&daemon))? {
            run.service_inputs_changed = true;
        }
    }

    // 3. Man pages and completions.
    for (name, text) in MAN_PAGES {
        let path = layout.man_dir.join(name);
        run.put_file(&path, text.as_bytes(), 0o644, "man page").map_err(io(&path))?;
    }
    for (shell, path) in layout.completion_files() {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "sshidlectl", &mut script);
        run.put_file(&path, &script, 0o644, &format!("{shell} completion")).map_err(io(&path))?;
    }

    // 4. A default policy, only when there is none.
    install_default_policy(run)?;

    // 5. The state directory is made by the first login; if there is none
    // yet, uninstall clears it away again.
    if !layout.state_dir.exists() {
        run.record(Entry::StateDir(layout.state_dir.clone())).map_err(io(&layout.manifest_path()))?;
    }

    // 6. The PAM line.
    install_pam_line(run)?;

    // 7. The service.
    install_service(run)
}

/// What the Debian package's postinst adds (the package's files are dpkg's):
/// a default policy when there is none (not a conffile, so that an admin's
/// policy left by `uninstall` never stops dpkg at a conffile prompt). The
/// package's PAM line is its pam-auth-update profile's, in common-session:
/// `/etc/pam.d/sshd` is openssh-server's conffile (Debian Policy 10.7.4). A
/// line that an earlier version of the package added there is taken out.
fn install_package_share(run: &mut Run) -> Result<(), String> {
    install_default_policy(run)?;
    let earlier: Vec<Entry> =
        run.manifest.entries.iter().filter(|e| matches!(e, Entry::PamLine(..))).cloned().collect();
    for entry in earlier {
        undo(run, &entry)?;
        if !run.dry_run {
            run.manifest.entries.retain(|e| e != &entry);
            run.save_manifest().map_err(|e| format!("{}: {e}", run.layout.manifest_path().display()))?;
        }
    }
    Ok(())
}

fn install_default_policy(run: &mut Run) -> Result<(), String> {
    let layout = run.layout;
    let io = io_err;
    if layout.policy.exists() {
        println!("unchanged: policy {} (an existing policy is never overwritten)", layout.policy.display());
    } else {
        if let Some(parent) = layout.policy.parent() {
            run.ensure_dir(parent).map_err(io(parent))?;
        }
        run.say(&format!("install default policy {}", layout.policy.display()));
        if !run.dry_run {
            write_atomic(&layout.policy, DEFAULT_POLICY.as_bytes(), &Replace::synced(0o644, None))
                .map_err(io(&layout.policy))?;
        }
        run.record(Entry::Policy(layout.policy.clone(), fnv1a(DEFAULT_POLICY.as_bytes())))
            .map_err(io(&layout.manifest_path()))?;
    }
    Ok(())
}

fn install_pam_line(run: &mut Run) -> Result<(), String> {
    let layout = run.layout;
    let pam_file = &layout.pam_file;
    let real = fs::canonicalize(pam_file).map_err(|e| format!("{}: {e}", pam_file.display()))?;
    let text = fs::read(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    let line = layout.pam_line();
    let Some(new_text) = pam_add(&text, &line) else {
        println!("unchanged: {} already loads pam_sshidle.so", pam_file.display());
        return Ok(());
    };
    let backup = layout.backup_path(pam_file);
    run.say(&format!(
        "add to {}: {line} (after the session lines; backup in {})",
        pam_file.display(),
        backup.display()
    ));
    if !run.dry_run {
        let meta = fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        let io = |e: std::io::Error| format!("{}: {e}", backup.display());
        fs::create_dir_all(backup.parent().unwrap_or(Path::new("/"))).map_err(io)?;
        write_atomic(&backup, &text, &Replace::synced(meta.mode() & 0o7777, None)).map_err(io)?;
        write_atomic(&real, &new_text, &Replace::synced(meta.mode() & 0o7777, Some((meta.uid(), meta.gid()))))
            .map_err(|e| format!("{}: {e}", real.display()))?;
    }
    run.record(Entry::PamLine(pam_file.clone(), backup)).map_err(|e| format!("manifest: {e}"))
}

/// The systemd unit, running this layout's sshidlectl.
fn render_unit(layout: &Layout) -> String {
    SYSTEMD_UNIT
        .replace("ExecStart=/usr/sbin/sshidlectl enforce\n", &format!("ExecStart={}\n", layout.daemon_command()))
}

/// The init script, running this layout's sshidlectl.
fn render_init_script(layout: &Layout) -> String {
    INIT_SCRIPT
        .replace("DAEMON=/usr/sbin/sshidlectl\n", &format!("DAEMON={}\n", layout.daemon_path().display()))
        .replace("DAEMON_ARGS=\"enforce\"\n", &format!("DAEMON_ARGS=\"{}\"\n", layout.daemon_args()))
}

fn install_service(run: &mut Run) -> Result<(), String> {
    let layout = run.layout;
    match layout.service {
        ServiceKind::None => Ok(()),
        ServiceKind::Systemd => {
            let systemctl = layout.systemctl.display().to_string();
            let unit_path = layout.systemd_dir.join(format!("{SERVICE_NAME}.service"));
            let unit = render_unit(layout);
            let changed = run
                .put_file(&unit_path, unit.as_bytes(), 0o644, "systemd unit")
                .map_err(|e| format!("{}: {e}", unit_path.display()))?;
            let verb = if changed || run.service_inputs_changed { "restart" } else { "start" };
            run.say(&format!(
                "run: systemctl daemon-reload; systemctl enable {SERVICE_NAME}; systemctl {verb} {SERVICE_NAME}"
            ));
            if !run.dry_run {
                run_command(&systemctl, &["daemon-reload"])?;
                run.record(Entry::Service(ServiceKind::Systemd, SERVICE_NAME.into()))
                    .map_err(|e| format!("manifest: {e}"))?;
                run_command(&systemctl, &["enable", "--quiet", SERVICE_NAME])?;
                run_command(&systemctl, &[verb, SERVICE_NAME])?;
            }
            Ok(())
        }
        ServiceKind::SysV => {
            let script_path = layout.init_dir.join(SERVICE_NAME);
            let script = render_init_script(layout);
            let changed = run
                .put_file(&script_path, script.as_bytes(), 0o755, "init script")
                .map_err(|e| format!("{}: {e}", script_path.display()))?;
            let script_str = script_path.display().to_string();
            if command_exists("update-rc.d") {
                run.say(&format!("run: update-rc.d {SERVICE_NAME} defaults (start at boot)"));
            } else {
                println!("note: no update-rc.d; {script_str} is not started at boot by itself");
            }
            let verb = if changed || run.service_inputs_changed { "restart" } else { "start" };
            run.say(&format!("run: {script_str} {verb}"));
            if !run.dry_run {
                run.record(Entry::Service(ServiceKind::SysV, SERVICE_NAME.into()))
                    .map_err(|e| format!("manifest: {e}"))?;
                if command_exists("update-rc.d") {
                    run_command("update-rc.d", &[SERVICE_NAME, "defaults"])?;
                }
                run_command(&script_str, &[verb])?;
            }
            Ok(())
        }
    }
}

pub fn uninstall_with(layout: &Layout, args: &InstallArgs) -> u8 {
    let mut run = match Run::begin(layout, args.dry_run) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("sshidlectl: {e}");
            return EXIT_PROBLEM;
        }
    };
    let had_pam_entry = run.manifest.entries.iter().any(|e| matches!(e, Entry::PamLine(..)));
    // What the package's scripts added is the package's to take away.
    let package_manifest = match layout.owner {
        Owner::Admin => fs::read_to_string(layout.manifest_of(Owner::Package)).ok().map(|t| Manifest::parse(&t)),
        Owner::Package => None,
    };
    let package_has_pam = package_manifest.iter().flat_map(|m| &m.entries).any(|e| matches!(e, Entry::PamLine(..)));
    if run.manifest.entries.is_empty() && layout.owner == Owner::Admin {
        println!("nothing recorded in {}: sshidlectl install has not run here", layout.manifest_path().display());
    }
    if package_manifest.is_some() {
        println!(
            "note: the sshidle package added {}the default policy its scripts wrote, and its PAM line \
             (a pam-auth-update profile); `dpkg -r sshidle` takes the PAM line away, `dpkg -P sshidle` the rest",
            if package_has_pam { "the PAM line in /etc/pam.d/sshd and " } else { "" }
        );
    }
    let entries: Vec<Entry> = run.manifest.entries.iter().rev().cloned().collect();
    for entry in entries {
        // The package's policy stays until the package is purged (its postrm
        // removes it), as a conffile would.
        if layout.owner == Owner::Package && matches!(entry, Entry::Policy(..)) {
            continue;
        }
        match undo(&mut run, &entry) {
            Ok(()) => {
                if !run.dry_run {
                    run.manifest.entries.retain(|e| e != &entry);
                    if let Err(e) = run.save_manifest() {
                        run.fail(&format!("{}: {e}", layout.manifest_path().display()));
                    }
                }
            }
            Err(e) => run.fail(&e),
        }
    }
    // No record, but our marked block is there (an earlier version, or the
    // record was lost): it is unambiguously ours, take it out too, unless the
    // package's record says it is the package's.
    if !had_pam_entry && !package_has_pam {
        let entry = Entry::PamLine(layout.pam_file.clone(), layout.backup_path(&layout.pam_file));
        if let Err(e) = undo(&mut run, &entry) {
            run.fail(&e);
        }
    }
    if !run.dry_run && run.manifest.entries.is_empty() {
        let _ = fs::remove_dir_all(layout.backup_dir());
        let _ = fs::remove_dir(&layout.var_dir);
    }
    if run.problems > 0 {
        EXIT_PROBLEM
    } else {
        EXIT_OK
    }
}

/// Takes away one thing install added.
fn undo(run: &mut Run, entry: &Entry) -> Result<(), String> {
    let dry = run.dry_run;
    let err = io_err;
    match entry {
        Entry::Service(kind, name) => match kind {
            // Where systemd does not run now (a chroot, a rescue system),
            // the unit is only disabled: --now would fail, and keep the
            // unit's record.
            ServiceKind::Systemd if run.layout.service != ServiceKind::Systemd => {
                run.say(&format!("run: systemctl disable {name} (systemd is not running: nothing to stop)"));
                if !dry {
                    run_command(&run.layout.systemctl.display().to_string(), &["disable", "--quiet", name])?;
                }
            }
            ServiceKind::Systemd => {
                run.say(&format!("run: systemctl disable --now {name}"));
                if !dry {
                    run_command(&run.layout.systemctl.display().to_string(), &["disable", "--now", "--quiet", name])?;
                    // The unit file goes next (its own entry); reload after.
                }
            }
            ServiceKind::SysV => {
                let script = run.layout.init_dir.join(name);
                run.say(&format!("run: {} stop; update-rc.d {name} remove", script.display()));
                if !dry {
                    if script.is_file() {
                        run_command(&script.display().to_string(), &["stop"])?;
                    }
                    if command_exists("update-rc.d") {
                        run_command("update-rc.d", &[name, "remove"])?;
                    }
                }
            }
            ServiceKind::None => {}
        },
        Entry::File(path) => {
            if path.symlink_metadata().is_ok() {
                run.say(&format!("remove {}", path.display()));
                if !dry {
                    fs::remove_file(path).map_err(err(path))?;
                    if path.extension().is_some_and(|e| e == "service") && run.layout.service == ServiceKind::Systemd {
                        let _ = run_command(&run.layout.systemctl.display().to_string(), &["daemon-reload"]);
                    }
                }
            }
        }
        Entry::Replaced(path, backup) => {
            run.say(&format!("restore {} from {}", path.display(), backup.display()));
            if !dry {
                let bytes = fs::read(backup).map_err(err(backup))?;
                let mode = fs::metadata(backup).map_err(err(backup))?.mode() & 0o7777;
                write_atomic(path, &bytes, &Replace::synced(mode, None)).map_err(err(path))?;
                fs::remove_file(backup).map_err(err(backup))?;
            }
        }
        Entry::Policy(path, hash) => match fs::read(path) {
            Ok(bytes) if fnv1a(&bytes) == *hash => {
                run.say(&format!("remove default policy {}", path.display()));
                if !dry {
                    fs::remove_file(path).map_err(err(path))?;
                }
            }
            Ok(_) => println!("kept: policy {} (edited since install)", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        },
        Entry::PamLine(pam_file, backup) => {
            let real = match fs::canonicalize(pam_file) {
                Ok(real) => real,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(format!("{}: {e}", pam_file.display())),
            };
            let text = fs::read(&real).map_err(err(&real))?;
            match pam_remove(&text) {
                Some(new_text) => {
                    run.say(&format!("remove the pam_sshidle.so line from {}", pam_file.display()));
                    if !dry {
                        let meta = fs::metadata(&real).map_err(err(&real))?;
                        write_atomic(
                            &real,
                            &new_text,
                            &Replace::synced(meta.mode() & 0o7777, Some((meta.uid(), meta.gid()))),
                        )
                        .map_err(err(&real))?;
                    }
                }
                None if pam_has_module(&text) => {
                    println!(
                        "note: {} loads pam_sshidle.so on a line sshidlectl did not add; left as is",
                        pam_file.display()
                    )
                }
                None => {}
            }
            if backup.exists() {
                run.say(&format!("remove backup {}", backup.display()));
                if !dry {
                    fs::remove_file(backup).map_err(err(backup))?;
                }
            }
        }
        Entry::StateDir(path) => {
            if path.is_dir() {
                run.say(&format!("remove state directory {}", path.display()));
                if !dry {
                    fs::remove_dir_all(path).map_err(err(path))?;
                }
            }
        }
        Entry::Dir(path) => {
            let empty = fs::read_dir(path).map(|mut d| d.next().is_none()).unwrap_or(false);
            if empty {
                run.say(&format!("remove directory {}", path.display()));
                if !dry {
                    fs::remove_dir(path).map_err(err(path))?;
                }
            } else if path.exists() && !dry {
                println!("kept: directory {} (not empty)", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Debian 12's /etc/pam.d/sshd, shortened but with the same structure.
    const DEBIAN_SSHD: &str = "\
# PAM configuration for the Secure Shell service

# Standard Un*x authentication.
@include common-auth

account    required     pam_nologin.so
@include common-account

session [success=ok ignore=ignore module_unknown=ignore default=bad]        pam_selinux.so close
session    required     pam_loginuid.so
session    optional     pam_keyinit.so force revoke
@include common-session
session    optional     pam_mail.so standard noenv # [1]
session    required     pam_env.so user_readenv=1 envfile=/etc/default/locale
session [success=ok ignore=ignore module_unknown=ignore default=bad]        pam_selinux.so open

# Standard Un*x password updating.
@include common-password
";

    const LINE: &str = "session    optional     pam_sshidle.so";

    /// Test helpers over text: the functions work on bytes.
    fn add(text: &str) -> Option<String> {
        pam_add(text.as_bytes(), LINE).map(|b| String::from_utf8(b).unwrap())
    }
    fn remove(text: &str) -> Option<String> {
        pam_remove(text.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn pam_line_goes_after_the_last_session_line_and_comes_out_exactly() {
        let added = add(DEBIAN_SSHD).expect("added");
        let expected_tail = format!(
            "pam_selinux.so open\n{PAM_MARKER}\n{LINE}\n\n# Standard Un*x password updating.\n@include common-password\n"
        );
        assert!(added.ends_with(&expected_tail), "{added}");
        assert!(added.starts_with(&DEBIAN_SSHD[..DEBIAN_SSHD.find("pam_selinux.so open").unwrap()]));
        assert!(pam_has_module(added.as_bytes()));
        assert_eq!(add(&added), None, "idempotent");
        assert_eq!(remove(&added).as_deref(), Some(DEBIAN_SSHD));
        assert_eq!(remove(DEBIAN_SSHD), None);
    }

    #[test]
    fn pam_edge_cases_restore_byte_for_byte() {
        for original in [
            "",
            "auth required pam_unix.so\n",
            "auth required pam_unix.so",
            "session required pam_unix.so",
            "session required pam_unix.so\r\nauth x.so\r\n",
            "@include common-session\n",
            "#session optional pam_sshidle.so\nsession required pam_env.so\n",
        ] {
            let added = add(original).unwrap_or_else(|| panic!("not added to {original:?}"));
            assert!(pam_has_module(added.as_bytes()), "{added:?}");
            assert_eq!(remove(&added).as_deref(), Some(original), "from {added:?}");
        }
        // The line after the last session line, even with no newline at the end.
        assert_eq!(
            add("session required pam_unix.so").unwrap(),
            format!("session required pam_unix.so\n{PAM_MARKER}\n{LINE}")
        );
    }

    #[test]
    fn non_utf8_bytes_and_the_admins_later_edits_survive_add_and_remove() {
        // A Latin-1 comment (0xe9) and a stray 0xff: not UTF-8.
        let original: &[u8] = b"# caf\xe9 \xff\nauth required pam_unix.so\nsession required pam_env.so\n# end\n";
        let added = pam_add(original, LINE).expect("added");
        assert!(added.starts_with(b"# caf\xe9 \xff\n"), "{:?}", String::from_utf8_lossy(&added));
        // The admin edits the file afterwards: a line above ours and one below,
        // with more non-UTF-8 bytes.
        let mut edited = b"# edited by the admin \xfe\n".to_vec();
        edited.extend_from_slice(&added);
        edited.extend_from_slice(b"session optional pam_motd.so \xe8\n");
        let removed = pam_remove(&edited).expect("our block found");
        let mut expected = b"# edited by the admin \xfe\n".to_vec();
        expected.extend_from_slice(original);
        expected.extend_from_slice(b"session optional pam_motd.so \xe8\n");
        assert_eq!(removed, expected);
    }

    #[test]
    fn an_admins_own_line_is_respected() {
        for text in [
            "session optional pam_sshidle.so conf=/etc/x.conf\n",
            "session required /lib/x86_64-linux-gnu/security/pam_sshidle.so debug\n",
            "-session [default=ignore] pam_sshidle.so\n",
            "session [success=ok default=ignore] pam_sshidle.so\n",
        ] {
            assert!(pam_has_module(text.as_bytes()), "{text}");
            assert_eq!(add(text), None);
            assert_eq!(remove(text), None, "not ours to remove");
        }
        assert!(!pam_has_module(b"# session optional pam_sshidle.so\nauth optional pam_sshidle.so\n"));
    }

    #[test]
    fn manifest_round_trip() {
        let manifest = Manifest {
            entries: vec![
                Entry::Dir("/usr/local/share/man/man8".into()),
                Entry::File("/lib/x86_64-linux-gnu/security/pam_sshidle.so".into()),
                Entry::Replaced("/usr/local/sbin/sshidlectl".into(), "/var/lib/sshidle/backup/x".into()),
                Entry::Policy("/etc/security/sshidle.conf".into(), 0xdead_beef),
                Entry::StateDir("/run/sshidle".into()),
                Entry::PamLine("/etc/pam.d/sshd".into(), "/var/lib/sshidle/backup/etc/pam.d/sshd".into()),
                Entry::Service(ServiceKind::SysV, "sshidle".into()),
                Entry::Service(ServiceKind::Systemd, "sshidle".into()),
            ],
        };
        assert_eq!(Manifest::parse(&manifest.render()), manifest);
    }

    struct Root(PathBuf);
    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_root(tag: &str) -> Root {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("sshidle-install-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in
            ["lib/security", "etc/pam.d", "etc/security", "build", "usr/local/sbin", "usr/local/share/man", "var/lib"]
        {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("lib/security/pam_unix.so"), b"\x7fELF unix").unwrap();
        fs::write(root.join("etc/pam.d/sshd"), DEBIAN_SSHD).unwrap();
        fs::set_permissions(root.join("etc/pam.d/sshd"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(root.join("build/sshidlectl"), b"\x7fELF controller v1").unwrap();
        fs::write(root.join("build/libpam_sshidle.so"), b"\x7fELF module v1").unwrap();
        Root(root)
    }

    fn layout(root: &Path) -> Layout {
        Layout {
            pam_module_dir: root.join("lib/security"),
            pam_file: root.join("etc/pam.d/sshd"),
            policy: root.join("etc/security/sshidle.conf"),
            state_dir: root.join("run/sshidle"),
            sbin_dir: root.join("usr/local/sbin"),
            man_dir: root.join("usr/local/share/man"),
            share_dir: root.join("usr/local/share"),
            var_dir: root.join("var/lib/sshidle"),
            pam_profile: root.join("usr/share/pam-configs/sshidle"),
            owner: Owner::Admin,
            init_dir: root.join("etc/init.d"),
            systemd_dir: root.join("etc/systemd/system"),
            service: ServiceKind::None,
            systemctl: root.join("no-systemctl"),
            self_exe: root.join("build/sshidlectl"),
            conf_arg: None,
            state_arg: None,
        }
    }

    fn args(dry_run: bool) -> InstallArgs {
        InstallArgs { dry_run, module: None, package: false, pam_file: "/unused".into() }
    }

    /// Every path under root with its mode and content.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_dir() {
                    stack.push(path.clone());
                    0
                } else {
                    fnv1a(&fs::read(&path).unwrap())
                };
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), (meta.mode(), content));
            }
        }
        out
    }

    #[test]
    fn concurrent_installs_wait_for_each_other() {
        let root = temp_root("lock");
        let layout = layout(&root.0);
        let pam_dir = fs::File::open(root.0.join("etc/pam.d")).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&pam_dir), libc::LOCK_EX) }, 0);
        let waiting = {
            let layout = layout.clone();
            std::thread::spawn(move || install_with(&layout, &args(false)))
        };
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(!waiting.is_finished(), "install ran while another held the lock");
        assert_eq!(fs::read_to_string(root.0.join("etc/pam.d/sshd")).unwrap(), DEBIAN_SSHD);
        drop(pam_dir);
        assert_eq!(waiting.join().unwrap(), EXIT_OK);
        assert!(fs::read_to_string(root.0.join("etc/pam.d/sshd")).unwrap().contains("pam_sshidle.so"));
        assert_eq!(uninstall_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(fs::read_to_string(root.0.join("etc/pam.d/sshd")).unwrap(), DEBIAN_SSHD);
    }

    #[test]
    fn install_twice_then_uninstall_leaves_the_system_as_it_was() {
        let root = temp_root("cycle");
        let before = snapshot(&root.0);
        let layout = layout(&root.0);

        assert_eq!(install_with(&layout, &args(true)), EXIT_OK);
        assert_eq!(snapshot(&root.0), before, "a dry run changes nothing");

        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        let installed = snapshot(&root.0);
        let module = root.0.join("lib/security/pam_sshidle.so");
        assert_eq!(fs::read(&module).unwrap(), b"\x7fELF module v1");
        assert_eq!(fs::metadata(&module).unwrap().mode() & 0o777, 0o644);
        assert_eq!(fs::read(root.0.join("usr/local/sbin/sshidlectl")).unwrap(), b"\x7fELF controller v1");
        assert_eq!(fs::read_to_string(root.0.join("etc/security/sshidle.conf")).unwrap(), DEFAULT_POLICY);
        let pam = fs::read_to_string(root.0.join("etc/pam.d/sshd")).unwrap();
        assert_eq!(pam.matches("pam_sshidle.so").count(), 1);
        assert_eq!(fs::metadata(root.0.join("etc/pam.d/sshd")).unwrap().mode() & 0o777, 0o640, "mode kept");
        assert_eq!(
            fs::read_to_string(
                root.0.join("var/lib/sshidle/backup").join(root.0.join("etc/pam.d/sshd").strip_prefix("/").unwrap())
            )
            .unwrap(),
            DEBIAN_SSHD
        );
        for page in ["man8/pam_sshidle.8", "man5/sshidle.conf.5", "man8/sshidlectl.8"] {
            assert!(root.0.join("usr/local/share/man").join(page).is_file(), "{page}");
        }
        let bash = fs::read_to_string(root.0.join("usr/local/share/bash-completion/completions/sshidlectl")).unwrap();
        assert!(bash.contains("keepalive") && bash.contains("--state-dir"), "{bash}");

        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(snapshot(&root.0), installed, "install is idempotent");

        assert_eq!(uninstall_with(&layout, &args(true)), EXIT_OK);
        assert_eq!(snapshot(&root.0), installed, "a dry run changes nothing");
        assert_eq!(uninstall_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(snapshot(&root.0), before, "uninstall takes away exactly what install added");
        assert_eq!(uninstall_with(&layout, &args(false)), EXIT_OK, "a second uninstall is harmless");
        assert_eq!(snapshot(&root.0), before);
    }

    #[test]
    fn edited_policy_is_kept_and_replaced_files_are_restored() {
        let root = temp_root("keep");
        // An older controller of the admin's own is where ours goes.
        fs::write(root.0.join("usr/local/sbin/sshidlectl"), b"admin's own").unwrap();
        let before = snapshot(&root.0);
        let layout = layout(&root.0);
        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        // A rebuild: the second install updates, and still restores the admin's.
        fs::write(root.0.join("build/sshidlectl"), b"\x7fELF controller v2").unwrap();
        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(fs::read(root.0.join("usr/local/sbin/sshidlectl")).unwrap(), b"\x7fELF controller v2");
        let policy = root.0.join("etc/security/sshidle.conf");
        fs::write(&policy, "user alice idle=5m\n").unwrap();
        // The state directory made by logins since is runtime state: cleared.
        fs::create_dir_all(root.0.join("run/sshidle")).unwrap();
        fs::write(root.0.join("run/sshidle/sessions"), "x").unwrap();

        assert_eq!(uninstall_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(fs::read_to_string(&policy).unwrap(), "user alice idle=5m\n", "edited policy kept");
        fs::remove_file(&policy).unwrap();
        let _ = fs::remove_dir(root.0.join("run"));
        fs::write(root.0.join("build/sshidlectl"), b"\x7fELF controller v1").unwrap();
        assert_eq!(snapshot(&root.0), before);
    }

    #[test]
    fn existing_policy_is_never_overwritten_and_the_package_touches_nothing_else() {
        let root = temp_root("pkgpolicy");
        let policy = root.0.join("etc/security/sshidle.conf");
        fs::write(&policy, "* idle=1h\n").unwrap();
        let before = snapshot(&root.0);
        let package = Layout { owner: Owner::Package, ..layout(&root.0) };
        let package_args = InstallArgs { package: true, ..args(false) };
        assert_eq!(install_with(&package, &package_args), EXIT_OK);
        assert_eq!(snapshot(&root.0), before, "the package's PAM line is its pam-auth-update profile's");
        // Nothing recorded, yet the package is known by its profile and
        // module: the admin's install refuses.
        fs::create_dir_all(root.0.join("usr/share/pam-configs")).unwrap();
        fs::write(root.0.join("usr/share/pam-configs/sshidle"), "Name: sshidle\n").unwrap();
        fs::write(root.0.join("lib/security/pam_sshidle.so"), b"\x7fELF the package's module").unwrap();
        let with_package = snapshot(&root.0);
        assert_eq!(install_with(&layout(&root.0), &args(false)), EXIT_PROBLEM);
        assert_eq!(snapshot(&root.0), with_package, "a refused install changes nothing");
        fs::remove_dir_all(root.0.join("usr/share")).unwrap();
        fs::remove_file(root.0.join("lib/security/pam_sshidle.so")).unwrap();
        assert_eq!(uninstall_with(&package, &package_args), EXIT_OK);
        assert_eq!(snapshot(&root.0), before);

        let admin = layout(&root.0);
        assert_eq!(install_with(&admin, &args(false)), EXIT_OK);
        assert_eq!(fs::read_to_string(&policy).unwrap(), "* idle=1h\n");
        assert_eq!(uninstall_with(&admin, &args(false)), EXIT_OK);
        assert_eq!(snapshot(&root.0), before);
    }

    #[test]
    fn package_and_admin_each_take_away_only_their_own() {
        let root = temp_root("owners");
        let before = snapshot(&root.0);
        let package = Layout { owner: Owner::Package, ..layout(&root.0) };
        let package_args = InstallArgs { package: true, ..args(false) };
        let admin = layout(&root.0);
        let policy = root.0.join("etc/security/sshidle.conf");
        let pam = root.0.join("etc/pam.d/sshd");

        // postinst: a default policy, the package's; /etc/pam.d/sshd is
        // openssh-server's and stays as it is.
        assert_eq!(install_with(&package, &package_args), EXIT_OK);
        assert_eq!(fs::read_to_string(&policy).unwrap(), DEFAULT_POLICY);
        assert_eq!(fs::read_to_string(&pam).unwrap(), DEBIAN_SSHD);
        // The admin's install refuses while the package is installed.
        fs::write(root.0.join("lib/security/pam_sshidle.so"), b"\x7fELF the package's module").unwrap();
        let with_package = snapshot(&root.0);
        assert_eq!(install_with(&admin, &args(false)), EXIT_PROBLEM);
        assert_eq!(snapshot(&root.0), with_package, "a refused install changes nothing");
        fs::remove_file(root.0.join("lib/security/pam_sshidle.so")).unwrap();
        // The admin's uninstall leaves the package's policy alone.
        assert_eq!(uninstall_with(&admin, &args(false)), EXIT_OK);
        assert_eq!(fs::read_to_string(&policy).unwrap(), DEFAULT_POLICY, "the package's policy kept");
        // prerm remove: the policy stays (for purge), and a reinstall
        // (postinst again) is quiet and complete.
        assert_eq!(uninstall_with(&package, &package_args), EXIT_OK);
        assert_eq!(fs::read_to_string(&policy).unwrap(), DEFAULT_POLICY);
        let manifest = fs::read_to_string(root.0.join("var/lib/sshidle/package")).unwrap();
        assert!(manifest.contains(&format!("policy\t{}\t", policy.display())), "{manifest}");
        assert_eq!(install_with(&package, &package_args), EXIT_OK);
        assert_eq!(fs::read_to_string(&pam).unwrap(), DEBIAN_SSHD);
        assert_eq!(uninstall_with(&package, &package_args), EXIT_OK);
        // postrm purge removes the policy and the package's record.
        fs::remove_file(&policy).unwrap();
        fs::remove_dir_all(root.0.join("var/lib/sshidle")).unwrap();
        assert_eq!(snapshot(&root.0), before);
    }

    /// An earlier version of the package added its line to /etc/pam.d/sshd
    /// and recorded it; the upgrade's postinst takes it out.
    #[test]
    fn the_package_takes_out_the_line_an_earlier_version_added() {
        let root = temp_root("pkgupgrade");
        let package = Layout { owner: Owner::Package, ..layout(&root.0) };
        let package_args = InstallArgs { package: true, ..args(false) };
        let pam = root.0.join("etc/pam.d/sshd");
        let backup = package.backup_path(&pam);
        fs::write(&pam, pam_add(DEBIAN_SSHD.as_bytes(), &package.pam_line()).unwrap()).unwrap();
        fs::create_dir_all(backup.parent().unwrap()).unwrap();
        fs::write(&backup, DEBIAN_SSHD).unwrap();
        let earlier = Manifest { entries: vec![Entry::PamLine(pam.clone(), backup)] };
        fs::create_dir_all(root.0.join("var/lib/sshidle")).unwrap();
        fs::write(root.0.join("var/lib/sshidle/package"), earlier.render()).unwrap();
        assert_eq!(install_with(&package, &package_args), EXIT_OK);
        assert_eq!(fs::read_to_string(&pam).unwrap(), DEBIAN_SSHD);
        let manifest = Manifest::parse(&fs::read_to_string(root.0.join("var/lib/sshidle/package")).unwrap());
        assert!(!manifest.entries.iter().any(|e| matches!(e, Entry::PamLine(..))), "{manifest:?}");
    }

    #[test]
    fn conf_and_state_options_reach_the_pam_line_and_the_service() {
        let root = temp_root("args");
        let mut layout = layout(&root.0);
        layout.conf_arg = Some("/etc/x.conf".into());
        layout.state_arg = Some("/run/x".into());
        assert_eq!(layout.pam_line(), "session    optional     pam_sshidle.so conf=/etc/x.conf state=/run/x");
        assert_eq!(
            layout.daemon_command(),
            format!(
                "{} --config /etc/x.conf --state-dir /run/x enforce",
                root.0.join("usr/local/sbin/sshidlectl").display()
            )
        );
    }

    #[test]
    fn service_files_run_the_installed_controller() {
        let root = temp_root("svc");
        let mut layout = layout(&root.0);
        let ctl = root.0.join("usr/local/sbin/sshidlectl");
        let unit = render_unit(&layout);
        assert!(unit.contains(&format!("\nExecStart={} enforce\n", ctl.display())), "{unit}");
        let script = render_init_script(&layout);
        assert!(script.contains(&format!("\nDAEMON={}\nDAEMON_ARGS=\"enforce\"\n", ctl.display())), "{script}");
        layout.conf_arg = Some("/etc/x.conf".into());
        assert!(render_unit(&layout).contains(&format!("ExecStart={} --config /etc/x.conf enforce\n", ctl.display())));
        assert!(render_init_script(&layout).contains("DAEMON_ARGS=\"--config /etc/x.conf enforce\"\n"));
        // The package's copies run /usr/sbin/sshidlectl.
        layout.self_exe = "/usr/sbin/sshidlectl".into();
        layout.conf_arg = None;
        assert_eq!(render_unit(&layout), SYSTEMD_UNIT);
        assert_eq!(render_init_script(&layout), INIT_SCRIPT);
    }

    #[test]
    fn systemd_unit_is_enabled_started_and_taken_away() {
        let root = temp_root("systemd");
        let calls = root.0.join("build/systemctl.log");
        let fake = root.0.join("build/systemctl");
        fs::write(&fake, format!("#!/bin/sh\necho \"$*\" >>{}\n", calls.display())).unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let before = snapshot(&root.0);
        let mut layout = layout(&root.0);
        layout.service = ServiceKind::Systemd;
        layout.systemctl = fake;
        let log = || fs::read_to_string(&calls).unwrap_or_default();

        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        let unit = root.0.join("etc/systemd/system/sshidle.service");
        assert_eq!(fs::read_to_string(&unit).unwrap(), render_unit(&layout));
        assert_eq!(log(), "daemon-reload\nenable --quiet sshidle\nrestart sshidle\n");
        // Nothing changed: just make sure it runs.
        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        assert!(log().ends_with("daemon-reload\nenable --quiet sshidle\nstart sshidle\n"), "{}", log());

        fs::remove_file(&calls).unwrap();
        assert_eq!(uninstall_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(log(), "disable --now --quiet sshidle\ndaemon-reload\n");
        fs::remove_file(&calls).unwrap();
        assert_eq!(snapshot(&root.0), before);

        // Installed where systemd ran, taken away where it does not run (a
        // chroot, a rescue system): disabled, nothing to stop or reload.
        assert_eq!(install_with(&layout, &args(false)), EXIT_OK);
        fs::remove_file(&calls).unwrap();
        layout.service = ServiceKind::SysV;
        assert_eq!(uninstall_with(&layout, &args(false)), EXIT_OK);
        assert_eq!(log(), "disable --quiet sshidle\n");
        fs::remove_file(&calls).unwrap();
        assert_eq!(snapshot(&root.0), before);
    }

    #[test]
    fn a_missing_pam_file_changes_nothing() {
        let root = temp_root("nopam");
        fs::remove_file(root.0.join("etc/pam.d/sshd")).unwrap();
        let before = snapshot(&root.0);
        assert_eq!(install_with(&layout(&root.0), &args(false)), EXIT_PROBLEM);
        assert_eq!(snapshot(&root.0), before);
    }

    #[test]
    fn module_dir_is_the_multiarch_one_libpam_reads() {
        // libpam-modules is installed wherever the tests run (.ci/deps), so
        // no module directory is a failure, not a reason to skip.
        let dir = find_pam_module_dir().expect("no PAM module directory with pam_unix.so (install libpam-modules)");
        // Debian's libpam loads modules from the multiarch directory
        // (/lib is /usr/lib on merged-/usr systems).
        let expected =
            [format!("/lib/{}/security", multiarch_triplet()), format!("/usr/lib/{}/security", multiarch_triplet())];
        if Path::new("/etc/debian_version").exists() {
            assert!(expected.iter().any(|e| Path::new(e) == dir), "{} is not one of {expected:?}", dir.display());
        }
    }

    #[test]
    fn man_page_names_every_subcommand_and_option() {
        let page = MAN_PAGES[2].1;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            assert!(
                page.contains(&format!(".B {}\n", sub.get_name()))
                    || page.contains(&format!("\\fB{}\\fR", sub.get_name())),
                "sshidlectl.8 lacks subcommand {}",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                if let (Some(long), false) = (arg.get_long(), arg.is_hide_set()) {
                    assert!(
                        page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                        "sshidlectl.8 lacks --{long}"
                    );
                }
            }
        }
    }
}
