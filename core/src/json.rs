//! A small, strict JSON reader (RFC 8259) for keygate's configuration documents.
//!
//! Why not serde_json: the filter module must stay small (issue 9: under 150 KB), and a
//! generic deserializer is most of a module's size. Measured on wasm32-wasip1 with LTO:
//! `serde_json::Value` parsing alone adds 55 KB, `miniserde`'s 56 KB, serde-derived structs
//! with field paths (what the filter had) ~150 KB. This reader adds about 10 KB because it does
//! only what configs need: numbers stay as their validated text (no float code unless a
//! caller asks for a float), objects keep their members in document order (duplicates are
//! the caller's to refuse, with a field path), and errors carry a line and column but never
//! quote the input, so a key pasted in the wrong place is never echoed.

use crate::prelude::*;

use core::fmt;

/// Nesting deeper than this is refused: the reader recurses, and a config is never deep.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A number as written: valid JSON number syntax, converted only on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(String);

impl Number {
    /// The value if it is written as a non-negative integer (no fraction, no exponent) that
    /// fits a u64.
    pub fn as_u64(&self) -> Option<u64> {
        if !self.0.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.0.parse().ok()
    }

    /// The value as the nearest f64 (any valid JSON number has one, or is infinite).
    pub fn as_f64(&self) -> Option<f64> {
        self.0.parse::<f64>().ok().filter(|f| f.is_finite())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An object's members in document order; names may repeat (see `duplicate_name`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(pub Vec<(String, Value)>);

impl Object {
    /// The first member named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The first name that appears twice, if any.
    pub fn duplicate_name(&self) -> Option<&str> {
        let names = &self.0;
        (1..names.len())
            .find(|&i| names[..i].iter().any(|(n, _)| *n == names[i].0))
            .map(|i| names[i].0.as_str())
    }
}

impl Value {
    /// What kind of value this is, for "expected …, got …" messages.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(_) => Kind::Number,
            Value::String(_) => Kind::String,
            Value::Array(_) => Kind::Array,
            Value::Object(_) => Kind::Object,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "a list",
            Kind::Object => "an object",
        }
    }
}

/// Why a document is not JSON, and where (1-based line and column, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    pub what: Syntax,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    NotUtf8,
    UnexpectedEnd,
    ExpectedValue,
    ExpectedName,
    ExpectedColon,
    ExpectedCommaOrBracket,
    ExpectedCommaOrBrace,
    BadNumber,
    BadEscape,
    BadUnicodeEscape,
    ControlCharacter,
    TooDeep,
    TrailingCharacters,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.what {
            Syntax::NotUtf8 => "not valid UTF-8",
            Syntax::UnexpectedEnd => "the document ends too early",
            Syntax::ExpectedValue => "expected a value",
            Syntax::ExpectedName => "expected a member name in double quotes",
            Syntax::ExpectedColon => "expected ':'",
            Syntax::ExpectedCommaOrBracket => "expected ',' or ']'",
            Syntax::ExpectedCommaOrBrace => "expected ',' or '}'",
            Syntax::BadNumber => "invalid number",
            Syntax::BadEscape => "invalid escape in a string",
            Syntax::BadUnicodeEscape => "invalid \\u escape in a string",
            Syntax::ControlCharacter => "control character in a string (escape it)",
            Syntax::TooDeep => "nested too deeply",
            Syntax::TrailingCharacters => "trailing characters after the JSON value",
        };
        write!(f, "{what} at line {} column {}", self.line, self.column)
    }
}

impl core::error::Error for SyntaxError {}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(bytes: &[u8]) -> Result<Value, SyntaxError> {
    let text = match core::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return Err(error_at(bytes, e.valid_up_to(), Syntax::NotUtf8)),
    };
    let mut reader = Reader {
        bytes: text.as_bytes(),
        at: 0,
    };
    let parsed = reader.value(0).and_then(|value| {
        reader.skip_whitespace();
        if reader.at < reader.bytes.len() {
            Err(Syntax::TrailingCharacters)
        } else {
            Ok(value)
        }
    });
    parsed.map_err(|what| error_at(bytes, reader.at, what))
}

