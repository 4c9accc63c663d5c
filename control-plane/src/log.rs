//! Server log lines on stderr, one event a line, each with its level. Keys appear in them by
//! id and hint only, never in plaintext; tokens and passwords never.
//!
//! `serve --log-format text` (the default): `2026-12-05T01:02:03Z INFO keygatectl: …`;
//! `--log-format json`: `{"time":"2026-12-05T01:02:03Z","level":"info","message":"…"}`,
//! for log collectors. `--log-level` drops events below it (default `info`).

use crate::clock::{format_utc, now_unix};
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);
static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the format and the lowest level logged, for the whole process.
pub fn configure(format: Format, min_level: Level) {
    FORMAT.store(format as u8, Ordering::Relaxed);
    MIN_LEVEL.store(min_level as u8, Ordering::Relaxed);
}

/// The line for one event (no newline).
fn line(format: Format, level: Level, time: u64, message: &str) -> String {
    // One event, one line: a message never breaks the line, in either format.
    let message = message.replace(['\n', '\r'], " ");
    match format {
        Format::Text => format!(
            "{} {} keygatectl: {message}",
            format_utc(time),
            level.name().to_ascii_uppercase()
        ),
        Format::Json => serde_json::json!({
            "time": format_utc(time),
            "level": level.name(),
            "message": message,
        })
        .to_string(),
    }
}

/// Whether events of `level` are logged (to spare building a message that would not be).
pub fn enabled(level: Level) -> bool {
    level as u8 >= MIN_LEVEL.load(Ordering::Relaxed)
}

pub fn log(level: Level, message: &str) {
    if !enabled(level) {
        return;
    }
    let format = if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        Format::Json
    } else {
        Format::Text
    };
    eprintln!("{}", line(format, level, now_unix(), message));
}

/// An event at level info; a message starting `warning: ` is logged at level warn without
/// that word (the form older call sites use).
pub fn log_event(message: &str) {
    match message.strip_prefix("warning: ") {
        Some(rest) => log(Level::Warn, rest),
        None => log(Level::Info, message),
    }
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_lines_carry_the_level_and_stay_one_line() {
        let time = 1_764_900_000;
        assert_eq!(
            line(Format::Text, Level::Warn, time, "two\nlines"),
            format!("{} WARN keygatectl: two lines", format_utc(time))
        );
        let json: serde_json::Value =
            serde_json::from_str(&line(Format::Json, Level::Error, time, "a \"quote\"\n"))
                .expect("json");
        assert_eq!(json["level"], "error");
        assert_eq!(json["message"], "a \"quote\" ");
        assert_eq!(json["time"], format_utc(time));
        assert!(!line(Format::Json, Level::Info, time, "x\ny").contains('\n'));
    }
}
