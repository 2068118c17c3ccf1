//! A JSON reader straight into [`Node`], borrowing every string that has no
//! escape and putting children in the caller's arena (staged on two
//! reusable stacks, so a document costs no allocation per object or list). Policies arrive as JSON on the API's hot path (validate, save),
//! and going through serde's generic visitor cost more than the whole rest
//! of validation. It accepts exactly RFC 8259 JSON: a differential property
//! test holds it to `serde_json`'s verdict and values on arbitrary input.

use bumpalo::Bump;

use super::node::Node;

/// Deepest nesting accepted, as `serde_json` does, so hostile input cannot
/// overflow the stack.
/// The deepest nesting of objects and arrays a document may have, JSON or
/// YAML (SPEC §12: bounded cost for every input).
pub const MAX_DEPTH: usize = 128;

/// The message of a document nested deeper than [`MAX_DEPTH`].
pub const TOO_DEEP: &str = "nesting deeper than 128 levels";

/// Where and why the text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// 1-based line and column of the offending character.
    pub line: usize,
    pub column: usize,
    pub message: &'static str,
}

/// Parses one JSON value (surrounding whitespace allowed).
pub fn parse<'a>(text: &'a str, arena: &'a Bump) -> Result<Node<'a>, JsonError> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
        arena,
        // Under 1 KiB each, so glibc serves them from its small bins.
        entries: Vec::with_capacity(24),
        items: Vec::with_capacity(16),
    };
    p.skip_ws();
    let node = p.value()?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.error("trailing characters"));
    }
    Ok(node)
}

/// How many bytes at the start of `bytes` a JSON string holds as they are:
/// everything before the first quote, backslash or control character (all
/// of `bytes` when there is none).
///
/// Eight bytes are tested at once (SWAR): a byte-at-a-time loop was the
/// costliest part of reading a policy, and the canonical writer of the hash
/// asks the same question of every string it writes. Each mask below flags
/// its lowest matching byte exactly; wrong flags can only appear above a
/// right one (a borrow runs upwards), so the lowest flag of the union is the
/// first special byte.
#[inline]
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("a chunk of 8 bytes"));
        let quote = word ^ QUOTES;
        let backslash = word ^ BACKSLASHES;
        // A byte is flagged when it is zero after the XOR (a quote or a
        // backslash) or below 0x20 (a control character).
        let special = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(SPACES) & !word))
            & HIGHS;
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(bytes.len() - i)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    arena: &'a Bump,
    /// Entries of the objects being read, innermost last.
    entries: Vec<(&'a str, Node<'a>)>,
    /// Items of the lists being read, innermost last.
    items: Vec<Node<'a>>,
}

