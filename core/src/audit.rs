//! Audit lines a SIEM can parse: one syslog line per warning, disconnect,
//! adoption and refusal, made of `key=value` fields in a fixed order.
//!
//! ```text
//! event=disconnect user=alice session=4242 rhost=10.0.0.5 tty=pts/0 idle=912 limit=900 rule="/etc/security/sshidle.conf:5: *" cause=idle
//! ```
//! The eight common fields are always there, in this order; a value that is
//! not known is `-`. Event-specific fields may follow them. A value made of
//! letters, digits and `._:/@,+-` is written bare; any other value is quoted
//! with `"`, and inside the quotes `\` and `"` are escaped with `\`, and
//! control characters are written `\n`, `\t`, `\r` or `\xHH`, so that a user
//! or host name can neither end a line nor forge a field.

use std::fmt::Write;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The user was warned on the terminal.
    Warning,
    /// sshidle ended the session (or began to).
    Disconnect,
    /// A session the module had not recorded was found and taken in charge.
    Adoption,
    /// sshidle declined to act: a process whose identity did not match, a
    /// state directory it would not use, a session it could not record.
    Refusal,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Warning => "warning",
            Event::Disconnect => "disconnect",
            Event::Adoption => "adoption",
            Event::Refusal => "refusal",
        }
    }
}

/// The fields of one audit line. Durations are whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditLine<'a> {
    pub user: Option<&'a str>,
    /// The session id, as `sshidlectl status` shows it.
    pub session: Option<String>,
    pub rhost: Option<&'a str>,
    /// The session's terminals, comma-separated (`pts/3,pts/7`).
    pub tty: Option<String>,
    pub idle: Option<u64>,
    /// The limit the event is about (the idle or the hard limit).
    pub limit: Option<u64>,
    pub rule: Option<&'a str>,
    /// Why: `idle`, `hard`, `admin`, `unrecorded`, `pid-reused`, ...
    pub cause: Option<&'a str>,
    /// Event-specific fields, after the common ones.
    pub extra: Vec<(&'static str, String)>,
}

impl AuditLine<'_> {
    /// The line for `event`.
    pub fn format(&self, event: Event) -> String {
        let mut out = format!("event={}", event.as_str());
        let text = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
        let secs = |v: Option<u64>| v.map(|s| s.to_string());
        let common: [(&str, Option<String>); 8] = [
            ("user", text(self.user)),
            ("session", self.session.clone()),
            ("rhost", text(self.rhost)),
            ("tty", self.tty.clone().filter(|t| !t.is_empty())),
            ("idle", secs(self.idle)),
            ("limit", secs(self.limit)),
            ("rule", text(self.rule)),
            ("cause", text(self.cause)),
        ];
        for (key, value) in common {
            let _ = write!(out, " {key}={}", value.as_deref().map_or_else(|| "-".to_string(), quote));
        }
        for (key, value) in &self.extra {
            let _ = write!(out, " {key}={}", quote(value));
        }
        out
    }
}

/// A value as it stands after `key=`: bare when safe, else quoted.
pub fn quote(value: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || "._:/@,+-".contains(c);
    if !value.is_empty() && value.chars().all(bare) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_field_in_order_absent_ones_as_dash() {
        let line = AuditLine {
            user: Some("alice"),
            session: Some("4242".into()),
            rhost: Some("10.0.0.5"),
            tty: Some("pts/0,pts/3".into()),
            idle: Some(912),
            limit: Some(900),
            rule: Some("/etc/security/sshidle.conf:5: *"),
            cause: Some("idle"),
            extra: vec![("killed", "3".into())],
        };
        assert_eq!(
            line.format(Event::Disconnect),
            "event=disconnect user=alice session=4242 rhost=10.0.0.5 tty=pts/0,pts/3 idle=912 limit=900 \
             rule=\"/etc/security/sshidle.conf:5: *\" cause=idle killed=3"
        );
        assert_eq!(
            AuditLine::default().format(Event::Refusal),
            "event=refusal user=- session=- rhost=- tty=- idle=- limit=- rule=- cause=-"
        );
        assert_eq!(
            AuditLine { rhost: Some(""), ..AuditLine::default() }.format(Event::Adoption),
            "event=adoption user=- session=- rhost=- tty=- idle=- limit=- rule=- cause=-"
        );
    }

    #[test]
    fn hostile_values_cannot_end_the_line_or_forge_a_field() {
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x\" cause=admin"), "\"x\\\" cause=admin\"");
        assert_eq!(quote("back\\slash"), "\"back\\\\slash\"");
        assert_eq!(quote("two\nlines\r\t"), "\"two\\nlines\\r\\t\"");
        assert_eq!(quote("bell\x07\u{9b}"), "\"bell\\x07\\xc2\\x9b\"");
        assert_eq!(quote("é"), "\"é\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("-"), "-");
        let line = AuditLine { user: Some("eve\nevent=disconnect"), ..AuditLine::default() }.format(Event::Warning);
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(parse(&line).iter().filter(|(k, _)| k == "event").count(), 1, "{line}");
    }

    /// A reference parser, as a SIEM would read the line.
    fn parse(line: &str) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        let mut chars = line.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next().unwrap_or('\\')),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                chars.next();
            } else {
                value = chars.by_ref().take_while(|c| *c != ' ').collect();
            }
            fields.push((key.trim().to_string(), value));
        }
        fields
    }

    #[test]
    fn a_parser_reads_back_every_field() {
        let line = AuditLine {
            user: Some("al ice"),
            rule: Some("/p.d/10-x.conf:2: group \"ops\""),
            cause: Some("hard"),
            ..AuditLine::default()
        }
        .format(Event::Warning);
        let fields = parse(&line);
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["event", "user", "session", "rhost", "tty", "idle", "limit", "rule", "cause"]);
        assert_eq!(fields[1].1, "al ice");
        assert_eq!(fields[7].1, "/p.d/10-x.conf:2: group \"ops\"");
    }
}
