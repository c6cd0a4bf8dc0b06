//! Reading and editing sshd's server configuration (sshd_config(5)) the way
//! sshd itself reads it, for `sshidlectl keepalive`.
//!
//! What sshd does, and what this module mirrors:
//! - a line is a keyword, then whitespace or one `=`, then arguments; keywords
//!   are case-insensitive; `#` starts a comment at the start of a line or of
//!   an argument; trailing whitespace (also `\r`) is ignored;
//! - `Include` expands each argument with glob(3) (sorted, C locale); a
//!   relative path is relative to `/etc/ssh`; the included lines count as if
//!   they were written in place of the `Include` line; a `Match` block inside
//!   an included file ends at the end of that file;
//! - for every keyword the **first obtained value wins**; a `Match` block that
//!   applies to a connection overrides the global value for it.
//!
//! sshidle's own lines are recognised by markers: a drop-in whose first line
//! is [`DROPIN_HEADER`], or a block between [`BEGIN_MARK`] and [`END_MARK`]
//! lines in the main file. Everything else is the admin's and is kept byte
//! for byte.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where sshd resolves relative `Include` paths (its SSHDIR).
pub const SSHD_DIR: &str = "/etc/ssh";
/// sshd's own limit on nested `Include`s.
const MAX_INCLUDE_DEPTH: usize = 16;

/// First line of a drop-in written by sshidle.
pub const DROPIN_HEADER: &str = "# Managed by sshidlectl keepalive (sshidle).";
/// Opens a block of lines written by sshidle in the main file.
pub const BEGIN_MARK: &str = "# BEGIN sshidle keepalive";
/// Closes that block.
pub const END_MARK: &str = "# END sshidle keepalive";
/// Names tried for the drop-in, in order: the usual one, then one that sorts
/// before most admins' drop-ins (first value wins).
pub const DROPIN_NAMES: [&str; 2] = ["10-sshidle.conf", "00-sshidle.conf"];

/// The keywords sshidle writes, lower case.
pub const KW_INTERVAL: &str = "clientaliveinterval";
pub const KW_COUNT_MAX: &str = "clientalivecountmax";
pub const KW_UNUSED: &str = "unusedconnectiontimeout";
pub const MANAGED_KEYWORDS: [&str; 3] = [KW_INTERVAL, KW_COUNT_MAX, KW_UNUSED];

/// The spelling used in files and messages.
pub fn display_keyword(lower: &str) -> &str {
    match lower {
        KW_INTERVAL => "ClientAliveInterval",
        KW_COUNT_MAX => "ClientAliveCountMax",
        KW_UNUSED => "UnusedConnectionTimeout",
        other => other,
    }
}

/// One configuration line split into keyword (lower case) and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub keyword: String,
    pub args: Vec<String>,
}

/// Splits one line like sshd does; `None` for blank lines and comments.
pub fn parse_line(line: &str) -> Option<Directive> {
    let line = line.trim_end_matches([' ', '\t', '\r', '\n', '\x0c']);
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // strdelim(): a keyword may be quoted.
    let (keyword, rest) = match line.strip_prefix('"') {
        Some(quoted) => match quoted.find('"') {
            Some(close) => (&quoted[..close], &quoted[close + 1..]),
            None => (quoted, ""),
        },
        None => {
            let end = line.find([' ', '\t', '=']).unwrap_or(line.len());
            (&line[..end], &line[end..])
        }
    };
    let keyword = keyword.to_ascii_lowercase();
    let mut rest = rest.trim_start_matches([' ', '\t']);
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start_matches([' ', '\t']);
    }
    Some(Directive { keyword, args: split_args(rest) })
}

/// sshd's `argv_split(.., terminate_on_comment=1)`: whitespace-separated
/// words, single or double quotes group, a backslash escapes a quote, a
/// backslash or a space, and a word starting with `#` ends the line.
fn split_args(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => break,
            _ => {}
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            if quote.is_none() && (c == ' ' || c == '\t') {
                break;
            }
            chars.next();
            match c {
                '\\' => match chars.peek() {
                    Some(&n) if n == '"' || n == '\'' || n == '\\' || (quote.is_none() && n == ' ') => {
                        word.push(n);
                        chars.next();
                    }
                    _ => word.push(c),
                },
                '"' | '\'' if quote.is_none() => quote = Some(c),
                q if Some(q) == quote => quote = None,
                _ => word.push(c),
            }
        }
        args.push(word);
    }
    args
}

/// A place in a configuration file, shown as `FILE:LINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One directive, in the order sshd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub loc: Location,
    pub directive: Directive,
    /// The `Match` line whose block holds this line, if any.
    pub in_match: Option<Location>,
    /// Written by sshidle.
    pub managed: bool,
}

/// One argument of an `Include` line and what it expanded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeSite {
    pub loc: Location,
    /// The pattern, made absolute the way sshd does.
    pub pattern: PathBuf,
    pub in_match: bool,
    /// Each matched file with the index range of its entries.
    pub files: Vec<(PathBuf, std::ops::Range<usize>)>,
    /// Index of the first entry after this pattern's files.
    pub end: usize,
}

/// A file read while loading, with its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// The whole configuration as sshd sees it, starting at the main file.
#[derive(Debug, Clone)]
pub struct Tree {
    pub main: PathBuf,
    pub entries: Vec<Entry>,
    pub includes: Vec<IncludeSite>,
    pub files: Vec<SourceFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits bytes into lines, each keeping its terminator.
pub fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            lines.push(&bytes[start..=i]);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    lines
}

fn line_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

fn is_dropin_header(bytes: &[u8]) -> bool {
    bytes.starts_with(DROPIN_HEADER.as_bytes())
}

fn is_marker(line: &[u8], mark: &str) -> bool {
    let text = line_text(line);
    text.trim_start_matches([' ', '\t']).starts_with(mark)
}

/// Index ranges (inclusive) of sshidle's blocks in a file's lines.
pub fn managed_blocks(path: &Path, lines: &[&[u8]]) -> Result<Vec<(usize, usize)>, ConfigError> {
    let mut blocks = Vec::new();
    let mut open: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        if is_marker(line, BEGIN_MARK) {
            if let Some(start) = open {
                return Err(ConfigError(format!(
                    "{}:{}: sshidle's block opened on line {} has no '{END_MARK}' line; fix the file by hand",
                    path.display(),
                    i + 1,
                    start + 1
                )));
            }
            open = Some(i);
        } else if is_marker(line, END_MARK) {
            match open.take() {
                Some(start) => blocks.push((start, i)),
                None => {
                    return Err(ConfigError(format!(
                        "{}:{}: '{END_MARK}' without '{BEGIN_MARK}'; fix the file by hand",
                        path.display(),
                        i + 1
                    )))
                }
            }
        }
    }
    if let Some(start) = open {
        return Err(ConfigError(format!(
            "{}:{}: sshidle's block has no '{END_MARK}' line; fix the file by hand",
            path.display(),
            start + 1
        )));
    }
    Ok(blocks)
}

