//! `from PATTERNS`: where a login comes from, as sshd_config(5) PATTERNS.
//!
//! A comma-separated list of addresses (`10.0.0.5`, `::1`), CIDR networks
//! (`10.0.0.0/8`, `2001:db8::/32`) and host name patterns with `*` and `?`
//! (`*.example.com`, `10.1.*`), each optionally negated with `!`. As in sshd,
//! a login matches when one positive entry matches and no negated one does:
//! a negated entry never makes a match by itself (`*,!10.0.0.0/8` is
//! "anywhere but 10/8").
//!
//! What is matched is the remote host sshd gave PAM (`PAM_RHOST`): the
//! client's address, or with `UseDNS yes` the name its address resolved to
//! (which whoever runs the client's reverse DNS controls). Address and CIDR
//! entries only match an address; name patterns match the text as it is,
//! without case.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Address(IpAddr),
    Network(IpAddr, u8),
    Name(String),
}

/// A parsed pattern list; shown as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPatterns {
    text: String,
    entries: Vec<(bool, Entry)>,
}

impl fmt::Display for HostPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What kind of sshd `Match` criterion a list can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// Only addresses and networks: `Match Address`.
    Address,
    /// Only name patterns: `Match Host`.
    Host,
    /// Both: no single sshd criterion.
    Mixed,
}

impl HostPatterns {
    pub fn parse(text: &str) -> Result<HostPatterns, String> {
        let mut entries = Vec::new();
        for raw in text.split(',') {
            let (negated, item) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if item.is_empty() {
                return Err(format!("from: empty pattern in '{text}'"));
            }
            entries.push((negated, parse_entry(item)?));
        }
        Ok(HostPatterns { text: text.to_string(), entries })
    }

    /// Whether a login from `rhost` (an address or a name) matches.
    pub fn matches(&self, rhost: &str) -> bool {
        let addr = parse_addr(rhost);
        let mut positive = false;
        for (negated, entry) in &self.entries {
            let hit = match entry {
                Entry::Address(a) => addr == Some(*a),
                Entry::Network(net, bits) => addr.is_some_and(|a| in_network(a, *net, *bits)),
                Entry::Name(pattern) => crate::policy::wildcard_match(pattern, &rhost.to_ascii_lowercase()),
            };
            if hit && *negated {
                return false;
            }
            positive |= hit;
        }
        positive
    }

    pub fn match_kind(&self) -> MatchKind {
        let names = self.entries.iter().filter(|(_, e)| matches!(e, Entry::Name(_))).count();
        match names {
            0 => MatchKind::Address,
            n if n == self.entries.len() => MatchKind::Host,
            _ => MatchKind::Mixed,
        }
    }
}

fn parse_entry(item: &str) -> Result<Entry, String> {
    if let Some((addr, bits)) = item.split_once('/') {
        let bad = || format!("from: '{item}' is not a valid CIDR network (ADDRESS/BITS)");
        let addr = addr.parse::<IpAddr>().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits.parse().ok().filter(|b| *b <= max && !bits.starts_with('+')).ok_or_else(bad)?;
        if mask(addr, bits) != addr {
            return Err(format!("from: '{item}' has host bits set (did you mean {}/{bits}?)", mask(addr, bits)));
        }
        return Ok(Entry::Network(addr, bits));
    }
    if let Some(addr) = parse_addr(item) {
        return Ok(Entry::Address(addr));
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*' | '?' | ':');
    if !item.chars().all(name_char) {
        return Err(format!("from: '{item}' is not an address, a CIDR network or a host name pattern"));
    }
    Ok(Entry::Name(item.to_ascii_lowercase()))
}

/// An address, with an IPv4-mapped IPv6 address taken as the IPv4 one.
fn parse_addr(text: &str) -> Option<IpAddr> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        v4 => Some(v4),
    }
}

fn mask(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

fn in_network(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    addr.is_ipv4() == net.is_ipv4() && mask(addr, bits) == mask(net, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPatterns {
        HostPatterns::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn addresses_networks_and_names() {
        assert!(p("127.0.0.2/32").matches("127.0.0.2"));
        assert!(!p("127.0.0.2/32").matches("127.0.0.1"));
        assert!(p("10.0.0.0/8").matches("10.200.3.4"));
        assert!(!p("10.0.0.0/8").matches("11.0.0.1"));
        assert!(p("0.0.0.0/0").matches("192.0.2.1"));
        assert!(!p("0.0.0.0/0").matches("::1"), "an IPv4 network holds no IPv6 address");
        assert!(p("::1").matches("::1"));
        assert!(p("::1").matches("0:0:0::1"), "addresses compare as addresses");
        assert!(p("::1/128").matches("::1"));
        assert!(p("2001:db8::/32").matches("2001:db8:5::7"));
        assert!(!p("2001:db8::/32").matches("2001:db9::7"));
        assert!(p("192.0.2.7").matches("::ffff:192.0.2.7"), "IPv4-mapped is the IPv4 address");
        assert!(p("10.1.*").matches("10.1.2.3"));
        assert!(p("*.Example.com").matches("bastion.example.COM"));
        assert!(!p("*.example.com").matches("example.org"));
        assert!(!p("10.0.0.0/8").matches("ten.example.com"), "a network never matches a name");
        assert!(!p("10.0.0.0/8").matches(""));
    }

    #[test]
    fn negation_as_sshd() {
        let not_ten = p("*,!10.0.0.0/8");
        assert!(not_ten.matches("192.0.2.1"));
        assert!(!not_ten.matches("10.1.1.1"));
        // A negated entry alone matches nothing, as in sshd.
        assert!(!p("!10.0.0.0/8").matches("192.0.2.1"));
        assert!(!p("!10.0.0.0/8").matches("10.0.0.1"));
        assert!(!p("10.0.0.0/8,!10.9.0.0/16").matches("10.9.1.1"));
        assert!(p("10.0.0.0/8,!10.9.0.0/16").matches("10.8.1.1"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        let err = |t: &str| HostPatterns::parse(t).unwrap_err();
        assert_eq!(err("10.0.0.0/33"), "from: '10.0.0.0/33' is not a valid CIDR network (ADDRESS/BITS)");
        assert_eq!(err("10.0.0/8"), "from: '10.0.0/8' is not a valid CIDR network (ADDRESS/BITS)");
        assert_eq!(err("10.0.0.0/x"), "from: '10.0.0.0/x' is not a valid CIDR network (ADDRESS/BITS)");
        assert_eq!(err("::1/129"), "from: '::1/129' is not a valid CIDR network (ADDRESS/BITS)");
        assert_eq!(err("10.0.0.1/8"), "from: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)");
        assert_eq!(err("a,,b"), "from: empty pattern in 'a,,b'");
        assert_eq!(err("!"), "from: empty pattern in '!'");
        assert_eq!(err("a;b"), "from: 'a;b' is not an address, a CIDR network or a host name pattern");
    }

    #[test]
    fn kinds_for_sshd_match() {
        assert_eq!(p("10.0.0.0/8,!10.1.0.0/16,::1").match_kind(), MatchKind::Address);
        assert_eq!(p("*.example.com,!x.example.com").match_kind(), MatchKind::Host);
        assert_eq!(p("10.0.0.0/8,*.example.com").match_kind(), MatchKind::Mixed);
        assert_eq!(p("10.0.0.0/8,*.example.com").to_string(), "10.0.0.0/8,*.example.com");
    }
}
