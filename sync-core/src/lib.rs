//! keygate's key-map sync protocol and the poller both fetchers run. See `Cargo.toml`.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod binary;
pub mod message;
pub mod poller;
pub mod settings;
pub mod state;
pub mod usage_report;
