//! Routes the `log` crate to Envoy's log (`proxy_log`). Messages never carry a key.

use crate::abi::{self, LogLevel};
use alloc::string::ToString;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

pub fn install() {
    // Fails only if a logger is already set, which is then just as good.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

impl Log for EnvoyLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        let level = match record.level() {
            Level::Error => LogLevel::Error,
            Level::Warn => LogLevel::Warn,
            Level::Info => LogLevel::Info,
            Level::Debug | Level::Trace => LogLevel::Debug,
        };
        abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
