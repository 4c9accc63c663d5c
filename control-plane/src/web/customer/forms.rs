//! The customer's signed-out pages share one template (`customer/form_page.html`): a
//! heading, a notice, an optional form and some links. Built here.

use crate::web::views::{render, Chrome, NoticeView};
use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: &'static str,
    pub value: String,
    pub autocomplete: &'static str,
    /// `maxlength`; 0 for none.
    pub max: usize,
    pub readonly: bool,
    pub help: Option<String>,
}

impl Field {
    pub fn email(value: &str) -> Field {
        Field {
            name: "email",
            label: "Email",
            kind: "email",
            value: value.to_string(),
            autocomplete: "username",
            max: crate::customers::email::MAX_EMAIL_BYTES,
            readonly: false,
            help: None,
        }
    }

    pub fn fixed_email(value: &str) -> Field {
        Field {
            readonly: true,
            ..Field::email(value)
        }
    }

    pub fn password(
        autocomplete: &'static str,
        label: &'static str,
        help: Option<String>,
    ) -> Field {
        Field {
            name: "password",
            label,
            kind: "password",
            value: String::new(),
            autocomplete,
            max: 0,
            readonly: false,
            help,
        }
    }

    /// A new password's field, with what it must be.
    pub fn new_password() -> Field {
        use crate::customers::password::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
        Field::password(
            "new-password",
            "Password",
            Some(format!(
                "At least {MIN_PASSWORD_CHARS} characters (at most {MAX_PASSWORD_BYTES}), hard \
                 to guess: a passphrase of several unrelated words works well."
            )),
        )
    }
}

pub struct FormView {
    pub action: &'static str,
    pub csrf: String,
    /// The link's token, carried from the page to its form.
    pub token: Option<String>,
    pub fields: Vec<Field>,
    pub submit: &'static str,
}

pub struct Link {
    pub href: &'static str,
    pub text: &'static str,
}

pub const fn link(href: &'static str, text: &'static str) -> Link {
    Link { href, text }
}

/// A message, as the page words it.
pub enum Note {
    Info(String),
    Error(String),
}

#[derive(Template)]
#[template(path = "customer/form_page.html")]
pub struct FormPage {
    pub chrome: Chrome,
    pub heading: String,
    pub notice: Option<NoticeView>,
    pub intro: Option<String>,
    pub form: Option<FormView>,
    pub links: Vec<Link>,
}

impl FormPage {
    pub fn new(title: &str) -> FormPage {
        FormPage {
            chrome: Chrome::customer(title, None),
            heading: title.to_string(),
            notice: None,
            intro: None,
            form: None,
            links: Vec::new(),
        }
    }

    pub fn note(mut self, note: Note) -> FormPage {
        self.notice = Some(match note {
            Note::Info(text) => NoticeView::info(text),
            Note::Error(text) => NoticeView::error(text),
        });
        self
    }

    pub fn intro(mut self, text: impl Into<String>) -> FormPage {
        self.intro = Some(text.into());
        self
    }

    pub fn form(mut self, form: FormView) -> FormPage {
        self.form = Some(form);
        self
    }

    pub fn links(mut self, links: Vec<Link>) -> FormPage {
        self.links = links;
        self
    }

    /// The answer, setting the form's CSRF cookie when it is new.
    pub fn answer(&self, status: StatusCode, set_cookie: Option<HeaderValue>) -> Response {
        let mut response = render(status, self);
        if let Some(cookie) = set_cookie {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// A page that only says something (and links on).
pub fn message_page(
    status: StatusCode,
    title: &str,
    note: Note,
    links: Option<Vec<Link>>,
) -> Response {
    let links =
        links.unwrap_or_else(|| vec![link("/login", "Sign in"), link("/signup", "Sign up")]);
    FormPage::new(title)
        .note(note)
        .links(links)
        .answer(status, None)
}
