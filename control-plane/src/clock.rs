//! The current time as unix seconds, the unit of every time keygate stores and ships.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    // A clock before 1970 is a broken host; 0 makes every expiry look "in the future".
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current time as unix milliseconds: the clock key-map versions follow.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC), for tables people read.
pub fn format_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A day number (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn format_day(day: u64) -> String {
    format_utc(day.saturating_mul(86_400))[..10].to_string()
}

/// An RFC 3339 time (`2026-05-01T00:00:00Z`, `2026-05-01T02:00:00+02:00`) as unix seconds;
/// the error says what is wrong without repeating the text.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let parsed =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|_| "not an RFC 3339 time such as 2026-05-01T00:00:00Z".to_string())?;
    u64::try_from(parsed.unix_timestamp()).map_err(|_| "a time before 1970".to_string())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_day(19_675), "2023-11-14");
    }

    #[test]
    fn parses_rfc3339_with_offsets() {
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(
            parse_rfc3339(" 2023-11-15T00:13:20+02:00 "),
            Ok(1_700_000_000)
        );
        assert!(parse_rfc3339("2023-11-14").is_err());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        assert!(parse_rfc3339("sk_test_x").is_err_and(|e| !e.contains("sk_")));
    }
}
