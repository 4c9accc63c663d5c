//! keygatectl: the source of truth for keygate's accounts and API keys, and the server the
//! Envoy filters get their key map from.

#![forbid(unsafe_code)]

mod activity;
mod admin;
mod api;
mod auth;
mod cli;
mod client;
mod clock;
mod commands;
mod customers;
mod duration;
mod error;
mod export;
mod front_door;
mod hosts;
mod import;
mod keymap;
mod keymap_endpoint;
mod log;
mod mail;
mod metrics;
mod model;
mod open_files;
mod ops;
mod output;
mod random;
mod rate_limits;
mod secret_file;
mod serve;
mod service;
mod slotted_body;
mod store;
mod sync_token;
mod usage_endpoint;
mod web;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: with thousands of watches held at once, glibc's
/// malloc spent a sixth of keygatectl's CPU per answer searching and merging free chunks
/// (measured: a key-map 304 took 37.0k instructions as a watch and 32.4k as a poll with
/// glibc, 31.8k and 27.7k with mimalloc; see BENCHMARKS.md, "Watching instead of polling").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygatectl: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