/// Resolves an `Include` argument like sshd: relative to /etc/ssh, `~` not expanded.
pub fn resolve_include(arg: &str) -> PathBuf {
    let path = Path::new(arg);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(SSHD_DIR).join(path)
    }
}

/// glob(3) with no flags, as sshd calls it: sorted matches, or none.
pub fn glob(pattern: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let c = CString::new(pattern.as_os_str().as_bytes())
        .map_err(|_| ConfigError(format!("{}: NUL byte in path", pattern.display())))?;
    // SAFETY: glob_t is plain data; glob fills it and globfree releases it.
    unsafe {
        let mut g: libc::glob_t = std::mem::zeroed();
        let rc = libc::glob(c.as_ptr(), 0, None, &mut g);
        let mut out = Vec::new();
        if rc == 0 {
            for i in 0..g.gl_pathc {
                let p = *g.gl_pathv.add(i);
                if !p.is_null() {
                    out.push(PathBuf::from(std::ffi::OsStr::from_bytes(CStr::from_ptr(p).to_bytes())));
                }
            }
        }
        libc::globfree(&mut g);
        match rc {
            0 | libc::GLOB_NOMATCH => Ok(out),
            _ => Err(ConfigError(format!("{}: cannot expand Include pattern (glob error {rc})", pattern.display()))),
        }
    }
}

/// fnmatch(3) without flags.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (CString::new(pattern), CString::new(name)) else { return false };
    // SAFETY: both are valid NUL-terminated strings.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), 0) == 0 }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Tree {
    /// Reads `main` and everything it includes.
    pub fn load(main: &Path) -> Result<Tree, ConfigError> {
        let mut tree = Tree { main: main.to_path_buf(), entries: Vec::new(), includes: Vec::new(), files: Vec::new() };
        let bytes = fs::read(main)
            .map_err(|e| ConfigError(format!("cannot read sshd configuration {}: {e}", main.display())))?;
        tree.read_file(main, bytes, None, 0)?;
        Ok(tree)
    }

    fn read_file(
        &mut self,
        path: &Path,
        bytes: Vec<u8>,
        outer_match: Option<Location>,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let managed_file = is_dropin_header(&bytes);
        let lines = split_lines(&bytes);
        // sshidle writes marked blocks only into the main file.
        let blocks = if path == self.main { managed_blocks(path, &lines)? } else { Vec::new() };
        let mut in_match = outer_match.clone();
        for (i, raw) in lines.iter().enumerate() {
            let Some(directive) = parse_line(&line_text(raw)) else { continue };
            let loc = Location { file: path.to_path_buf(), line: i + 1 };
            let managed = managed_file || blocks.iter().any(|(s, e)| (*s..=*e).contains(&i));
            match directive.keyword.as_str() {
                "match" => {
                    self.entries.push(Entry { loc: loc.clone(), directive, in_match: None, managed });
                    in_match = Some(loc);
                }
                "include" => {
                    let args = directive.args.clone();
                    self.entries.push(Entry { loc: loc.clone(), directive, in_match: in_match.clone(), managed });
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(ConfigError(format!(
                            "{loc}: Include nested too deep (more than {MAX_INCLUDE_DEPTH})"
                        )));
                    }
                    for arg in args {
                        let pattern = resolve_include(&arg);
                        let mut site = IncludeSite {
                            loc: loc.clone(),
                            pattern: pattern.clone(),
                            in_match: in_match.is_some(),
                            files: Vec::new(),
                            end: 0,
                        };
                        for file in glob(&pattern)? {
                            let start = self.entries.len();
                            let bytes = match fs::read(&file) {
                                Ok(b) => b,
                                // A directory the pattern matched holds no settings.
                                Err(_) if file.is_dir() => continue,
                                Err(e) => {
                                    return Err(ConfigError(format!(
                                        "{loc}: cannot read included {}: {e}",
                                        file.display()
                                    )))
                                }
                            };
                            self.read_file(&file, bytes, in_match.clone(), depth + 1)?;
                            site.files.push((file, start..self.entries.len()));
                        }
                        site.end = self.entries.len();
                        self.includes.push(site);
                    }
                }
                _ => self.entries.push(Entry { loc, directive, in_match: in_match.clone(), managed }),
            }
        }
        self.files.push(SourceFile { path: path.to_path_buf(), bytes });
        Ok(())
    }

    pub fn file_bytes(&self, path: &Path) -> Option<&[u8]> {
        self.files.iter().find(|f| f.path == path).map(|f| f.bytes.as_slice())
    }

    /// The admin's (not sshidle's) settings of `keyword`, in reading order.
    pub fn settings<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = (usize, &'a Entry)> + 'a {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| !e.managed && e.directive.keyword == keyword && !e.directive.args.is_empty())
    }

    /// The first global value of `keyword` (what `sshd -T` shows), managed or not.
    pub fn first_global(&self, keyword: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.in_match.is_none() && e.directive.keyword == keyword)
    }
}

/// Values sshidle wants in sshd's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub interval: u64,
    pub count_max: u64,
    /// Global `UnusedConnectionTimeout` in seconds; `None` leaves it alone.
    pub unused: Option<u64>,
    /// Per-user/group `UnusedConnectionTimeout`, in policy order.
    pub matches: Vec<MatchBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchBlock {
    /// What follows `Match`, e.g. `Group admins`.
    pub criteria: String,
    /// Seconds; `None`: the global value (sshidle's, else the admin's, else
    /// `none`), so that the block still shadows the later ones.
    pub unused: Option<u64>,
}

impl Desired {
    fn global_lines(&self) -> Vec<String> {
        let mut lines =
            vec![format!("ClientAliveInterval {}", self.interval), format!("ClientAliveCountMax {}", self.count_max)];
        if let Some(u) = self.unused {
            lines.push(format!("UnusedConnectionTimeout {u}"));
        }
        lines
    }

    fn match_lines(&self, inherit: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for m in &self.matches {
            lines.push(format!("Match {}", m.criteria));
            lines
                .push(format!("\tUnusedConnectionTimeout {}", m.unused.map_or(inherit.to_string(), |u| u.to_string())));
        }
        lines
    }

    /// The value sshidle writes for a keyword, normalised like [`normalize`].
    pub fn value_of(&self, keyword: &str) -> Option<String> {
        match keyword {
            KW_INTERVAL => Some(self.interval.to_string()),
            KW_COUNT_MAX => Some(self.count_max.to_string()),
            KW_UNUSED => self.unused.map(|u| u.to_string()),
            _ => None,
        }
    }

    fn writes(&self, keyword: &str) -> bool {
        keyword != KW_UNUSED || self.unused.is_some() || !self.matches.is_empty()
    }
}

/// A value as sshd would read it, in seconds or as a number, for comparison.
pub fn normalize(keyword: &str, arg: &str) -> String {
    match keyword {
        KW_INTERVAL | KW_UNUSED => {
            if arg.eq_ignore_ascii_case("none") {
                return "none".to_string();
            }
            sshidle::parse_duration(arg).map(|s| s.to_string()).unwrap_or_else(|_| arg.to_string())
        }
        _ => arg.parse::<u64>().map(|n| n.to_string()).unwrap_or_else(|_| arg.to_string()),
    }
}

