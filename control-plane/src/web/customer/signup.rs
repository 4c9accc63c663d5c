//! Sign-up and its email link. Signing up checks the address and the password, hashes the
//! password, and mails a link; signing up with an address that has an account mails its
//! owner instead, and the page says the same either way. The link's page asks for the
//! password again (so a link opened by someone else, or by a mail scanner, does nothing),
//! then creates the account and its four keys and shows them once.

use super::forms::{link, message_page, Field, FormPage, FormView, Note};
use super::{CustomerWeb, WebState, FORM_COOKIE};
use crate::customers::email::{mask_email, normalize_email};
use crate::customers::password::{check_length, check_new_password, HashError};
use crate::customers::{
    complete_signup, existing_account_mail, parse_token, signup_mail, start_signup, SignupStarted,
};
use crate::log::log_event;
use crate::store::customers::{Signup, TokenRefusal, TokenState};
use crate::web::session::{NewKeys, Notice, ShownKey};
use crate::web::signin::{form_token, form_token_ok, seconds_text, with_retry_after};
use crate::web::{same_origin, see_other, ClientIp};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SignupForm {
    csrf: String,
    email: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct VerifyForm {
    csrf: String,
    token: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct TokenQuery {
    token: String,
}

/// The checks every signed-out form passes first: sent from this site, readable, with its
/// CSRF token. The error is the answer to send; nothing has changed.
pub(super) fn check_form<T>(
    headers: &HeaderMap,
    form: Result<Form<T>, FormRejection>,
    csrf: impl Fn(&T) -> &str,
) -> Result<T, Response> {
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
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(message_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                Note::Error(
                    "The form is far larger than any of ours (16 KiB at most). Nothing was \
                     changed."
                        .into(),
                ),
                None,
            ))
        }
        Err(_) => {
            return Err(message_page(
                StatusCode::BAD_REQUEST,
                "Form not readable",
                Note::Error(
                    "The form could not be read. Nothing was changed; go back and try again."
                        .into(),
                ),
                None,
            ))
        }
    };
    if !form_token_ok(headers, FORM_COOKIE, csrf(&form)) {
        return Err(message_page(
            StatusCode::FORBIDDEN,
            "Form expired",
            Note::Error(
                "This form had expired or did not come from this site (its CSRF token is \
                 missing or wrong; are cookies off?). Nothing was changed: reload the page and \
                 try again."
                    .into(),
            ),
            None,
        ));
    }
    Ok(form)
}

/// The form's CSRF token and the cookie to set with it, or an error page.
pub(super) fn token_for(
    web: &CustomerWeb,
    headers: &HeaderMap,
) -> Result<(String, Option<HeaderValue>), Response> {
    form_token(headers, FORM_COOKIE, "/", web.secure(headers))
        .map_err(|e| super::internal_text(&e.to_string()))
}

pub(super) fn busy(e: HashError) -> Response {
    match e {
        HashError::Busy => with_retry_after(
            message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                Note::Error("The server is busy checking other passwords. Nothing was changed; try again in a moment.".into()),
                None,
            ),
            std::time::Duration::from_secs(1),
        ),
        HashError::Failed(detail) => super::internal_text(&detail),
    }
}

fn no_mail() -> Response {
    message_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-up is not available",
        Note::Error(
            "Sign-up needs email, and this server has none set up (keygatectl serve \
             --smtp-url or --outbox). Ask the operator."
                .into(),
        ),
        Some(vec![link("/login", "Sign in")]),
    )
}

fn signup_form(csrf: String, email: &str) -> FormPage {
    FormPage::new("Sign up")
        .intro("Create an account with your email and a password. We send a link to confirm the address; your API keys are ready once you open it.")
        .form(FormView {
            action: "/signup",
            csrf,
            token: None,
            fields: vec![Field::email(email), Field::new_password()],
            submit: "Sign up",
        })
        .links(vec![link("/login", "Already have an account? Sign in")])
}

pub async fn signup_page(State(web): WebState, headers: HeaderMap) -> Response {
    if web.options.mailer.is_none() {
        return no_mail();
    }
    let (csrf, cookie) = match token_for(&web, &headers) {
        Ok(t) => t,
        Err(response) => return response,
    };
    signup_form(csrf, "").answer(StatusCode::OK, cookie)
}

