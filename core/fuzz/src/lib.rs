//! The bodies of keygate-core's fuzz targets, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`, run by `cargo fuzz`) and the stable corpus replay (`tests/replay.rs`).
//!
//! Each target is `check(data)`: it decodes `data` (formats in each module's docs), calls
//! keygate-core, and panics when an invariant is broken, not only when core panics. A panic
//! is what libFuzzer reports as a crash and what the replay reports as a failed corpus file.

use std::path::{Path, PathBuf};

pub mod config;
pub mod credentials;
pub mod decision;
pub mod header_pairs;
pub mod json;
pub mod oracle;
pub mod path_policy;
pub mod sync_binary;
pub mod sync_message;

/// A target's check: panics when an invariant is broken.
pub type Check = fn(&[u8]);

/// Every target: its name (= its `fuzz_targets/` file and its `corpus/` folder) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("credentials", credentials::check),
    ("path_policy", path_policy::check),
    ("config", config::check),
    ("sync_message", sync_message::check),
    ("sync_binary", sync_binary::check),
    ("header_pairs", header_pairs::check),
    ("decision", decision::check),
    ("json", json::check),
];

/// Checks an invariant: panics with the message when it does not hold.
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("invariant broken: {}", format_args!($($msg)+));
        }
    };
}

/// Invariant violations found by fuzzing, reported against keygate-core and not yet fixed
/// there. While an id is listed, `known_finding!` with that id records the violation instead
/// of panicking, so fuzzing goes on past it; corpus files named `finding-<ID>-…` reproduce it
/// and the replay checks that they still do. Once core is fixed, delete the id here: the
/// check is then a plain invariant again, and those corpus files must pass it.
///
/// - `KF1`: a serde error message echoes a plaintext API key from the config or sync answer
///   (`unknown field`, `unknown variant`, `invalid type: string "…"`): `Problem::Json`.
/// - `KF2`: `parse_authorization` returns a key holding non-ASCII whitespace or control
///   characters (U+0085, U+00A0, …); only ' ' and ASCII controls are refused.
/// - `KF3`: `SyncState::apply_binary_full` reads the 20-byte header with one `BodyReader` call
///   and refuses the map when that call returns fewer bytes, while the entries are read with
///   as many calls as it takes: a reader that serves less than 20 bytes a call (allowed for
///   the entries, as core's own `Trickle` test reader does) gets a valid map refused.
pub const KNOWN_FINDINGS: &[&str] = &[];

thread_local! {
    static FINDINGS_HIT: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Called by `known_finding!` when its condition fails: panics unless `id` is listed in
/// [`KNOWN_FINDINGS`], in which case the hit is recorded for [`take_findings_hit`].
#[track_caller]
pub fn finding(id: &'static str, message: std::fmt::Arguments<'_>) {
    if KNOWN_FINDINGS.contains(&id) {
        // Kept once per id: under libFuzzer nobody takes them, so the list must not grow.
        FINDINGS_HIT.with(|hits| {
            let mut hits = hits.borrow_mut();
            if !hits.contains(&id) {
                hits.push(id);
            }
        });
    } else {
        panic!("invariant broken ({id}): {message}");
    }
}

/// The known findings hit on this thread since the last call.
pub fn take_findings_hit() -> Vec<&'static str> {
    FINDINGS_HIT.with(|hits| std::mem::take(&mut *hits.borrow_mut()))
}

/// Like `invariant!`, for a check whose violation is a known, reported finding `$id`.
#[macro_export]
macro_rules! known_finding {
    ($id:literal, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            $crate::finding($id, format_args!($($msg)+));
        }
    };
}

