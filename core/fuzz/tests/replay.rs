//! Replays every committed corpus file (`core/fuzz/corpus/<target>/*`) through its target's
//! checks, on stable and without libFuzzer: `cargo test --manifest-path core/fuzz/Cargo.toml`.

use keygate_core_fuzz::{corpus_dir, files_in, judge, run_one, TARGETS};

/// Committed corpora stay small: cmin them (see FUZZING.md) before they pass these.
const MAX_FILES_PER_TARGET: usize = 200;
const MAX_TOTAL_BYTES: u64 = 1 << 20;

fn replay(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let dir = corpus_dir(target);
    let files = files_in(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    assert!(
        files.len() <= MAX_FILES_PER_TARGET,
        "{} has {} files: minimize it with cargo fuzz cmin",
        dir.display(),
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(msg) = judge(file, &run_one(*check, &data)) {
            failures.push(format!("{}: {msg}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn credentials() {
    replay("credentials");
}

#[test]
fn path_policy() {
    replay("path_policy");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn sync_message() {
    replay("sync_message");
}

#[test]
fn sync_binary() {
    replay("sync_binary");
}

#[test]
fn header_pairs() {
    replay("header_pairs");
}

#[test]
fn decision() {
    replay("decision");
}

#[test]
fn every_target_has_a_test_and_corpora_stay_small() {
    let tested = [
        "credentials",
        "path_policy",
        "config",
        "sync_message",
        "sync_binary",
        "header_pairs",
        "decision",
        "json",
    ];
    let mut total = 0;
    for (name, _) in TARGETS {
        assert!(tested.contains(name), "no replay test for {name}");
        for file in files_in(&corpus_dir(name)).expect("corpus dir") {
            total += std::fs::metadata(&file).expect("metadata").len();
        }
    }
    assert!(
        total <= MAX_TOTAL_BYTES,
        "committed corpora hold {total} bytes (limit {MAX_TOTAL_BYTES}): cmin them"
    );
}

#[test]
fn json() {
    replay("json");
}
