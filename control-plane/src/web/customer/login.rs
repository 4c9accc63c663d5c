//! Signing in and out, and resetting a forgotten password by email. A wrong email and a
//! wrong password get the same answer after the same work (an unknown email is checked
//! against a stand-in hash); failures slow down per address and per email.

use super::forms::{link, message_page, Field, FormPage, FormView, Note};
use super::signup::{busy, check_form, malformed_link, token_for, token_refused};
use super::{CustomerWeb, WebState};
use crate::customers::email::{mask_email, normalize_email};
use crate::customers::password::{check_length, check_new_password};
use crate::customers::{parse_token, password_changed_mail, reset_mail, start_reset};
use crate::log::log_event;
use crate::store::customers::{PasswordReset, TokenRefusal, TokenState};
use crate::web::signin::{seconds_text, session_csrf_ok, with_retry_after};
use crate::web::{same_origin, see_other, ClientIp};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    email: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginQuery {
    m: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct EmailForm {
    csrf: String,
    email: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ResetForm {
    csrf: String,
    token: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TokenQuery {
    token: String,
}

const WRONG: &str = "Wrong email or password. (Signed up but not confirmed yet? Open the link we mailed you first.)";

fn login_form(csrf: String, email: &str) -> FormPage {
    FormPage::new("Sign in")
        .form(FormView {
            action: "/login",
            csrf,
            token: None,
            fields: vec![
                Field::email(email),
                Field::password("current-password", "Password", None),
            ],
            submit: "Sign in",
        })
        .links(vec![
            link("/signup", "No account yet? Sign up"),
            link("/forgot", "Forgot your password?"),
        ])
}

pub async fn login_page(
    State(web): WebState,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    if let Ok(Some(_)) = web.signed_in(&headers).await {
        return see_other("/settings/account");
    }
    let (csrf, cookie) = match token_for(&web, &headers) {
        Ok(t) => t,
        Err(response) => return response,
    };
    let reason = query.map(|Query(q)| q.m).unwrap_or_default();
    let note = match reason.as_str() {
        "signed-out" => Some("You are signed out."),
        "everywhere" => Some("You are signed out on every device."),
        "expired" => Some("Your session has ended. Sign in again."),
        "password-changed" => Some("Your password is changed, and every session was signed out. Sign in with the new password."),
        _ => None,
    };
    let mut page = login_form(csrf, "");
    if let Some(note) = note {
        page = page.note(Note::Info(note.into()));
    }
    page.answer(StatusCode::OK, cookie)
}

pub async fn login(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match check_form(&headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let shown_email: String = form.email.chars().take(300).collect();
    let again = |status: StatusCode, message: String, email: &str| {
        login_form(form.csrf.clone(), email)
            .note(Note::Error(message))
            .answer(status, None)
    };
    let email = match normalize_email(&form.email) {
        Ok(email) => email,
        Err(problem) => return again(StatusCode::BAD_REQUEST, problem.to_string(), &shown_email),
    };
    // Throttled first: while a wait runs, nothing about the attempt is looked at.
    if let Err(wait) = web.throttle.check(ip, Some(&email)) {
        return with_retry_after(
            again(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many failed sign-ins. Wait {} and try again.",
                    seconds_text(wait)
                ),
                &email,
            ),
            wait,
        );
    }
    if let Err(problem) = check_length(&form.password) {
        return again(StatusCode::BAD_REQUEST, problem.to_string(), &email);
    }
    let address = email.clone();
    let found = web
        .run(false, move |service, _| {
            let Some(user) = service.store().user_by_email(&address)? else {
                return Ok(None);
            };
            let account = service.store().account(&user.account_id)?;
            Ok(Some((user, account)))
        })
        .await;
    let found = match found {
        Ok(found) => found,
        Err(response) => return response,
    };
    let stored = found.as_ref().map(|(user, _)| user.password_hash.clone());
    let verdict = match web.hasher.verify(form.password.clone(), stored).await {
        Ok(verdict) => verdict,
        Err(e) => return busy(e),
    };
    let user = match found {
        Some((user, account)) if verdict.matches => {
            if user.disabled_at.is_some() || account.disabled_at.is_some() {
                log_event(&format!(
                    "sign-in of {} refused from {ip}: disabled by the operator",
                    user.id
                ));
                return again(
                    StatusCode::FORBIDDEN,
                    "This sign-in is disabled by the operator. Contact them to have it enabled."
                        .into(),
                    &email,
                );
            }
            user
        }
        _ => {
            let failure = web.throttle.failed(ip, Some(&email));
            crate::metrics::sign_in_failed(crate::metrics::SignIn::Customer);
            log_event(&format!(
                "sign-in as {} refused from {ip}: wrong email or password ({} in a row)",
                mask_email(&email),
                failure.count
            ));
            tokio::time::sleep(failure.delay).await;
            return again(
                StatusCode::UNAUTHORIZED,
                format!("{WRONG} Each failed attempt makes the next answer wait longer (this one waited {}).", seconds_text(failure.delay)),
                &email,
            );
        }
    };
    web.throttle.succeeded(ip, Some(&email));
    if verdict.needs_rehash {
        // Stronger parameters than when it was set: store a new hash of the same password.
        if let Ok(hash) = web.hasher.hash(form.password.clone()).await {
            let id = user.id.clone();
            let _ = web
                .run(false, move |service, _| {
                    Ok(service.store().set_password_hash(&id, &hash)?)
                })
                .await;
        }
    }
    let (cookie, _) = match web.open_session(&headers, user.id.clone()).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    log_event(&format!("sign-in of {} from {ip}", user.id));
    let mut response = see_other("/settings/account");
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// The checks of a signed-in form without fields: same site, a live session, its CSRF token.
pub(super) async fn check_signed_in_post(
    web: &Arc<CustomerWeb>,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<super::Signed, Response> {
    if !same_origin(headers) {
        return Err(message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            Note::Error(
                "This form was sent from another site, so it was refused. Nothing was changed."
                    .into(),
            ),
            None,
        ));
    }
    let Some(signed) = web.signed_in(headers).await? else {
        return Err(see_other("/login?m=expired"));
    };
    if !session_csrf_ok_for(headers, csrf) {
        return Err(message_page(
            StatusCode::FORBIDDEN,
            "Form expired",
            Note::Error("This form is out of date or did not come from this page (its CSRF token is missing or wrong). Nothing was changed: reload the page and try again.".into()),
            Some(vec![link("/settings/account", "Back to Settings → Account")]),
        ));
    }
    Ok(signed)
}

fn session_csrf_ok_for(headers: &HeaderMap, presented: &str) -> bool {
    crate::web::signin::cookie_value(headers, super::SESSION_COOKIE)
        .is_some_and(|id| session_csrf_ok(&id, presented))
}

fn csrf_of(form: Result<Form<CsrfForm>, FormRejection>) -> String {
    form.map(|Form(f)| f.csrf).unwrap_or_default()
}

pub async fn logout(
    State(web): WebState,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let signed = match check_signed_in_post(&web, &headers, &csrf_of(form)).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let id = signed.id;
    if let Err(response) = web
        .run(false, move |service, _| {
            Ok(service.store().delete_session(&id)?)
        })
        .await
    {
        return response;
    }
    log_event(&format!("sign-out of {}", signed.owner.user.id));
    let mut response = see_other("/login?m=signed-out");
    response
        .headers_mut()
        .append(header::SET_COOKIE, web.clear_session_cookie(&headers));
    response
}

pub async fn logout_everywhere(
    State(web): WebState,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let signed = match check_signed_in_post(&web, &headers, &csrf_of(form)).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let user_id = signed.owner.user.id.clone();
    let ended = match web
        .run(false, move |service, _| {
            Ok(service.store().delete_user_sessions(&user_id)?)
        })
        .await
    {
        Ok(ended) => ended,
        Err(response) => return response,
    };
    log_event(&format!(
        "sign-out everywhere of {}: {ended} sessions ended",
        signed.owner.user.id
    ));
    let mut response = see_other("/login?m=everywhere");
    response
        .headers_mut()
        .append(header::SET_COOKIE, web.clear_session_cookie(&headers));
    response
}

fn forgot_form(csrf: String, email: &str) -> FormPage {
    FormPage::new("Reset your password")
        .intro("Enter your account's email: we mail you a link to choose a new password. It works once, for 1 hour.")
        .form(FormView {
            action: "/forgot",
            csrf,
            token: None,
            fields: vec![Field::email(email)],
            submit: "Mail me a link",
        })
        .links(vec![link("/login", "Sign in")])
}

fn no_mail() -> Response {
    message_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Password reset is not available",
        Note::Error(
            "Resetting a password needs email, and this server has none set up. Ask the operator."
                .into(),
        ),
        Some(vec![link("/login", "Sign in")]),
    )
}

pub async fn forgot_page(State(web): WebState, headers: HeaderMap) -> Response {
    if web.options.mailer.is_none() {
        return no_mail();
    }
    let (csrf, cookie) = match token_for(&web, &headers) {
        Ok(t) => t,
        Err(response) => return response,
    };
    forgot_form(csrf, "").answer(StatusCode::OK, cookie)
}

pub async fn forgot(
    State(web): WebState,
    headers: HeaderMap,
    form: Result<Form<EmailForm>, FormRejection>,
) -> Response {
    let form = match check_form(&headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    if web.options.mailer.is_none() {
        return no_mail();
    }
    let email = match normalize_email(&form.email) {
        Ok(email) => email,
        Err(problem) => {
            let shown: String = form.email.chars().take(300).collect();
            return forgot_form(form.csrf.clone(), &shown)
                .note(Note::Error(problem.to_string()))
                .answer(StatusCode::BAD_REQUEST, None);
        }
    };
    let address = email.clone();
    let token = match web
        .run(false, move |service, now| {
            start_reset(service, &address, now)
        })
        .await
    {
        Ok(token) => token,
        Err(response) => return response,
    };
    if let Some(token) = token {
        log_event(&format!("password reset for {} mailed", mask_email(&email)));
        web.mail(reset_mail(&web.options.public_url, &email, &token));
    }
    FormPage::new("Check your inbox")
        .note(Note::Info(format!(
            "If an account uses {email}, we sent it a link to choose a new password. It works once, for 1 hour."
        )))
        .links(vec![link("/login", "Sign in"), link("/forgot", "Send another link")])
        .answer(StatusCode::OK, None)
}

async fn pending_reset(web: &Arc<CustomerWeb>, token: &str) -> Result<PasswordReset, Response> {
    let Some(digest) = parse_token(token) else {
        return Err(malformed_link());
    };
    let state = web
        .run(false, move |service, now| {
            let found = service.store().password_reset(&digest)?;
            Ok(TokenState::of(found, |r| r.used_at, |r| r.expires_at, now))
        })
        .await?;
    let refusal = match state {
        TokenState::Valid(reset) => return Ok(reset),
        TokenState::Unknown => TokenRefusal::Unknown,
        TokenState::Used => TokenRefusal::Used,
        TokenState::Expired => TokenRefusal::Expired,
    };
    Err(token_refused(
        refusal,
        "password reset",
        link("/forgot", "Send a new link"),
    ))
}

fn reset_form(csrf: String, token: &str, email: &str) -> FormPage {
    FormPage::new("Choose a new password")
        .intro("Choosing a new password signs you out on every device.")
        .form(FormView {
            action: "/reset",
            csrf,
            token: Some(token.to_string()),
            fields: vec![Field::fixed_email(email), Field::new_password()],
            submit: "Change password",
        })
}

pub async fn reset_page(
    State(web): WebState,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let token = query.map(|Query(q)| q.token).unwrap_or_default();
    let reset = match pending_reset(&web, &token).await {
        Ok(reset) => reset,
        Err(response) => return response,
    };
    let (csrf, cookie) = match token_for(&web, &headers) {
        Ok(t) => t,
        Err(response) => return response,
    };
    reset_form(csrf, &token, &reset.email).answer(StatusCode::OK, cookie)
}

pub async fn reset(
    State(web): WebState,
    headers: HeaderMap,
    form: Result<Form<ResetForm>, FormRejection>,
) -> Response {
    let form = match check_form(&headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let reset = match pending_reset(&web, &form.token).await {
        Ok(reset) => reset,
        Err(response) => return response,
    };
    if let Err(problem) = check_new_password(&form.password, &reset.email) {
        return reset_form(form.csrf.clone(), &form.token, &reset.email)
            .note(Note::Error(format!("{problem} Nothing was changed.")))
            .answer(StatusCode::BAD_REQUEST, None);
    }
    let hash = match web.hasher.hash(form.password.clone()).await {
        Ok(hash) => hash,
        Err(e) => return busy(e),
    };
    let Some(digest) = parse_token(&form.token) else {
        return malformed_link();
    };
    let done = web
        .run(false, move |service, now| {
            Ok(service
                .store()
                .complete_password_reset(&digest, &hash, now)?)
        })
        .await;
    let user = match done {
        Ok(Ok(user)) => user,
        Ok(Err(refusal)) => {
            return token_refused(
                refusal,
                "password reset",
                link("/forgot", "Send a new link"),
            )
        }
        Err(response) => return response,
    };
    log_event(&format!(
        "password of {} changed by a reset link; every session ended",
        user.id
    ));
    web.mail(password_changed_mail(&web.options.public_url, &user.email));
    let mut response = see_other("/login?m=password-changed");
    response
        .headers_mut()
        .append(header::SET_COOKIE, web.clear_session_cookie(&headers));
    response
}
