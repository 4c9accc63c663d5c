//! `json`: keygate-core's config JSON reader (`keygate_core::json::parse`) against serde_json,
//! on raw bytes.
//!
//! Invariants: no panic; the same bytes always give the same answer; an error's message never
//! holds a plaintext (issued) key from the input; and the two readers agree: a document one
//! accepts the other accepts too (except nesting deeper than `json::MAX_DEPTH`, which only
//! keygate refuses, and numbers beyond f64, which only serde_json refuses), with the same
//! strings, literals, list lengths, member names (the last of a repeated name, which serde
//! keeps) and integers.

use crate::invariant;
use keygate_core::json::{self, Syntax, Value};
use serde_json::Value as Serde;

pub fn check(data: &[u8]) {
    let ours = json::parse(data);
    invariant!(
        ours == json::parse(data),
        "parsing the same bytes twice gave different answers"
    );
    let theirs = serde_json::from_slice::<Serde>(data);
    match (&ours, &theirs) {
        (Ok(ours), Ok(theirs)) => same(ours, theirs, "$"),
        (Err(e), _) => {
            let shown = e.to_string();
            invariant!(
                crate::issued_keys_in(&shown).is_empty(),
                "a key is echoed in {shown:?}"
            );
            invariant!(
                theirs.is_err() || e.what == Syntax::TooDeep,
                "refused what serde_json reads: {shown}"
            );
        }
        (Ok(_), Err(e)) => invariant!(
            e.to_string().contains("number out of range"),
            "read what serde_json refuses ({e})"
        ),
    }
}

fn same(ours: &Value, theirs: &Serde, at: &str) {
    match (ours, theirs) {
        (Value::Null, Serde::Null) => {}
        (Value::Bool(a), Serde::Bool(b)) => invariant!(a == b, "{at}: {a} vs {b}"),
        (Value::String(a), Serde::String(b)) => invariant!(a == b, "{at}: strings differ"),
        (Value::Number(a), Serde::Number(b)) => {
            if let Some(n) = a.as_u64() {
                invariant!(b.as_u64() == Some(n), "{at}: {n} vs {b}");
            }
            invariant!(
                a.as_f64().is_none() || a.as_f64() == b.as_f64(),
                "{at}: {} vs {b}",
                a.as_str()
            );
        }
        (Value::Array(a), Serde::Array(b)) => {
            invariant!(a.len() == b.len(), "{at}: list lengths differ");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Serde::Object(b)) => {
            let mut names: Vec<&str> = a.0.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            invariant!(names.len() == b.len(), "{at}: member counts differ");
            for (name, theirs) in b {
                // serde_json keeps the last of repeated names.
                let ours = a.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v);
                match ours {
                    Some(ours) => same(ours, theirs, &format!("{at}.{name}")),
                    None => invariant!(false, "{at}: a member only serde_json has"),
                }
            }
        }
        _ => invariant!(false, "{at}: different kinds of value"),
    }
}