/// An admin setting that would beat sshidle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub loc: Location,
    pub keyword: String,
    pub value: String,
    pub in_match: Option<Location>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kw = display_keyword(&self.keyword);
        match &self.in_match {
            Some(m) => write!(
                f,
                "{}: {kw} {} inside the Match block at {m} overrides it for the connections that block matches",
                self.loc, self.value
            ),
            None => {
                write!(f, "{}: {kw} {} comes first and wins (sshd uses the first value it reads)", self.loc, self.value)
            }
        }
    }
}

/// A file to create, replace or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    /// Exact previous contents; `None` when the file does not exist.
    pub old: Option<Vec<u8>>,
    /// New contents; `None` deletes the file.
    pub new: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub changes: Vec<FileChange>,
    /// The file that holds sshidle's settings afterwards.
    pub target: Option<PathBuf>,
    /// Things the admin should know (admin lines that no longer take effect).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Conflicts(Vec<Conflict>),
    Other(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Other(m) => f.write_str(m),
            PlanError::Conflicts(list) => {
                for (i, c) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

/// The drop-in directory candidate: the first global `Include` of the main
/// file whose last path component is a pattern an sshidle name matches.
fn dropin_site(tree: &Tree) -> Option<(usize, Vec<&'static str>)> {
    for (i, site) in tree.includes.iter().enumerate() {
        if site.loc.file != tree.main || site.in_match {
            continue;
        }
        let (Some(dir), Some(name_pat)) = (site.pattern.parent(), site.pattern.file_name()) else { continue };
        let name_pat = name_pat.to_string_lossy();
        if has_glob_chars(&dir.to_string_lossy()) || !has_glob_chars(&name_pat) {
            continue;
        }
        let names: Vec<&'static str> = DROPIN_NAMES.iter().copied().filter(|n| fnmatch(&name_pat, n)).collect();
        if !names.is_empty() {
            return Some((i, names));
        }
    }
    None
}

/// sshidle's drop-ins: files of the tree (or of the drop-in directory) whose
/// first line is the header.
fn managed_dropins(tree: &Tree) -> BTreeSet<PathBuf> {
    let mut found: BTreeSet<PathBuf> =
        tree.files.iter().filter(|f| is_dropin_header(&f.bytes)).map(|f| f.path.clone()).collect();
    // Also one that an edited Include no longer reaches.
    if let Some((site, _)) = dropin_site(tree) {
        if let Some(dir) = tree.includes[site].pattern.parent() {
            for name in DROPIN_NAMES {
                let p = dir.join(name);
                if fs::read(&p).is_ok_and(|b| is_dropin_header(&b)) {
                    found.insert(p);
                }
            }
        }
    }
    found
}

fn eol_of(bytes: &[u8]) -> &'static [u8] {
    match split_lines(bytes).first() {
        Some(l) if l.ends_with(b"\r\n") => b"\r\n",
        _ => b"\n",
    }
}

fn render_lines(lines: &[String], eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(eol);
    }
    out
}

/// Contents of sshidle's drop-in.
pub fn render_dropin(desired: &Desired, inherit: &str) -> Vec<u8> {
    let mut lines = vec![
        DROPIN_HEADER.to_string(),
        "# Written by `sshidlectl keepalive`; it is rewritten on the next run.".to_string(),
        "# Change the values with `sshidlectl keepalive --interval DUR --count-max N` or the".to_string(),
        "# policy file's `keepalive` line; remove this file with `sshidlectl keepalive --off`.".to_string(),
    ];
    lines.extend(desired.global_lines());
    if !desired.matches.is_empty() {
        lines.push("# Per-user/group limits for connections with no channel (ssh -N); the Match".to_string());
        lines.push("# blocks end with this file.".to_string());
        lines.extend(desired.match_lines(inherit));
    }
    render_lines(&lines, b"\n")
}

fn block(lines: Vec<String>, eol: &[u8]) -> Vec<u8> {
    let mut all = vec![format!("{BEGIN_MARK} (managed by sshidlectl; remove with `sshidlectl keepalive --off`)")];
    all.extend(lines);
    all.push(END_MARK.to_string());
    render_lines(&all, eol)
}

/// The main file without sshidle's blocks; also returns, in the stripped
/// text, the line index of the first directive.
fn strip_blocks(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Option<usize>), ConfigError> {
    let lines = split_lines(bytes);
    let blocks = managed_blocks(path, &lines)?;
    let mut kept: Vec<&[u8]> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !blocks.iter().any(|(s, e)| (*s..=*e).contains(&i)) {
            kept.push(l);
        }
    }
    let first = kept.iter().position(|l| parse_line(&line_text(l)).is_some());
    let mut out = kept.concat();
    // A block that ends the file without a final newline carries that of
    // the admin's last line (see `render_main`): give it back.
    // The line ending it added is the one its own lines use.
    let last_block = blocks.iter().find(|(_, e)| *e + 1 == lines.len());
    if let Some((begin, _)) = last_block.filter(|_| !bytes.ends_with(b"\n")) {
        let eol: &[u8] = if lines[*begin].ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
        if out.ends_with(eol) {
            out.truncate(out.len() - eol.len());
        }
    }
    Ok((out, first))
}

/// Main file contents with sshidle's settings: the global lines in a block
/// before the first directive (so they come first), the Match blocks in a
/// block at the end.
fn render_main(path: &Path, bytes: &[u8], desired: &Desired, inherit: &str) -> Result<Vec<u8>, ConfigError> {
    let (stripped, first) = strip_blocks(path, bytes)?;
    let eol = eol_of(bytes);
    let lines = split_lines(&stripped);
    let at = first.unwrap_or(lines.len());
    let mut out = Vec::new();
    for l in &lines[..at] {
        out.extend_from_slice(l);
    }
    if at == lines.len() && !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(eol);
    }
    out.extend(block(desired.global_lines(), eol));
    for l in &lines[at..] {
        out.extend_from_slice(l);
    }
    if !desired.matches.is_empty() {
        if !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        out.extend(block(desired.match_lines(inherit), eol));
    }
    // The admin's last line lacked a newline and a block now follows it:
    // the block ends without one instead, so `--off` restores the bytes.
    let lacked_final_eol = !stripped.is_empty() && !stripped.ends_with(b"\n");
    if lacked_final_eol && out.ends_with(eol) {
        out.truncate(out.len() - eol.len());
    }
    Ok(out)
}

