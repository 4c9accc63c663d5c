//! Human-readable output: aligned tables and short sentences. (`--json` prints the API's
//! JSON shapes instead.) Every function returns the text; the caller writes it.

use crate::clock::format_utc;
use crate::duration::format_duration;
use crate::model::{
    AccountDetailView, AccountView, CreatedAccountView, IssuedKeyView, KeyView, RolledView,
};

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
                k.status.clone(),
                time(k.expires_at),
                format_utc(k.created_at),
            ]
        })
        .collect();
    table(
        &[
            "KEY ID", "ACCOUNT", "KIND", "HINT", "STATUS", "EXPIRES", "CREATED",
        ],
        &rows,
    )
}

fn account_heading(account: &AccountView) -> String {
    match &account.name {
        Some(name) => format!("{} ({name})", account.id),
        None => account.id.clone(),
    }
}

pub fn account_detail(detail: &AccountDetailView) -> String {
    format!(
        "Account {}, created {}\n\n{}",
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
