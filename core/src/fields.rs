//! Typed fields out of a parsed JSON document (`json::Value`), with the field's path in every
//! error: `publishable.allow[2].methods[0]: expected a string, got a number`.
//!
//! Objects are strict: an unknown or repeated member name is refused, naming it, so a typo in
//! a config is an error rather than a silently ignored setting. `null` reads as absent.

use crate::prelude::*;

use crate::config::{ConfigError, Problem};
use crate::json::{Kind, Object, Value};
use core::fmt;

/// Where a value sits in the document; built on the stack, turned into text only on error.
#[derive(Debug, Clone, Copy)]
pub enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    pub fn error(&self, problem: Problem) -> ConfigError {
        ConfigError {
            field: self.to_string(),
            problem,
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The members of one object whose names were all checked against the allowed ones.
pub struct Fields<'v, 'p> {
    object: &'v Object,
    path: &'p Path<'p>,
}

impl<'v, 'p> Fields<'v, 'p> {
    /// `value` as an object whose member names are all in `allowed`, none given twice.
    pub fn of(
        value: &'v Value,
        path: &'p Path<'p>,
        allowed: &'static [&'static str],
    ) -> Result<Self, ConfigError> {
        let Value::Object(object) = value else {
            return Err(path.error(wrong_type(Kind::Object, value)));
        };
        if let Some((name, _)) = object
            .0
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            return Err(Path::Field(path, name).error(Problem::UnknownField(allowed)));
        }
        if let Some(name) = object.duplicate_name() {
            return Err(Path::Field(path, name).error(Problem::DuplicateField));
        }
        Ok(Fields { object, path })
    }

    /// The path of member `name`, for its errors and its own members' paths.
    pub fn path(&self, name: &'static str) -> Path<'p> {
        Path::Field(self.path, name)
    }

    /// Member `name`, `None` when absent or null.
    pub fn get(&self, name: &str) -> Option<&'v Value> {
        self.object.get(name).filter(|v| **v != Value::Null)
    }

    pub fn required(&self, name: &'static str) -> Result<&'v Value, ConfigError> {
        self.get(name)
            .ok_or_else(|| self.path(name).error(Problem::MissingField))
    }

    pub fn string(&self, name: &'static str) -> Result<Option<&'v str>, ConfigError> {
        self.get(name)
            .map(|v| as_str(v, &self.path(name)))
            .transpose()
    }

    pub fn bool(&self, name: &'static str) -> Result<Option<bool>, ConfigError> {
        self.get(name)
            .map(|v| as_bool(v, &self.path(name)))
            .transpose()
    }

    pub fn u64(&self, name: &'static str, max: u64) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|v| as_u64(v, &self.path(name), max))
            .transpose()
    }

    pub fn list(&self, name: &'static str) -> Result<Option<&'v [Value]>, ConfigError> {
        self.get(name)
            .map(|v| as_list(v, &self.path(name)))
            .transpose()
    }

    /// A string member that must be one of `choices`; its index among them.
    pub fn choice(
        &self,
        name: &'static str,
        choices: &'static [&'static str],
    ) -> Result<Option<usize>, ConfigError> {
        self.get(name)
            .map(|v| as_choice(v, &self.path(name), choices))
            .transpose()
    }
}

fn wrong_type(expected: Kind, got: &Value) -> Problem {
    Problem::WrongType {
        expected: expected.name(),
        got: got.kind().name(),
    }
}

pub fn as_str<'v>(value: &'v Value, path: &Path) -> Result<&'v str, ConfigError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(path.error(wrong_type(Kind::String, other))),
    }
}

pub fn as_bool(value: &Value, path: &Path) -> Result<bool, ConfigError> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(path.error(wrong_type(Kind::Bool, other))),
    }
}

pub fn as_list<'v>(value: &'v Value, path: &Path) -> Result<&'v [Value], ConfigError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(path.error(wrong_type(Kind::Array, other))),
    }
}

/// A whole number from 0 to `max`.
pub fn as_u64(value: &Value, path: &Path, max: u64) -> Result<u64, ConfigError> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .filter(|&n| n <= max)
            .ok_or_else(|| path.error(Problem::NotAWholeNumber(max))),
        other => Err(path.error(wrong_type(Kind::Number, other))),
    }
}

