//! Time ranges (`24h`, `last 7 days`, `FROM..UNTIL`) and UTC calendar helpers.
//!
//! Every time is stored as Unix milliseconds; days, months and time buckets are
//! UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{AnalyticsError, Result};

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A time as Unix milliseconds (negative before 1970).
pub fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The time at Unix milliseconds `ms`.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// The start (Unix ms) of the UTC day holding `ms`.
pub fn day_start_ms(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The start (Unix ms) of the UTC month holding `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let (year, month, _) = civil_from_days(ms.div_euclid(DAY_MS));
    days_from_civil(year, month, 1) * DAY_MS
}

/// The start (Unix ms) of the UTC month after the one holding `ms`.
pub fn next_month_start_ms(ms: i64) -> i64 {
    let (year, month, _) = civil_from_days(ms.div_euclid(DAY_MS));
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(year, month, 1) * DAY_MS
}

/// `YYYY-MM-DD` of the UTC day holding `ms`.
pub fn format_date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 text (seconds, `Z`) of Unix milliseconds.
pub fn format_rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(from_unix_ms(ms)).to_string()
}

/// Parses `YYYY-MM-DD` into a day number since 1970-01-01.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // Reject dates such as 2026-02-31 that roll over into the next month.
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// Parses an absolute time: RFC 3339 in UTC (`2026-11-24T13:00:00Z`, the `Z`
/// may be left out) or a date (`2026-11-24`, meaning its midnight UTC).
pub fn parse_time(text: &str) -> Result<SystemTime> {
    let trimmed = text.trim();
    if let Some(days) = parse_date(trimmed) {
        return Ok(from_unix_ms(days.saturating_mul(DAY_MS)));
    }
    humantime::parse_rfc3339_weak(trimmed).map_err(|e| {
        AnalyticsError::time_range(
            text,
            format!("not a UTC time like 2026-11-24T13:00:00Z or a date like 2026-11-24 ({e})"),
        )
    })
}

/// The time range of an analysis: the last N minutes/hours/days up to now, an
/// absolute interval (`from` inclusive, `until` exclusive), or everything.
///
/// ```
/// use std::time::Duration;
/// use dspex_analytics::TimeRange;
/// assert_eq!(TimeRange::parse("24h")?, TimeRange::Last(Duration::from_secs(86_400)));
/// assert_eq!(TimeRange::parse("last 7 days")?, TimeRange::Last(Duration::from_secs(7 * 86_400)));
/// assert!(matches!(
///     TimeRange::parse("2026-11-01..2026-11-24T12:00:00Z")?,
///     TimeRange::Between { .. }
/// ));
/// assert!(TimeRange::parse("last fortnight").is_err());
/// # Ok::<(), dspex_analytics::AnalyticsError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TimeRange {
    /// From `now - duration` up to now.
    Last(Duration),
    /// From `from` (inclusive) to `until` (exclusive).
    Between {
        /// The start.
        #[serde(with = "dspex_core::serde_time")]
        from: SystemTime,
        /// The end (exclusive).
        #[serde(with = "dspex_core::serde_time")]
        until: SystemTime,
    },
    /// Every recorded call.
    All,
}

impl TimeRange {
    /// The last `duration` up to now.
    pub fn last(duration: Duration) -> Self {
        Self::Last(duration)
    }

    /// An absolute interval; `from` must be before `until`.
    pub fn between(from: SystemTime, until: SystemTime) -> Result<Self> {
        if from >= until {
            return Err(AnalyticsError::time_range(
                &format!(
                    "{}..{}",
                    humantime::format_rfc3339_seconds(from),
                    humantime::format_rfc3339_seconds(until)
                ),
                "the start must be before the end",
            ));
        }
        Ok(Self::Between { from, until })
    }

