//! One poll over HTTP for the sync thread: the poller's request out, the answer back.
//!
//! The HTTP client reaches keygatectl directly, or through the proxy the configuration
//! names, never through the proxy variables of Envoy's environment (a client inside Envoy
//! inherits them, and a proxy would see the sync token and the map). The answer is read in
//! pieces, and the thread stops between two pieces once its configuration is gone.

#![forbid(unsafe_code)]

use crate::sync::Shared;
use keygate_sync_core::poller::{AnswerHead, PollRequest, MAX_BODY_BYTES, STORE_HEADER};
use keygate_sync_core::settings::PollConfig;
use std::io::Read;
use std::time::Duration;

/// How much of an answer is read at a time, between two looks at whether to stop.
const PIECE: usize = 64 << 10;

pub struct Fetch {
    agent: ureq::Agent,
}

/// An answer as read off the wire.
pub struct Answer {
    status: u16,
    content_type: Option<Vec<u8>>,
    store: Option<Vec<u8>>,
    pub body: Vec<u8>,
    /// The body's length, or more than `MAX_BODY_BYTES` when it was longer (then `body` is
    /// only its start, and the poller refuses it unread).
    body_len: usize,
}

impl Answer {
    pub fn head(&self) -> AnswerHead<'_> {
        AnswerHead {
            status: self.status,
            content_type: self.content_type.as_deref(),
            store: self.store.as_deref(),
            body_len: self.body_len,
        }
    }
}

pub enum Exchange {
    Answered(Answer),
    Failed(String),
    /// The configuration ended during the poll.
    Stopped,
}

impl Fetch {
    pub fn new(config: &PollConfig) -> Fetch {
        let proxy = config
            .proxy
            .as_deref()
            .and_then(|url| ureq::Proxy::new(url).ok());
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(proxy)
            .timeout_global(Some(Duration::from_millis(config.fetch.timeout_ms)))
            .build()
            .into();
        Fetch { agent }
    }

    /// Whether this client goes through a proxy (the one configured, or none).
    #[cfg(test)]
    pub fn proxy(&self) -> Option<&ureq::Proxy> {
        self.agent.config().proxy()
    }

    /// POSTs a JSON body (a usage report); answers the status.
    pub fn post_json(&self, url: &str, body: &str, token: Option<&str>) -> Result<u16, String> {
        let mut call = self
            .agent
            .post(url)
            .header("content-type", "application/json");
        if let Some(token) = token {
            call = call.header("authorization", format!("Bearer {token}"));
        }
        match call.send(body) {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => Err(format!("the report failed: {e}")),
        }
    }

    pub fn exchange(&self, base: &str, request: &PollRequest, shared: &Shared) -> Exchange {
        // A watch's timeout sits above its wait.
        let mut call = self
            .agent
            .get(format!("{base}{}", request.query))
            .config()
            .timeout_global(Some(Duration::from_millis(request.timeout_ms)))
            .build();
        for (name, value) in &request.headers {
            call = call.header(*name, value.as_str());
        }
        let mut response = match call.call() {
            Ok(response) => response,
            Err(e) => return Exchange::Failed(format!("the call failed: {e}")),
        };
        let header = |name: &str| response.headers().get(name).map(|v| v.as_bytes().to_vec());
        let status = response.status().as_u16();
        let content_type = header("content-type");
        let store = header(STORE_HEADER);
        let mut reader = response.body_mut().as_reader();
        let mut body = Vec::new();
        let mut piece = vec![0u8; PIECE];
        loop {
            if shared.is_stopped() {
                return Exchange::Stopped;
            }
            match reader.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => {
                    body.extend_from_slice(piece.get(..n).unwrap_or_default());
                    if body.len() > MAX_BODY_BYTES {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Exchange::Failed(format!("cannot read the answer: {e}")),
            }
        }
        Exchange::Answered(Answer {
            status,
            content_type,
            store,
            body_len: body.len(),
            body,
        })
    }
}
