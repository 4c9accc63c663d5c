//! Which `Host` names the server answers to. A web page an operator visits can rebind its own
//! name to 127.0.0.1 and then read or drive this server from the browser (DNS rebinding); the
//! browser still sends that page's name as `Host`. So requests are answered only for IP
//! literals (a rebinding attack needs a name), `localhost`, and the names given with
//! `--allowed-host` (exactly, or `*.example.com` for its subdomains).

use crate::model::{ErrorBody, ErrorDetail};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The paths answered whatever the `Host`: load balancers, Envoy's health checks and
/// Kubernetes' probes name the cluster or the pod, and the answers tell a rebinding page
/// nothing.
const HEALTH_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];

#[derive(Debug, thiserror::Error)]
#[error(
    "--allowed-host {0:?} is not a host name (letters, digits, '-' and '.', optionally \
     starting with \"*.\"; no port)"
)]
pub struct HostNameError(String);

#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    /// Lowercase names without a trailing dot.
    exact: Vec<String>,
    /// Lowercase suffixes with their leading dot (`.example.com` for `*.example.com`).
    suffixes: Vec<String>,
}

impl AllowedHosts {
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> Result<AllowedHosts, HostNameError> {
        let mut allowed = AllowedHosts::default();
        for name in names {
            let normalized = name.trim().trim_end_matches('.').to_ascii_lowercase();
            let (wildcard, bare) = match normalized.strip_prefix("*.") {
                Some(bare) => (true, bare),
                None => (false, normalized.as_str()),
            };
            if !is_host_name(bare) {
                return Err(HostNameError(name));
            }
            if wildcard {
                allowed.suffixes.push(format!(".{bare}"));
            } else {
                allowed.exact.push(bare.to_string());
            }
        }
        Ok(allowed)
    }

    /// True when a request naming `authority` (a `Host` value: host and optional port) may
    /// be answered.
    pub fn allows(&self, authority: &str) -> bool {
        let Some(host) = host_of(authority.trim()) else {
            return false;
        };
        // host_of checked that brackets hold an IPv6 address.
        if host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        name == "localhost"
            || self.exact.contains(&name)
            || self
                .suffixes
                .iter()
                .any(|suffix| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
    }

    /// The configured names, as given (for the start-up log line).
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = vec!["IP addresses".into(), "localhost".into()];
        names.extend(self.exact.iter().cloned());
        names.extend(self.suffixes.iter().map(|s| format!("*{s}")));
        names.join(", ")
    }
}

/// True when a request's `Host` (and request-target authority, if any) is allowed, or the
/// request is for a health path.
pub fn request_allowed(allowed: &AllowedHosts, request: &Request) -> bool {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or(""));
    let target = request.uri().authority().map(|a| a.as_str());
    let named = host.is_some() || target.is_some();
    let ok = named && host.into_iter().chain(target).all(|h| allowed.allows(h));
    ok || HEALTH_PATHS.contains(&request.uri().path())
}

/// The answer to a request whose `Host` is not allowed: 421 with a JSON error.
pub fn misdirected() -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "host_not_allowed".into(),
            message: "this server does not answer to that Host name; use its IP address or \
                      localhost, or start it with --allowed-host NAME"
                .into(),
        },
    };
    (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
}

/// The host of an authority (`name`, `name:port`, `1.2.3.4:port`, `[::1]:port`); `None`
/// when it is malformed.
fn host_of(authority: &str) -> Option<&str> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        authority[1..end].parse::<Ipv6Addr>().ok()?;
        let rest = &authority[end + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(rest.strip_prefix(':')?)
        };
        (&authority[..=end], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port {
        port.parse::<u16>().ok()?;
    }
    (!host.is_empty()).then_some(host)
}

/// Letters, digits, '-' and '.' in non-empty labels.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(names: &[&str]) -> AllowedHosts {
        AllowedHosts::new(names.iter().map(|n| n.to_string())).expect("names")
    }

    #[test]
    fn ip_literals_and_localhost_are_allowed_by_default() {
        let hosts = AllowedHosts::default();
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.0.0.11:8080",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
        ] {
            assert!(hosts.allows(host), "{host}");
        }
        for host in [
            "",
            "keygatectl",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "127.1",
            "0x7f.0.0.1",
            "[::1",
            "[evil]:80",
            "localhost:99999",
            "localhost:x",
            "user@localhost",
            "::1",
        ] {
            assert!(!hosts.allows(host), "{host}");
        }
    }

    #[test]
    fn configured_names_are_allowed_exactly_or_by_subdomain() {
        let hosts = allowed(&["keygatectl", "Keys.Example.com.", "*.svc.cluster.local"]);
        assert!(hosts.allows("keygatectl"));
        assert!(hosts.allows("keygatectl:8080"));
        assert!(hosts.allows("keys.example.com"));
        assert!(hosts.allows("KEYS.EXAMPLE.COM:443"));
        assert!(hosts.allows("keygatectl.keygate.svc.cluster.local:8080"));
        assert!(!hosts.allows("svc.cluster.local"));
        assert!(!hosts.allows("keygatectl.evil"));
        assert!(!hosts.allows("example.com"));
        assert!(!hosts.allows("xkeys.example.com"));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [
            "",
            "*.",
            "a b",
            "host:8080",
            "http://host",
            "*",
            "a..b",
            "*.*.x",
        ] {
            assert!(AllowedHosts::new([name.to_string()]).is_err(), "{name}");
        }
    }
}