    /// Parses `24h`, `90m`, `7d`, `2w`, `last 30 minutes`, `last 7 days`,
    /// `1h30m`, `all`, or an absolute `FROM..UNTIL` (each an RFC 3339 UTC time
    /// or a date).
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        if lower.is_empty() {
            return Err(AnalyticsError::time_range(text, "empty"));
        }
        if lower == "all" {
            return Ok(Self::All);
        }
        if let Some((from, until)) = trimmed.split_once("..") {
            return Self::between(parse_time(from)?, parse_time(until)?);
        }
        let relative = lower.strip_prefix("last").map_or(lower.as_str(), str::trim);
        parse_relative(relative)
            .map(Self::Last)
            .ok_or_else(|| {
                AnalyticsError::time_range(
                    text,
                    "expected a duration such as 30m, 24h, 7d, `last 7 days`, or FROM..UNTIL with RFC 3339 UTC times or dates",
                )
            })
    }

    /// The interval as Unix milliseconds `[from, until)`, relative ranges
    /// resolved against `now`.
    pub fn resolve(&self, now: SystemTime) -> (i64, i64) {
        match self {
            Self::Last(duration) => {
                let until = unix_ms(now).saturating_add(1);
                let span = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
                (until.saturating_sub(1).saturating_sub(span), until)
            }
            Self::Between { from, until } => (unix_ms(*from), unix_ms(*until)),
            Self::All => (i64::MIN, i64::MAX),
        }
    }
}

/// A positive duration written `30m`, `24h`, `7d`, `2w` or `1h30m`; `None`
/// for anything else (zero included).
pub fn parse_relative_duration(text: &str) -> Option<Duration> {
    parse_relative(text.trim())
}

fn parse_relative(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let count: u64 = number.parse().ok()?;
    let unit_secs: u64 = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => {
            // Compound forms such as `1h30m`.
            let duration = humantime::parse_duration(text).ok()?;
            return (!duration.is_zero()).then_some(duration);
        }
    };
    if count == 0 {
        return None;
    }
    Some(Duration::from_secs(count.checked_mul(unit_secs)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-1000, 0, 59, 60, 365, 10_957, 20_000, 20_416] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_date("2026-02-31"), None);
        assert_eq!(
            format_date(parse_date("2024-02-29").unwrap() * DAY_MS),
            "2024-02-29"
        );
    }

    #[test]
    fn months() {
        let ms = parse_time("2026-12-15T10:00:00Z").unwrap();
        let ms = unix_ms(ms);
        assert_eq!(format_rfc3339(month_start_ms(ms)), "2026-12-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(next_month_start_ms(ms)),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(format_rfc3339(day_start_ms(ms)), "2026-12-15T00:00:00Z");
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(
            TimeRange::parse("90m").unwrap(),
            TimeRange::Last(Duration::from_secs(5400))
        );
        assert_eq!(
            TimeRange::parse("last 30 minutes").unwrap(),
            TimeRange::Last(Duration::from_secs(1800))
        );
        assert_eq!(
            TimeRange::parse("Last 2 Hours").unwrap(),
            TimeRange::Last(Duration::from_secs(7200))
        );
        assert_eq!(
            TimeRange::parse("1h30m").unwrap(),
            TimeRange::Last(Duration::from_secs(5400))
        );
        assert_eq!(TimeRange::parse("all").unwrap(), TimeRange::All);
        let err = TimeRange::parse("2026-11-24..2026-11-01").unwrap_err();
        assert!(
            err.to_string().contains("start must be before the end"),
            "{err}"
        );
        let err = TimeRange::parse("yesterday-ish").unwrap_err();
        assert!(err.to_string().contains("`yesterday-ish`"), "{err}");
        assert!(TimeRange::parse("0h").is_err());
        let now = parse_time("2026-11-24T12:00:00Z").unwrap();
        let (from, until) = TimeRange::parse("1h").unwrap().resolve(now);
        assert_eq!(until - from, HOUR_MS + 1);
        assert_eq!(until, unix_ms(now) + 1);
    }
}
