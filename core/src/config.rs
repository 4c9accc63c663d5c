//! The filter's plugin configuration: JSON in, validated `FilterConfig` out, or a
//! `ConfigError` naming the field and what is wrong with it.

use crate::prelude::*;

use crate::credentials::{AcceptedSchemes, Scheme};
use crate::digest::{Digest, DigestError};
use crate::fields::{as_bool, as_choice, as_str, as_u64, strings, Fields, Path};
use crate::json::{self, SyntaxError, Value};
use crate::key::{is_issued_key, Environment, KeyKind, KeyType};
use crate::keymap::{KeyEntry, KeyMap};
use crate::policy::{
    parse_method, IdPattern, MethodError, Policy, RetrieveById, Rule, Template, TemplateError,
};
use crate::rate_limit::{LimitError, Period, RateLimit};
use alloc::sync::Arc;
use core::fmt;
use hashbrown::HashMap;
use serde::Deserialize;

/// The config schema this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Default cap on a presented key's length, checked before hashing.
pub const DEFAULT_MAX_KEY_LENGTH: usize = 128;
pub const DEFAULT_REALM: &str = "keygate";
pub const DEFAULT_API_PREFIXES: [&str; 2] = ["/v3", "/api/v1"];

/// Where the identity of an authenticated caller goes, as request headers to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityHeaders {
    /// One header per field, in the order account id, key id, key type, environment.
    Separate([String; 4]),
    /// The four fields in one structured header (see `identity::combined_value`): one
    /// header mutation per request instead of four, each of which Envoy charges for.
    Combined(String),
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders::Separate(DEFAULT_IDENTITY_HEADERS.map(String::from))
    }
}

/// The separate identity headers' default names.
pub const DEFAULT_IDENTITY_HEADERS: [&str; 4] = [
    "x-keygate-account-id",
    "x-keygate-key-id",
    "x-keygate-key-type",
    "x-keygate-environment",
];

/// The combined identity header's usual name (the README's and the examples').
pub const DEFAULT_IDENTITY_HEADER: &str = "x-keygate-identity";

/// At most: four configured names, the four default per-field names, the default combined
/// name. A request's `identity_sent` is a bit set over this list.
pub const MAX_STRIPPED_HEADERS: usize = 9;

impl IdentityHeaders {
    /// The header names keygate sets.
    pub fn names(&self) -> &[String] {
        match self {
            IdentityHeaders::Separate(names) => names,
            IdentityHeaders::Combined(name) => core::slice::from_ref(name),
        }
    }

    /// Every identity header name keygate could set in either form, removed from every
    /// request before it goes on: an upstream (or the access log) reading the other form's
    /// names must not find a client's copy there. The names this configuration sets come
    /// first, in `names()` order, so a slot of one is the same slot in the other.
    pub fn stripped(&self) -> Vec<String> {
        let mut all: Vec<String> = self.names().to_vec();
        let others = DEFAULT_IDENTITY_HEADERS
            .iter()
            .chain(core::iter::once(&DEFAULT_IDENTITY_HEADER));
        for name in others {
            if !all.iter().any(|n| n == name) {
                all.push((*name).to_owned());
            }
        }
        all
    }
}

/// Everything but the keys: how requests are read and judged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub schemes: AcceptedSchemes,
    pub max_key_length: usize,
    /// A listener bound to one environment refuses the other's keys.
    pub environment: Option<Environment>,
    pub policy: Policy,
    pub identity_headers: IdentityHeaders,
    /// `identity_headers.stripped()`, computed once.
    pub stripped_headers: Vec<String>,
    pub keep_authorization: bool,
    /// The `WWW-Authenticate` value of a 401: one challenge per accepted scheme.
    pub www_authenticate: String,
    /// The wasm filter's worker VMs each keep a key's rate-limit state, and each admits
    /// this share of the limit (set it to Envoy's `--concurrency`). The native module keeps
    /// one state for all workers and ignores it.
    pub rate_limit_workers: u32,
    /// Allowed requests of a limited key get `RateLimit-Policy` and `RateLimit` on their
    /// response too (off by default: each header costs every response).
    pub rate_limit_headers: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub settings: Settings,
    /// The plugin configuration's own keys: the whole map in static mode; in sync mode the
    /// bootstrap map served until the first synced map arrives.
    pub keys: KeyMap,
    /// Sync mode: the shared-data namespace the fetcher service publishes to.
    pub sync_namespace: Option<String>,
}

