//! Which calls a publishable key may make: rules of methods and path templates, matched
//! against a [`NormalizedPath`]. Anything not matched by a rule is refused.

use crate::prelude::*;

use crate::path::{is_plain_char, NormalizedPath};
use core::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSegment {
    Literal(String),
    /// `{name}`: exactly one plain path segment.
    Placeholder,
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
        let segments = rest
            .split('/')
            .filter(|seg| !seg.is_empty())
            .map(parse_segment)
            .collect::<Result<_, _>>()?;
        Ok(Template { segments })
    }

    /// Whether the path has exactly these segments. Only plain segments match, so an encoded
    /// slash or a path parameter never slips through; a trailing slash does not matter.
    pub fn matches(&self, path: &NormalizedPath) -> bool {
        self.segments.len() == path.segments.len()
            && self.segments.iter().zip(&path.segments).all(|(t, p)| {
                p.plain
                    && match t {
                        TemplateSegment::Literal(l) => *l == p.text,
                        TemplateSegment::Placeholder => true,
                    }
            })
    }

    /// This template followed by `suffix`.
    pub fn join(&self, suffix: &Template) -> Template {
        let mut segments = Vec::with_capacity(self.segments.len() + suffix.segments.len());
        segments.extend_from_slice(&self.segments);
        segments.extend_from_slice(&suffix.segments);
        Template { segments }
    }

    /// `n` placeholders: `/{}/{}…`.
    pub fn placeholders(n: usize) -> Template {
        Template {
            segments: vec![TemplateSegment::Placeholder; n],
        }
    }
}

fn parse_segment(seg: &str) -> Result<TemplateSegment, TemplateError> {
    if let Some(inner) = seg.strip_prefix('{') {
        if !inner.contains('}') {
            return Err(TemplateError::UnclosedBrace);
        }
        // `{name}` only as a whole segment; `{a}b` falls through to the literal check.
        if let Some(name) = inner.strip_suffix('}') {
            if name.is_empty() {
                return Err(TemplateError::EmptyPlaceholderName);
            }
            if let Some(c) = name
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
            {
                return Err(TemplateError::BadCharacter(c));
            }
            return Ok(TemplateSegment::Placeholder);
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

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// The publishable-key policy: if `retrieve_by_id`, for each api prefix P a rule GET,HEAD
    /// on P/{collection}/{id}; plus `extra` rules.
    pub fn new(api_prefixes: &[Template], retrieve_by_id: bool, extra: Vec<Rule>) -> Policy {
        let mut rules = Vec::with_capacity(api_prefixes.len() + extra.len());
        if retrieve_by_id {
            let collection_id = Template::placeholders(2);
            rules.extend(api_prefixes.iter().map(|prefix| Rule {
                methods: vec!["GET".to_owned(), "HEAD".to_owned()],
                template: prefix.join(&collection_id),
            }));
        }
        rules.extend(extra);
        Policy { rules }
    }

    /// `method` is the request's `:method` as bytes, compared exactly (methods are
    /// case-sensitive in HTTP: `get` is not `GET`).
    pub fn allows(&self, method: &[u8], path: &NormalizedPath) -> bool {
        self.rules.iter().any(|r| r.allows(method, path))
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
        Policy::new(&[template("/v3"), template("/api/v1/")], true, vec![events])
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
        let policy = Policy::new(&[template("/v3")], false, Vec::new());
        assert_eq!(allows(&policy, "GET", "/v3/devices/abc"), Some(false));
        assert_eq!(allows(&Policy::default(), "GET", "/"), Some(false));
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
                Ok(vec![lit("v3"), lit("devices"), Placeholder, lit("events")]),
            ),
            ("/{a_1}/{B}", Ok(vec![Placeholder, Placeholder])),
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
        assert_eq!(
            template("/v3").join(&Template::placeholders(2)),
            template("/v3/{a}/{b}")
        );
        assert_eq!(Template::placeholders(0), template("/"));
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
