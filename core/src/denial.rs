//! Every way a request can be refused: one table of reason → status → code → message →
//! response-code details, so the answer, the logs and the stats always agree.

use crate::prelude::*;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Denial {
    MissingCredentials,
    MalformedCredentials,
    InvalidApiKey,
    ExpiredApiKey,
    DisabledApiKey,
    InsufficientPermissions,
    WrongEnvironment,
    /// No key map has arrived yet (sync mode, before the first fetch): fail closed.
    KeyMapUnavailable,
    /// A valid key over its rate limit.
    RateLimited,
    /// A request reached a filter with no configuration (wasm: a stream whose root is not
    /// configured): fail closed.
    NotConfigured,
    /// The filter itself failed on this request (native: a caught panic): fail closed.
    InternalError,
}

impl Denial {
    pub const ALL: [Denial; 11] = [
        Denial::MissingCredentials,
        Denial::MalformedCredentials,
        Denial::InvalidApiKey,
        Denial::ExpiredApiKey,
        Denial::DisabledApiKey,
        Denial::InsufficientPermissions,
        Denial::WrongEnvironment,
        Denial::KeyMapUnavailable,
        Denial::RateLimited,
        Denial::NotConfigured,
        Denial::InternalError,
    ];

    /// This denial's position in `ALL` (declaration order), for tables indexed by denial.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn status(self) -> u32 {
        match self {
            Denial::MissingCredentials
            | Denial::MalformedCredentials
            | Denial::InvalidApiKey
            | Denial::ExpiredApiKey
            | Denial::DisabledApiKey => 401,
            Denial::InsufficientPermissions | Denial::WrongEnvironment => 403,
            Denial::KeyMapUnavailable | Denial::NotConfigured => 503,
            Denial::RateLimited => 429,
            Denial::InternalError => 500,
        }
    }

    /// The stable code in the JSON body and the stats name.
    pub fn code(self) -> &'static str {
        match self {
            Denial::MissingCredentials => "missing_credentials",
            Denial::MalformedCredentials => "malformed_credentials",
            Denial::InvalidApiKey => "invalid_api_key",
            Denial::ExpiredApiKey => "expired_api_key",
            Denial::DisabledApiKey => "disabled_api_key",
            Denial::InsufficientPermissions => "insufficient_permissions",
            Denial::WrongEnvironment => "wrong_environment",
            Denial::KeyMapUnavailable => "key_map_unavailable",
            Denial::RateLimited => "rate_limited",
            Denial::NotConfigured => "not_configured",
            Denial::InternalError => "internal_error",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Denial::MissingCredentials => "No API key was given. Send 'Authorization: token <key>' or 'Authorization: Basic <base64 of account_id:key>'.",
            Denial::MalformedCredentials => "The Authorization header could not be read as an API key credential.",
            Denial::InvalidApiKey => "The API key is not valid.",
            Denial::ExpiredApiKey => "The API key has expired. Use the key that replaced it.",
            Denial::DisabledApiKey => "The API key is disabled.",
            Denial::InsufficientPermissions => "This API key is not allowed to make this call. Publishable keys may only retrieve single objects; use a secret key.",
            Denial::WrongEnvironment => "This API key belongs to another environment than this endpoint.",
            Denial::KeyMapUnavailable => "API keys cannot be checked yet. Retry shortly.",
            Denial::RateLimited => "This API key made more requests than its rate limit allows. Retry after the time in the Retry-After header.",
            Denial::NotConfigured => "The API gateway is not configured to check API keys yet. Retry shortly.",
            Denial::InternalError => "The API gateway failed to check this request.",
        }
    }

    /// Envoy response-code details (no spaces allowed there): shows in access logs as
    /// `%RESPONSE_CODE_DETAILS%`.
    pub fn details(self) -> &'static str {
        match self {
            Denial::MissingCredentials => "keygate_missing_credentials",
            Denial::MalformedCredentials => "keygate_malformed_credentials",
            Denial::InvalidApiKey => "keygate_invalid_api_key",
            Denial::ExpiredApiKey => "keygate_expired_api_key",
            Denial::DisabledApiKey => "keygate_disabled_api_key",
            Denial::InsufficientPermissions => "keygate_insufficient_permissions",
            Denial::WrongEnvironment => "keygate_wrong_environment",
            Denial::KeyMapUnavailable => "keygate_key_map_unavailable",
            Denial::RateLimited => "keygate_rate_limited",
            Denial::NotConfigured => "keygate_not_configured",
            Denial::InternalError => "keygate_internal_error",
        }
    }

    /// The JSON body of the answer. Built from fixed strings only: nothing the client sent
    /// is echoed.
    pub fn body(self) -> String {
        format!(
            "{{\"error\":{{\"code\":\"{}\",\"message\":\"{}\"}}}}",
            self.code(),
            self.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_code_and_message() {
        for d in Denial::ALL {
            let v: serde_json::Value = serde_json::from_str(&d.body()).expect("valid JSON");
            assert_eq!(v["error"]["code"], d.code());
            assert_eq!(v["error"]["message"], d.message());
            assert!(!d.details().contains(' '));
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, d) in Denial::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
    }

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(Denial::MissingCredentials.status(), 401);
        assert_eq!(Denial::ExpiredApiKey.status(), 401);
        assert_eq!(Denial::InsufficientPermissions.status(), 403);
        assert_eq!(Denial::WrongEnvironment.status(), 403);
        assert_eq!(Denial::KeyMapUnavailable.status(), 503);
        assert_eq!(Denial::NotConfigured.status(), 503);
        assert_eq!(Denial::RateLimited.status(), 429);
        assert_eq!(Denial::InternalError.status(), 500);
    }
}
