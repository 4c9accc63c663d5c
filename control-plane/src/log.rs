//! Server log lines on stderr. Keys appear in them by id and hint only, never in plaintext.

use crate::clock::{format_utc, now_unix};

pub fn log_event(message: &str) {
    eprintln!("{} keygatectl: {message}", format_utc(now_unix()));
}
