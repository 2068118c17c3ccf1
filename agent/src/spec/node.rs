//! A borrowed document tree: what JSON or YAML text parses into before the
//! schema walk. Unlike `serde_json::Value` it borrows strings from the input
//! when it can and keeps object entries in a `Vec` in document order, so
//! reading a policy allocates little, and a key written twice is still seen
//! (and reported) instead of silently overwriting the first.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One node of a parsed document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Seq(Vec<Node<'a>>),
    /// Entries in document order; keys may repeat (the walker reports it).
    Map(Vec<(Cow<'a, str>, Node<'a>)>),
}

/// Object entries of a [`Node::Map`].
pub type Entries<'a> = [(Cow<'a, str>, Node<'a>)];

/// Look-ups on object entries.
pub trait EntriesExt<'a> {
    /// The first value under `key`.
    fn field(&self, key: &str) -> Option<&Node<'a>>;
    fn contains_key(&self, key: &str) -> bool {
        self.field(key).is_some()
    }
}

impl<'a> EntriesExt<'a> for Entries<'a> {
    fn field(&self, key: &str) -> Option<&Node<'a>> {
        self.iter().find(|(k, _)| same_word(k, key)).map(|(_, v)| v)
    }
}

/// String equality that rejects on length and first byte before comparing
/// the rest: field names are short and mostly differ at once, and this runs
/// for every key of every object a policy has.
pub fn same_word(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

impl<'a> Node<'a> {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Node::Int(n) => Some(*n as f64),
            Node::UInt(n) => Some(*n as f64),
            Node::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Node::UInt(n) => Some(*n),
            Node::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Node::Int(n) => Some(*n),
            Node::UInt(n) => i64::try_from(*n).ok(),
            _ => None,
        }
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Node::Int(_) | Node::UInt(_) | Node::Float(_))
    }

    pub fn is_boolean(&self) -> bool {
        matches!(self, Node::Bool(_))
    }

    /// An owned `serde_json::Value` (for params and condition values, which
    /// the IR keeps as JSON). A repeated key keeps its last value, as JSON does.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(n) => Value::from(*n),
            Node::UInt(n) => Value::from(*n),
            Node::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Node::Str(s) => Value::String(s.to_string()),
            Node::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A node borrowing from a `serde_json::Value`.
    pub fn from_value(value: &'a Value) -> Node<'a> {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Node::UInt(u),
                (None, Some(i)) => Node::Int(i),
                _ => Node::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Node::Str(Cow::Borrowed(s)),
            Value::Array(items) => Node::Seq(items.iter().map(Node::from_value).collect()),
            Value::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Node::from_value(v)))
                    .collect(),
            ),
        }
    }
}

/// JSON text of the node (used in messages such as "found \"1\"").
impl fmt::Display for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_value())
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(if v >= 0 {
            Node::UInt(v as u64)
        } else {
            Node::Int(v)
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        Ok(Node::Float(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(6).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some((key, value)) = map.next_entry::<Key<'de>, Node<'de>>()? {
            entries.push((key.0, value));
        }
        Ok(Node::Map(entries))
    }
}

/// An object key: a string, or a YAML scalar key written as text (`1: x`).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Node::deserialize(deserializer)? {
            Node::Str(s) => Ok(Key(s)),
            Node::Seq(_) | Node::Map(_) => {
                Err(serde::de::Error::custom("object keys must be scalars"))
            }
            other => Ok(Key(Cow::Owned(other.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_without_escapes_are_borrowed() {
        let node: Node<'_> = serde_json::from_str(r#"{"a": "plain", "b": "esc\"aped"}"#).unwrap();
        let Node::Map(entries) = node else {
            panic!("a map")
        };
        assert!(matches!(entries[0].1, Node::Str(Cow::Borrowed("plain"))));
        assert!(matches!(&entries[1].1, Node::Str(Cow::Owned(s)) if s == "esc\"aped"));
    }

    #[test]
    fn repeated_keys_are_kept_in_order() {
        let node: Node<'_> = serde_json::from_str(r#"{"a": 1, "a": 2}"#).unwrap();
        let Node::Map(entries) = node else {
            panic!("a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries.field("a"), Some(&Node::UInt(1)));
    }

    #[test]
    fn round_trips_through_serde_json_value() {
        let v = serde_json::json!({"x": [1, -2, 2.5, true, null, "s"], "y": {"z": 1}});
        assert_eq!(Node::from_value(&v).to_value(), v);
    }
}
