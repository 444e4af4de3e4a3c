//! A YAML document as a tree of nodes that remember where they stand in the file.
//!
//! The topology schema is applied to this tree by hand (see `schema.rs`) rather than
//! through `serde` derive, so that every problem in a file is reported at once, each
//! with its line, column and field path, instead of stopping at the first.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A position in the source file, 1-based. `line == 0` means unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Line, counting from 1.
    pub line: u32,
    /// Column in characters, counting from 1.
    pub column: u32,
}

impl Pos {
    fn of<T>(spanned: &Spanned<T>) -> Self {
        Self {
            line: clamp(spanned.referenced.line()),
            column: clamp(spanned.referenced.column()),
        }
    }
}

/// One node of the document and where it stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the node stands in the file.
    pub pos: Pos,
    /// What the node holds.
    pub value: Value,
}

/// The content of a node. Scalars keep the type YAML resolved them to, so that
/// `replicas: three` and `replicas: 3` can be told apart.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits in an `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string, quoted or plain.
    Str(String),
    /// A sequence of nodes.
    Seq(Vec<Node>),
    /// A mapping, in file order. Keys are nodes too, so they can be located.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What a person would call this kind of value in an error message.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl fmt::Display for Value {
    /// A short rendering of the value for error messages (`found "three"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) if s.chars().count() > 40 => {
                let head: String = s.chars().take(40).collect();
                write!(f, "{head:?}…")
            }
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Seq(_) => f.write_str("a list"),
            Value::Map(_) => f.write_str("a mapping"),
        }
    }
}

/// Parses YAML text into a node tree. Duplicate keys, malformed YAML and documents
/// that blow the parser's budget (alias bombs) are errors.
pub fn parse_yaml(text: &str) -> Result<Node, YamlSyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos { line: 1, column: 1 },
            value: Value::Null,
        });
    }
    // YAML 1.2 booleans, as Compose reads them: `n`, `no`, `on` and `yes` stay strings.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let spanned: Spanned<Value> = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| YamlSyntaxError::from_saphyr(&e))?;
    Ok(Node {
        pos: Pos::of(&spanned),
        value: spanned.value,
    })
}

/// The document is not well-formed YAML.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlSyntaxError {
    /// Where the parser stopped, when it knows.
    pub pos: Pos,
    /// What the parser said.
    pub message: String,
}

impl YamlSyntaxError {
    fn from_saphyr(err: &serde_saphyr::Error) -> Self {
        let pos = err
            .location()
            .map(|l| Pos {
                line: clamp(l.line()),
                column: clamp(l.column()),
            })
            .unwrap_or_default();
        let rendered = err.without_snippet().to_string();
        // The rendering ends with its own "at line X, column Y"; we print the
        // position ourselves, in the same form as every other diagnostic.
        let message = match rendered.rfind(" at line ") {
            Some(i) => rendered[..i].to_string(),
            None => rendered,
        };
        Self { pos, message }
    }
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn node_of(spanned: Spanned<Value>) -> Node {
    Node {
        pos: Pos::of(&spanned),
        value: spanned.value,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(node_of(item));
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((node_of(key), node_of(value)));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn nodes_know_their_line_and_column() {
        let doc = parse_yaml("services:\n  web:\n    image: busybox\n    replicas: 3\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[0].0.value, Value::Str("services".into()));
        assert_eq!(top[0].0.pos, Pos { line: 1, column: 1 });
        let web = map(&map(&top[0].1)[0].1);
        assert_eq!(web[0].1.value, Value::Str("busybox".into()));
        assert_eq!(
            web[0].1.pos,
            Pos {
                line: 3,
                column: 12
            }
        );
        assert_eq!(web[1].1.value, Value::Int(3));
        assert_eq!(web[1].1.pos.line, 4);
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let doc = parse_yaml("a: \"3\"\nb: 3\nc: three\nd: 0.5\ne: ~\nf: true\n").unwrap();
        let values: Vec<_> = map(&doc).iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Str("3".into()),
                Value::Int(3),
                Value::Str("three".into()),
                Value::Float(0.5),
                Value::Null,
                Value::Bool(true),
            ]
        );
    }

    #[test]
    fn anchors_and_merge_keys_resolve() {
        let doc = parse_yaml(
            "x-base: &base\n  image: busybox\nservices:\n  a:\n    <<: *base\n    command: sh\n",
        )
        .unwrap();
        let services = &map(&doc)[1].1;
        let a = map(&map(services)[0].1);
        let keys: Vec<_> = a.iter().map(|(k, _)| k.value.clone()).collect();
        assert!(keys.contains(&Value::Str("image".into())), "{keys:?}");
        assert!(keys.contains(&Value::Str("command".into())), "{keys:?}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse_yaml("services:\n  web: [unclosed\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse_yaml("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.to_lowercase().contains("duplicate"), "{err:?}");
    }

    #[test]
    fn booleans_are_yaml_1_2() {
        let doc = parse_yaml("n: no\ny: on\n").unwrap();
        let entries = map(&doc);
        assert_eq!(entries[0].0.value, Value::Str("n".into()));
        assert_eq!(entries[0].1.value, Value::Str("no".into()));
        assert_eq!(entries[1].1.value, Value::Str("on".into()));
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse_yaml("  \n").unwrap().value, Value::Null);
    }
}