/// What is wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's path, e.g. `keys[3].digest`; empty for the document as a whole.
    pub field: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not JSON (configs are read with `json`, whose messages never quote the input).
    Syntax(SyntaxError),
    NotAnObject,
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    MissingField,
    /// The member names an object accepts.
    UnknownField(&'static [&'static str]),
    DuplicateField,
    /// The strings a field accepts.
    UnknownVariant(&'static [&'static str]),
    /// The largest value the field accepts.
    NotAWholeNumber(u64),
    NumberTooLarge,
    UnsupportedVersion(u32),
    Digest(DigestError),
    PlaintextKey,
    DuplicateDigest,
    UnknownScheme,
    NoSchemes,
    BadRealm,
    MaxKeyLengthOutOfRange,
    BadHeaderName,
    DuplicateHeaderName,
    IdentityModes,
    BadIdentifier,
    EmptyMethods,
    BadName,
    BadSyncPath,
    BadSyncUrl,
    NoSyncUrl,
    OutOfRange(&'static str, &'static str),
    Method(MethodError),
    Template(TemplateError),
    RateLimit(LimitError),
    /// A problem said by its message alone (the binary map's, the fetchers' settings').
    Message(&'static str),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Syntax(e) => write!(f, "not JSON: {e}"),
            Problem::NotAnObject => f.write_str("the configuration must be a JSON object"),
            Problem::WrongType { expected, got } => write!(f, "expected {expected}, got {got}"),
            Problem::MissingField => f.write_str("required field missing"),
            Problem::UnknownField(allowed) => {
                f.write_str("unknown field; expected one of ")?;
                write_names(f, allowed)
            }
            Problem::DuplicateField => f.write_str("given twice"),
            Problem::UnknownVariant(choices) => {
                f.write_str("must be one of ")?;
                write_names(f, choices)
            }
            Problem::NotAWholeNumber(max) => write!(f, "must be a whole number from 0 to {max}"),
            Problem::NumberTooLarge => f.write_str("number too large"),
            Problem::UnsupportedVersion(v) => write!(
                f,
                "unsupported config version {v}; this keygate reads version {CONFIG_VERSION}"
            ),
            Problem::Digest(e) => e.fmt(f),
            Problem::PlaintextKey => f.write_str(
                "looks like a plaintext API key; configs hold only SHA-256 digests (see `keygatectl hash`)",
            ),
            Problem::DuplicateDigest => f.write_str("digest given by an earlier key too"),
            Problem::UnknownScheme => f.write_str("unknown scheme; use token, bearer or basic"),
            Problem::NoSchemes => f.write_str("at least one scheme must be accepted"),
            Problem::BadRealm => {
                f.write_str("must be 1-64 visible ASCII characters without '\"' or '\\'")
            }
            Problem::MaxKeyLengthOutOfRange => f.write_str("must be between 16 and 1024"),
            Problem::BadHeaderName => f.write_str(
                "must be a lower-case header name (a-z, 0-9, '-'), not a pseudo-header, authorization or host",
            ),
            Problem::DuplicateHeaderName => f.write_str("names the same header as another field"),
            Problem::IdentityModes => f.write_str(
                "give either identity_header (one combined header) or identity_headers (one per field), not both",
            ),
            Problem::BadIdentifier => {
                f.write_str("must be 1-128 visible ASCII characters and not a plaintext key")
            }
            Problem::EmptyMethods => f.write_str("must list at least one method"),
            Problem::BadName => {
                f.write_str("must be 1-128 characters of letters, digits, '-', '_', '.', ':'")
            }
            Problem::BadSyncPath => {
                f.write_str("must start with '/' and hold no query, fragment or spaces")
            }
            Problem::BadSyncUrl => f.write_str(
                "must be an http:// or https:// URL with a host and no query, fragment, credentials or spaces",
            ),
            Problem::NoSyncUrl => f.write_str("must list at least one URL"),
            Problem::OutOfRange(low, high) => write!(f, "must be between {low} and {high}"),
            Problem::Method(e) => e.fmt(f),
            Problem::Template(e) => e.fmt(f),
            Problem::RateLimit(e) => e.fmt(f),
            Problem::Message(what) => f.write_str(what),
        }
    }
}

/// `a`, `b`, `c`: the names a field accepts.
fn write_names(f: &mut fmt::Formatter<'_>, names: &[&str]) -> fmt::Result {
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "`{name}`")?;
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    /// Keys are redacted: serde's messages quote what they were given, and a field path can
    /// be an (unknown) field named like a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problem = crate::key::redact_keys(&self.problem.to_string());
        if self.field.is_empty() {
            write!(f, "invalid keygate config: {problem}")
        } else {
            let field = crate::key::redact_keys(&self.field);
            write!(f, "invalid keygate config: {field}: {problem}")
        }
    }
}

