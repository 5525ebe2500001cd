//! Sizes and durations as people write them in policy files and on the
//! command line (`"100GiB"`, `"200G"`, `"14d"`), and back into words for
//! `storegc policy check`.
//!
//! Sizes: a plain number is bytes; `K`, `M`, `G`, `T`, `P` and `KiB` ..
//! `PiB` are powers of 1024 (as in Nix's `--max-freed`), `KB` .. `PB` powers
//! of 1000. Units are case-insensitive and a fraction is allowed
//! (`"1.5GiB"`). Durations are humantime's (`"14d"`, `"2weeks"`, `"36h"`).

use std::time::Duration;

const KIB: u64 = 1 << 10;

/// Parses a size in bytes. The error is the reason, without the input.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => KIB.pow(2),
        "g" | "gib" => KIB.pow(3),
        "t" | "tib" => KIB.pow(4),
        "p" | "pib" => KIB.pow(5),
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "pb" => 1000u64.pow(5),
        _ => {
            return Err(format!(
                "unknown unit '{unit}' (use bytes, K/M/G/T, KiB..TiB or KB..TB)"
            ))
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || fraction.len() > 18
    {
        return Err("expected a number of bytes, optionally with a unit, e.g. \"100GiB\"".into());
    }
    let too_large = || "too large".to_string();
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole
        .checked_mul(multiplier as u128)
        .ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let f: u128 = fraction.parse().map_err(|_| too_large())?;
        bytes += f * multiplier as u128 / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a humantime duration. The error is the reason, without the input.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| e.to_string())
}

/// A size in words: exact binary units when they fit, else one decimal.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < KIB {
        return format!("{bytes} bytes");
    }
    let mut unit = 0;
    let mut scale = KIB;
    while unit + 1 < UNITS.len() && bytes >= scale * KIB {
        scale *= KIB;
        unit += 1;
    }
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// A duration in words, e.g. "14 days", "1 day 2h": humantime's reading
/// with a space before each unit that is a word. O(len).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d)
        .to_string()
        .split(' ')
        .map(|part| {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            let (n, unit) = part.split_at(digits);
            if unit.len() > 2 {
                format!("{n} {unit}")
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("100GiB"), Ok(100 << 30));
        assert_eq!(parse_size("200G"), Ok(200 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size(" 1.5 gib "), Ok(3 << 29));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "GiB",
            "-5G",
            "10 GiBs",
            "1.2.3G",
            "1e9",
            "99999999999999999999P",
            "16EiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_and_durations_in_words() {
        assert_eq!(format_size(100 << 30), "100 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(12), "12 bytes");
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86400)));
        assert!(parse_duration("14 dayz").is_err());
        assert_eq!(format_duration(Duration::from_secs(14 * 86400)), "14 days");
        assert_eq!(
            format_duration(Duration::from_secs(86400 + 7200)),
            "1 day 2h"
        );
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
    }
}
