//! The blocking HTTP client behind `--server`: the same operations as the local store, over
//! the admin API.

use crate::model::{
    AccountDetailView, AccountListView, AccountView, AuditListView, BulkImportRequest,
    BulkImportView, CreateAccountRequest, CreateKeyRequest, CreatedAccountView, ErrorBody,
    ImportKeyRequest, IssuedKeyView, KeyListView, KeyView, RateLimitRequest, RenameKeyRequest,
    RollKeyRequest, RolledView,
};
use crate::service::{KeyChange, KeySpec};
use crate::store::AuditQuery;
use keygate_core::config::RawLimit;
use keygate_sync_core::message::KeyMapMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the server URL {0:?} must start with http:// or https://")]
    BadUrl(String),
    #[error("cannot reach the server at {url}: {detail}")]
    Transport { url: String, detail: String },
    /// The server answered with an error of its own.
    #[error("the server answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the server's answer ({status}) could not be read: {detail}")]
    BadAnswer { status: u16, detail: String },
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    admin_token: String,
}

/// `{"rate_limit": {...}}`, or `{"rate_limit": null}` to remove it.
fn rate_limit_request(limit: Option<&RawLimit>) -> RateLimitRequest {
    RateLimitRequest {
        rate_limit: limit.map_or(serde_json::Value::Null, |l| {
            serde_json::json!({"requests": l.requests, "per": l.per.as_str(), "burst": l.burst})
        }),
    }
}

impl Client {
    pub fn new(server: &str, admin_token: String) -> Result<Client, ClientError> {
        let base = server_base(server)?;
        let config = ureq::Agent::config_builder()
            // Error answers carry a JSON body worth reading: keep them as answers.
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build();
        Ok(Client {
            agent: config.into(),
            base,
            admin_token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = self
            .agent
            .get(&url)
            .header("authorization", format!("Bearer {}", self.admin_token))
            .call();
        read_answer(&url, response)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let json = serde_json::to_string(body).map_err(|e| ClientError::BadAnswer {
            status: 0,
            detail: format!("cannot encode the request: {e}"),
        })?;
        let response = self
            .agent
            .post(&url)
            .header("authorization", format!("Bearer {}", self.admin_token))
            .header("content-type", "application/json")
            .send(json);
        read_answer(&url, response)
    }

    pub fn create_account(&self, name: Option<&str>) -> Result<CreatedAccountView, ClientError> {
        let request = CreateAccountRequest {
            name: name.map(String::from),
        };
        self.post("/v1/accounts", &request)
    }

    pub fn accounts(&self) -> Result<AccountListView, ClientError> {
        self.get("/v1/accounts")
    }

    pub fn account(&self, account_id: &str) -> Result<AccountDetailView, ClientError> {
        self.get(&format!("/v1/accounts/{}", encode_component(account_id)))
    }

    pub fn keys(&self, account_id: Option<&str>) -> Result<KeyListView, ClientError> {
        match account_id {
            Some(id) => self.get(&format!("/v1/keys?account_id={}", encode_component(id))),
            None => self.get("/v1/keys"),
        }
    }

    pub fn create_key(
        &self,
        account_id: &str,
        spec: &KeySpec,
    ) -> Result<IssuedKeyView, ClientError> {
        let request = CreateKeyRequest {
            account_id: account_id.to_string(),
            key_type: spec.kind.key_type,
            environment: spec.kind.environment,
            name: spec.name.clone(),
            expires_in_seconds: None,
            expires_at: spec.expires_at,
        };
        self.post("/v1/keys", &request)
    }

    pub fn import_key(&self, request: &ImportKeyRequest) -> Result<KeyView, ClientError> {
        self.post("/v1/keys/import", request)
    }

    pub fn import_keys(&self, request: &BulkImportRequest) -> Result<BulkImportView, ClientError> {
        self.post("/v1/keys/bulk-import", request)
    }

    pub fn set_rate_limit(
        &self,
        key_id: &str,
        limit: Option<&RawLimit>,
    ) -> Result<KeyView, ClientError> {
        self.post(
            &format!("/v1/keys/{}/rate-limit", encode_component(key_id)),
            &rate_limit_request(limit),
        )
    }

    pub fn set_account_rate_limit(
        &self,
        account_id: &str,
        limit: Option<&RawLimit>,
    ) -> Result<AccountView, ClientError> {
        self.post(
            &format!("/v1/accounts/{}/rate-limit", encode_component(account_id)),
            &rate_limit_request(limit),
        )
    }

    pub fn rename_key(&self, key_id: &str, name: Option<&str>) -> Result<KeyView, ClientError> {
        let request = RenameKeyRequest {
            name: name.map(String::from),
        };
        self.post(
            &format!("/v1/keys/{}/rename", encode_component(key_id)),
            &request,
        )
    }

    pub fn audit(&self, query: &AuditQuery) -> Result<AuditListView, ClientError> {
        let mut params = vec![format!("limit={}", query.limit)];
        if let Some(account) = &query.account_id {
            params.push(format!("account_id={}", encode_component(account)));
        }
        if let Some(since) = query.since {
            params.push(format!("since={since}"));
        }
        if let Some(before) = query.before {
            params.push(format!("before={before}"));
        }
        self.get(&format!("/v1/audit?{}", params.join("&")))
    }

    pub fn roll_key(
        &self,
        key_id: &str,
        grace_seconds: u64,
        name: Option<&str>,
    ) -> Result<RolledView, ClientError> {
        let request = RollKeyRequest {
            expires_in_seconds: Some(grace_seconds),
            name: name.map(String::from),
        };
        self.post(
            &format!("/v1/keys/{}/roll", encode_component(key_id)),
            &request,
        )
    }

    pub fn change_key(&self, key_id: &str, change: KeyChange) -> Result<KeyView, ClientError> {
        let path = format!("/v1/keys/{}/{}", encode_component(key_id), change.action());
        self.post(&path, &serde_json::json!({}))
    }

    pub fn key_map(&self) -> Result<KeyMapMessage, ClientError> {
        self.get("/v1/keymap")
    }
}

/// The server URL without a trailing slash, checked for a scheme.
pub fn server_base(server: &str) -> Result<String, ClientError> {
    let base = server.trim().trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        Ok(base.to_string())
    } else {
        Err(ClientError::BadUrl(server.to_string()))
    }
}

fn read_answer<T: DeserializeOwned>(
    url: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, ClientError> {
    let mut response = response.map_err(|e| ClientError::Transport {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| ClientError::BadAnswer {
            status,
            detail: e.to_string(),
        })?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&body).map_err(|e| ClientError::BadAnswer {
            status,
            detail: e.to_string(),
        });
    }
    match serde_json::from_str::<ErrorBody>(&body) {
        Ok(error) => Err(ClientError::Api {
            status,
            code: error.error.code,
            message: error.error.message,
        }),
        Err(_) => Err(ClientError::BadAnswer {
            status,
            detail: "not a keygatectl error answer (is this the right server?)".into(),
        }),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so an id typed by a
/// person can never change the path or query it is put into.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_for_paths() {
        assert_eq!(encode_component("key_AZaz09-._~"), "key_AZaz09-._~");
        assert_eq!(encode_component("a/../b?c"), "a%2F..%2Fb%3Fc");
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn server_urls_need_a_scheme() {
        assert!(matches!(
            Client::new("localhost:8080", "t".into()),
            Err(ClientError::BadUrl(_))
        ));
        assert!(Client::new("http://127.0.0.1:8080/", "t".into()).is_ok());
    }
}