pub async fn signup(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<SignupForm>, FormRejection>,
) -> Response {
    let form = match check_form(&headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    if web.options.mailer.is_none() {
        return no_mail();
    }
    let refuse = |message: String, email: &str| {
        signup_form(form.csrf.clone(), email)
            .note(Note::Error(format!("{message} Nothing was saved.")))
            .answer(StatusCode::BAD_REQUEST, None)
    };
    let shown_email: String = form.email.chars().take(300).collect();
    let email = match normalize_email(&form.email) {
        Ok(email) => email,
        Err(problem) => return refuse(problem.to_string(), &shown_email),
    };
    if let Err(problem) = check_new_password(&form.password, &email) {
        return refuse(problem.to_string(), &email);
    }
    if !web
        .signups
        .take(&crate::web::throttle_bucket(ip).to_string())
    {
        log_event(&format!(
            "sign-up refused from {ip}: {} sign-ups from there in the last hour",
            super::SIGNUP_QUOTA
        ));
        return with_retry_after(
            message_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-ups",
                Note::Error("Too many sign-ups from your network in the last hour. Nothing was saved; try again later.".into()),
                None,
            ),
            std::time::Duration::from_secs(600),
        );
    }
    // Hashed whether or not the address has an account: both answers take as long.
    let hash = match web.hasher.hash(form.password.clone()).await {
        Ok(hash) => hash,
        Err(e) => return busy(e),
    };
    let address = email.clone();
    let started = web
        .run(false, move |service, now| {
            start_signup(service, &address, hash, now)
        })
        .await;
    let public_url = &web.options.public_url;
    match started {
        Ok(SignupStarted::New { token }) => {
            log_event(&format!(
                "sign-up for {} waits for its link",
                mask_email(&email)
            ));
            web.mail(signup_mail(public_url, &email, &token));
        }
        Ok(SignupStarted::Existing) => {
            log_event(&format!(
                "sign-up for {}: the address has an account; its owner is told by mail",
                mask_email(&email)
            ));
            web.mail(existing_account_mail(public_url, &email));
        }
        Err(response) => return response,
    }
    FormPage::new("Check your inbox")
        .note(Note::Info(format!(
            "We sent a link to {email}. Open it within 24 hours to confirm the address and get your API keys."
        )))
        .intro("No mail after a few minutes? Check the spam folder, or sign up again to get a new link.")
        .links(vec![link("/login", "Sign in"), link("/signup", "Sign up again")])
        .answer(StatusCode::OK, None)
}

/// What a link's token is worth, as a page when it is not valid.
pub(super) fn token_refused(
    refusal: TokenRefusal,
    what: &str,
    again: super::forms::Link,
) -> Response {
    let (status, title, text) = match refusal {
        TokenRefusal::Unknown => (
            StatusCode::NOT_FOUND,
            "Link not valid",
            format!("This {what} link is not valid: check that you opened the whole link from the mail. Nothing was changed."),
        ),
        TokenRefusal::Used => (
            StatusCode::GONE,
            "Link already used",
            format!("This {what} link was already used; each link works once. Nothing was changed."),
        ),
        TokenRefusal::Expired => (
            StatusCode::GONE,
            "Link expired",
            format!("This {what} link has expired. Nothing was changed; ask for a new one."),
        ),
        TokenRefusal::EmailTaken => (
            StatusCode::CONFLICT,
            "Already confirmed",
            "This address already has an account (confirmed through another link). Sign in instead.".to_string(),
        ),
    };
    message_page(
        status,
        title,
        Note::Error(text),
        Some(vec![link("/login", "Sign in"), again]),
    )
}

pub(super) fn malformed_link() -> Response {
    message_page(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        Note::Error("This link is malformed: open the whole link from the mail (it ends in 64 letters and digits). Nothing was changed.".into()),
        None,
    )
}

fn state_refusal<T>(state: TokenState<T>) -> Result<T, TokenRefusal> {
    match state {
        TokenState::Valid(t) => Ok(t),
        TokenState::Unknown => Err(TokenRefusal::Unknown),
        TokenState::Used => Err(TokenRefusal::Used),
        TokenState::Expired => Err(TokenRefusal::Expired),
    }
}

/// The sign-up a token names, if it may still be used.
async fn pending(web: &Arc<CustomerWeb>, token: &str) -> Result<Signup, Response> {
    let Some(digest) = parse_token(token) else {
        return Err(malformed_link());
    };
    let found = web
        .run(false, move |service, now| {
            let found = service.store().signup(&digest)?;
            Ok(TokenState::of(found, |s| s.used_at, |s| s.expires_at, now))
        })
        .await?;
    state_refusal(found).map_err(|r| token_refused(r, "sign-up", link("/signup", "Sign up again")))
}