impl core::error::Error for ConfigError {}

pub fn err(field: impl Into<String>, problem: Problem) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem,
    }
}

/// One key of the map as configs and the control plane carry it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub digest: String,
    pub account_id: String,
    pub key_id: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub environment: Environment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RawLimit>,
}

/// A key's rate limit as configs and the control plane carry it:
/// `{"requests": 100, "per": "minute", "burst": 20}` (`burst` defaults to `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub requests: u64,
    pub per: Period,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

const TOP_FIELDS: &[&str] = &[
    "version",
    "schemes",
    "realm",
    "max_key_length",
    "environment",
    "identity_headers",
    "identity_header",
    "keep_authorization",
    "publishable",
    "keys",
    "sync",
    "rate_limit_workers",
    "rate_limit_headers",
];
const IDENTITY_FIELDS: &[&str] = &["account_id", "key_id", "key_type", "environment"];
const PUBLISHABLE_FIELDS: &[&str] = &["api_prefixes", "retrieve_by_id", "id_pattern", "allow"];
const RULE_FIELDS: &[&str] = &["methods", "path"];
const SYNC_FIELDS: &[&str] = &["namespace"];
const KEY_FIELDS: &[&str] = &[
    "digest",
    "account_id",
    "key_id",
    "type",
    "environment",
    "expires_at",
    "disabled",
    "rate_limit",
];
const LIMIT_FIELDS: &[&str] = &["requests", "per", "burst"];
const PERIODS: &[&str] = &["second", "minute"];
const KEY_TYPES: &[&str] = &["secret", "publishable"];
const ENVIRONMENTS: &[&str] = &["test", "production"];

impl FilterConfig {
    /// Parses and validates a whole plugin configuration, as the wasm filter reads it: its
    /// `sync` block names the shared-data namespace the fetcher service publishes to.
    pub fn parse(json: &[u8]) -> Result<FilterConfig, ConfigError> {
        let (mut config, namespace) = Self::parse_with_sync(json, read_sync_namespace)?;
        config.sync_namespace = namespace;
        Ok(config)
    }

    /// Parses a configuration whose `sync` block `read_sync` reads (given the block and its
    /// path), for a front end that syncs another way (the native module polls a URL).
    pub fn parse_with_sync<T>(
        json: &[u8],
        read_sync: impl FnOnce(&Value, &Path) -> Result<T, ConfigError>,
    ) -> Result<(FilterConfig, Option<T>), ConfigError> {
        let doc = read_document(json)?;
        let root = Path::Root;
        let top = Fields::of(&doc, &root, TOP_FIELDS)?;
        check_version(&top)?;
        let schemes = match top.list("schemes")? {
            None => AcceptedSchemes::ALL,
            Some(items) => parse_schemes(items, &top.path("schemes"))?,
        };
        let realm = top.string("realm")?.unwrap_or(DEFAULT_REALM);
        if !is_valid_realm(realm) {
            return Err(err("realm", Problem::BadRealm));
        }
        let max_key_length = top
            .u64("max_key_length", u64::MAX)?
            .unwrap_or(DEFAULT_MAX_KEY_LENGTH as u64);
        if !(16..=1024).contains(&max_key_length) {
            return Err(err("max_key_length", Problem::MaxKeyLengthOutOfRange));
        }
        let environment = top.choice("environment", ENVIRONMENTS)?.map(environment_of);
        let identity_headers = parse_identity_headers(&top)?;
        let settings = Settings {
            www_authenticate: challenges(schemes, realm),
            schemes,
            max_key_length: max_key_length as usize,
            environment,
            policy: parse_policy(&top)?,
            stripped_headers: identity_headers.stripped(),
            identity_headers,
            keep_authorization: top.bool("keep_authorization")?.unwrap_or(false),
            rate_limit_workers: match top.u64("rate_limit_workers", u64::MAX)? {
                None => 1,
                Some(n @ 1..=1024) => n as u32,
                Some(_) => return Err(err("rate_limit_workers", Problem::OutOfRange("1", "1024"))),
            },
            rate_limit_headers: top.bool("rate_limit_headers")?.unwrap_or(false),
        };
        let sync = top
            .get("sync")
            .map(|block| read_sync(block, &top.path("sync")))
            .transpose()?;
        let keys = match top.list("keys")? {
            None => Vec::new(),
            Some(items) => read_keys(items, &top.path("keys"))?,
        };
        let config = FilterConfig {
            settings,
            keys: build_key_map(&keys, "keys")?,
            sync_namespace: None,
        };
        Ok((config, sync))
    }
}

