//! Which calls a publishable key may make: rules of methods and path templates, matched
//! against a [`NormalizedPath`]. Anything not matched by a rule is refused.

use crate::prelude::*;

use crate::path::{is_plain_char, NormalizedPath, Segment};
use core::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSegment {
    Literal(String),
    /// `{name}` or `{name:pattern}`: exactly one plain path segment the pattern accepts.
    Placeholder(IdPattern),
}

/// What an id segment may look like. `Any` takes any plain segment, so an upstream route such
/// as `/v3/users/me` or `/v3/devices/search` passes where `{id}` stands; the others let a
/// deployment say what its ids are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    /// `any`: one plain segment.
    Any,
    /// `uuid`: 8-4-4-4-12 hexadecimal digits, either case.
    Uuid,
    /// `digits`: 1 to 20 decimal digits.
    Digits,
    /// `hex`: 1 to 128 hexadecimal digits.
    Hex,
    /// `<prefix>*`, e.g. `usr_*`: the prefix and at least one more plain character.
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternError {
    Unknown,
    BadPrefix,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternError::Unknown => {
                "unknown id pattern; use any, uuid, digits, hex or a prefix followed by '*' (usr_*)"
            }
            PatternError::BadPrefix => {
                "a prefix pattern is 1-64 characters of A-Z a-z 0-9 - _ . ~ : @ followed by '*'"
            }
        })
    }
}

impl IdPattern {
    pub fn parse(s: &str) -> Result<IdPattern, PatternError> {
        match s {
            "any" => Ok(IdPattern::Any),
            "uuid" => Ok(IdPattern::Uuid),
            "digits" => Ok(IdPattern::Digits),
            "hex" => Ok(IdPattern::Hex),
            _ => {
                let prefix = s.strip_suffix('*').ok_or(PatternError::Unknown)?;
                if (1..=64).contains(&prefix.len()) && prefix.chars().all(is_plain_char) {
                    Ok(IdPattern::Prefix(prefix.to_owned()))
                } else {
                    Err(PatternError::BadPrefix)
                }
            }
        }
    }

    /// Whether a plain segment's text is such an id.
    pub fn matches(&self, id: &str) -> bool {
        let hex = |b: u8| b.is_ascii_hexdigit();
        match self {
            IdPattern::Any => true,
            IdPattern::Uuid => {
                let bytes = id.as_bytes();
                bytes.len() == 36
                    && bytes.iter().enumerate().all(|(i, &b)| match i {
                        8 | 13 | 18 | 23 => b == b'-',
                        _ => hex(b),
                    })
            }
            IdPattern::Digits => {
                (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
            }
            IdPattern::Hex => (1..=128).contains(&id.len()) && id.bytes().all(hex),
            IdPattern::Prefix(prefix) => id.len() > prefix.len() && id.starts_with(prefix.as_str()),
        }
    }
}

/// A path template such as `/v3/devices/{id}/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<TemplateSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    NotAbsolute,
    EmptyPlaceholderName,
    UnclosedBrace,
    BadCharacter(char),
    QueryNotAllowed,
    DotSegment,
    Pattern(PatternError),
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::NotAbsolute => f.write_str("must start with '/'"),
            TemplateError::EmptyPlaceholderName => f.write_str("'{}' without a placeholder name"),
            TemplateError::UnclosedBrace => f.write_str("'{' without a closing '}'"),
            TemplateError::BadCharacter(c) => {
                write!(f, "character {} is not allowed here", Shown(*c))
            }
            TemplateError::QueryNotAllowed => {
                f.write_str("a query string or fragment ('?', '#') is not allowed")
            }
            TemplateError::DotSegment => f.write_str("'.' and '..' segments are not allowed"),
            TemplateError::Pattern(e) => e.fmt(f),
        }
    }
}

/// A character in an error message: `'x'` when visible ASCII, else its code point (`U+0009`),
/// so control characters never reach a log line raw.
struct Shown(char);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == ' ' {
            write!(f, "'{}'", self.0)
        } else {
            write!(f, "U+{:04X}", u32::from(self.0))
        }
    }
}

