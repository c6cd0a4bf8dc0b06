//! Durations in sshd_config(5) TIME FORMATS: `90`, `10m`, `1h30m`, `2w`.

use std::fmt;

/// Largest duration accepted anywhere: ten years. Larger values are typos, and
/// keeping them small means arithmetic on them never overflows.
pub const MAX_SECS: u64 = 10 * 366 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parses a TIME FORMAT value into seconds. A bare number is seconds; each
/// number may carry one of the qualifiers `s m h d w` (either case), and
/// several may follow each other (`1h30m`).
pub fn parse_duration(text: &str) -> Result<u64, DurationError> {
    let bad = |why: &str| DurationError(format!("invalid duration '{text}': {why}"));
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u64 = 0;
    // The number being read, and whether it has a digit yet.
    let mut number: Option<u64> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(|| bad("number too large"))?,
            );
            if chars.peek().is_some() {
                continue;
            }
        }
        let unit = if c.is_ascii_digit() { 's' } else { c };
        let Some(n) = number.take() else {
            return Err(bad("expected a number before each unit"));
        };
        let multiplier: u64 = match unit.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad("units are s, m, h, d, w")),
        };
        total = n
            .checked_mul(multiplier)
            .and_then(|v| v.checked_add(total))
            .filter(|v| *v <= MAX_SECS)
            .ok_or_else(|| bad("longer than ten years"))?;
    }
    Ok(total)
}

/// Formats seconds the way an admin writes them: `1h30m`, `45s`, `0s`.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{}", rest / size, unit));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_number_is_seconds() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("90"), Ok(90));
    }

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2H"), Ok(7200));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1w2d3h4m5s"), Ok(604_800 + 2 * 86_400 + 3 * 3600 + 4 * 60 + 5));
        assert_eq!(parse_duration("1m30"), Ok(90));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "10x", "-5", "1.5h", "abc", "1h 2m", "99999999999999999999", "11000d"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats_round_trip() {
        for secs in [0, 1, 59, 60, 61, 3600, 5400, 86_400 + 1, 604_800 * 3] {
            assert_eq!(parse_duration(&format_duration(secs)), Ok(secs));
        }
        assert_eq!(format_duration(5400), "1h30m");
    }
}