/// The wasm filter's `sync` block: `{"namespace": …}`, defaulted.
pub fn read_sync_namespace(block: &Value, path: &Path) -> Result<String, ConfigError> {
    let sync = Fields::of(block, path, SYNC_FIELDS)?;
    let namespace = sync
        .string("namespace")?
        .unwrap_or(crate::shared_data::DEFAULT_NAMESPACE);
    if !crate::shared_data::is_valid_name(namespace) {
        return Err(sync.path("namespace").error(Problem::BadName));
    }
    Ok(namespace.to_owned())
}

/// A configuration document: JSON whose top level is an object.
pub fn read_document(json: &[u8]) -> Result<Value, ConfigError> {
    let doc = json::parse(json).map_err(|e| err("", Problem::Syntax(e)))?;
    if !matches!(doc, Value::Object(_)) {
        return Err(err("", Problem::NotAnObject));
    }
    Ok(doc)
}

/// The required `version` field, which must be the one this build reads.
pub fn check_version(top: &Fields) -> Result<(), ConfigError> {
    let version = as_u64(
        top.required("version")?,
        &top.path("version"),
        u32::MAX as u64,
    )?;
    if version != CONFIG_VERSION as u64 {
        return Err(err("version", Problem::UnsupportedVersion(version as u32)));
    }
    Ok(())
}

fn environment_of(index: usize) -> Environment {
    if index == 0 {
        Environment::Test
    } else {
        Environment::Production
    }
}

/// The `keys` list of a config.
pub fn read_keys(items: &[Value], path: &Path) -> Result<Vec<RawKey>, ConfigError> {
    let mut keys = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = Path::Index(path, i);
        let key = Fields::of(item, &at, KEY_FIELDS)?;
        let text = |name: &'static str| -> Result<String, ConfigError> {
            Ok(as_str(key.required(name)?, &key.path(name))?.to_owned())
        };
        let key_type = as_choice(key.required("type")?, &key.path("type"), KEY_TYPES)?;
        let environment = as_choice(
            key.required("environment")?,
            &key.path("environment"),
            ENVIRONMENTS,
        )?;
        keys.push(RawKey {
            digest: text("digest")?,
            account_id: text("account_id")?,
            key_id: text("key_id")?,
            key_type: if key_type == 0 {
                KeyType::Secret
            } else {
                KeyType::Publishable
            },
            environment: environment_of(environment),
            expires_at: key.u64("expires_at", u64::MAX)?,
            disabled: key
                .get("disabled")
                .map_or(Ok(false), |v| as_bool(v, &key.path("disabled")))?,
            rate_limit: key
                .get("rate_limit")
                .map(|v| read_limit(v, &key.path("rate_limit")))
                .transpose()?,
        });
    }
    Ok(keys)
}

/// A key's `rate_limit` object.
fn read_limit(value: &Value, path: &Path) -> Result<RawLimit, ConfigError> {
    let limit = Fields::of(value, path, LIMIT_FIELDS)?;
    let requests = limit.u64("requests", u64::MAX)?;
    let requests = requests.ok_or_else(|| limit.path("requests").error(Problem::MissingField))?;
    let per = limit
        .choice("per", PERIODS)?
        .ok_or_else(|| limit.path("per").error(Problem::MissingField))?;
    Ok(RawLimit {
        requests,
        per: if per == 0 {
            Period::Second
        } else {
            Period::Minute
        },
        burst: limit.u64("burst", u64::MAX)?,
    })
}

fn parse_schemes(items: &[Value], path: &Path) -> Result<AcceptedSchemes, ConfigError> {
    let mut accepted = AcceptedSchemes {
        token: false,
        bearer: false,
        basic: false,
    };
    for (i, name) in strings(items, path)?.into_iter().enumerate() {
        match Scheme::parse_name(name) {
            Some(Scheme::Token) => accepted.token = true,
            Some(Scheme::Bearer) => accepted.bearer = true,
            Some(Scheme::Basic) => accepted.basic = true,
            None => return Err(Path::Index(path, i).error(Problem::UnknownScheme)),
        }
    }
    if accepted.iter().next().is_none() {
        return Err(path.error(Problem::NoSchemes));
    }
    Ok(accepted)
}

fn is_valid_realm(realm: &str) -> bool {
    (1..=64).contains(&realm.len())
        && realm
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

fn challenges(schemes: AcceptedSchemes, realm: &str) -> String {
    let mut out = String::new();
    for scheme in schemes.iter() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(scheme.challenge_name());
        out.push_str(" realm=\"");
        out.push_str(realm);
        out.push('"');
    }
    out
}