impl Template {
    /// Parses a template: `/`-separated literals and whole-segment `{name}` placeholders.
    /// Empty segments and a trailing '/' are ignored, as they are in request paths.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(TemplateError::NotAbsolute);
        };
        if s.contains(['?', '#']) {
            return Err(TemplateError::QueryNotAllowed);
        }
        let segments = crate::ascii::split(rest, b'/')
            .filter(|seg| !seg.is_empty())
            .map(parse_segment)
            .collect::<Result<_, _>>()?;
        Ok(Template { segments })
    }

    /// Whether the path has exactly these segments. Only plain segments match, so an encoded
    /// slash or a path parameter never slips through; a trailing slash does not matter.
    pub fn matches(&self, path: &NormalizedPath) -> bool {
        self.matches_segments(&path.segments)
    }

    fn matches_segments(&self, segments: &[Segment]) -> bool {
        self.segments.len() == segments.len()
            && self.segments.iter().zip(segments).all(|(t, p)| {
                p.plain
                    && match t {
                        TemplateSegment::Literal(l) => *l == p.text,
                        TemplateSegment::Placeholder(pattern) => pattern.matches(&p.text),
                    }
            })
    }

    /// The segments of `path` after this template, when it starts with it.
    fn strip_from<'p>(&self, path: &'p NormalizedPath) -> Option<&'p [Segment]> {
        let n = self.segments.len();
        let (head, rest) = (path.segments.get(..n)?, path.segments.get(n..)?);
        self.matches_segments(head).then_some(rest)
    }
}

fn parse_segment(seg: &str) -> Result<TemplateSegment, TemplateError> {
    if let Some(inner) = seg.strip_prefix('{') {
        if !crate::ascii::contains(inner, b'}') {
            return Err(TemplateError::UnclosedBrace);
        }
        // `{name}` only as a whole segment; `{a}b` falls through to the literal check.
        if let Some(inner) = inner.strip_suffix('}') {
            let (name, pattern) = match crate::ascii::split_once(inner, b':') {
                Some((name, pattern)) => (
                    name,
                    IdPattern::parse(pattern).map_err(TemplateError::Pattern)?,
                ),
                None => (inner, IdPattern::Any),
            };
            if name.is_empty() {
                return Err(TemplateError::EmptyPlaceholderName);
            }
            if let Some(c) = name
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
            {
                return Err(TemplateError::BadCharacter(c));
            }
            return Ok(TemplateSegment::Placeholder(pattern));
        }
    }
    if let Some(c) = seg.chars().find(|c| !is_plain_char(*c)) {
        return Err(TemplateError::BadCharacter(c));
    }
    // Request paths never hold these after normalisation, so such a rule could never match.
    if seg == "." || seg == ".." {
        return Err(TemplateError::DotSegment);
    }
    Ok(TemplateSegment::Literal(seg.to_owned()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodError {
    Empty,
    BadCharacter(char),
}

impl fmt::Display for MethodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodError::Empty => f.write_str("the method is empty"),
            MethodError::BadCharacter(c) => {
                write!(f, "character {} is not allowed in a method", Shown(*c))
            }
        }
    }
}

/// A configured method: an HTTP token (RFC 9110 `tchar`s), upper-cased since configs may say
/// `get` while requests are matched case-sensitively.
pub fn parse_method(s: &str) -> Result<String, MethodError> {
    if s.is_empty() {
        return Err(MethodError::Empty);
    }
    let is_tchar = |c: char| {
        c.is_ascii_alphanumeric() || (c.is_ascii() && b"!#$%&'*+-.^_`|~".contains(&(c as u8)))
    };
    if let Some(c) = s.chars().find(|c| !is_tchar(*c)) {
        return Err(MethodError::BadCharacter(c));
    }
    Ok(s.to_ascii_uppercase())
}

/// Allows `methods` (upper-case) on paths matching `template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub methods: Vec<String>,
    pub template: Template,
}

impl Rule {
    fn allows(&self, method: &[u8], path: &NormalizedPath) -> bool {
        self.methods.iter().any(|m| m.as_bytes() == method) && self.template.matches(path)
    }
}

/// The default publishable rule: `GET`/`HEAD` `<prefix>/<collection>/<id>`, one object by id.
/// Per-collection id rules are `allow` rules with typed placeholders
/// (`/v3/users/{id:usr_*}`), with this one turned off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveById {
    pub api_prefixes: Vec<Template>,
    /// What an id looks like.
    pub ids: IdPattern,
}

