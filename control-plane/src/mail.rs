//! Email to customers (sign-up links, password resets, notices), sent by a background thread
//! so that no answer waits on (or reveals anything through) a mail server.
//!
//! Two transports, both `lettre`'s: SMTP (`--smtp-url`: `smtp://host:25` in the clear,
//! `smtp://host:587?tls=required` for STARTTLS, `smtps://host:465` for TLS from the start;
//! `user:password@` for AUTH; `--smtp-ca-file` adds a private CA to the public roots),
//! or an outbox directory (`--outbox DIR`) where each mail is
//! written as an `.eml` file, for demos and development. Logs name a mail's subject and a
//! masked recipient, never its body (which holds the link's token).

use crate::customers::email::mask_email;
use crate::log::log_event;
use lettre::message::header::ContentType;
use lettre::message::{Body, Mailbox, SinglePart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{FileTransport, Message, SmtpTransport, Transport};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

/// Mails waiting to be sent at most; past it new ones are dropped (and logged).
const QUEUE: usize = 1000;
/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    // The URL may hold a password: the message never repeats it.
    #[error("--smtp-url is not a usable SMTP URL (smtp://host:port, smtp://host:587?tls=required or smtps://host:465): {0}")]
    BadUrl(String),
    #[error("--smtp-ca-file {path}: {why}")]
    BadCa { path: PathBuf, why: String },
    #[error("--mail-from is not an address (\"keygate <no-reply@example.com>\" or no-reply@example.com): {0}")]
    BadFrom(String),
    #[error("cannot create the outbox directory {path}: {source}")]
    Outbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the mail thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum MailRoute {
    Smtp {
        url: String,
        /// A CA to trust besides the public roots.
        ca_file: Option<PathBuf>,
    },
    Outbox(PathBuf),
}

enum Transporter {
    Smtp(SmtpTransport),
    Outbox(FileTransport),
}

impl Transporter {
    fn send(&self, message: &Message) -> Result<(), String> {
        match self {
            Transporter::Smtp(t) => t.send(message).map(|_| ()).map_err(|e| e.to_string()),
            Transporter::Outbox(t) => t.send(message).map(|_| ()).map_err(|e| e.to_string()),
        }
    }
}

/// A mail to send.
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Mailer {
    queue: SyncSender<Mail>,
    /// Where `.eml` files go, when that is the route (the demo prints it).
    pub outbox: Option<PathBuf>,
}

impl Mailer {
    pub fn start(route: &MailRoute, from: &str) -> Result<Mailer, MailError> {
        let from = Mailbox::from_str(from.trim()).map_err(|e| MailError::BadFrom(e.to_string()))?;
        let (transporter, outbox) = match route {
            MailRoute::Smtp { url, ca_file } => {
                let mut builder = SmtpTransport::from_url(url)
                    // lettre's errors name the part that failed, not the URL.
                    .map_err(|e| MailError::BadUrl(e.to_string()))?
                    .timeout(Some(SMTP_TIMEOUT));
                if let Some(path) = ca_file {
                    builder = builder.tls(tls_with_ca(url, path)?);
                }
                (Transporter::Smtp(builder.build()), None)
            }
            MailRoute::Outbox(dir) => {
                create_private_dir(dir)?;
                (
                    Transporter::Outbox(FileTransport::new(dir)),
                    Some(dir.clone()),
                )
            }
        };
        let (queue, mails) = sync_channel::<Mail>(QUEUE);
        std::thread::Builder::new()
            .name("keygate-mail".into())
            .spawn(move || {
                for mail in mails {
                    // One bad mail must not end the thread (and every mail after it).
                    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        deliver(&transporter, &from, &mail)
                    }));
                    if sent.is_err() {
                        log_event(&format!(
                            "mail \"{}\" to {} not sent: the mail library failed",
                            mail.subject,
                            mask_email(&mail.to)
                        ));
                    }
                }
            })
            .map_err(MailError::Thread)?;
        Ok(Mailer { queue, outbox })
    }

    /// Queues a mail; the answer never waits for it.
    pub fn send(&self, mail: Mail) {
        let (subject, to) = (mail.subject.clone(), mask_email(&mail.to));
        match self.queue.try_send(mail) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => log_event(&format!(
                "mail \"{subject}\" to {to} dropped: the queue is full"
            )),
            Err(TrySendError::Disconnected(_)) => log_event(&format!(
                "mail \"{subject}\" to {to} dropped: the mail thread ended"
            )),
        }
    }
}

