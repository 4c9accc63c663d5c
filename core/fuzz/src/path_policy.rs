//! `path_policy`: `path::normalize` and `Policy::allows` with the default publishable policy
//! (`/v3`, `/api/v1`, retrieve by id) plus a rule `POST /v3/devices/{id}/events`.
//!
//! Input: `METHOD SP :path` (the bytes before the first space are the method; without a space
//! the method is empty and everything is the path), e.g. `GET /v3/devices/%2e%2e/x`.
//!
//! Invariants: a normalised path has no empty, "." or ".." segment (plain or not) and no
//! ASCII control character; `plain` is exactly "only plain characters"; only a path that starts with
//! '/' normalises; the query string and fragment change nothing. `allows` agrees with a
//! hand-written model of the policy: only GET/HEAD/POST, only all-plain paths of the rules'
//! shapes. Re-serialising a normalised path and normalising again gives the same path and the
//! same decision (idempotence).

use crate::invariant;
use crate::oracle;
use keygate_core::path::normalize;
use std::cell::OnceCell;

thread_local! {
    static POLICY: OnceCell<keygate_core::policy::Policy> = const { OnceCell::new() };
}

pub fn check(data: &[u8]) {
    let (method, path) = match data.iter().position(|&b| b == b' ') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    POLICY.with(|cell| {
        let policy = cell.get_or_init(oracle::policy);
        check_with(policy, method, path);
    });
}

fn check_with(policy: &keygate_core::policy::Policy, method: &[u8], raw: &[u8]) {
    let normalized = normalize(raw);
    let before_query = raw
        .split(|&b| b == b'?' || b == b'#')
        .next()
        .unwrap_or_default();
    invariant!(
        normalized.is_err() || before_query.first() == Some(&b'/'),
        "a path not starting with '/' normalised"
    );
    let Ok(path) = normalized else {
        return;
    };
    for s in &path.segments {
        invariant!(
            !s.text.is_empty() && s.text != "." && s.text != "..",
            "segment {:?} left after normalisation",
            s.text
        );
        // ASCII controls only: C1 controls (U+0080-U+009F) are refused nowhere, but they
        // make a segment non-plain, and non-plain segments never match a rule.
        invariant!(
            !s.text.chars().any(|c| c.is_ascii_control()),
            "segment {:?} holds a control character",
            s.text
        );
        invariant!(
            s.plain == s.text.chars().all(oracle::is_plain_char),
            "segment {:?} marked plain={}",
            s.text,
            s.plain
        );
    }
    invariant!(
        !path.segments.is_empty() || path.trailing_slash,
        "the root path without a trailing slash"
    );

    // The query and fragment never matter.
    let mut with_query = before_query.to_vec();
    with_query.extend_from_slice(b"?a=/../..%zz#/..");
    invariant!(
        normalize(&with_query).as_ref() == Ok(&path),
        "a query string changed the normalised path"
    );

    let allowed = policy.allows(method, &path);
    invariant!(
        allowed == oracle::expected_allow(method, &path),
        "policy says {allowed} for {:?} {:?}",
        String::from_utf8_lossy(method),
        path.segments
    );
    if allowed {
        invariant!(
            matches!(method, b"GET" | b"HEAD" | b"POST"),
            "allowed method {:?}",
            String::from_utf8_lossy(method)
        );
        invariant!(
            path.segments.iter().all(|s| s.plain),
            "allowed path with a non-plain segment: {:?}",
            path.segments
        );
    }

    // Idempotence: our serialisation of the normalised path normalises to itself.
    let again_raw = oracle::serialize(&path);
    match normalize(again_raw.as_bytes()) {
        Ok(again) => {
            invariant!(
                again == path,
                "normalize is not idempotent: {again_raw:?} gives {again:?}, not {path:?}"
            );
            invariant!(
                policy.allows(method, &again) == allowed,
                "the re-serialised path {again_raw:?} is judged differently"
            );
        }
        Err(e) => invariant!(false, "re-serialised path {again_raw:?} refused: {e}"),
    }
}
