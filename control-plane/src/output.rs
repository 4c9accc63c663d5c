//! Human-readable output: aligned tables and short sentences. (`--json` prints the API's
//! JSON shapes instead.) Every function returns the text; the caller writes it.

use crate::clock::{format_utc, now_unix};
use crate::duration::format_duration;
use crate::model::{
    AccountDetailView, AccountView, AuditEventView, BulkImportView, CreatedAccountView,
    IssuedKeyView, KeyView, RolledView,
};
use crate::rate_limits::describe;
use crate::web::html::used_ago;

const SHOWN_ONCE: &str =
    "Store the plaintext now: it is shown this once, and keygatectl keeps only its digest.";

/// Columns padded to their widest cell (counted in characters: hints contain '…').
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn time(t: Option<u64>) -> String {
    t.map_or_else(|| "-".into(), format_utc)
}

fn kind(key: &KeyView) -> String {
    key.kind().to_string()
}

pub fn accounts(accounts: &[AccountView]) -> String {
    if accounts.is_empty() {
        return "No accounts yet: create one with `keygatectl account create`.\n".into();
    }
    let rows: Vec<Vec<String>> = accounts
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.name.clone().unwrap_or_else(|| "-".into()),
                format_utc(a.created_at),
            ]
        })
        .collect();
    table(&["ACCOUNT ID", "NAME", "CREATED"], &rows)
}

pub fn keys(keys: &[KeyView]) -> String {
    keys_at(keys, now_unix())
}

fn keys_at(keys: &[KeyView], now: u64) -> String {
    if keys.is_empty() {
        return "No keys.\n".into();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.clone(),
                k.account_id.clone(),
                kind(k),
                k.hint.clone(),
                k.name.clone().unwrap_or_else(|| "-".into()),
                k.status.clone(),
                time(k.expires_at),
                k.last_used_at
                    .map_or_else(|| "never".into(), |at| used_ago(at, now)),
                format_utc(k.created_at),
            ]
        })
        .collect();
    table(
        &[
            "KEY ID",
            "ACCOUNT",
            "KIND",
            "HINT",
            "NAME",
            "STATUS",
            "EXPIRES",
            "LAST USED",
            "CREATED",
        ],
        &rows,
    )
}

/// The audit trail, oldest first (the events come newest first).
pub fn audit(events: &[AuditEventView]) -> String {
    if events.is_empty() {
        return "No events.\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .rev()
        .map(|e| {
            let who = match &e.actor.id {
                Some(id) => format!("{} {id}", e.actor.kind),
                None => e.actor.kind.clone(),
            };
            let ids: Vec<&str> = e.key_ids.iter().map(String::as_str).take(3).collect();
            let mut keys = ids.join(" ");
            if e.key_ids.len() > 3 {
                keys.push_str(&format!(" (+{} more)", e.key_ids.len() - 3));
            }
            vec![
                format_utc(e.at),
                who,
                e.actor.client.clone().unwrap_or_else(|| "-".into()),
                e.action.clone(),
                e.account_id.clone().unwrap_or_else(|| "-".into()),
                if keys.is_empty() { "-".into() } else { keys },
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["WHEN", "WHO", "FROM", "WHAT", "ACCOUNT", "KEYS", "DETAIL"],
        &rows,
    )
}

pub fn imported(imported: &BulkImportView) -> String {
    let (added, unchanged) = (imported.added.len(), imported.unchanged.len());
    if imported.dry_run {
        format!(
            "Dry run: {added} keys would be added, {unchanged} are already stored and would \
             stay as they are. Nothing was written.\n"
        )
    } else {
        format!(
            "Imported {added} keys ({unchanged} already stored, left as they are); key map \
             version {}.\n",
            imported.version
        )
    }
}

fn account_heading(account: &AccountView) -> String {
    match &account.name {
        Some(name) => format!("{} ({name})", account.id),
        None => account.id.clone(),
    }
}

pub fn account_detail(detail: &AccountDetailView) -> String {
    let limit = detail
        .account
        .rate_limit
        .as_ref()
        .map_or(String::new(), |l| {
            format!("; default rate limit {}", describe(l))
        });
    format!(
        "Account {}, created {}{limit}\n\n{}",
        account_heading(&detail.account),
        format_utc(detail.account.created_at),
        keys(&detail.keys)
    )
}

fn issued_rows(keys: &[&IssuedKeyView]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.record.key_id.clone(),
                kind(&k.record),
                k.plaintext.clone(),
            ]
        })
        .collect();
    table(&["KEY ID", "KIND", "KEY"], &rows)
}

pub fn created_account(created: &CreatedAccountView) -> String {
    let keys: Vec<&IssuedKeyView> = created.keys.iter().collect();
    format!(
        "Created account {} with {} keys.\n\n{}\n{SHOWN_ONCE}\n",
        account_heading(&created.account),
        keys.len(),
        issued_rows(&keys)
    )
}

pub fn issued_key(key: &IssuedKeyView) -> String {
    format!(
        "Created key for account {}.\n\n{}\n{SHOWN_ONCE}\n",
        key.record.account_id,
        issued_rows(&[key])
    )
}

pub fn rolled(rolled: &RolledView, now: u64) -> String {
    let old = &rolled.old_key;
    let old_fate = match old.expires_at {
        Some(at) if at > now => format!(
            "keeps working until {} (in {}), then leaves the key map",
            format_utc(at),
            format_duration(at - now)
        ),
        _ => "stopped working now".into(),
    };
    format!(
        "Rolled key {} ({}): it {old_fate}.\n\n{}\n{SHOWN_ONCE}\n",
        old.key_id,
        old.hint,
        issued_rows(&[&rolled.new_key])
    )
}

pub fn renamed(key: &KeyView) -> String {
    match &key.name {
        Some(name) => format!("Key {} ({}) is now named “{name}”.\n", key.key_id, key.hint),
        None => format!("Key {} ({}) has no name now.\n", key.key_id, key.hint),
    }
}

pub fn rate_limited(key: &KeyView) -> String {
    match &key.rate_limit {
        Some(limit) => format!(
            "Key {} ({}) is limited to {}.\n",
            key.key_id,
            key.hint,
            describe(limit)
        ),
        None => format!("Key {} ({}) has no rate limit now.\n", key.key_id, key.hint),
    }
}

pub fn account_rate_limited(account: &AccountView) -> String {
    match &account.rate_limit {
        Some(limit) => format!(
            "Account {} limits each key without a limit of its own to {}.\n",
            account.id,
            describe(limit)
        ),
        None => format!("Account {} has no default rate limit now.\n", account.id),
    }
}

pub fn key_changed(key: &KeyView, verb: &str) -> String {
    format!(
        "Key {} ({}) {verb}; status: {}.\n",
        key.key_id, key.hint, key.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_by_characters() {
        let text = table(
            &["A", "HINT"],
            &[
                vec!["x".into(), "sk_…abcd".into()],
                vec!["longer".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "A       HINT");
        assert_eq!(lines[1], "x       sk_…abcd");
        assert_eq!(lines[2], "longer  -");
    }
}
