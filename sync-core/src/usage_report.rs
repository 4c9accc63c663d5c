//! Reporting per-key usage to keygatectl (`POST /v1/usage`), once for both fetchers: the
//! counts the workers drained are merged by key id, sent every interval as one report, and
//! resent unchanged (same `report_id`) until keygatectl has it, so a retried report is never
//! counted twice. Counts gathered meanwhile wait for the next report.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The usage endpoint's path beside the key map's.
pub const USAGE_PATH: &str = "/v1/usage";
/// Most keys in one report (keygatectl's limit); more wait for the next.
pub const MAX_REPORT_KEYS: usize = 100_000;

/// The reporting's own stats, in both fetchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStat {
    /// Reports keygatectl took.
    Reports,
    /// Reports not taken (failed call or refused): each is sent again.
    Errors,
    /// Requests of keys that found no slot in their worker's table (counted, not by key).
    Unattributed,
}

impl UsageStat {
    pub const ALL: [UsageStat; 3] = [
        UsageStat::Reports,
        UsageStat::Errors,
        UsageStat::Unattributed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UsageStat::Reports => "keygate.usage.reports",
            UsageStat::Errors => "keygate.usage.errors",
            UsageStat::Unattributed => "keygate.usage.unattributed",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    allowed: u64,
    refused: u64,
    last_used: u64,
}

/// What became of a report after keygatectl's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFate {
    /// Stored (204), or stored before (200: a duplicate).
    Taken,
    /// Refused as malformed or too large (400, 413): sending it again cannot help.
    Dropped,
    /// Not taken (a failed call, 5xx, a wrong token): sent again next interval.
    Kept,
}

/// A report on its way: kept until keygatectl acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReport {
    pub report_id: String,
    pub body: String,
}

pub struct UsageReporter {
    interval_ms: u64,
    next_at_ms: u64,
    rng: u64,
    gathered: BTreeMap<String, Counts>,
    pending: Option<PendingReport>,
}

impl UsageReporter {
    pub fn new(interval_ms: u64, now_ms: u64, seed: u64) -> UsageReporter {
        UsageReporter {
            interval_ms,
            next_at_ms: now_ms.saturating_add(interval_ms),
            rng: seed | 1,
            gathered: BTreeMap::new(),
            pending: None,
        }
    }

    /// Adds a key's counts, drained at `now_s` (the key was last used then: minute precision
    /// is what keygatectl keeps).
    pub fn add(&mut self, key_id: &str, allowed: u64, refused: u64, now_s: u64) {
        if allowed == 0 && refused == 0 {
            return;
        }
        let counts = self.gathered.entry(key_id.into()).or_default();
        counts.allowed = counts.allowed.saturating_add(allowed);
        counts.refused = counts.refused.saturating_add(refused);
        counts.last_used = counts.last_used.max(now_s);
    }

    /// Adds the workers' drained records (`keygate_core::usage::encode_records`), naming
    /// each digest by its map bucket as `bucket` reads it (bucket number → its bytes); keys
    /// no longer in the map are dropped. Answers the requests no worker could attribute.
    pub fn add_records(
        &mut self,
        records: &[u8],
        now_s: u64,
        mut bucket: impl FnMut(usize) -> Option<Vec<u8>>,
    ) -> u64 {
        let (usage, unattributed) = keygate_core::usage::decode_records(records);
        for u in usage {
            let Some(bytes) = bucket(keygate_core::bucket::bucket_of(&u.digest)) else {
                continue;
            };
            if let Some(info) = keygate_core::bucket::find(&bytes, &u.digest) {
                self.add(
                    info.key_id,
                    u64::from(u.allowed),
                    u64::from(u.refused),
                    now_s,
                );
            }
        }
        unattributed
    }

    /// The report to send now, if one is due: the one keygatectl has not acknowledged yet,
    /// or a new one of what was gathered.
    pub fn due(&mut self, now_ms: u64) -> Option<&PendingReport> {
        if now_ms < self.next_at_ms {
            return None;
        }
        self.next_at_ms = now_ms.saturating_add(self.interval_ms);
        if self.pending.is_none() && !self.gathered.is_empty() {
            self.pending = Some(self.build());
        }
        self.pending.as_ref()
    }

    /// keygatectl's answer to the pending report (0: no answer).
    pub fn on_answer(&mut self, status: u16) -> ReportFate {
        let fate = match status {
            200 | 204 => ReportFate::Taken,
            400 | 413 => ReportFate::Dropped,
            _ => ReportFate::Kept,
        };
        if fate != ReportFate::Kept {
            self.pending = None;
        }
        fate
    }

