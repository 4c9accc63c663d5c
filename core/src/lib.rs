//! keygate-core: the pure logic of keygate, with no proxy-wasm in it, so that it is tested and
//! fuzzed on the host and shared by the Envoy filter, the native module and `keygatectl`.
//!
//! `no_std` (with `alloc`), always: the filter module leaves std's panic, I/O and thread
//! machinery out. The key-map sync protocol, which only fetchers and keygatectl use, is the
//! `keygate-sync-core` crate.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

/// What std's prelude gives beyond core's: alloc's strings, vectors and boxes, so that every
/// module reads the same with and without std.
mod prelude {
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
}

mod ascii;
pub mod base64;
pub mod bucket;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod denial;
pub mod digest;
pub mod digest_cache;
pub mod fields;
pub mod gate;
pub mod header_pairs;
pub mod identity;
pub mod json;
pub mod key;
pub mod keymap;
pub mod path;
pub mod policy;
pub mod query;
pub mod rate_limit;
pub mod request_scan;
pub mod shared_data;
pub mod usage;
