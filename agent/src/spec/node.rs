//! A borrowed document tree: what JSON or YAML text parses into before the
//! schema walk. Strings borrow from the input where they can; children live
//! in a bump arena, so building a policy's tree costs no heap allocation per
//! object or list and dropping it costs nothing. Object entries stay in
//! document order, so a key written twice is still seen (and reported)
//! instead of silently overwriting the first.

use std::fmt;

use bumpalo::Bump;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One node of a parsed document; `'a` is the input text and the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Seq(&'a [Node<'a>]),
    /// Entries in document order; keys may repeat (the walker reports it).
    Map(&'a Entries<'a>),
}

/// Object entries of a [`Node::Map`].
pub type Entries<'a> = [(&'a str, Node<'a>)];

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
            Node::Str(s) => Value::String((*s).to_string()),
            Node::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A node borrowing from a `serde_json::Value`, children in `arena`.
    pub fn from_value(value: &'a Value, arena: &'a Bump) -> Node<'a> {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Node::UInt(u),
                (None, Some(i)) => Node::Int(i),
                _ => Node::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Node::Str(s),
            Value::Array(items) => Node::Seq(
                arena.alloc_slice_fill_iter(items.iter().map(|v| Node::from_value(v, arena))),
            ),
            Value::Object(map) => Node::Map(
                arena.alloc_slice_fill_iter(
                    map.iter()
                        .map(|(k, v)| (k.as_str(), Node::from_value(v, arena))),
                ),
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

/// Deserializes a [`Node`] from any serde format (YAML), children and
/// owned strings in the arena.
#[derive(Clone, Copy)]
pub struct NodeSeed<'a> {
    pub arena: &'a Bump,
    /// Values still allowed (aliases count each time they are used); at 0
    /// the document is refused (SPEC §12).
    pub budget: &'a std::cell::Cell<usize>,
}

impl NodeSeed<'_> {
    /// Spends one value of the budget.
    fn spend<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.budget.get() {
            0 => Err(E::custom("value budget spent")),
            n => {
                self.budget.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for NodeSeed<'a> {
    type Value = Node<'a>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node<'a>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for NodeSeed<'a> {
    type Value = Node<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(if v >= 0 {
            Node::UInt(v as u64)
        } else {
            Node::Int(v)
        })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::UInt(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::Float(v))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::Str(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::Str(self.arena.alloc_str(v)))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Node<'a>, E> {
        self.spend::<E>()?;
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'a>, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'a>, A::Error> {
        self.spend::<A::Error>()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Node::Seq(self.arena.alloc_slice_copy(&items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'a>, A::Error> {
        self.spend::<A::Error>()?;
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(self)? {
            let key = match key {
                Node::Str(s) => s,
                Node::Seq(_) | Node::Map(_) => {
                    return Err(serde::de::Error::custom("object keys must be scalars"))
                }
                // A YAML scalar key such as `1: x` is read as its text.
                other => self.arena.alloc_str(&other.to_string()),
            };
            let value = map.next_value_seed(self)?;
            entries.push((key, value));
        }
        Ok(Node::Map(self.arena.alloc_slice_copy(&entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_kept_in_order() {
        let arena = Bump::new();
        let node = crate::spec::json::parse(r#"{"a": 1, "a": 2}"#, &arena).unwrap();
        let Node::Map(entries) = node else {
            panic!("a map")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries.field("a"), Some(&Node::UInt(1)));
    }

    #[test]
    fn round_trips_through_serde_json_value() {
        let arena = Bump::new();
        let v = serde_json::json!({"x": [1, -2, 2.5, true, null, "s"], "y": {"z": 1}});
        assert_eq!(Node::from_value(&v, &arena).to_value(), v);
    }

    #[test]
    fn yaml_reads_into_the_same_tree_as_json() {
        let arena = Bump::new();
        let yaml = serde_norway::Deserializer::from_str(
            "a: [1, -2, 2.5, true, null, s]\nb: {c: 'x'}\n1: one\n",
        );
        let budget = std::cell::Cell::new(1000);
        let node = NodeSeed {
            arena: &arena,
            budget: &budget,
        }
        .deserialize(yaml)
        .unwrap();
        let json = crate::spec::json::parse(
            r#"{"a": [1, -2, 2.5, true, null, "s"], "b": {"c": "x"}, "1": "one"}"#,
            &arena,
        )
        .unwrap();
        assert_eq!(node, json);
    }
}