/// A number (any JSON number that is finite as an f64).
pub fn as_f64(value: &Value, path: &Path) -> Result<f64, ConfigError> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| path.error(Problem::NumberTooLarge)),
        other => Err(path.error(wrong_type(Kind::Number, other))),
    }
}

pub fn as_choice(
    value: &Value,
    path: &Path,
    choices: &'static [&'static str],
) -> Result<usize, ConfigError> {
    let s = as_str(value, path)?;
    choices
        .iter()
        .position(|c| *c == s)
        .ok_or_else(|| path.error(Problem::UnknownVariant(choices)))
}

/// Every item of a list of strings, in order, with its path for errors.
pub fn strings<'v>(items: &'v [Value], path: &Path) -> Result<Vec<&'v str>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| as_str(v, &Path::Index(path, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    const ALLOWED: &[&str] = &["name", "count", "on", "tags", "color"];

    fn with_fields<T>(
        text: &str,
        read: impl FnOnce(&Fields) -> Result<T, ConfigError>,
    ) -> Result<T, String> {
        let doc = parse(text.as_bytes()).expect("JSON");
        let root = Path::Root;
        let outer = Fields::of(&doc, &root, &["inner"]).map_err(|e| e.to_string())?;
        let inner_path = outer.path("inner");
        let inner = outer.required("inner").map_err(|e| e.to_string())?;
        let fields = Fields::of(inner, &inner_path, ALLOWED).map_err(|e| e.to_string())?;
        read(&fields).map_err(|e| e.to_string())
    }

    #[test]
    fn typed_fields_are_read_and_null_is_absent() {
        let got = with_fields(
            r#"{"inner":{"name":"a","count":7,"on":true,"tags":["x","y"],"color":null}}"#,
            |f| {
                let tags = f.list("tags")?.unwrap_or_default();
                Ok(format!(
                    "{:?} {:?} {:?} {:?} {:?}",
                    f.string("name")?,
                    f.u64("count", 10)?,
                    f.bool("on")?,
                    strings(tags, &f.path("tags"))?,
                    f.choice("color", &["red", "blue"])?,
                ))
            },
        );
        assert_eq!(
            got.as_deref(),
            Ok(r#"Some("a") Some(7) Some(true) ["x", "y"] None"#)
        );
    }

    #[test]
    fn errors_name_the_field_by_its_path() {
        type Read = dyn Fn(&Fields) -> Result<(), ConfigError>;
        let cases: [(&str, &Read, &str); 9] = [
            (
                r#"{"inner":{"nam":1}}"#,
                &|_| Ok(()),
                "inner.nam: unknown field; expected one of `name`, `count`, `on`, `tags`, `color`",
            ),
            (
                r#"{"inner":{"on":true,"on":false}}"#,
                &|_| Ok(()),
                "inner.on: given twice",
            ),
            (
                r#"{"inner":{"name":1}}"#,
                &|f| f.string("name").map(drop),
                "inner.name: expected a string, got a number",
            ),
            (
                r#"{"inner":{"count":1.5}}"#,
                &|f| f.u64("count", 10).map(drop),
                "inner.count: must be a whole number from 0 to 10",
            ),
            (
                r#"{"inner":{"count":11}}"#,
                &|f| f.u64("count", 10).map(drop),
                "inner.count: must be a whole number from 0 to 10",
            ),
            (
                r#"{"inner":{"on":"yes"}}"#,
                &|f| f.bool("on").map(drop),
                "inner.on: expected a boolean, got a string",
            ),
            (
                r#"{"inner":{"tags":["a",{}]}}"#,
                &|f| strings(f.list("tags")?.unwrap_or_default(), &f.path("tags")).map(drop),
                "inner.tags[1]: expected a string, got an object",
            ),
            (
                r#"{"inner":{"color":"green"}}"#,
                &|f| f.choice("color", &["red", "blue"]).map(drop),
                "inner.color: must be one of `red`, `blue`",
            ),
            (
                r#"{"inner":{}}"#,
                &|f| f.required("name").map(drop),
                "inner.name: required field missing",
            ),
        ];
        for (text, read, want) in cases {
            let got = with_fields(text, read).expect_err(text);
            assert_eq!(got, format!("invalid keygate config: {want}"), "for {text}");
        }
        let got = with_fields(r#"{"inner":[]}"#, |_| Ok(())).expect_err("a list");
        assert_eq!(
            got,
            "invalid keygate config: inner: expected an object, got a list"
        );
    }
}