fn deliver(transporter: &Transporter, from: &Mailbox, mail: &Mail) {
    let to = mask_email(&mail.to);
    let message = Mailbox::from_str(&mail.to)
        .map_err(|e| e.to_string())
        .and_then(|recipient| {
            // lettre picks the transfer encoding (quoted-printable for the long link lines).
            let body = Body::new(mail.body.clone());
            Message::builder()
                .from(from.clone())
                .to(recipient)
                .subject(mail.subject.clone())
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(body),
                )
                .map_err(|e| e.to_string())
        });
    let outcome = message.and_then(|m| transporter.send(&m));
    match outcome {
        Ok(()) => log_event(&format!("mail \"{}\" to {to} sent", mail.subject)),
        Err(e) => log_event(&format!("mail \"{}\" to {to} not sent: {e}", mail.subject)),
    }
}

/// The outbox holds live links: readable by its owner only.
/// The TLS mode the URL asks for (as lettre reads it), trusting the CA in `path` too.
fn tls_with_ca(url: &str, path: &std::path::Path) -> Result<Tls, MailError> {
    let bad_ca = |why: String| MailError::BadCa {
        path: path.to_path_buf(),
        why,
    };
    let parsed = url::Url::parse(url).map_err(|e| MailError::BadUrl(e.to_string()))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| MailError::BadUrl("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let pem = std::fs::read(path).map_err(|e| bad_ca(e.to_string()))?;
    // lettre takes a file without any certificate as an empty list: say so instead.
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad_ca("no PEM certificate in the file".into()));
    }
    let ca = Certificate::from_pem(&pem).map_err(|e| bad_ca(e.to_string()))?;
    let parameters = TlsParameters::builder(host)
        .add_root_certificate(ca)
        .build_rustls()
        .map_err(|e| bad_ca(e.to_string()))?;
    let mode = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    match (parsed.scheme(), mode.as_deref()) {
        ("smtps", _) => Ok(Tls::Wrapper(parameters)),
        ("smtp", Some("required")) => Ok(Tls::Required(parameters)),
        ("smtp", Some("opportunistic")) => Ok(Tls::Opportunistic(parameters)),
        _ => Err(bad_ca(
            "a CA needs TLS: smtps:// or smtp://…?tls=required".into(),
        )),
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), MailError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| MailError::Outbox {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(url: &str) -> MailRoute {
        MailRoute::Smtp {
            url: url.into(),
            ca_file: None,
        }
    }

    #[test]
    fn a_private_ca_is_read_and_needs_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let with = |url: &str, ca: &std::path::Path| MailRoute::Smtp {
            url: url.into(),
            ca_file: Some(ca.into()),
        };
        let e = Mailer::start(&with("smtps://127.0.0.1:465", &missing), "a@example.com")
            .err()
            .expect("refused");
        assert!(matches!(e, MailError::BadCa { .. }), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let e = Mailer::start(&with("smtps://127.0.0.1:465", &garbage), "a@example.com")
            .err()
            .expect("refused");
        assert!(matches!(e, MailError::BadCa { .. }), "{e}");
    }

    #[test]
    fn bad_settings_are_refused_without_repeating_the_url() {
        let url = "ftp://user:hunter2-secret@mail.example.com";
        let e = Mailer::start(&smtp(url), "no-reply@example.com")
            .err()
            .expect("refused");
        assert!(matches!(e, MailError::BadUrl(_)));
        assert!(!e.to_string().contains("hunter2"));
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Mailer::start(&MailRoute::Outbox(dir.path().into()), "not an address")
            .err()
            .expect("refused");
        assert!(matches!(e, MailError::BadFrom(_)));
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://127.0.0.1:587?tls=required",
            "smtps://127.0.0.1:465",
        ] {
            assert!(
                Mailer::start(&smtp(url), "keygate <no-reply@example.com>").is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn the_outbox_gets_one_eml_file_a_mail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = dir.path().join("outbox");
        let mailer = Mailer::start(
            &MailRoute::Outbox(outbox.clone()),
            "keygate <no-reply@example.com>",
        )
        .expect("start");
        mailer.send(Mail {
            to: "ann@example.com".into(),
            subject: "Hello".into(),
            body: "Open http://127.0.0.1/verify?token=abc\n".into(),
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let file = loop {
            let found = std::fs::read_dir(&outbox)
                .expect("outbox")
                .filter_map(Result::ok)
                .find(|e| e.path().extension().is_some_and(|x| x == "eml"));
            if let Some(found) = found {
                break found.path();
            }
            assert!(std::time::Instant::now() < deadline, "no mail written");
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = std::fs::read_to_string(file).expect("read");
        assert!(text.contains("To: ann@example.com"), "{text}");
        assert!(text.contains("Subject: Hello"));
        assert!(text.contains("verify?token=abc"));
    }
}