fn change(path: &Path, old: Option<&[u8]>, new: Option<Vec<u8>>) -> Option<FileChange> {
    if old.map(|o| o.to_vec()) == new {
        return None;
    }
    Some(FileChange { path: path.to_path_buf(), old: old.map(|o| o.to_vec()), new })
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Admin settings that would beat sshidle's if its lines were read at entry
/// index `position` (`None`: before everything).
fn conflicts_at(tree: &Tree, desired: &Desired, position: usize) -> Vec<Conflict> {
    let mut out = Vec::new();
    for kw in MANAGED_KEYWORDS {
        if !desired.writes(kw) {
            continue;
        }
        let ours = desired.value_of(kw);
        for (index, entry) in tree.settings(kw) {
            let value = entry.directive.args[0].clone();
            let same = ours.as_deref() == Some(normalize(kw, &value).as_str());
            let beats = match &entry.in_match {
                // Match blocks in sshidle's drop-in come after the admin's: the
                // admin's block wins for the users it matches, whatever its place.
                Some(_) => true,
                None => index < position && ours.is_some(),
            };
            if beats && !same {
                out.push(Conflict {
                    loc: entry.loc.clone(),
                    keyword: kw.to_string(),
                    value,
                    in_match: entry.in_match.clone(),
                });
            }
        }
    }
    out
}

/// Admin global settings that sshidle's lines will hide (read after them).
fn hidden_at(tree: &Tree, desired: &Desired, position: usize) -> Vec<String> {
    let mut out = Vec::new();
    for kw in MANAGED_KEYWORDS {
        let Some(ours) = desired.value_of(kw) else { continue };
        for (index, entry) in tree.settings(kw) {
            if entry.in_match.is_none() && index >= position && normalize(kw, &entry.directive.args[0]) != ours {
                out.push(format!(
                    "{}: {} {} no longer takes effect: sshidle's value is read first (it applies again after `sshidlectl keepalive --off`)",
                    entry.loc,
                    display_keyword(kw),
                    entry.directive.args[0]
                ));
            }
        }
    }
    out
}

/// Plans writing `desired`: a drop-in where the main file includes a
/// directory, else a block in the main file. Stops on an admin setting that
/// would win over sshidle's.
pub fn plan_apply(tree: &Tree, desired: &Desired) -> Result<Plan, PlanError> {
    let main_bytes = tree.file_bytes(&tree.main).unwrap_or_default();
    let existing = managed_dropins(tree);
    let mut plan = Plan::default();
    let target: PathBuf;
    // What a Match block without its own value gets: the global value.
    let inherit = match desired.unused {
        Some(u) => u.to_string(),
        None => tree
            .settings(KW_UNUSED)
            .find(|(_, e)| e.in_match.is_none())
            .map_or("none".to_string(), |(_, e)| e.directive.args[0].clone()),
    };
    if let Some((site_index, names)) = dropin_site(tree) {
        let site = &tree.includes[site_index];
        let dir = site.pattern.parent().map(Path::to_path_buf).unwrap_or_default();
        // Try names with an sshidle drop-in first, then free names.
        let mut candidates: Vec<&str> = names.iter().copied().filter(|n| existing.contains(&dir.join(n))).collect();
        candidates.extend(names.iter().copied().filter(|n| !existing.contains(&dir.join(n))));
        // The conflicts of the earliest place tried: the ones that cannot be beaten.
        let mut first_conflicts: Option<(usize, Vec<Conflict>)> = None;
        let mut chosen: Option<(PathBuf, usize)> = None;
        for name in candidates {
            let path = dir.join(name);
            let current = read_optional(&path).map_err(|e| PlanError::Other(e.0))?;
            if current.as_ref().is_some_and(|b| !is_dropin_header(b)) {
                continue; // the admin's file of that name
            }
            // Where the file is (or would be) read: before the first file of
            // the site that sorts after it (glob sorts byte-wise in C locale).
            let position = site
                .files
                .iter()
                .find(|(f, _)| f.as_os_str().as_bytes() >= path.as_os_str().as_bytes())
                .map_or(site.end, |(_, r)| r.start);
            let conflicts = conflicts_at(tree, desired, position);
            if conflicts.is_empty() {
                plan.notes.extend(hidden_at(tree, desired, position));
                chosen = Some((path, position));
                break;
            }
            let earlier = match &first_conflicts {
                Some((p, _)) => position < *p,
                None => true,
            };
            if earlier {
                first_conflicts = Some((position, conflicts));
            }
        }
        let Some((path, _)) = chosen else {
            return Err(match first_conflicts {
                Some((_, c)) => PlanError::Conflicts(c),
                None => PlanError::Other(format!(
                    "{}: the names sshidle uses ({}) are taken by files it did not write",
                    dir.display(),
                    DROPIN_NAMES.join(", ")
                )),
            });
        };
        let old = read_optional(&path).map_err(|e| PlanError::Other(e.0))?;
        plan.changes.extend(change(&path, old.as_deref(), Some(render_dropin(desired, &inherit))));
        // sshidle's lines anywhere else go.
        let (stripped, _) = strip_blocks(&tree.main, main_bytes).map_err(|e| PlanError::Other(e.0))?;
        plan.changes.extend(change(&tree.main, Some(main_bytes), Some(stripped)));
        target = path;
    } else {
        let conflicts = conflicts_at(tree, desired, 0);
        if !conflicts.is_empty() {
            return Err(PlanError::Conflicts(conflicts));
        }
        plan.notes.extend(hidden_at(tree, desired, 0));
        let new = render_main(&tree.main, main_bytes, desired, &inherit).map_err(|e| PlanError::Other(e.0))?;
        plan.changes.extend(change(&tree.main, Some(main_bytes), Some(new)));
        target = tree.main.clone();
    }
    for stale in existing {
        if stale != target {
            let old = read_optional(&stale).map_err(|e| PlanError::Other(e.0))?;
            plan.changes.extend(change(&stale, old.as_deref(), None));
        }
    }
    plan.target = Some(target);
    Ok(plan)
}

/// Plans removing everything sshidle wrote.
pub fn plan_remove(tree: &Tree) -> Result<Plan, ConfigError> {
    let mut plan = Plan::default();
    let main_bytes = tree.file_bytes(&tree.main).unwrap_or_default();
    let (stripped, _) = strip_blocks(&tree.main, main_bytes)?;
    plan.changes.extend(change(&tree.main, Some(main_bytes), Some(stripped)));
    for path in managed_dropins(tree) {
        let old = read_optional(&path)?;
        plan.changes.extend(change(&path, old.as_deref(), None));
    }
    Ok(plan)
}

/// Metadata to give a file that replaces another.
#[derive(Debug, Clone, Copy)]
pub struct FileMode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The mode and owner of an existing file, else 0644 root:root.
pub fn mode_of(path: &Path) -> FileMode {
    match fs::metadata(path) {
        Ok(m) => FileMode { mode: m.permissions().mode() & 0o7777, uid: m.uid(), gid: m.gid() },
        Err(_) => FileMode { mode: 0o644, uid: 0, gid: 0 },
    }
}

/// Replaces the file `path` names with `bytes` atomically
/// ([`sshidle::files::write_atomic`], synced, with `mode`). Unlike it, a
/// symlink is followed: the admin's link stays and its target is replaced.
pub fn write_through_symlink(path: &Path, bytes: &[u8], mode: FileMode) -> std::io::Result<()> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let how = sshidle::files::Replace::synced(mode.mode, Some((mode.uid, mode.gid)));
    sshidle::files::write_atomic(&path, bytes, &how)
}