/// `core/fuzz/corpus/<target>`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The files of a folder, sorted, skipping dot files (libFuzzer's own scratch files).
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if entry.file_type()?.is_file() && !hidden {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

thread_local! {
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wraps the panic hook (once) so that, on a thread running [`run_one`], a panic only notes
/// where it happened: a replay lists failing files instead of a backtrace for each. Other
/// panics (a failed test's own assertion) still reach the previous hook.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(std::cell::Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// What one replayed input did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every invariant held.
    Passed,
    /// Only known findings (by id) were hit.
    KnownFindings(Vec<&'static str>),
    /// A panic: an invariant broken, or keygate-core itself panicked.
    Failed(String),
}

/// Runs `check` on one input, catching a panic.
pub fn run_one(check: Check, data: &[u8]) -> Outcome {
    quiet_panics();
    take_findings_hit();
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(|| check(data));
    QUIET.with(|q| q.set(false));
    let mut hits = take_findings_hit();
    match result {
        Ok(()) if hits.is_empty() => Outcome::Passed,
        Ok(()) => {
            hits.sort_unstable();
            hits.dedup();
            Outcome::KnownFindings(hits)
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic with a non-string payload".to_owned());
            let at = PANIC_AT.with(|p| p.borrow().clone());
            Outcome::Failed(format!("{msg} (panicked at {at})"))
        }
    }
}

fn outcome_hits(outcome: &Outcome, id: &str) -> bool {
    matches!(outcome, Outcome::KnownFindings(ids) if ids.contains(&id))
}

/// Checks one corpus file's outcome: it must pass, or only hit findings listed in
/// [`KNOWN_FINDINGS`]; and a `finding-<ID>-…` file must still reproduce `<ID>` while it is
/// listed (so that the list is emptied once core is fixed).
pub fn judge(file: &Path, outcome: &Outcome) -> Result<(), String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = name
        .strip_prefix("finding-")
        .and_then(|rest| rest.split('-').next())
        .filter(|id| KNOWN_FINDINGS.contains(id));
    match (outcome, expected) {
        (Outcome::Passed, None) => Ok(()),
        (Outcome::Failed(msg), _) => Err(msg.clone()),
        // Any input may hit a listed finding (libFuzzer-found ones do); once the id is
        // removed from the list, the check is strict for them too.
        (Outcome::KnownFindings(_), None) => Ok(()),
        (Outcome::KnownFindings(_), Some(id)) if outcome_hits(outcome, id) => Ok(()),
        (Outcome::KnownFindings(ids), Some(id)) => Err(format!(
            "hits known finding(s) {ids:?} but not {id}, which its name says it reproduces"
        )),
        (Outcome::Passed, Some(id)) => Err(format!(
            "no longer reproduces known finding {id}: if keygate-core fixed it, remove {id} \
             from KNOWN_FINDINGS in core/fuzz/src/lib.rs"
        )),
    }
}

/// `main` of a target built without libFuzzer: replays every file named on the command line
/// (a folder means each of its files; none means the target's committed corpus). Returns the
/// process exit code: 0 when every input passed.
pub fn replay_main(target: &str, check: Check) -> i32 {
    let mut args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.is_empty() {
        args.push(corpus_dir(target));
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for arg in args {
        let files = if arg.is_dir() {
            match files_in(&arg) {
                Ok(files) => files,
                Err(e) => {
                    eprintln!("{}: {e}", arg.display());
                    return 2;
                }
            }
        } else {
            vec![arg]
        };
        for file in files {
            let data = match std::fs::read(&file) {
                Ok(data) => data,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    return 2;
                }
            };
            match run_one(check, &data) {
                Outcome::Passed => passed += 1,
                Outcome::KnownFindings(ids) => {
                    passed += 1;
                    eprintln!("known finding {ids:?}: {}", file.display());
                }
                Outcome::Failed(msg) => {
                    failed += 1;
                    eprintln!("FAILED {}: {msg}", file.display());
                }
            }
        }
    }
    println!("{target}: {passed} passed, {failed} failed");
    i32::from(failed > 0)
}

/// Issued keys (valid prefix and checksum, as `keygatectl` makes them) found anywhere in `s`.
/// Used to check that no message ever echoes a plaintext key.
pub fn issued_keys_in(s: &str) -> Vec<&str> {
    use keygate_core::key::{is_issued_key, BODY_LEN};
    let mut found = Vec::new();
    for (i, _) in s.match_indices("k_") {
        let Some(start) = i.checked_sub(1) else {
            continue;
        };
        for prefix_len in ["sk_".len(), "sk_test_".len()] {
            if let Some(candidate) = s.get(start..start + prefix_len + BODY_LEN) {
                if is_issued_key(candidate) {
                    found.push(candidate);
                }
            }
        }
    }
    found
}

/// Splits `data` at `sep` into at most `max` pieces (the last one keeps any further `sep`).
pub fn split_n(data: &[u8], sep: u8, max: usize) -> Vec<&[u8]> {
    if max == 0 {
        return Vec::new();
    }
    data.splitn(max, |&b| b == sep).collect()
}

/// A few fixed plaintext keys: one issued key of each kind, from fixed "randomness".
pub fn sample_keys() -> [String; 4] {
    use keygate_core::key::{issue_key, KeyKind};
    KeyKind::ALL.map(|kind| issue_key(kind, &[kind.prefix().len() as u8 * 7 + 1; 32]))
}

/// Seeds for `header_pairs`: serialized maps (valid, truncated, lying) and text lines.
pub fn header_pairs_seed() -> Vec<(String, Vec<u8>)> {
    use keygate_core::header_pairs::serialize;
    let request: [(&[u8], &[u8]); 5] = [
        (b":method", b"GET"),
        (b":path", b"/v3/devices/1"),
        (b":authority", b"api.example.com"),
        (b"authorization", b"token \xff\xfe"),
        (b"x-empty", b""),
    ];
    let full = serialize(&request);
    let mut lying_count = full.clone();
    lying_count[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut lying_len = full.clone();
    lying_len[4..8].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"junk");
    let mut no_nuls = full.clone();
    for b in no_nuls.iter_mut().skip(4 + 8 * request.len()) {
        if *b == 0 {
            *b = b'!';
        }
    }
    vec![
        ("request".into(), full.clone()),
        ("empty".into(), serialize(&[])),
        ("truncated".into(), full[..full.len() - 1].to_vec()),
        ("lying-count".into(), lying_count),
        ("lying-length".into(), lying_len),
        ("trailing-bytes".into(), trailing),
        ("no-nul-terminators".into(), no_nuls),
        (
            "lines".into(),
            b"authorization:token sk_test_abc\n:path:/v3/x\nx-empty:".to_vec(),
        ),
        ("short".into(), b"\x01\x00".to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_files_pass_or_reproduce_their_listed_finding() {
        let judged = |name: &str, outcome: Outcome| judge(Path::new(name), &outcome).is_ok();
        assert!(judged("seed-x", Outcome::Passed));
        assert!(!judged("seed-x", Outcome::Failed("boom".into())));
        // A listed finding's files must reproduce it; once unlisted (fixed), they must pass.
        match KNOWN_FINDINGS.first() {
            Some(&id) => {
                let file = format!("finding-{id}-x");
                assert!(judged(&file, Outcome::KnownFindings(vec![id])));
                assert!(!judged(&file, Outcome::Passed), "fixed: unlist {id}");
                assert!(!judged(&file, Outcome::Failed("boom".into())));
            }
            None => {
                assert!(judged("finding-KF1-x", Outcome::Passed));
                assert!(!judged("finding-KF1-x", Outcome::Failed("boom".into())));
            }
        }
    }

    #[test]
    fn finds_issued_keys_only() {
        let [sk_test, _, sk, _] = sample_keys();
        let text = format!("unknown field `{sk_test}`, x{sk}y, sk_test_short, pk_");
        assert_eq!(issued_keys_in(&text), [sk_test.as_str(), sk.as_str()]);
        assert!(issued_keys_in("sk_test_0123456789 é sk_").is_empty());
    }
}
