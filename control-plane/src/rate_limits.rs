//! A key's rate limit as people give it (API JSON, CLI flags, the operator page's form),
//! checked field by field so a refusal names the field, and by the rules every filter
//! applies (`store::rules::check_rate_limit`), so keygatectl never ships a limit a filter
//! would refuse.

use crate::store::rules::check_rate_limit;
use keygate_core::config::RawLimit;
use keygate_core::rate_limit::{Period, MAX_REQUESTS};
use serde_json::Value;

/// The fields a limit has.
const FIELDS: [&str; 3] = ["requests", "per", "burst"];

fn field(name: &str, message: &str) -> String {
    format!("rate_limit.{name}: {message}")
}

fn count(name: &str, value: &Value) -> Result<u64, String> {
    value
        .as_u64()
        .filter(|n| (1..=u64::from(MAX_REQUESTS)).contains(n))
        .ok_or_else(|| {
            field(
                name,
                &format!("must be a whole number from 1 to {MAX_REQUESTS}"),
            )
        })
}

/// `second` or `minute`.
pub fn parse_period(text: &str) -> Result<Period, String> {
    match text {
        "second" => Ok(Period::Second),
        "minute" => Ok(Period::Minute),
        _ => Err(field("per", "must be \"second\" or \"minute\"")),
    }
}

/// A limit from JSON: `{"requests": N, "per": "second"|"minute", "burst": B}` (`burst`
/// optional: `requests`), or `null` for none.
pub fn limit_from_json(value: &Value) -> Result<Option<RawLimit>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let Some(object) = value.as_object() else {
        return Err("rate_limit: must be an object or null".into());
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field(unknown, "unknown field (requests, per, burst)"));
    }
    let requests = object
        .get("requests")
        .ok_or_else(|| field("requests", "missing"))
        .and_then(|v| count("requests", v))?;
    let per = match object.get("per") {
        None => return Err(field("per", "missing")),
        Some(v) => parse_period(v.as_str().unwrap_or(""))?,
    };
    let burst = match object.get("burst") {
        None | Some(Value::Null) => None,
        Some(v) => Some(count("burst", v)?),
    };
    checked(RawLimit {
        requests,
        per,
        burst,
    })
    .map(Some)
}

/// A limit from text fields (the CLI's flags, the page's form); an empty burst means none.
pub fn limit_from_text(requests: &str, per: &str, burst: &str) -> Result<RawLimit, String> {
    let number = |name: &str, text: &str| -> Result<u64, String> {
        let n = text.trim().parse::<u64>().map_err(|_| {
            field(
                name,
                &format!("must be a whole number from 1 to {MAX_REQUESTS}"),
            )
        })?;
        count(name, &Value::from(n))
    };
    let requests = number("requests", requests)?;
    let per = parse_period(per.trim())?;
    let burst = match burst.trim() {
        "" => None,
        text => Some(number("burst", text)?),
    };
    checked(RawLimit {
        requests,
        per,
        burst,
    })
}

fn checked(limit: RawLimit) -> Result<RawLimit, String> {
    check_rate_limit(&limit).map_err(|e| e.to_string())?;
    Ok(limit)
}

/// "100 per minute, burst 20" for people.
pub fn describe(limit: &RawLimit) -> String {
    let burst = limit.burst.unwrap_or(limit.requests);
    format!(
        "{} per {}, burst {burst}",
        limit.requests,
        limit.per.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_good_limit_is_read_and_burst_defaults_to_none() {
        let limit = limit_from_json(&json!({"requests": 100, "per": "minute"}))
            .expect("ok")
            .expect("a limit");
        assert_eq!(limit.requests, 100);
        assert_eq!(limit.per, Period::Minute);
        assert_eq!(limit.burst, None);
        assert_eq!(describe(&limit), "100 per minute, burst 100");
        assert_eq!(limit_from_json(&Value::Null), Ok(None));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, want) in [
            (
                json!({"requests": 0, "per": "second"}),
                "rate_limit.requests:",
            ),
            (
                json!({"requests": 1_000_001, "per": "second"}),
                "rate_limit.requests:",
            ),
            (
                json!({"requests": "10", "per": "second"}),
                "rate_limit.requests:",
            ),
            (json!({"per": "second"}), "rate_limit.requests: missing"),
            (json!({"requests": 10, "per": "hour"}), "rate_limit.per:"),
            (json!({"requests": 10}), "rate_limit.per: missing"),
            (
                json!({"requests": 10, "per": "second", "burst": 0}),
                "rate_limit.burst:",
            ),
            (
                json!({"requests": 10, "per": "second", "burst": -1}),
                "rate_limit.burst:",
            ),
            (
                json!({"requests": 10, "per": "second", "brust": 5}),
                "rate_limit.brust: unknown",
            ),
            (json!([1]), "rate_limit: must be an object"),
        ] {
            let refused = limit_from_json(&body).expect_err("refused");
            assert!(refused.starts_with(want), "{body}: {refused}");
        }
        assert!(limit_from_text("ten", "second", "")
            .expect_err("refused")
            .starts_with("rate_limit.requests:"));
        assert!(limit_from_text("10", "second", "0")
            .expect_err("refused")
            .starts_with("rate_limit.burst:"));
        assert_eq!(
            limit_from_text(" 10 ", "second", "").map(|l| l.burst),
            Ok(None)
        );
    }
}
