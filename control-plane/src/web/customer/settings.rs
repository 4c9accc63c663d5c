//! Settings → Account: the signed-in customer's four keys, masked (prefix and last four) with
//! their names, created and last-rolled times, when each was last used and a 30-day chart of
//! its requests; each rollable now or after a grace period, and nameable. An old key in its
//! grace period can be ended at once (and says when nobody has used it since the roll). A
//! key just made (at sign-up or by a roll) is shown once, in full, on the page the form
//! leads to. The account's recent activity (the audit trail) closes the page. Another
//! account's key is "not found", whatever its id: nothing tells it exists.

use super::forms::{link, message_page, Note};
use super::login::check_signed_in_post;
use super::WebState;
use crate::log::log_event;
use crate::model::{AccountUsageView, AuditEventView, KeyUsageView, KeyView};
use crate::service::KeyChange;
use crate::service::ServiceError;
use crate::store::Actor;
use crate::store::AuditQuery;
use crate::store::StoreError;
use crate::web::pages::GRACE_CHOICES;
use crate::web::session::{NewKeys, Notice, ShownKey};
use crate::web::usage_chart::CHART_DAYS;
use crate::web::views::{render, shown_keys, Chrome, KeyRow, NoticeView, ShownKeyView, Stamp};
use crate::web::{url_segment, ClientIp};
use askama::Template;
use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keygate_core::key::{Environment, KeyType};
use serde::Deserialize;
use std::collections::HashMap;

pub struct KeyGroup {
    pub id: &'static str,
    pub title: &'static str,
    pub rows: Vec<KeyRow>,
}

#[derive(Template)]
#[template(path = "customer/settings_account.html")]
pub struct SettingsAccount {
    pub chrome: Chrome,
    pub email: String,
    pub account_id: String,
    pub created: Stamp,
    pub csrf: String,
    pub notice: Option<NoticeView>,
    pub new_keys: Vec<ShownKeyView>,
    pub groups: Vec<KeyGroup>,
    pub grace_choices: Vec<(u64, &'static str)>,
    pub session_ends: Stamp,
    pub activity: Vec<ActivityRow>,
}

/// One event of the account's audit trail, as its customer reads it.
pub struct ActivityRow {
    pub at: Stamp,
    pub what: String,
    pub who: String,
    pub from: String,
    pub detail: String,
}

/// Events shown on the page.
const ACTIVITY_SHOWN: usize = 20;

fn what_happened(action: &str) -> &'static str {
    match action {
        "account.created" => "Account created",
        "user.signed_up" => "Signed up: the account and its keys were created",
        "key.created" => "Key created",
        "key.rolled" => "Key rolled",
        "key.revoked" => "Key revoked",
        "key.disabled" => "Key disabled",
        "key.enabled" => "Key enabled",
        "key.renamed" => "Key renamed",
        "key.imported" => "Keys imported",
        "user.signed_in" => "Signed in",
        "user.signed_out" => "Signed out",
        "user.signed_out_everywhere" => "Signed out everywhere",
        "user.password_reset" => "Password reset",
        "user.disabled" => "Sign-in disabled",
        "user.enabled" => "Sign-in enabled",
        "account.disabled" => "Account's sign-in disabled",
        "account.enabled" => "Account's sign-in enabled",
        _ => "Changed",
    }
}

/// Who, in the customer's words; the address only for their own actions (an operator's is
/// not theirs to see).
fn activity_row(event: &AuditEventView, user_id: &str) -> ActivityRow {
    let own = event.actor.kind == "customer" && event.actor.id.as_deref() == Some(user_id);
    let who = match event.actor.kind.as_str() {
        "customer" if own => "you",
        "customer" => "another person of the account",
        "server" => "keygate",
        _ => "the operator",
    };
    ActivityRow {
        at: Stamp::new(event.at),
        what: what_happened(&event.action).to_string(),
        who: who.to_string(),
        from: match (&event.actor.client, own) {
            (Some(client), true) => client.clone(),
            _ => String::new(),
        },
        detail: event.detail.clone().unwrap_or_default(),
    }
}

pub async fn settings_root() -> Response {
    crate::web::see_other("/settings/account")
}

