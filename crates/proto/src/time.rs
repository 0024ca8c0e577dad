//! Calendar arithmetic for timestamps both sides print (the CLI's dates,
//! the daemon's default snapshot names). Written out rather than taken
//! from a date crate: one function, UTC only, no time zones or parsing.

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
}

impl UtcTime {
    /// `ms` since the Unix epoch (proleptic Gregorian; Howard Hinnant's
    /// `civil_from_days`).
    pub fn from_unix_ms(ms: i64) -> Self {
        let secs = ms.div_euclid(1000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = |ms| UtcTime::from_unix_ms(ms);
        assert_eq!(
            t(0),
            UtcTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        let d = t(1_796_146_861_000);
        assert_eq!((d.year, d.month, d.day), (2026, 12, 1));
        assert_eq!((d.hour, d.minute, d.second), (17, 41, 1));
        let leap = t(951_782_400_000);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let before = t(-1000);
        assert_eq!(
            (before.year, before.month, before.day, before.second),
            (1969, 12, 31, 59)
        );
    }
}