fn verify_form(csrf: String, token: &str, email: &str) -> FormPage {
    FormPage::new("Confirm your email")
        .intro("Enter the password you chose when you signed up: this confirms the address, creates your account and its API keys, and signs you in.")
        .form(FormView {
            action: "/verify",
            csrf,
            token: Some(token.to_string()),
            fields: vec![
                Field::fixed_email(email),
                Field::password("current-password", "Password", None),
            ],
            submit: "Confirm and sign in",
        })
}

pub async fn verify_page(
    State(web): WebState,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let token = query.map(|Query(q)| q.token).unwrap_or_default();
    let signup = match pending(&web, &token).await {
        Ok(signup) => signup,
        Err(response) => return response,
    };
    let (csrf, cookie) = match token_for(&web, &headers) {
        Ok(t) => t,
        Err(response) => return response,
    };
    verify_form(csrf, &token, &signup.email).answer(StatusCode::OK, cookie)
}

pub async fn verify(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<VerifyForm>, FormRejection>,
) -> Response {
    let form = match check_form(&headers, form, |f| &f.csrf) {
        Ok(form) => form,
        Err(response) => return response,
    };
    let signup = match pending(&web, &form.token).await {
        Ok(signup) => signup,
        Err(response) => return response,
    };
    let again = |status: StatusCode, message: String| {
        verify_form(form.csrf.clone(), &form.token, &signup.email)
            .note(Note::Error(message))
            .answer(status, None)
    };
    if let Err(wait) = web.throttle.check(ip, Some(&signup.email)) {
        return with_retry_after(
            again(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many wrong passwords. Wait {} and try again.",
                    seconds_text(wait)
                ),
            ),
            wait,
        );
    }
    if let Err(problem) = check_length(&form.password) {
        return again(StatusCode::BAD_REQUEST, problem.to_string());
    }
    let verdict = match web
        .hasher
        .verify(form.password.clone(), Some(signup.password_hash.clone()))
        .await
    {
        Ok(verdict) => verdict,
        Err(e) => return busy(e),
    };
    if !verdict.matches {
        let failure = web.throttle.failed(ip, Some(&signup.email));
        log_event(&format!(
            "sign-up confirmation for {} refused from {ip}: wrong password ({} in a row)",
            mask_email(&signup.email),
            failure.count
        ));
        tokio::time::sleep(failure.delay).await;
        return again(
            StatusCode::UNAUTHORIZED,
            format!(
                "Wrong password: enter the one you chose when you signed up. Each wrong attempt makes the next answer wait longer (this one waited {}).",
                seconds_text(failure.delay)
            ),
        );
    }
    web.throttle.succeeded(ip, Some(&signup.email));
    let Some(digest) = parse_token(&form.token) else {
        return malformed_link();
    };
    let done = web
        .run(true, move |service, now| {
            complete_signup(service, &digest, now, ip)
        })
        .await;
    let welcomed = match done {
        Ok(Ok(welcomed)) => welcomed,
        Ok(Err(refusal)) => {
            return token_refused(refusal, "sign-up", link("/signup", "Sign up again"))
        }
        Err(response) => return response,
    };
    let (user, account, keys) = (
        &welcomed.value.user,
        &welcomed.value.account,
        &welcomed.value.keys,
    );
    let hints: Vec<&str> = keys.iter().map(|k| k.record.hint.as_str()).collect();
    log_event(&format!(
        "sign-up of {} ({}) confirmed: account {} created with keys {} (key map version {})",
        user.id,
        mask_email(&user.email),
        account.id,
        hints.join(", "),
        welcomed.version
    ));
    let (cookie, session) = match web.open_session(&headers, user.id.clone(), ip).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let shown = keys
        .iter()
        .map(|k| ShownKey {
            key_id: k.record.key_id.clone(),
            kind: k.record.kind(),
            plaintext: k.plaintext.clone(),
        })
        .collect();
    web.flash
        .keys(&session, NewKeys::new(account.id.clone(), shown));
    web.flash.notice(
        &session,
        Notice::Info(
            "Your email is confirmed and your account is ready. Here are its four API keys.".into(),
        ),
    );
    let mut response = see_other("/settings/account");
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}