/// Keys in use (and old keys still in their grace period), by environment, secret first,
/// each with its use.
fn groups(
    keys: &[KeyView],
    usage: &AccountUsageView,
    last_report: Option<u64>,
    now: u64,
) -> Vec<KeyGroup> {
    let usage: HashMap<&str, &KeyUsageView> =
        usage.keys.iter().map(|u| (u.key_id.as_str(), u)).collect();
    let last_rolled: HashMap<&str, u64> = keys
        .iter()
        .filter_map(|k| Some((k.replaced_by.as_deref()?, k.rolled_at?)))
        .collect();
    let mut live: Vec<&KeyView> = keys
        .iter()
        .filter(|k| matches!(k.status.as_str(), "active" | "expiring" | "disabled"))
        .collect();
    live.sort_by(|a, b| {
        let rank = |k: &KeyView| (k.key_type == KeyType::Publishable, k.expires_at.is_some());
        rank(a).cmp(&rank(b)).then(b.created_at.cmp(&a.created_at))
    });
    [
        (Environment::Test, "test-keys", "Test keys"),
        (
            Environment::Production,
            "production-keys",
            "Production keys",
        ),
    ]
    .into_iter()
    .map(|(environment, id, title)| KeyGroup {
        id,
        title,
        rows: live
            .iter()
            .filter(|k| k.environment == environment)
            .map(|k| {
                KeyRow::new(k, last_rolled.get(k.key_id.as_str()).copied(), now).with_usage(
                    k,
                    usage.get(k.key_id.as_str()).copied(),
                    last_report,
                    now,
                )
            })
            .collect(),
    })
    .collect()
}

pub async fn account_page(State(web): WebState, headers: HeaderMap) -> Response {
    let signed = match web.signed_in(&headers).await {
        Ok(Some(signed)) => signed,
        Ok(None) => return crate::web::see_other("/login?m=expired"),
        Err(response) => return response,
    };
    let account_id = signed.owner.account.id.clone();
    let detail = web
        .run(false, move |service, now| {
            let keys = service.keys(Some(&account_id), now)?;
            let usage = service.account_usage(&account_id, CHART_DAYS, now)?;
            let last_report = service.store().last_report_at()?;
            let activity = service.audit(&AuditQuery {
                account_id: Some(account_id.clone()),
                since: None,
                before: None,
                limit: ACTIVITY_SHOWN,
            })?;
            Ok((keys, usage, last_report, activity, now))
        })
        .await;
    let (keys, usage, last_report, activity, now) = match detail {
        Ok(detail) => detail,
        Err(response) => return response,
    };
    // Taken now: whatever happens next, these plaintexts are gone from the server.
    let (notice, new_keys) = web.flash.take(&signed.id);
    let new_keys = new_keys.filter(|k| k.account_id == signed.owner.account.id);
    let page = SettingsAccount {
        chrome: Chrome::customer("Settings → Account", Some(&signed.csrf)),
        email: signed.owner.user.email.clone(),
        account_id: signed.owner.account.id.clone(),
        created: Stamp::new(signed.owner.account.created_at),
        csrf: signed.csrf.clone(),
        notice: notice.map(NoticeView::from),
        new_keys: shown_keys(new_keys),
        groups: groups(&keys, &usage, last_report, now),
        grace_choices: GRACE_CHOICES.to_vec(),
        session_ends: Stamp::new(signed.owner.expires_at),
        activity: activity
            .events
            .iter()
            .map(|e| activity_row(e, &signed.owner.user.id))
            .collect(),
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RollForm {
    csrf: String,
    grace: String,
    name: String,
}

fn not_yours() -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "No such key",
        Note::Error("There is no such key in your account. Nothing was changed.".into()),
        Some(vec![link(
            "/settings/account",
            "Back to Settings → Account",
        )]),
    )
}