/// Deletes `path` (a missing file is fine) and syncs its directory.
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A unified diff of two versions of a file (3 lines of context), by
/// `similar`'s Myers diff: linear memory, so an 8,000-line config costs no
/// more than it should.
pub fn unified_diff(path: &Path, old: Option<&[u8]>, new: Option<&[u8]>) -> String {
    let a = line_text(old.unwrap_or_default());
    let b = line_text(new.unwrap_or_default());
    let label_a = if old.is_some() { format!("a{}", path.display()) } else { "/dev/null".to_string() };
    let label_b = if new.is_some() { format!("b{}", path.display()) } else { "/dev/null".to_string() };
    let diff = similar::TextDiff::configure().algorithm(similar::Algorithm::Myers).diff_lines(&a, &b);
    let groups = diff.grouped_ops(3);
    if groups.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {label_a}\n+++ {label_b}\n");
    let show = |start: usize, len: usize| if len == 0 { format!("{start},0") } else { format!("{},{len}", start + 1) };
    for group in &groups {
        let (Some(first), Some(last)) = (group.first(), group.last()) else { continue };
        let (old_start, new_start) = (first.old_range().start, first.new_range().start);
        let (old_len, new_len) = (last.old_range().end - old_start, last.new_range().end - new_start);
        out.push_str(&format!("@@ -{} +{} @@\n", show(old_start, old_len), show(new_start, new_len)));
        for op in group {
            for change in diff.iter_changes(op) {
                let kind = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                };
                let text = change.value();
                out.push(kind);
                out.push_str(text.strip_suffix('\n').unwrap_or(text));
                out.push('\n');
                if !text.ends_with('\n') {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
    }
    out
}

/// Properties of reading and rewriting an admin's file, for any bytes
/// (the fuzz target `sshd_config` and a seeded test call it): lines split
/// losslessly, any line parses without panicking, and writing sshidle's
/// settings then removing them gives back the admin's bytes exactly.
#[doc(hidden)]
#[cfg_attr(not(test), allow(dead_code))] // used by its test and by fuzz/
pub fn check_properties(bytes: &[u8]) {
    let lines = split_lines(bytes);
    assert_eq!(lines.concat(), bytes);
    for line in &lines {
        if let Some(d) = parse_line(&line_text(line)) {
            assert_eq!(d.keyword, d.keyword.to_ascii_lowercase());
        }
    }
    let path = Path::new("/fuzz/sshd_config");
    let Ok((stripped, _)) = strip_blocks(path, bytes) else { return };
    let desired = Desired {
        interval: 60,
        count_max: 3,
        unused: Some(600),
        matches: vec![MatchBlock { criteria: "User backup".into(), unused: Some(3600) }],
    };
    let Ok(rendered) = render_main(path, bytes, &desired, "") else { return };
    let (again, _) = strip_blocks(path, &rendered).expect("sshidle's own blocks parse");
    assert_eq!(again, stripped, "--off after apply changed the admin's bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "sshidle-cfg-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(p.join("conf.d")).unwrap();
            Dir(p)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, text).unwrap();
            p
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn desired(interval: u64, count_max: u64) -> Desired {
        Desired { interval, count_max, unused: None, matches: vec![] }
    }

    fn d(keyword: &str, args: &[&str]) -> Option<Directive> {
        Some(Directive { keyword: keyword.into(), args: args.iter().map(|s| s.to_string()).collect() })
    }

    #[test]
    fn apply_then_off_keeps_any_file_byte_for_byte() {
        let mut inputs = sshidle::props::Inputs::new(6);
        let words = [
            "Port 22",
            "\n",
            "\r\n",
            "# c",
            " ",
            "\t",
            "Include x/*.conf",
            "Match User a",
            "ClientAliveInterval 5",
            BEGIN_MARK,
            END_MARK,
            "\"",
            "=",
            "#",
            "PermitRootLogin no",
        ];
        for _ in 0..3000 {
            check_properties(&inputs.near(&words, 16, b" \t\n#=\""));
            check_properties(&inputs.bytes(80, &[]));
        }
    }

    #[test]
    fn parses_lines_like_sshd() {
        assert_eq!(parse_line("ClientAliveInterval 60"), d("clientaliveinterval", &["60"]));
        assert_eq!(parse_line("  clientaliveINTERVAL\t60\r\n"), d("clientaliveinterval", &["60"]));
        assert_eq!(parse_line("ClientAliveInterval=60"), d("clientaliveinterval", &["60"]));
        assert_eq!(parse_line("ClientAliveInterval = 60"), d("clientaliveinterval", &["60"]));
        assert_eq!(parse_line("ClientAliveInterval   =\t\"7m\"  # why"), d("clientaliveinterval", &["7m"]));
        assert_eq!(parse_line("Include a.conf  'b c.conf' d\\ e"), d("include", &["a.conf", "b c.conf", "d e"]));
        assert_eq!(
            parse_line("Match Group admins,staff User !root"),
            d("match", &["Group", "admins,staff", "User", "!root"])
        );
        assert_eq!(parse_line("Banner a#b"), d("banner", &["a#b"]));
        assert_eq!(parse_line("\"ClientAliveInterval\" 5"), d("clientaliveinterval", &["5"]));
        assert_eq!(parse_line("\"ClientAliveInterval\"=5"), d("clientaliveinterval", &["5"]));
        assert_eq!(parse_line("#ClientAliveInterval 0"), None);
        assert_eq!(parse_line("   # indented comment"), None);
        assert_eq!(parse_line("   \t \r\n"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn splits_lines_keeping_terminators() {
        assert_eq!(split_lines(b"a\nb\r\nc"), vec![&b"a\n"[..], b"b\r\n", b"c"]);
        assert_eq!(split_lines(b""), Vec::<&[u8]>::new());
        assert_eq!(split_lines(b"\n\n"), vec![&b"\n"[..], b"\n"]);
    }

    #[test]
    fn relative_includes_resolve_under_etc_ssh() {
        assert_eq!(resolve_include("sshd_config.d/*.conf"), PathBuf::from("/etc/ssh/sshd_config.d/*.conf"));
        assert_eq!(resolve_include("/opt/x/*.conf"), PathBuf::from("/opt/x/*.conf"));
    }

    #[test]
    fn loads_includes_in_lexical_order_with_match_context() {
        let dir = Dir::new("tree");
        dir.write("conf.d/20-b.conf", "ClientAliveCountMax 5\n");
        dir.write("conf.d/10-a.conf", "Match User root\n  ClientAliveCountMax 4\n");
        dir.write("conf.d/ignored.txt", "ClientAliveCountMax 9\n");
        let main = dir.write(
            "main",
            &format!("Port 22\nInclude {}/conf.d/*.conf\nMatch Group x\n  ClientAliveInterval 3\n", dir.0.display()),
        );
        let tree = Tree::load(&main).unwrap();
        let kws: Vec<(String, usize, bool)> =
            tree.entries.iter().map(|e| (e.directive.keyword.clone(), e.loc.line, e.in_match.is_some())).collect();
        assert_eq!(
            kws,
            vec![
                ("port".into(), 1, false),
                ("include".into(), 2, false),
                ("match".into(), 1, false),
                ("clientalivecountmax".into(), 2, true),
                // The Match of 10-a.conf ended with that file.
                ("clientalivecountmax".into(), 1, false),
                ("match".into(), 3, false),
                ("clientaliveinterval".into(), 4, true),
            ]
        );
        assert_eq!(tree.includes.len(), 1);
        assert_eq!(tree.includes[0].files.len(), 2);
        assert_eq!(tree.first_global(KW_COUNT_MAX).unwrap().loc.file, dir.path("conf.d/20-b.conf"));
    }

    #[test]
    fn include_with_several_patterns_and_inside_match() {
        let dir = Dir::new("multi");
        dir.write("conf.d/a.conf", "ClientAliveInterval 1\n");
        dir.write("b.conf", "ClientAliveCountMax 2\n");
        let d = dir.0.display();
        let main = dir.write(
            "main",
            &format!("Include {d}/b.conf {d}/conf.d/*.conf {d}/none/*.conf\nMatch User x\nInclude {d}/b.conf\n"),
        );
        let tree = Tree::load(&main).unwrap();
        assert_eq!(tree.includes.len(), 4);
        assert_eq!(tree.includes[2].files, vec![]);
        assert!(tree.includes[3].in_match);
        let order: Vec<(String, bool)> = tree
            .entries
            .iter()
            .filter(|e| e.directive.keyword.starts_with("clientalive"))
            .map(|e| (e.loc.file.file_name().unwrap().to_string_lossy().into_owned(), e.in_match.is_some()))
            .collect();
        assert_eq!(order, vec![("b.conf".into(), false), ("a.conf".into(), false), ("b.conf".into(), true)]);
        // The first pattern that can take a drop-in is the directory one.
        let plan = plan_apply(&tree, &desired(1, 2)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/10-sshidle.conf")));
        // b.conf's value (2) is read first but equal; a.conf's 1 is equal too.
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        let err = plan_apply(&tree, &desired(1, 3)).unwrap_err();
        assert!(err.to_string().contains("b.conf:1: ClientAliveCountMax 2 comes first"), "{err}");
        assert!(err.to_string().contains("b.conf:1: ClientAliveCountMax 2 inside the Match block"), "{err}");
    }

    #[test]
    fn include_loop_is_an_error() {
        let dir = Dir::new("loop");
        let main = dir.path("main");
        fs::write(&main, format!("Include {}\n", main.display())).unwrap();
        let err = Tree::load(&main).unwrap_err();
        assert!(err.0.contains("nested too deep"), "{err}");
    }

    #[test]
    fn writes_a_dropin_where_main_includes_a_directory() {
        let dir = Dir::new("dropin");
        let main_text = format!("# top\nInclude {}/conf.d/*.conf\nPort 22\n", dir.0.display());
        let main = dir.write("main", &main_text);
        let tree = Tree::load(&main).unwrap();
        let plan = plan_apply(&tree, &desired(30, 4)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/10-sshidle.conf")));
        assert_eq!(plan.changes.len(), 1);
        let text = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        assert!(text.starts_with(DROPIN_HEADER));
        assert!(text.contains("\nClientAliveInterval 30\nClientAliveCountMax 4\n"));
        assert!(!text.contains("Unused"));
        assert_eq!(plan.changes[0].old, None);
        // Applied, the same values again change nothing; --off removes the file only.
        fs::write(dir.path("conf.d/10-sshidle.conf"), &text).unwrap();
        let tree = Tree::load(&main).unwrap();
        assert!(tree.entries.iter().filter(|e| e.managed).count() == 2);
        assert_eq!(plan_apply(&tree, &desired(30, 4)).unwrap().changes, vec![]);
        let off = plan_remove(&tree).unwrap();
        assert_eq!(
            off.changes,
            vec![FileChange {
                path: dir.path("conf.d/10-sshidle.conf"),
                old: Some(text.clone().into_bytes()),
                new: None
            }]
        );
        // New values replace the drop-in's contents.
        let plan = plan_apply(&tree, &desired(45, 2)).unwrap();
        assert_eq!(plan.changes.len(), 1);
        assert!(String::from_utf8_lossy(plan.changes[0].new.as_ref().unwrap()).contains("ClientAliveInterval 45\n"));
    }

    #[test]
    fn earlier_dropin_conflict_moves_sshidle_first() {
        let dir = Dir::new("early");
        dir.write("conf.d/05-site.conf", "clientaliveinterval=120\n");
        let main = dir.write("main", &format!("Include {}/conf.d/*.conf\n", dir.0.display()));
        let tree = Tree::load(&main).unwrap();
        let plan = plan_apply(&tree, &desired(60, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/00-sshidle.conf")));
        assert_eq!(plan.notes.len(), 1);
        assert!(
            plan.notes[0].contains("05-site.conf:1: ClientAliveInterval 120 no longer takes effect"),
            "{:?}",
            plan.notes
        );
        // The same value is no conflict.
        let plan = plan_apply(&tree, &desired(120, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/10-sshidle.conf")));
        assert!(plan.notes.is_empty());
        // A later drop-in is overridden, with a note.
        dir.write("conf.d/50-late.conf", "ClientAliveCountMax 9\n");
        let tree = Tree::load(&main).unwrap();
        let plan = plan_apply(&tree, &desired(120, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/10-sshidle.conf")));
        assert!(plan.notes[0].contains("50-late.conf:1: ClientAliveCountMax 9"));
    }

    #[test]
    fn reports_the_conflicts_of_the_earliest_place() {
        let dir = Dir::new("earliest");
        // sshidle's drop-in exists as 10-; 05- could be beaten by 00-, 0- cannot.
        dir.write("conf.d/10-sshidle.conf", &format!("{DROPIN_HEADER}\nClientAliveInterval 60\n"));
        dir.write("conf.d/05-site.conf", "ClientAliveInterval 120\n");
        dir.write("conf.d/0-first.conf", "ClientAliveInterval 30\n");
        let main = dir.write("main", &format!("Include {}/conf.d/*.conf\n", dir.0.display()));
        let err = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap_err();
        let PlanError::Conflicts(c) = &err else { panic!("{err:?}") };
        assert_eq!(c.len(), 1, "{err}");
        assert_eq!(c[0].loc.file, dir.path("conf.d/0-first.conf"));
        // Without it, sshidle moves from 10- to 00- and removes its old file.
        fs::remove_file(dir.path("conf.d/0-first.conf")).unwrap();
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/00-sshidle.conf")));
        let deleted: Vec<&PathBuf> = plan.changes.iter().filter(|c| c.new.is_none()).map(|c| &c.path).collect();
        assert_eq!(deleted, vec![&dir.path("conf.d/10-sshidle.conf")]);
    }

    #[test]
    fn conflicts_that_cannot_be_beaten_name_file_and_line() {
        let dir = Dir::new("conflict");
        dir.write("conf.d/00-a.conf", "# x\nClientAliveCountMax 0\n");
        let main = dir.write("main", &format!("Include {}/conf.d/*.conf\n", dir.0.display()));
        let tree = Tree::load(&main).unwrap();
        let err = plan_apply(&tree, &desired(60, 3)).unwrap_err();
        let PlanError::Conflicts(c) = &err else { panic!("{err:?}") };
        assert_eq!(c[0].loc, Location { file: dir.path("conf.d/00-a.conf"), line: 2 });
        assert!(err.to_string().contains("00-a.conf:2: ClientAliveCountMax 0 comes first"), "{err}");

        // A line above the Include.
        let main =
            dir.write("main", &format!("Port 22\nClientAliveInterval 5\nInclude {}/conf.d/*.conf\n", dir.0.display()));
        fs::remove_file(dir.path("conf.d/00-a.conf")).unwrap();
        let err = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{}:2: ClientAliveInterval 5", main.display())), "{err}");

        // A Match block, anywhere.
        let main = dir.write(
            "main",
            &format!("Include {}/conf.d/*.conf\nMatch User backup\n\tClientAliveInterval 0\n", dir.0.display()),
        );
        let err = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap_err();
        let PlanError::Conflicts(c) = &err else { panic!() };
        assert_eq!(c[0].loc.line, 3);
        assert_eq!(c[0].in_match, Some(Location { file: main.clone(), line: 2 }));
        assert!(err.to_string().contains("inside the Match block at"), "{err}");
    }

    #[test]
    fn main_without_include_gets_a_block_before_the_first_directive() {
        let dir = Dir::new("main");
        let original = "# sshd config\n\n#ClientAliveInterval 0\nPort 22\nClientAliveInterval 300\nMatch User x\n\tX11Forwarding no\n";
        let main = dir.write("main", original);
        let tree = Tree::load(&main).unwrap();
        let plan = plan_apply(&tree, &desired(60, 3)).unwrap();
        assert_eq!(plan.target, Some(main.clone()));
        let new = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        let expected = format!(
            "# sshd config\n\n#ClientAliveInterval 0\n{BEGIN_MARK} (managed by sshidlectl; remove with `sshidlectl keepalive --off`)\nClientAliveInterval 60\nClientAliveCountMax 3\n{END_MARK}\nPort 22\nClientAliveInterval 300\nMatch User x\n\tX11Forwarding no\n"
        );
        assert_eq!(new, expected);
        assert!(plan.notes[0].contains(":5: ClientAliveInterval 300 no longer takes effect"));
        // Parsed again: managed lines are recognised; a rerun changes them in place.
        fs::write(&main, &new).unwrap();
        let tree = Tree::load(&main).unwrap();
        assert_eq!(tree.first_global(KW_INTERVAL).unwrap().loc.line, 5);
        assert!(tree.first_global(KW_INTERVAL).unwrap().managed);
        let plan = plan_apply(&tree, &desired(20, 2)).unwrap();
        let again = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        assert_eq!(again, expected.replace("Interval 60", "Interval 20").replace("CountMax 3", "CountMax 2"));
        let diff = unified_diff(&main, Some(new.as_bytes()), Some(again.as_bytes()));
        assert_eq!(
            diff.lines()
                .filter(|l| l.starts_with(['+', '-']) && !l.starts_with("+++") && !l.starts_with("---"))
                .count(),
            4,
            "{diff}"
        );
        // --off gives back the original bytes.
        let off = plan_remove(&tree).unwrap();
        assert_eq!(off.changes[0].new.as_deref(), Some(original.as_bytes()));
    }

    #[test]
    fn crlf_files_and_missing_final_newline() {
        let dir = Dir::new("crlf");
        let original = "Port 22\r\nPermitRootLogin no";
        let main = dir.write("main", original);
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        let new = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        assert!(new.starts_with(BEGIN_MARK));
        assert!(new.contains("\r\nClientAliveInterval 60\r\nClientAliveCountMax 3\r\n# END sshidle keepalive\r\nPort 22\r\nPermitRootLogin no"));
        assert!(new.ends_with("PermitRootLogin no"));
        fs::write(&main, &new).unwrap();
        let off = plan_remove(&Tree::load(&main).unwrap()).unwrap();
        assert_eq!(off.changes[0].new.as_deref(), Some(original.as_bytes()));
        // Blocks at the end of a file without a final newline: `--off`
        // leaves it without one.
        for original in ["# only a comment", "Port 22\nPermitRootLogin no", "# c\r\nPort 22"] {
            let main = dir.write("nofinal", original);
            let mut wanted = desired(60, 3);
            wanted.matches = vec![MatchBlock { criteria: "User backup".into(), unused: Some(3600) }];
            let plan = plan_apply(&Tree::load(&main).unwrap(), &wanted).unwrap();
            let new = plan.changes[0].new.clone().unwrap();
            assert!(String::from_utf8_lossy(&new).trim_end().ends_with(END_MARK), "{original:?}");
            fs::write(&main, &new).unwrap();
            let off = plan_remove(&Tree::load(&main).unwrap()).unwrap();
            assert_eq!(
                String::from_utf8_lossy(off.changes[0].new.as_deref().unwrap()),
                original,
                "{}",
                String::from_utf8_lossy(&new)
            );
        }
        // An empty file.
        let main = dir.write("empty", "");
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        assert!(String::from_utf8_lossy(plan.changes[0].new.as_ref().unwrap()).starts_with(BEGIN_MARK));
    }

    #[test]
    fn include_patterns_that_cannot_take_a_dropin_fall_back_to_main() {
        let dir = Dir::new("pat");
        dir.write("conf.d/local", "PermitRootLogin no\n");
        // A single file, a pattern that no sshidle name matches, an Include inside Match.
        for inc in [
            format!("Include {}/conf.d/local\n", dir.0.display()),
            format!("Include {}/conf.d/*.cfg\n", dir.0.display()),
            format!("Match User x\nInclude {}/conf.d/*\n", dir.0.display()),
        ] {
            let main = dir.write("main", &inc);
            let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
            assert_eq!(plan.target, Some(main.clone()), "{inc}");
        }
        let main = dir.write("main", &format!("Include {}/conf.d/*\n", dir.0.display()));
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/10-sshidle.conf")));
    }

    #[test]
    fn admins_file_with_our_name_is_left_alone() {
        let dir = Dir::new("name");
        dir.write("conf.d/10-sshidle.conf", "PermitRootLogin no\n");
        let main = dir.write("main", &format!("Include {}/conf.d/*.conf\n", dir.0.display()));
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/00-sshidle.conf")));
        dir.write("conf.d/00-sshidle.conf", "PermitRootLogin no\n");
        let err = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap_err();
        assert!(err.to_string().contains("are taken by files it did not write"), "{err}");
        assert_eq!(plan_remove(&Tree::load(&main).unwrap()).unwrap().changes, vec![]);
    }

    #[test]
    fn moving_from_main_to_dropin_removes_the_old_block() {
        let dir = Dir::new("move");
        let main = dir.write("main", "Port 22\n");
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        let with_block = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        let with_include = format!("{with_block}Include {}/conf.d/*.conf\n", dir.0.display());
        fs::write(&main, &with_include).unwrap();
        let plan = plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).unwrap();
        assert_eq!(plan.target, Some(dir.path("conf.d/10-sshidle.conf")));
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(
            plan.changes[1].new.as_deref(),
            Some(format!("Port 22\nInclude {}/conf.d/*.conf\n", dir.0.display()).as_bytes())
        );
    }

    #[test]
    fn unused_connection_timeout_and_match_blocks() {
        let dir = Dir::new("unused");
        let main = dir.write("main", &format!("Include {}/conf.d/*.conf\n", dir.0.display()));
        let want = Desired {
            interval: 60,
            count_max: 3,
            unused: Some(3600),
            matches: vec![
                MatchBlock { criteria: "User backup".into(), unused: Some(3600) },
                MatchBlock { criteria: "Group admins".into(), unused: Some(600) },
                MatchBlock { criteria: "Group ops".into(), unused: None },
            ],
        };
        let plan = plan_apply(&Tree::load(&main).unwrap(), &want).unwrap();
        let text = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        assert!(text.contains(
            "UnusedConnectionTimeout 3600\n# Per-user/group limits for connections with no channel (ssh -N); the Match\n# blocks end with this file.\nMatch User backup\n\tUnusedConnectionTimeout 3600\nMatch Group admins\n\tUnusedConnectionTimeout 600\nMatch Group ops\n\tUnusedConnectionTimeout 3600\n"
        ), "{text}");
        // An admin's Match block with another UnusedConnectionTimeout conflicts.
        let main = dir.write(
            "main",
            &format!("Include {}/conf.d/*.conf\nMatch Group x\n UnusedConnectionTimeout 5\n", dir.0.display()),
        );
        let err = plan_apply(&Tree::load(&main).unwrap(), &want).unwrap_err();
        assert!(err.to_string().contains(":3: UnusedConnectionTimeout 5 inside the Match block"), "{err}");
        // Not written, not a conflict.
        assert!(plan_apply(&Tree::load(&main).unwrap(), &desired(60, 3)).is_ok());
        // In the main file the Match blocks go last. With no global value from
        // sshidle, a block without its own value gets the admin's global one.
        let original = "Port 22\nUnusedConnectionTimeout 2h\n";
        let main = dir.write("main2", original);
        let want = Desired { unused: None, ..want };
        let plan = plan_apply(&Tree::load(&main).unwrap(), &want).unwrap();
        let text = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        let tail = format!(
            "UnusedConnectionTimeout 2h\n{BEGIN_MARK} (managed by sshidlectl; remove with `sshidlectl keepalive --off`)\n\
             Match User backup\n\tUnusedConnectionTimeout 3600\nMatch Group admins\n\tUnusedConnectionTimeout 600\n\
             Match Group ops\n\tUnusedConnectionTimeout 2h\n{END_MARK}\n"
        );
        assert!(text.ends_with(&tail), "{text}");
        assert!(text.contains("ClientAliveCountMax 3\n# END sshidle keepalive\nPort 22\n"), "no global line: {text}");
        fs::write(&main, &text).unwrap();
        let off = plan_remove(&Tree::load(&main).unwrap()).unwrap();
        assert_eq!(off.changes[0].new.as_deref(), Some(original.as_bytes()));
        // Without any global value: none.
        let main = dir.write("main3", "Port 22\n");
        let plan = plan_apply(&Tree::load(&main).unwrap(), &want).unwrap();
        let text = String::from_utf8(plan.changes[0].new.clone().unwrap()).unwrap();
        assert!(text.contains("Match Group ops\n\tUnusedConnectionTimeout none\n"), "{text}");
    }

    #[test]
    fn broken_markers_are_reported() {
        let dir = Dir::new("markers");
        let main = dir.write("main", &format!("Port 22\n{BEGIN_MARK}\nClientAliveInterval 1\n"));
        let err = Tree::load(&main).unwrap_err();
        assert!(err.0.contains(":2: sshidle's block has no"), "{err}");
        let main = dir.write("main", &format!("Port 22\n{END_MARK}\n"));
        assert!(Tree::load(&main).unwrap_err().0.contains(":2: '# END"));
    }

    #[test]
    fn normalizes_values_for_comparison() {
        assert_eq!(normalize(KW_INTERVAL, "1m"), "60");
        assert_eq!(normalize(KW_UNUSED, "None"), "none");
        assert_eq!(normalize(KW_COUNT_MAX, "03"), "3");
        assert_eq!(normalize(KW_COUNT_MAX, "x"), "x");
    }

    #[test]
    fn atomic_write_keeps_mode_and_owner() {
        let dir = Dir::new("atomic");
        let p = dir.write("f", "old\n");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let mode = mode_of(&p);
        write_through_symlink(&p, b"new\n", mode).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new\n");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o640);
        // Through a symlink: the target is replaced, the link stays.
        let link = dir.path("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        write_through_symlink(&link, b"via link\n", mode).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&p).unwrap(), b"via link\n");
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 3, "no temporary file left");
    }

    #[test]
    fn diffs() {
        let p = Path::new("/etc/ssh/x");
        assert_eq!(unified_diff(p, Some(b"a\n"), Some(b"a\n")), "");
        assert_eq!(unified_diff(p, None, Some(b"a\nb\n")), "--- /dev/null\n+++ b/etc/ssh/x\n@@ -0,0 +1,2 @@\n+a\n+b\n");
        assert_eq!(unified_diff(p, Some(b"a\n"), None), "--- a/etc/ssh/x\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-a\n");
        let old = b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n";
        let new = b"1\n2\nX\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n14\n15\n";
        assert_eq!(
            unified_diff(p, Some(old), Some(new)),
            "--- a/etc/ssh/x\n+++ b/etc/ssh/x\n@@ -1,5 +1,6 @@\n 1\n 2\n+X\n 3\n 4\n 5\n@@ -10,6 +11,5 @@\n 10\n 11\n 12\n-13\n 14\n 15\n"
        );
        // A big config (the old table needed 255 MB for 8,000 lines): one hunk.
        let big = (0..8000).map(|i| format!("# line {i}")).collect::<Vec<_>>().join("\n") + "\n";
        let changed = big.replacen("# line 4000\n", "ClientAliveInterval 60\n", 1);
        let diff = unified_diff(p, Some(big.as_bytes()), Some(changed.as_bytes()));
        assert_eq!(diff.lines().filter(|l| l.starts_with("@@")).collect::<Vec<_>>(), ["@@ -3998,7 +3998,7 @@"]);
        assert_eq!(
            unified_diff(p, Some(b"a"), Some(b"a\n")),
            "--- a/etc/ssh/x\n+++ b/etc/ssh/x\n@@ -1,1 +1,1 @@\n-a\n\\ No newline at end of file\n+a\n"
        );
    }
}