fn error_at(bytes: &[u8], at: usize, what: Syntax) -> SyntaxError {
    let before = &bytes[..at.min(bytes.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Columns count characters: continuation bytes of UTF-8 are not counted.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count();
    SyntaxError {
        what,
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        column: column + 1,
    }
}

struct Reader<'a> {
    /// Valid UTF-8 (checked once up front), so any slice between ASCII delimiters is too.
    bytes: &'a [u8],
    /// On error: where the reader stopped, which the error's position points at.
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, without consuming it.
    fn next_token(&mut self) -> Result<u8, Syntax> {
        self.skip_whitespace();
        self.peek().ok_or(Syntax::UnexpectedEnd)
    }

    fn value(&mut self, depth: usize) -> Result<Value, Syntax> {
        match self.next_token()? {
            b'{' => self.object(depth + 1).map(Value::Object),
            b'[' => self.array(depth + 1).map(Value::Array),
            b'"' => self.string().map(Value::String),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            _ => Err(Syntax::ExpectedValue),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, Syntax> {
        let rest = &self.bytes[self.at..];
        if rest.starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else if word.as_bytes().starts_with(rest) {
            self.at = self.bytes.len();
            Err(Syntax::UnexpectedEnd)
        } else {
            Err(Syntax::ExpectedValue)
        }
    }

    fn array(&mut self, depth: usize) -> Result<Vec<Value>, Syntax> {
        if depth > MAX_DEPTH {
            return Err(Syntax::TooDeep);
        }
        self.at += 1; // '['
        let mut items = Vec::new();
        if self.next_token()? == b']' {
            self.at += 1;
            return Ok(items);
        }
        loop {
            items.push(self.value(depth)?);
            match self.next_token()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Ok(items);
                }
                _ => return Err(Syntax::ExpectedCommaOrBracket),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Object, Syntax> {
        if depth > MAX_DEPTH {
            return Err(Syntax::TooDeep);
        }
        self.at += 1; // '{'
        let mut members = Vec::new();
        if self.next_token()? == b'}' {
            self.at += 1;
            return Ok(Object(members));
        }
        loop {
            if self.next_token()? != b'"' {
                return Err(Syntax::ExpectedName);
            }
            let name = self.string()?;
            if self.next_token()? != b':' {
                return Err(Syntax::ExpectedColon);
            }
            self.at += 1;
            members.push((name, self.value(depth)?));
            match self.next_token()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Ok(Object(members));
                }
                _ => return Err(Syntax::ExpectedCommaOrBrace),
            }
        }
    }

    fn number(&mut self) -> Result<Number, Syntax> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.number_error()),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.number_error());
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.number_error());
            }
            self.digits();
        }
        Ok(Number(self.text(start, self.at).to_owned()))
    }

    fn number_error(&self) -> Syntax {
        if self.at == self.bytes.len() {
            Syntax::UnexpectedEnd
        } else {
            Syntax::BadNumber
        }
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    /// The input between two positions that sit next to ASCII bytes.
    fn text(&self, start: usize, end: usize) -> &str {
        core::str::from_utf8(&self.bytes[start..end]).unwrap_or_default()
    }

    fn string(&mut self) -> Result<String, Syntax> {
        self.at += 1; // '"'
        let mut out = String::new();
        loop {
            let start = self.at;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.push_str(self.text(start, self.at));
            match self.peek() {
                None => return Err(Syntax::UnexpectedEnd),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => return Err(Syntax::ControlCharacter),
            }
        }
    }

    /// One escape, after its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), Syntax> {
        let Some(b) = self.peek() else {
            return Err(Syntax::UnexpectedEnd);
        };
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                self.at += 1;
                return self.unicode_escape(out);
            }
            _ => return Err(Syntax::BadEscape),
        };
        self.at += 1;
        out.push(c);
        Ok(())
    }

    /// `\uXXXX` after its `\u`, or a surrogate pair `\uD8xx\uDCxx`.
    fn unicode_escape(&mut self, out: &mut String) -> Result<(), Syntax> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.at..].starts_with(b"\\u") {
                    return Err(self.unicode_error());
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Syntax::BadUnicodeEscape);
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Syntax::BadUnicodeEscape),
            code => code,
        };
        out.push(char::from_u32(code).ok_or(Syntax::BadUnicodeEscape)?);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Syntax> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| (b as char).to_digit(16))
                .ok_or_else(|| self.unicode_error())?;
            code = code * 16 + digit;
            self.at += 1;
        }
        Ok(code)
    }

    fn unicode_error(&self) -> Syntax {
        if self.at == self.bytes.len() {
            Syntax::UnexpectedEnd
        } else {
            Syntax::BadUnicodeEscape
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_of(text: &str) -> String {
        match parse(text.as_bytes()) {
            Ok(v) => panic!("{text:?} should be refused, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn string(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn reads_every_kind_of_value() {
        let v = parse(br#" {"a": [1, -2.5e3, true, false, null], "b": {"c": "d"}, "e": ""} "#)
            .expect("valid");
        let Value::Object(o) = v else {
            panic!("object")
        };
        let Some(Value::Array(items)) = o.get("a") else {
            panic!("array")
        };
        assert!(matches!(&items[0], Value::Number(n) if n.as_u64() == Some(1)));
        assert!(
            matches!(&items[1], Value::Number(n) if n.as_f64() == Some(-2500.0) && n.as_u64().is_none())
        );
        assert_eq!(
            &items[2..],
            [Value::Bool(true), Value::Bool(false), Value::Null]
        );
        assert_eq!(
            o.get("b"),
            Some(&Value::Object(Object(vec![("c".into(), string("d"))])))
        );
        assert_eq!(o.get("e"), Some(&string("")));
        assert_eq!(o.get("z"), None);
    }

    #[test]
    fn strings_unescape_like_json_says() {
        let v = parse(br#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00 \u20AC""#).expect("valid");
        assert_eq!(
            v,
            string("a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{1F600} \u{20AC}")
        );
        assert_eq!(parse("\"é€😀\"".as_bytes()), Ok(string("é€😀")));
    }

    #[test]
    fn integers_are_exact_and_others_are_not_integers() {
        let number = |t: &str| match parse(t.as_bytes()) {
            Ok(Value::Number(n)) => n,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(number("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(number("18446744073709551616").as_u64(), None);
        assert_eq!(number("1.0").as_u64(), None);
        assert_eq!(number("1e3").as_u64(), None);
        assert_eq!(number("-1").as_u64(), None);
        assert_eq!(number("0").as_u64(), Some(0));
        assert_eq!(number("0.25").as_f64(), Some(0.25));
        assert_eq!(number("1e999").as_f64(), None);
    }

    #[test]
    fn duplicate_names_are_kept_for_the_caller_to_refuse() {
        let Ok(Value::Object(o)) = parse(br#"{"a":1,"b":2,"a":3}"#) else {
            panic!("object")
        };
        assert_eq!(o.duplicate_name(), Some("a"));
        let Ok(Value::Object(o)) = parse(br#"{"a":1,"b":2}"#) else {
            panic!("object")
        };
        assert_eq!(o.duplicate_name(), None);
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("", "the document ends too early at line 1 column 1"),
            ("{", "the document ends too early at line 1 column 2"),
            ("{\"a\":1,\n  \"b\" 2}", "expected ':' at line 2 column 7"),
            ("[1 2]", "expected ',' or ']' at line 1 column 4"),
            (
                "{\"a\":1 \"b\":2}",
                "expected ',' or '}' at line 1 column 8",
            ),
            (
                "{a:1}",
                "expected a member name in double quotes at line 1 column 2",
            ),
            (
                "{\"a\":1,}",
                "expected a member name in double quotes at line 1 column 8",
            ),
            ("[1,]", "expected a value at line 1 column 4"),
            ("[01]", "expected ',' or ']' at line 1 column 3"),
            ("[1.]", "invalid number at line 1 column 4"),
            ("[-]", "invalid number at line 1 column 3"),
            ("[1e+]", "invalid number at line 1 column 5"),
            ("\"\\x\"", "invalid escape in a string at line 1 column 3"),
            (
                "\"\\u12G4\"",
                "invalid \\u escape in a string at line 1 column 6",
            ),
            (
                "\"\\udc00\"",
                "invalid \\u escape in a string at line 1 column 8",
            ),
            (
                "\"\\ud800x\"",
                "invalid \\u escape in a string at line 1 column 8",
            ),
            (
                "\"a\tb\"",
                "control character in a string (escape it) at line 1 column 3",
            ),
            (
                "\"é\u{1}\"",
                "control character in a string (escape it) at line 1 column 3",
            ),
            (
                "{} x",
                "trailing characters after the JSON value at line 1 column 4",
            ),
            ("tru", "the document ends too early at line 1 column 4"),
            ("trux", "expected a value at line 1 column 1"),
            ("NaN", "expected a value at line 1 column 1"),
            ("\"abc", "the document ends too early at line 1 column 5"),
        ];
        for (text, want) in cases {
            assert_eq!(syntax_of(text), want, "for {text:?}");
        }
        let bad_utf8 = parse(b"{\"a\":\"\xff\"}").expect_err("not UTF-8");
        assert_eq!(bad_utf8.to_string(), "not valid UTF-8 at line 1 column 7");
    }

    #[test]
    fn nesting_is_limited_without_overflowing_the_stack() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(
            parse(deep.as_bytes()).map_err(|e| e.what),
            Err(Syntax::TooDeep)
        );
        let very_deep = "{\"a\":".repeat(100_000);
        assert_eq!(
            parse(very_deep.as_bytes()).map_err(|e| e.what),
            Err(Syntax::TooDeep)
        );
    }

    #[test]
    fn errors_never_quote_the_input() {
        let secret = "sk_test_0123456789abcdefghijklmnopqrstuv";
        for text in [
            format!("{{\"{secret}\" 1}}"),
            format!("[\"{secret}\" x]"),
            secret.to_string(),
            format!("\"{secret}\\q\""),
        ] {
            let shown = syntax_of(&text);
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