pub async fn roll_key(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<RollForm>, FormRejection>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    let signed = match check_signed_in_post(&web, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Ok(Path(key_id)) = path else {
        return not_yours();
    };
    let grace = form
        .grace
        .parse::<u64>()
        .ok()
        .filter(|g| GRACE_CHOICES.iter().any(|(s, _)| s == g));
    let Some(grace) = grace else {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Choose when the old key stops",
            Note::Error("Choose when the old key stops: now, in 1 hour, in 24 hours or in 7 days. Nothing was changed.".into()),
            Some(vec![link("/settings/account", "Back to Settings → Account")]),
        );
    };
    let account_id = signed.owner.account.id.clone();
    let id = key_id.clone();
    let actor = Actor::customer(&signed.owner.user.id, ip);
    let rolled = web
        .run(true, move |service, now| {
            // Only the signed-in account's keys: any other id is "not found".
            match service.store().key(&id) {
                Ok(key) if key.account_id == account_id => {}
                Ok(_) | Err(StoreError::KeyNotFound(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            match service.roll_key(&id, grace, None, now, &actor) {
                Ok(rolled) => Ok(Some(Ok(rolled))),
                Err(ServiceError::Store(e @ StoreError::KeyState { .. })) => {
                    Ok(Some(Err(e.to_string())))
                }
                Err(e) => Err(e),
            }
        })
        .await;
    let rolled = match rolled {
        Ok(Some(rolled)) => rolled,
        Ok(None) => {
            log_event(&format!(
                "roll of key {} refused for {}: not a key of account {}",
                crate::web::url_segment(&key_id),
                signed.owner.user.id,
                signed.owner.account.id
            ));
            return not_yours();
        }
        Err(response) => return response,
    };
    let rolled = match rolled {
        Ok(rolled) => rolled,
        Err(message) => {
            web.flash.notice(
                &signed.id,
                Notice::Error(format!("Nothing was changed: {message}.")),
            );
            return crate::web::see_other("/settings/account");
        }
    };
    let (old, new) = (&rolled.value.old_key, &rolled.value.new_key);
    log_event(&format!(
        "key {} ({}) rolled to {} ({}) by {}; old key expires at {} (key map version {})",
        old.key_id,
        old.hint,
        new.record.key_id,
        new.record.hint,
        signed.owner.user.id,
        old.expires_at.unwrap_or_default(),
        rolled.version
    ));
    let when = match old.expires_at {
        Some(at) if grace > 0 => format!("keeps working until {}", crate::clock::format_utc(at)),
        _ => "stopped working".into(),
    };
    web.flash.keys(
        &signed.id,
        NewKeys::new(
            old.account_id.clone(),
            vec![ShownKey {
                key_id: new.record.key_id.clone(),
                kind: new.record.kind(),
                plaintext: new.plaintext.clone(),
            }],
        ),
    );
    web.flash.notice(
        &signed.id,
        Notice::Info(format!(
            "Rolled the {}: the old key {} {when}.",
            crate::web::html::kind_label(old.kind()).to_lowercase(),
            old.hint
        )),
    );
    crate::web::see_other(&format!(
        "/settings/account#{}",
        url_segment(&new.record.key_id)
    ))
}

/// What a key form does besides rolling.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyEdit {
    Rename,
    /// End an old key in its roll's grace period now.
    EndGrace,
}

/// `POST /settings/account/keys/{key_id}/rename` (`name`; empty removes it).
pub async fn rename_key(
    state: State<std::sync::Arc<super::CustomerWeb>>,
    ip: ClientIp,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<RollForm>, FormRejection>,
) -> Response {
    edit_key(state, ip, headers, path, form, KeyEdit::Rename).await
}

/// `POST /settings/account/keys/{key_id}/revoke`: only an old key still in its grace period
/// (the customer's other keys are ended by rolling them).
pub async fn revoke_key(
    state: State<std::sync::Arc<super::CustomerWeb>>,
    ip: ClientIp,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<RollForm>, FormRejection>,
) -> Response {
    edit_key(state, ip, headers, path, form, KeyEdit::EndGrace).await
}

async fn edit_key(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<RollForm>, FormRejection>,
    edit: KeyEdit,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    let signed = match check_signed_in_post(&web, &headers, &form.csrf).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Ok(Path(key_id)) = path else {
        return not_yours();
    };
    let account_id = signed.owner.account.id.clone();
    let actor = Actor::customer(&signed.owner.user.id, ip);
    let id = key_id.clone();
    let name = form.name;
    let done = web
        .run(false, move |service, now| {
            let key = match service.store().key(&id) {
                Ok(key) if key.account_id == account_id => key,
                Ok(_) | Err(StoreError::KeyNotFound(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let result = match edit {
                KeyEdit::Rename => service.rename_key(&id, Some(&name), now, &actor),
                KeyEdit::EndGrace if key.replaced_by.is_none() || !key.in_key_map(now) => {
                    return Ok(Some(Err(
                        "only an old key still in its grace period can be ended here; roll a key to replace it"
                            .to_string(),
                    )))
                }
                KeyEdit::EndGrace => service
                    .change_key(&id, KeyChange::Revoke, now, &actor)
                    .map(|changed| changed.value),
            };
            match result {
                Ok(key) => Ok(Some(Ok(key))),
                Err(ServiceError::Invalid(message)) => Ok(Some(Err(message))),
                Err(ServiceError::Store(e @ StoreError::KeyState { .. })) => {
                    Ok(Some(Err(e.to_string())))
                }
                Err(e) => Err(e),
            }
        })
        .await;
    let key = match done {
        Ok(Some(Ok(key))) => key,
        Ok(Some(Err(message))) => {
            web.flash.notice(
                &signed.id,
                Notice::Error(format!("Nothing was changed: {message}.")),
            );
            return crate::web::see_other("/settings/account");
        }
        Ok(None) => return not_yours(),
        Err(response) => return response,
    };
    if edit == KeyEdit::EndGrace {
        web.app.refresh_key_map_status();
    }
    let label = crate::web::html::kind_label(key.kind()).to_lowercase();
    let said = match edit {
        KeyEdit::Rename => {
            log_event(&format!(
                "key {} ({}) renamed by {}",
                key.key_id, key.hint, signed.owner.user.id
            ));
            match &key.name {
                Some(name) => format!("The {label} {} is now named “{name}”.", key.hint),
                None => format!("The {label} {} has no name now.", key.hint),
            }
        }
        KeyEdit::EndGrace => {
            log_event(&format!(
                "old key {} ({}) ended by {}",
                key.key_id, key.hint, signed.owner.user.id
            ));
            format!("The old {label} {} stopped working.", key.hint)
        }
    };
    web.flash.notice(&signed.id, Notice::Info(said));
    crate::web::see_other(&format!("/settings/account#{}", url_segment(&key.key_id)))
}
