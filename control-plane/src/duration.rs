//! Durations as people type them: `90s`, `30m`, `24h`, `7d`.

/// The longest grace period accepted: a roll is not a way to keep a key alive forever.
pub const MAX_SECONDS: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; use a number and a unit, e.g. 90s, 30m, 24h or 7d")]
    Empty,
    #[error("{0:?} has no unit; use s, m, h or d (e.g. 24h)")]
    NoUnit(String),
    #[error("{0:?} is not a duration; use a number and a unit, e.g. 90s, 30m, 24h or 7d")]
    Malformed(String),
    #[error("{0:?} is longer than the maximum of 366d")]
    TooLong(String),
}

/// Parses `<number><unit>` with unit s, m, h or d into seconds.
pub fn parse_duration(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit(text.to_string()))?;
    let (number, unit) = text.split_at(split);
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(DurationError::Malformed(text.to_string())),
    };
    if number.is_empty() {
        return Err(DurationError::Malformed(text.to_string()));
    }
    // Digits only, so a parse failure can only be an overflow.
    let count: u64 = number
        .parse()
        .map_err(|_| DurationError::TooLong(text.to_string()))?;
    let seconds = count
        .checked_mul(unit_seconds)
        .filter(|s| *s <= MAX_SECONDS)
        .ok_or_else(|| DurationError::TooLong(text.to_string()))?;
    Ok(seconds)
}

/// Seconds as the largest whole units, e.g. `1d2h`, `30m`, `0s`.
pub fn format_duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    if seconds == 0 {
        return "0s".into();
    }
    let mut rest = seconds;
    let mut out = String::new();
    for (size, name) in UNITS {
        if rest >= size {
            out.push_str(&format!("{}{name}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_seconds_minutes_hours_days() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration(" 0s "), Ok(0));
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("24"),
            Err(DurationError::NoUnit("24".into()))
        );
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("1w"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("1h30m"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("367d"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999s"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn formatting_uses_the_largest_units() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(90), "1m30s");
        assert_eq!(format_duration(93_600), "1d2h");
    }
}