/// The publishable-key policy; without a `publishable` section, the defaults.
fn parse_policy(top: &Fields) -> Result<Policy, ConfigError> {
    let publishable_path = top.path("publishable");
    let publishable = top
        .get("publishable")
        .map(|raw| Fields::of(raw, &publishable_path, PUBLISHABLE_FIELDS))
        .transpose()?;
    let prefixes_path = Path::Field(&publishable_path, "api_prefixes");
    let prefixes = match publishable
        .as_ref()
        .map(|p| p.list("api_prefixes"))
        .transpose()?
    {
        Some(Some(items)) => strings(items, &prefixes_path)?,
        _ => DEFAULT_API_PREFIXES.to_vec(),
    };
    let prefixes = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Template::parse(p)
                .map_err(|e| Path::Index(&prefixes_path, i).error(Problem::Template(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allow = match &publishable {
        Some(p) => p.list("allow")?.unwrap_or_default(),
        None => &[],
    };
    let retrieve_by_id = match &publishable {
        Some(p) => p.bool("retrieve_by_id")?,
        None => None,
    };
    let allow_path = Path::Field(&publishable_path, "allow");
    let mut rules = Vec::with_capacity(allow.len());
    for (i, rule) in allow.iter().enumerate() {
        let rule_path = Path::Index(&allow_path, i);
        rules.push(parse_rule(rule, &rule_path)?);
    }
    let retrieve = match retrieve_by_id.unwrap_or(true) {
        false => None,
        true => {
            let ids = match &publishable {
                Some(p) => parse_id_pattern(p)?,
                None => IdPattern::Any,
            };
            Some(RetrieveById {
                api_prefixes: prefixes,
                ids,
            })
        }
    };
    Ok(Policy::new(retrieve, rules))
}

/// `publishable.id_pattern`: what an id looks like in the retrieve-by-id rule.
fn parse_id_pattern(publishable: &Fields) -> Result<IdPattern, ConfigError> {
    match publishable.string("id_pattern")? {
        None => Ok(IdPattern::Any),
        Some(text) => IdPattern::parse(text).map_err(|e| {
            publishable
                .path("id_pattern")
                .error(Problem::Template(TemplateError::Pattern(e)))
        }),
    }
}

/// One `publishable.allow` rule: methods and a path template.
fn parse_rule(value: &Value, at: &Path) -> Result<Rule, ConfigError> {
    let rule = Fields::of(value, at, RULE_FIELDS)?;
    let methods_path = rule.path("methods");
    let methods = strings(
        crate::fields::as_list(rule.required("methods")?, &methods_path)?,
        &methods_path,
    )?;
    if methods.is_empty() {
        return Err(methods_path.error(Problem::EmptyMethods));
    }
    let methods = methods
        .iter()
        .enumerate()
        .map(|(j, m)| {
            parse_method(m).map_err(|e| Path::Index(&methods_path, j).error(Problem::Method(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let template_path = rule.path("path");
    let template = Template::parse(as_str(rule.required("path")?, &template_path)?)
        .map_err(|e| template_path.error(Problem::Template(e)))?;
    Ok(Rule { methods, template })
}

fn parse_identity_headers(top: &Fields) -> Result<IdentityHeaders, ConfigError> {
    let separate = top.get("identity_headers");
    if let Some(name) = top.string("identity_header")? {
        if separate.is_some() {
            return Err(err("identity_header", Problem::IdentityModes));
        }
        if !is_valid_header_name(name) {
            return Err(err("identity_header", Problem::BadHeaderName));
        }
        return Ok(IdentityHeaders::Combined(name.to_owned()));
    }
    let Some(separate) = separate else {
        return Ok(IdentityHeaders::default());
    };
    let path = top.path("identity_headers");
    let given = Fields::of(separate, &path, IDENTITY_FIELDS)?;
    let mut names = DEFAULT_IDENTITY_HEADERS.map(String::from);
    for (i, field) in IDENTITY_FIELDS.iter().enumerate() {
        if let Some(name) = given.string(field)? {
            names[i] = name.to_owned();
        }
    }
    for (i, (field, name)) in IDENTITY_FIELDS.iter().zip(names.iter()).enumerate() {
        let at = given.path(field);
        if !is_valid_header_name(name) {
            return Err(at.error(Problem::BadHeaderName));
        }
        if names[..i].contains(name) {
            return Err(at.error(Problem::DuplicateHeaderName));
        }
    }
    Ok(IdentityHeaders::Separate(names))
}

fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name != "authorization"
        && name != "host"
}

pub fn is_valid_identifier(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) && !is_issued_key(s)
}

/// FNV-1a, for the account-id table of `build_key_map`: a keyed hasher (hashbrown's default)
/// cost the filter module 2.7 KB (measured with twiggy), and account ids come from the
/// operator's configuration or the control plane, not from clients.
struct AccountHasher(u64);

impl Default for AccountHasher {
    fn default() -> Self {
        AccountHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl core::hash::Hasher for AccountHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type Accounts<'a> = HashMap<&'a str, Arc<str>, core::hash::BuildHasherDefault<AccountHasher>>;

/// Builds a key map from its JSON entries; `field` names the list in errors.
pub fn build_key_map(keys: &[RawKey], field: &str) -> Result<KeyMap, ConfigError> {
    let mut accounts = Accounts::default();
    let mut pairs = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let (digest, entry) = parse_key(k, &mut accounts)
            .map_err(|(sub, problem)| err(format!("{field}[{i}].{sub}"), problem))?;
        pairs.push((digest, entry));
    }
    KeyMap::build(pairs).map_err(|d| {
        err(
            format!("{field}[{}].digest", d.index),
            Problem::DuplicateDigest,
        )
    })
}

fn parse_key<'a>(
    k: &'a RawKey,
    accounts: &mut Accounts<'a>,
) -> Result<(Digest, KeyEntry), (&'static str, Problem)> {
    if KeyKind::split(&k.digest).is_some() {
        return Err(("digest", Problem::PlaintextKey));
    }
    let digest = Digest::from_hex(&k.digest).map_err(|e| ("digest", Problem::Digest(e)))?;
    if !is_valid_identifier(&k.account_id) {
        return Err(("account_id", Problem::BadIdentifier));
    }
    if !is_valid_identifier(&k.key_id) {
        return Err(("key_id", Problem::BadIdentifier));
    }
    let account_id = accounts
        .entry(&k.account_id)
        .or_insert_with(|| Arc::from(k.account_id.as_str()))
        .clone();
    let limit = k
        .rate_limit
        .map(|raw| RateLimit::new(raw.requests, raw.per, raw.burst))
        .transpose()
        .map_err(|e| ("rate_limit", Problem::RateLimit(e)))?;
    Ok((
        digest,
        KeyEntry {
            account_id,
            key_id: k.key_id.as_str().into(),
            kind: KeyKind::new(k.key_type, k.environment),
            expires_at: k.expires_at,
            disabled: k.disabled,
            limit,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn key_json(digest: &str) -> String {
        format!(
            r#"{{"digest":"{digest}","account_id":"acct_1","key_id":"key_1","type":"secret","environment":"test"}}"#
        )
    }

    fn error_of(json: &str) -> String {
        match FilterConfig::parse(json.as_bytes()) {
            Ok(_) => panic!("config should be refused: {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let config = FilterConfig::parse(br#"{"version":1}"#).expect("valid");
        let s = &config.settings;
        assert_eq!(s.schemes, AcceptedSchemes::ALL);
        assert_eq!(s.max_key_length, DEFAULT_MAX_KEY_LENGTH);
        assert_eq!(s.environment, None);
        assert!(!s.keep_authorization);
        assert!(
            !s.rate_limit_headers,
            "rate-limit headers on allowed responses: off"
        );
        assert_eq!(s.identity_headers, IdentityHeaders::default());
        assert_eq!(
            s.www_authenticate,
            r#"Token realm="keygate", Bearer realm="keygate", Basic realm="keygate""#
        );
        assert!(config.keys.is_empty());
    }

    #[test]
    fn keys_and_options_are_read() {
        let json = format!(
            r#"{{"version":1,"schemes":["TOKEN","basic"],"realm":"api","environment":"production",
                "keep_authorization":true,"identity_headers":{{"account_id":"x-account"}},
                "keys":[{}]}}"#,
            key_json(DIGEST)
        );
        let config = FilterConfig::parse(json.as_bytes()).expect("valid");
        assert_eq!(
            config.settings.www_authenticate,
            r#"Token realm="api", Basic realm="api""#
        );
        assert_eq!(config.settings.environment, Some(Environment::Production));
        assert_eq!(
            config.settings.identity_headers.names(),
            [
                "x-account",
                "x-keygate-key-id",
                "x-keygate-key-type",
                "x-keygate-environment"
            ]
        );
        let digest = Digest::from_hex(DIGEST).expect("hex");
        assert_eq!(
            config.keys.get(&digest).map(|e| &*e.account_id),
            Some("acct_1")
        );
    }

    #[test]
    fn rate_limit_headers_is_read() {
        let config =
            FilterConfig::parse(br#"{"version":1,"rate_limit_headers":true}"#).expect("valid");
        assert!(config.settings.rate_limit_headers);
    }

    #[test]
    fn identity_header_puts_every_field_in_one_header() {
        let config =
            FilterConfig::parse(br#"{"version":1,"identity_header":"x-keygate-identity"}"#)
                .expect("valid");
        assert_eq!(
            config.settings.identity_headers,
            IdentityHeaders::Combined("x-keygate-identity".into())
        );
        assert_eq!(
            config.settings.identity_headers.names(),
            ["x-keygate-identity"]
        );
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let plaintext = crate::key::issue_key(KeyKind::ALL[0], &[1; 32]);
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "invalid keygate config: not JSON: the document ends too early at line 1 column 2"),
            ("[]".into(), "invalid keygate config: the configuration must be a JSON object"),
            ("".into(), "invalid keygate config: not JSON: the document ends too early at line 1 column 1"),
            (r#"{"version":1,"extra":1}"#.into(), "invalid keygate config: extra: unknown field; expected one of `version`, `schemes`"),
            (r#"{"version":2}"#.into(), "invalid keygate config: version: unsupported config version 2; this keygate reads version 1"),
            (r#"{}"#.into(), "invalid keygate config: version: required field missing"),
            (r#"{"version":1.0}"#.into(), "invalid keygate config: version: must be a whole number from 0 to 4294967295"),
            (r#"{"version":1,"version":1}"#.into(), "invalid keygate config: version: given twice"),
            (r#"{"version":1,"realm":7}"#.into(), "invalid keygate config: realm: expected a string, got a number"),
            (r#"{"version":1,"rate_limit_headers":"yes"}"#.into(), "invalid keygate config: rate_limit_headers: expected a boolean, got a string"),
            (r#"{"version":1,"environment":"staging"}"#.into(), "invalid keygate config: environment: must be one of `test`, `production`"),
            (r#"{"version":1,"keys":{}}"#.into(), "invalid keygate config: keys: expected a list, got an object"),
            (r#"{"version":1,"publishable":{"allow":[{"path":"/a"}]}}"#.into(), "invalid keygate config: publishable.allow[0].methods: required field missing"),
            (r#"{"version":1,"schemes":["digest"]}"#.into(), "invalid keygate config: schemes[0]: unknown scheme; use token, bearer or basic"),
            (r#"{"version":1,"schemes":[]}"#.into(), "invalid keygate config: schemes: at least one scheme must be accepted"),
            (r#"{"version":1,"realm":"a\"b"}"#.into(), "invalid keygate config: realm: must be 1-64 visible ASCII characters without '\"' or '\\'"),
            (r#"{"version":1,"max_key_length":4}"#.into(), "invalid keygate config: max_key_length: must be between 16 and 1024"),
            (r#"{"version":1,"identity_headers":{"key_id":"Authorization"}}"#.into(), "invalid keygate config: identity_headers.key_id: must be a lower-case header name (a-z, 0-9, '-'), not a pseudo-header, authorization or host"),
            (r#"{"version":1,"identity_headers":{"key_id":"x-keygate-account-id"}}"#.into(), "invalid keygate config: identity_headers.key_id: names the same header as another field"),
            (r#"{"version":1,"identity_header":"X-Identity"}"#.into(), "invalid keygate config: identity_header: must be a lower-case header name (a-z, 0-9, '-'), not a pseudo-header, authorization or host"),
            (r#"{"version":1,"identity_header":"x-identity","identity_headers":{}}"#.into(), "invalid keygate config: identity_header: give either identity_header (one combined header) or identity_headers (one per field), not both"),
            (format!(r#"{{"version":1,"keys":[{}]}}"#, key_json("abc")), "invalid keygate config: keys[0].digest: expected 64 hex characters (a SHA-256 digest), got 3"),
            (format!(r#"{{"version":1,"keys":[{}]}}"#, key_json(&"z".repeat(64))), "invalid keygate config: keys[0].digest: expected only hex characters 0-9, a-f"),
            (format!(r#"{{"version":1,"keys":[{}]}}"#, key_json(&plaintext)), "invalid keygate config: keys[0].digest: looks like a plaintext API key; configs hold only SHA-256 digests (see `keygatectl hash`)"),
            (format!(r#"{{"version":1,"keys":[{},{}]}}"#, key_json(DIGEST), key_json(DIGEST)), "invalid keygate config: keys[1].digest: digest given by an earlier key too"),
            (format!(r#"{{"version":1,"keys":[{}]}}"#, key_json(DIGEST).replace("acct_1", &plaintext)), "invalid keygate config: keys[0].account_id: must be 1-128 visible ASCII characters and not a plaintext key"),
            (format!(r#"{{"version":1,"keys":[{}]}}"#, key_json(DIGEST).replace("\"secret\"", "\"admin\"")), "invalid keygate config: keys[0].type: must be one of `secret`, `publishable`"),
            (format!(r#"{{"version":1,"keys":[{}]}}"#, key_json(DIGEST).replace("\"digest\"", "\"key\"")), "invalid keygate config: keys[0].key: unknown field; expected one of `digest`, `account_id`, `key_id`, `type`, `environment`, `expires_at`, `disabled`"),
            (r#"{"version":1,"publishable":{"allow":[{"methods":[],"path":"/a"}]}}"#.into(), "invalid keygate config: publishable.allow[0].methods: must list at least one method"),
        ];
        for (json, expected) in cases {
            let got = error_of(&json);
            assert!(
                got.starts_with(expected),
                "config {json}\n got: {got}\nwant: {expected}"
            );
        }
    }

    #[test]
    fn bad_rules_are_refused_by_field() {
        let got = error_of(
            r#"{"version":1,"publishable":{"allow":[{"methods":["POST"],"path":"v3/x"}]}}"#,
        );
        assert!(
            got.starts_with("invalid keygate config: publishable.allow[0].path: "),
            "{got}"
        );
        let got = error_of(
            r#"{"version":1,"publishable":{"allow":[{"methods":["PO ST"],"path":"/v3/x"}]}}"#,
        );
        assert!(
            got.starts_with("invalid keygate config: publishable.allow[0].methods[0]: "),
            "{got}"
        );
        let got = error_of(r#"{"version":1,"publishable":{"api_prefixes":["/v3/{"]}}"#);
        assert!(
            got.starts_with("invalid keygate config: publishable.api_prefixes[0]: "),
            "{got}"
        );
    }

    #[test]
    fn id_patterns_are_read_and_bad_ones_named() {
        let policy = |publishable: &str| {
            let json = format!(r#"{{"version":1,"publishable":{publishable}}}"#);
            FilterConfig::parse(json.as_bytes()).map(|c| c.settings.policy)
        };
        let judge = |p: &Policy, path: &str| {
            crate::path::normalize(path.as_bytes()).map(|n| p.allows(b"GET", &n))
        };
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        let everywhere = policy(r#"{"id_pattern":"uuid"}"#).expect("valid");
        assert_eq!(judge(&everywhere, &format!("/v3/devices/{uuid}")), Ok(true));
        assert_eq!(judge(&everywhere, "/v3/devices/search"), Ok(false));
        let typed_rule = policy(
            r#"{"retrieve_by_id":false,"allow":[{"methods":["GET"],"path":"/v3/devices/{id:digits}"}]}"#,
        )
        .expect("valid");
        assert_eq!(judge(&typed_rule, "/v3/devices/42"), Ok(true));
        assert_eq!(judge(&typed_rule, "/v3/devices/me"), Ok(false));

        for (publishable, want) in [
            (
                r#"{"id_pattern":"guid"}"#,
                "invalid keygate config: publishable.id_pattern: unknown id pattern; use any, uuid, digits, hex or a prefix followed by '*' (usr_*)",
            ),
            (
                r#"{"allow":[{"methods":["GET"],"path":"/v3/users/{id:a b*}"}]}"#,
                "invalid keygate config: publishable.allow[0].path: a prefix pattern is 1-64 characters of A-Z a-z 0-9 - _ . ~ : @ followed by '*'",
            ),
        ] {
            let got = policy(publishable).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()), "{publishable}");
        }
    }

    #[test]
    fn errors_never_quote_a_key() {
        let key = crate::key::issue_key(KeyKind::ALL[2], &[5; 32]);
        for json in [
            format!(r#"{{"version":"{key}"}}"#),
            format!(r#"{{"version":1,"{key}":1}}"#),
            format!(
                r#"{{"version":1,"keys":[{{"digest":"{DIGEST}","account_id":"a","key_id":"b","type":"{key}","environment":"test"}}]}}"#
            ),
        ] {
            let got = error_of(&json);
            assert!(!got.contains(&key), "{got}");
        }
    }

    #[test]
    fn trailing_garbage_after_the_json_is_refused() {
        let got = error_of(r#"{"version":1} x"#);
        assert_eq!(
            got,
            "invalid keygate config: not JSON: trailing characters after the JSON value at line 1 column 15"
        );
    }
}
