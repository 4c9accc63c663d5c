//! The `log` facade into Envoy's log (`[dynamic_modules]` component), so keygate's messages
//! sit beside Envoy's own, at the level Envoy is told to log. Never given a key: messages
//! show at most a key's prefix and last four characters (keygate-core's `redact_keys`).

#![forbid(unsafe_code)]

use crate::abi::{self, LogLevel};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

fn level_of(level: Level) -> LogLevel {
    match level {
        Level::Error => LogLevel::Error,
        Level::Warn => LogLevel::Warn,
        Level::Info => LogLevel::Info,
        Level::Debug => LogLevel::Debug,
        Level::Trace => LogLevel::Trace,
    }
}

impl Log for EnvoyLogger {
    /// keygate's own records only: a dependency's debug lines (the HTTP client's) could
    /// carry the sync token's request headers.
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target().starts_with("keygate") && abi::log_enabled(level_of(metadata.level()))
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            abi::log(level_of(record.level()), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once per process (a second call finds it installed).
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        // Envoy filters by level itself (`enabled` asks it), so let every record through.
        log::set_max_level(LevelFilter::Trace);
    }
}