    fn build(&mut self) -> PendingReport {
        let mut id = String::with_capacity(32);
        for _ in 0..2 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let _ = write!(id, "{:016x}", self.rng);
        }
        let take: Vec<String> = self
            .gathered
            .keys()
            .take(MAX_REPORT_KEYS)
            .cloned()
            .collect();
        let mut body = format!("{{\"report_id\":\"{id}\",\"keys\":[");
        for (i, key_id) in take.iter().enumerate() {
            let Some(c) = self.gathered.remove(key_id) else {
                continue;
            };
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"key_id\":\"");
            push_json_string(&mut body, key_id);
            let _ = write!(
                body,
                "\",\"allowed\":{},\"refused\":{},\"last_used\":{}}}",
                c.allowed, c.refused, c.last_used
            );
        }
        body.push_str("]}");
        PendingReport {
            report_id: id,
            body,
        }
    }
}

/// A key id inside a JSON string: ids are visible ASCII (the map refuses others), so only
/// `"` and `\` need escaping.
fn push_json_string(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The usage endpoint beside a key-map URL or path: `…/v1/keymap` → `…/v1/usage`;
/// another path gets `/v1/usage` on the same origin.
pub fn usage_url_of(keymap: &str) -> String {
    if let Some(base) = keymap.strip_suffix("/keymap") {
        return format!("{base}/usage");
    }
    let after_scheme = keymap.find("://").map_or(0, |i| i + 3);
    let origin_end = keymap
        .get(after_scheme..)
        .and_then(|rest| rest.find('/'))
        .map_or(keymap.len(), |i| after_scheme + i);
    format!("{}{USAGE_PATH}", keymap.get(..origin_end).unwrap_or(keymap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2021::*;

    #[test]
    fn gathers_by_key_and_resends_the_same_report_until_acknowledged() {
        let mut r = UsageReporter::new(1000, 0, 9);
        assert!(r.due(1000).is_none(), "nothing gathered, nothing sent");
        r.add("key_a", 3, 1, 60);
        r.add("key_a", 2, 0, 120);
        r.add("key_b", 0, 4, 90);
        r.add("key_c", 0, 0, 90);
        let first = r.due(2000).cloned().expect("due");
        let v: serde_json::Value = serde_json::from_str(&first.body).expect("json");
        assert_eq!(v["report_id"], first.report_id.as_str());
        assert_eq!(
            v["keys"],
            serde_json::json!([
                {"key_id": "key_a", "allowed": 5, "refused": 1, "last_used": 120},
                {"key_id": "key_b", "allowed": 0, "refused": 4, "last_used": 90},
            ])
        );
        // Not acknowledged: the same report again; meanwhile counts gather for the next.
        assert_eq!(r.on_answer(503), ReportFate::Kept);
        assert_eq!(r.on_answer(0), ReportFate::Kept);
        r.add("key_a", 1, 0, 200);
        assert_eq!(r.due(3000).cloned(), Some(first.clone()));
        assert_eq!(
            r.on_answer(200),
            ReportFate::Taken,
            "a duplicate is as good as stored"
        );
        let second = r.due(4000).cloned().expect("due");
        assert_ne!(second.report_id, first.report_id);
        assert!(second.body.contains("\"allowed\":1"));
        assert_eq!(r.on_answer(204), ReportFate::Taken);
        assert!(r.due(5000).is_none());
    }

    #[test]
    fn a_report_refused_as_malformed_is_not_sent_again() {
        let mut r = UsageReporter::new(1000, 0, 3);
        r.add("key_a", 1, 0, 1);
        let first = r.due(1000).cloned().expect("due");
        assert_eq!(r.on_answer(400), ReportFate::Dropped);
        assert!(r.due(2000).is_none(), "nothing new gathered, nothing sent");
        r.add("key_a", 1, 0, 2);
        let next = r.due(3000).cloned().expect("due");
        assert_ne!(next.report_id, first.report_id);
    }

    #[test]
    fn the_usage_endpoint_sits_beside_the_key_map() {
        assert_eq!(
            usage_url_of("http://a:8080/v1/keymap"),
            "http://a:8080/v1/usage"
        );
        assert_eq!(usage_url_of("/v1/keymap"), "/v1/usage");
        assert_eq!(usage_url_of("https://a/keys/map"), "https://a/v1/usage");
        assert_eq!(usage_url_of("http://a:1"), "http://a:1/v1/usage");
    }

    #[test]
    fn ids_with_quotes_stay_inside_their_string() {
        let mut r = UsageReporter::new(10, 0, 1);
        r.add("k\"e\\y", 1, 0, 1);
        let report = r.due(10).cloned().expect("due");
        let v: serde_json::Value = serde_json::from_str(&report.body).expect("json");
        assert_eq!(v["keys"][0]["key_id"], "k\"e\\y");
    }
}