impl<'a> Parser<'a> {
    #[cold]
    fn error(&self, message: &'static str) -> JsonError {
        let upto = &self.bytes[..self.pos.min(self.bytes.len())];
        let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = upto.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..self.pos.min(self.text.len())]
            .chars()
            .count()
            + 1;
        JsonError {
            line,
            column,
            message,
        }
    }

    fn skip_ws(&mut self) {
        // A local position: the loop then runs in registers instead of
        // storing the field at every byte of a pretty-printed indentation.
        let mut pos = self.pos;
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(pos) {
            pos += 1;
        }
        self.pos = pos;
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn literal(&mut self, word: &'static [u8], node: Node<'a>) -> Result<Node<'a>, JsonError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(node)
        } else {
            Err(self.error("expected value"))
        }
    }

    fn value(&mut self) -> Result<Node<'a>, JsonError> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Node::Str),
            Some(b't') => self.literal(b"true", Node::Bool(true)),
            Some(b'f') => self.literal(b"false", Node::Bool(false)),
            Some(b'n') => self.literal(b"null", Node::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }

    /// A value inside an object or a list. Most of them are strings, read
    /// here directly: going through [`Parser::value`] costs a call that saves
    /// and restores half the registers for each of them.
    #[inline(always)]
    fn element(&mut self) -> Result<Node<'a>, JsonError> {
        if self.peek() == Some(b'"') {
            self.string().map(Node::Str)
        } else {
            self.value()
        }
    }

    fn nested(
        &mut self,
        f: fn(&mut Self) -> Result<Node<'a>, JsonError>,
    ) -> Result<Node<'a>, JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(TOO_DEEP));
        }
        let node = f(self);
        self.depth -= 1;
        node
    }

    fn object(&mut self) -> Result<Node<'a>, JsonError> {
        self.pos += 1; // '{'
        let start = self.entries.len();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node::Map(&[]));
        }
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.error("EOF while parsing an object")),
                _ => return Err(self.error("key must be a string")),
            }
            let key = self.string()?;
            self.skip_ws();
            match self.peek() {
                Some(b':') => self.pos += 1,
                None => return Err(self.error("EOF while parsing an object")),
                _ => return Err(self.error("expected `:`")),
            }
            self.skip_ws();
            let value = self.element()?;
            self.entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    let entries = self.arena.alloc_slice_copy(&self.entries[start..]);
                    self.entries.truncate(start);
                    return Ok(Node::Map(entries));
                }
                None => return Err(self.error("EOF while parsing an object")),
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self) -> Result<Node<'a>, JsonError> {
        self.pos += 1; // '['
        let start = self.items.len();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Node::Seq(&[]));
        }
        loop {
            self.skip_ws();
            let item = self.element()?;
            self.items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    let items = self.arena.alloc_slice_copy(&self.items[start..]);
                    self.items.truncate(start);
                    return Ok(Node::Seq(items));
                }
                None => return Err(self.error("EOF while parsing a list")),
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    /// A string borrowed from the text when it has no escape (inlined into
    /// the callers: nearly every string of a policy takes this path), else
    /// [`Parser::string_slow`].
    #[inline(always)]
    fn string(&mut self) -> Result<&'a str, JsonError> {
        let start = self.pos + 1; // after the opening quote
        let end = start + plain_len(&self.bytes[start..]);
        if self.bytes.get(end) == Some(&b'"') {
            self.pos = end + 1;
            return Ok(&self.text[start..end]);
        }
        self.pos = end;
        self.string_slow(start)
    }

    /// The rest of a string that `start` opened, from the first byte
    /// [`plain_len`] stopped at: an escape, a control character or the end.
    #[cold]
    #[inline(never)]
    fn string_slow(&mut self, start: usize) -> Result<&'a str, JsonError> {
        match self.bytes.get(self.pos) {
            Some(b'\\') => {}
            Some(_) => return Err(self.error("control character in string")),
            None => return Err(self.error("EOF while parsing a string")),
        }
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.error("EOF while parsing a string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(self.arena.alloc_str(&out));
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&e) = self.bytes.get(self.pos) else {
                        return Err(self.error("EOF while parsing a string"));
                    };
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape"));
                        }
                    }
                }
                0x00..=0x1f => return Err(self.error("control character in string")),
                _ => {
                    // Copy a run of plain characters at once (UTF-8 safe:
                    // the run ends at an ASCII quote, backslash or control).
                    let run_start = self.pos;
                    self.pos += plain_len(&self.bytes[self.pos..]);
                    out.push_str(&self.text[run_start..self.pos]);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("EOF while parsing a string"))?;
        let mut n = 0u32;
        for d in digits {
            let v = (*d as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            n = n * 16 + v;
        }
        self.pos += 4;
        Ok(n)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone leading surrogate"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("invalid surrogate pair"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone trailing surrogate")),
            n => n,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn number(&mut self) -> Result<Node<'a>, JsonError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            float = true;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
        }
        let text = &self.text[start..self.pos];
        if !float {
            if negative {
                if let Ok(n) = text.parse::<i64>() {
                    // `-0` is the float negative zero, as serde_json reads it.
                    return Ok(if n == 0 {
                        Node::Float(-0.0)
                    } else {
                        Node::Int(n)
                    });
                }
            } else if let Ok(n) = text.parse::<u64>() {
                return Ok(Node::UInt(n));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Node::Float(f)),
            _ => Err(self.error("number out of range")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_node<'a>(text: &'a str, arena: &'a Bump) -> Option<Node<'a>> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(text);
        let budget: &std::cell::Cell<usize> = arena.alloc(std::cell::Cell::new(usize::MAX));
        let node = super::super::node::NodeSeed { arena, budget }
            .deserialize(&mut de)
            .ok()?;
        de.end().ok()?;
        Some(node)
    }

    /// Equal, except that floats may differ in the last bits: serde_json's
    /// default float parser is not always correctly rounded; std's is.
    fn same(a: &Node<'_>, b: &Node<'_>) -> bool {
        match (a, b) {
            (Node::Float(x), Node::Float(y)) => {
                x == y
                    || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
                    || (x - y).abs() < 1e-300
            }
            (Node::Seq(x), Node::Seq(y)) => {
                x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same(a, b))
            }
            (Node::Map(x), Node::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y.iter())
                        .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
            }
            _ => a == b,
        }
    }

    fn agree(text: &str) -> bool {
        let arena = Bump::new();
        match (parse(text, &arena), serde_node(text, &arena)) {
            (Ok(a), Some(b)) => same(&a, &b),
            (Err(_), None) => true,
            _ => false,
        }
    }

    #[test]
    fn reads_every_json_form() {
        let text = r#" {"a": [1, -2, 0, -0, 2.5e3, true, false, null, "s\"\u00e9\ud83d\ude00"], "b": {}, "c": []} "#;
        assert!(agree(text));
        assert_eq!(parse("-0", &Bump::new()).unwrap(), Node::Float(-0.0));
    }

    #[test]
    fn errors_carry_line_and_column() {
        let arena = Bump::new();
        let parse = |text: &str| parse(text, &arena).map(|_| ());
        assert_eq!(
            parse("{\n  \"a\": 1,,\n}").unwrap_err(),
            JsonError {
                line: 2,
                column: 10,
                message: "key must be a string"
            }
        );
        assert_eq!(
            parse("[1, 2").unwrap_err().message,
            "EOF while parsing a list"
        );
        assert_eq!(parse("{} x").unwrap_err().message, "trailing characters");
        assert_eq!(parse(&"[".repeat(200)).unwrap_err().message, TOO_DEEP);
    }

    /// The byte-at-a-time definition [`plain_len`] must agree with.
    fn plain_len_slow(bytes: &[u8]) -> usize {
        bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(bytes.len())
    }

    #[test]
    fn plain_len_stops_at_the_first_quote_backslash_or_control() {
        for text in [
            "",
            "plain",
            "exactly8",
            "sixteen bytes!!!",
            "a\"b",
            "0123456789\\x",
            "tab\there",
            "\u{1f}",
            "ünïcödé text that is longer than eight bytes\"",
            "\u{7f}\u{80}\u{ff} high bytes are plain",
        ] {
            assert_eq!(
                plain_len(text.as_bytes()),
                plain_len_slow(text.as_bytes()),
                "{text:?}"
            );
        }
    }

    fn json_text() -> impl Strategy<Value = String> {
        // Valid JSON from serde_json plus mutations of it: both must agree.
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        let value = leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        (
            value,
            any::<bool>(),
            any::<prop::sample::Index>(),
            "[\\[\\]{}:,\"\\\\ 0-9a-z.eE+-]{0,3}",
        )
            .prop_map(|(v, mutate, at, junk)| {
                let text = if mutate {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    serde_json::to_string(&v).unwrap()
                };
                if mutate {
                    let mut cut = at.index(text.len() + 1);
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    format!("{}{}{}", &text[..cut], junk, &text[cut..])
                } else {
                    text
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_serde_json_on_valid_and_broken_text(text in json_text()) {
            prop_assert!(agree(&text), "disagree on {:?}", text);
        }

        #[test]
        fn plain_len_agrees_with_a_byte_loop(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(plain_len(&bytes), plain_len_slow(&bytes));
        }

        #[test]
        fn agrees_with_serde_json_on_arbitrary_text(text in "\\PC{0,40}") {
            prop_assert!(agree(&text), "disagree on {:?}", text);
        }
    }
}