impl RetrieveById {
    /// Any collection under `api_prefixes`, any plain id: the default.
    pub fn any_id(api_prefixes: Vec<Template>) -> RetrieveById {
        RetrieveById {
            api_prefixes,
            ids: IdPattern::Any,
        }
    }

    fn allows(&self, method: &[u8], path: &NormalizedPath) -> bool {
        if method != b"GET" && method != b"HEAD" {
            return false;
        }
        self.api_prefixes.iter().any(|prefix| {
            let Some([collection, id]) = prefix.strip_from(path) else {
                return false;
            };
            collection.plain && id.plain && self.ids.matches(&id.text)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    retrieve_by_id: Option<RetrieveById>,
    rules: Vec<Rule>,
}

impl Policy {
    /// The publishable-key policy: the retrieve-by-id rule (when given) plus `extra` rules.
    pub fn new(retrieve_by_id: Option<RetrieveById>, extra: Vec<Rule>) -> Policy {
        Policy {
            retrieve_by_id,
            rules: extra,
        }
    }

    /// `method` is the request's `:method` as bytes, compared exactly (methods are
    /// case-sensitive in HTTP: `get` is not `GET`).
    pub fn allows(&self, method: &[u8], path: &NormalizedPath) -> bool {
        self.retrieve_by_id
            .as_ref()
            .is_some_and(|r| r.allows(method, path))
            || self.rules.iter().any(|r| r.allows(method, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::normalize;

    fn template(s: &str) -> Template {
        match Template::parse(s) {
            Ok(t) => t,
            Err(e) => panic!("template {s:?}: {e}"),
        }
    }

    fn test_policy() -> Policy {
        let events = Rule {
            methods: vec!["POST".to_owned()],
            template: template("/v3/devices/{id}/events"),
        };
        let prefixes = vec![template("/v3"), template("/api/v1/")];
        Policy::new(Some(RetrieveById::any_id(prefixes)), vec![events])
    }

    /// `None` when the path does not even normalise (the caller refuses those anyway).
    fn allows(policy: &Policy, method: &str, path: &str) -> Option<bool> {
        let path = normalize(path.as_bytes()).ok()?;
        Some(policy.allows(method.as_bytes(), &path))
    }

    #[test]
    fn publishable_policy() {
        let policy = test_policy();
        let cases = [
            ("GET", "/v3/devices/abc", Some(true)),
            ("HEAD", "/v3/devices/abc", Some(true)),
            ("GET", "/api/v1/users/42/", Some(true)),
            ("GET", "/v3/devices/abc?limit=1", Some(true)),
            ("GET", "/v3/devices/abc#x", Some(true)),
            ("POST", "/v3/devices/abc/events", Some(true)),
            ("GET", "//v3//devices/abc", Some(true)),
            ("GET", "/v3/%64evices/abc", Some(true)),
            ("GET", "/v3/devices", Some(false)),
            ("GET", "/v3/devices/", Some(false)),
            ("GET", "/v3", Some(false)),
            ("GET", "/", Some(false)),
            ("POST", "/v3/devices", Some(false)),
            ("POST", "/v3/devices/abc", Some(false)),
            ("DELETE", "/v3/devices/abc", Some(false)),
            ("PUT", "/v3/devices/abc", Some(false)),
            ("PATCH", "/v3/devices/abc", Some(false)),
            ("OPTIONS", "/v3/devices/abc", Some(false)),
            ("get", "/v3/devices/abc", Some(false)),
            ("Get", "/v3/devices/abc", Some(false)),
            ("GET ", "/v3/devices/abc", Some(false)),
            ("", "/v3/devices/abc", Some(false)),
            ("GET", "/v3/devices/abc/trips", Some(false)),
            ("GET", "/v3/devices/a%2Fb", Some(false)),
            ("GET", "/v3/devices/a%5Cb", Some(false)),
            ("GET", "/v3/devices/abc;x", Some(false)),
            ("GET", "/v3/devices;x/abc", Some(false)),
            ("GET", "/v3/devices/abc/../../../admin/x", Some(false)),
            ("GET", "/v3/devices/abc/../../admin", Some(false)),
            // Normalises to /v3/admin/x: the same call as asking for it directly, which the
            // retrieve-by-id rule allows. Dot segments never reach beyond the rules.
            ("GET", "/v3/devices/abc/../../admin/x", Some(true)),
            ("GET", "/v4/devices/abc", Some(false)),
            ("GET", "/V3/devices/abc", Some(false)),
            ("GET", "/api/devices/abc", Some(false)),
            ("GET", "/api/v1/v2/users/42", Some(false)),
            ("POST", "/v3/devices/abc/events/../../x", Some(false)),
            ("POST", "/v3/devices/abc/events/x", Some(false)),
            ("POST", "/api/v1/devices/abc/events", Some(false)),
            ("GET", "/v3/devices/abc/events", Some(false)),
            ("GET", "/../v3/devices/abc", None),
            ("GET", "/v3/devices/%zz", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(allows(&policy, method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn policy_without_retrieve_by_id() {
        let policy = Policy::new(None, Vec::new());
        assert_eq!(allows(&policy, "GET", "/v3/devices/abc"), Some(false));
        assert_eq!(allows(&Policy::default(), "GET", "/"), Some(false));
    }

    #[test]
    fn ids_can_be_constrained_everywhere_or_per_collection_by_rule() {
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        let everywhere = Policy::new(
            Some(RetrieveById {
                api_prefixes: vec![template("/v3")],
                ids: IdPattern::Uuid,
            }),
            Vec::new(),
        );
        assert_eq!(
            allows(&everywhere, "GET", &format!("/v3/devices/{uuid}")),
            Some(true)
        );
        assert_eq!(
            allows(
                &everywhere,
                "GET",
                &format!("/v3/devices/{}", uuid.to_uppercase())
            ),
            Some(true)
        );
        for not_an_id in ["search", "me", "123e4567e89b12d3a456426614174000", "1"] {
            assert_eq!(
                allows(&everywhere, "GET", &format!("/v3/devices/{not_an_id}")),
                Some(false),
                "{not_an_id}"
            );
        }
        let rule = |path: &str| Rule {
            methods: vec!["GET".to_owned()],
            template: template(path),
        };
        let per_collection = Policy::new(
            None,
            vec![
                rule("/v3/devices/{id:uuid}"),
                rule("/v3/users/{id:usr_*}"),
                rule("/v3/orders/{id:digits}"),
            ],
        );
        let cases = [
            (format!("/v3/devices/{uuid}"), true),
            ("/v3/devices/search".to_owned(), false),
            ("/v3/users/usr_42".to_owned(), true),
            ("/v3/users/me".to_owned(), false),
            ("/v3/users/usr_".to_owned(), false),
            ("/v3/orders/12345".to_owned(), true),
            ("/v3/orders/12a".to_owned(), false),
            ("/v3/trips/abc".to_owned(), false),
        ];
        for (path, want) in cases {
            assert_eq!(allows(&per_collection, "GET", &path), Some(want), "{path}");
        }
    }

    #[test]
    fn patterns_parse_and_refuse_what_they_do_not_know() {
        assert_eq!(IdPattern::parse("uuid"), Ok(IdPattern::Uuid));
        assert_eq!(
            IdPattern::parse("usr_*"),
            Ok(IdPattern::Prefix("usr_".into()))
        );
        assert_eq!(IdPattern::parse("UUID"), Err(PatternError::Unknown));
        assert_eq!(IdPattern::parse("*"), Err(PatternError::BadPrefix));
        assert_eq!(IdPattern::parse("a/b*"), Err(PatternError::BadPrefix));
        assert!(IdPattern::Hex.matches("deadBEEF") && !IdPattern::Hex.matches("xyz"));
        assert!(!IdPattern::Digits.matches(&"9".repeat(21)));
    }

    #[test]
    fn template_parsing() {
        use TemplateError::*;
        use TemplateSegment::{Literal, Placeholder};
        let lit = |s: &str| Literal(s.to_owned());
        let cases = [
            ("/", Ok(vec![])),
            ("//", Ok(vec![])),
            ("/v3", Ok(vec![lit("v3")])),
            ("/v3/", Ok(vec![lit("v3")])),
            ("//api//v1", Ok(vec![lit("api"), lit("v1")])),
            (
                "/v3/devices/{id}/events",
                Ok(vec![
                    lit("v3"),
                    lit("devices"),
                    Placeholder(IdPattern::Any),
                    lit("events"),
                ]),
            ),
            (
                "/{a_1}/{B:uuid}",
                Ok(vec![
                    Placeholder(IdPattern::Any),
                    Placeholder(IdPattern::Uuid),
                ]),
            ),
            (
                "/{id:dev_*}",
                Ok(vec![Placeholder(IdPattern::Prefix("dev_".into()))]),
            ),
            ("/{id:guid}", Err(Pattern(PatternError::Unknown))),
            ("/{:uuid}", Err(EmptyPlaceholderName)),
            (
                "/a-b_c.d~e:f@g/...",
                Ok(vec![lit("a-b_c.d~e:f@g"), lit("...")]),
            ),
            ("", Err(NotAbsolute)),
            ("v3", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("/v3?x=1", Err(QueryNotAllowed)),
            ("/v3#x", Err(QueryNotAllowed)),
            ("/{}", Err(EmptyPlaceholderName)),
            ("/{id", Err(UnclosedBrace)),
            ("/{", Err(UnclosedBrace)),
            ("/{id/x}", Err(UnclosedBrace)),
            ("/{i-d}", Err(BadCharacter('-'))),
            ("/{a{b}", Err(BadCharacter('{'))),
            ("/a{id}", Err(BadCharacter('{'))),
            ("/{id}x", Err(BadCharacter('{'))),
            ("/a}", Err(BadCharacter('}'))),
            ("/a b", Err(BadCharacter(' '))),
            ("/a%2Fb", Err(BadCharacter('%'))),
            ("/a;b", Err(BadCharacter(';'))),
            ("/caf\u{e9}", Err(BadCharacter('\u{e9}'))),
            ("/v3/.", Err(DotSegment)),
            ("/v3/../x", Err(DotSegment)),
        ];
        for (s, want) in cases {
            let got = Template::parse(s).map(|t| t.segments);
            assert_eq!(got, want, "{s:?}");
        }
    }

    #[test]
    fn template_error_messages() {
        let cases = [
            ("v3", "must start with '/'"),
            ("/{id", "'{' without a closing '}'"),
            ("/{}", "'{}' without a placeholder name"),
            ("/a b", "character ' ' is not allowed here"),
            (
                "/v3?x",
                "a query string or fragment ('?', '#') is not allowed",
            ),
            ("/..", "'.' and '..' segments are not allowed"),
        ];
        for (s, want) in cases {
            let got = Template::parse(s).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()), "{s:?}");
        }
    }

    #[test]
    fn template_matching() {
        let t = template("/v3/{c}/x");
        let cases = [
            ("/v3/a/x", true),
            ("/v3/a/x/", true),
            ("/v3/a/X", false),
            ("/v3/a", false),
            ("/v3/a/x/y", false),
            ("/v3/a;b/x", false),
            ("/v3/%61/x", true),
            ("/v3/a%40b/x", true),
        ];
        for (path, want) in cases {
            let got = normalize(path.as_bytes()).map(|p| t.matches(&p));
            assert_eq!(got, Ok(want), "{path}");
        }
        let typed = template("/v3/devices/{id:digits}");
        let judged = |path: &str| normalize(path.as_bytes()).map(|p| typed.matches(&p));
        assert_eq!(judged("/v3/devices/42"), Ok(true));
        assert_eq!(judged("/v3/devices/me"), Ok(false));
    }

    #[test]
    fn methods() {
        let cases = [
            ("GET", Ok("GET")),
            ("get", Ok("GET")),
            ("m-search", Ok("M-SEARCH")),
            ("", Err(MethodError::Empty)),
            ("GE T", Err(MethodError::BadCharacter(' '))),
            ("GET/", Err(MethodError::BadCharacter('/'))),
            ("G\u{e9}T", Err(MethodError::BadCharacter('\u{e9}'))),
        ];
        for (s, want) in cases {
            assert_eq!(parse_method(s), want.map(str::to_owned), "{s:?}");
        }
        assert_eq!(
            MethodError::BadCharacter(' ').to_string(),
            "character ' ' is not allowed in a method"
        );
    }
}
