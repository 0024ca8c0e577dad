//! Small helpers for text output and size arguments.

use crate::CliError;

/// Parses `1024`, `512M`, `2G`, `1T` (binary units) into bytes; a plain
/// number means MiB.
pub(crate) fn parse_size(flag: &str, text: &str) -> Result<u64, CliError> {
    banger_config::parse_size(text).ok_or_else(|| {
        CliError::BadParams(format!(
            "{flag} {text:?}: use a number of MiB or a size like 512M, 2G"
        ))
    })
}

pub(crate) fn mib(flag: &str, text: &str) -> Result<u32, CliError> {
    let bytes = parse_size(flag, text)?;
    u32::try_from(bytes >> 20)
        .map_err(|_| CliError::BadParams(format!("{flag} {text:?} is too large")))
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the Unix epoch, by the host's clock (0 if it is
/// set before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long before `now_ms` the time `ms` was, roughly: `12 s ago`,
/// `5 min ago`, `3 h ago`, `2 d ago` (`just now` for a time ahead of the
/// clock).
pub(crate) fn ago(ms: i64, now_ms: i64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        i64::MIN..=0 => "just now".into(),
        1..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(ms: i64) -> String {
    let t = banger_proto::time::UtcTime::from_unix_ms(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Prints rows as left-aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--m", "1024").unwrap(), 1024 << 20);
        assert_eq!(parse_size("--m", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("--m", "512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("--m", "1t").unwrap(), 1 << 40);
        for bad in ["", "G", "1X", "-1", "99999999999999999999T"] {
            assert!(parse_size("--m", bad).is_err(), "{bad}");
        }
        assert_eq!(mib("--m", "1G").unwrap(), 1024);
    }

    #[test]
    fn times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_143_705_999), "2026-12-01 16:48:25 UTC");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59 UTC");
        let now = 1_796_143_705_000;
        assert_eq!(ago(now + 5000, now), "just now");
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - 12_000, now), "12 s ago");
        assert_eq!(ago(now - 5 * 60_000 - 1, now), "5 min ago");
        assert_eq!(ago(now - 3 * 3_600_000, now), "3 h ago");
        assert_eq!(ago(now - 2 * 86_400_000, now), "2 d ago");
    }
}
