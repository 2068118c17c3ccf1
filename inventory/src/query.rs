//! The `query` selector mode: predicates over target fields joined with `and`,
//! such as `labels.tier = low and status = running and name ~ "web-*"`.
//!
//! A query is parsed once (every bad predicate reported together, each with
//! its column) and then evaluated against targets; glob patterns are compiled
//! at parse time and evaluation runs over the host's columnar view, so a
//! query over a large inventory stays a tight loop of string comparisons.

use std::fmt;

use serde_json::Value;

use crate::error::{codes, SelectorError};
use crate::finding::did_you_mean;
use crate::index::{Columns, HostInventory, TypeIndex};
use crate::model::Target;

/// A parsed query: every predicate must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    predicates: Vec<Predicate>,
}

/// `field op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub field: Field,
    pub op: Op,
    /// The value with quotes and escapes removed.
    pub value: String,
    pattern: Pattern,
    number: Option<f64>,
}

/// What a predicate reads from a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The id without the type prefix (`104`).
    Id,
    Name,
    Status,
    /// `labels.<key>`.
    Label(String),
    /// `attrs.<key>`, compared against the attribute's JSON scalar text.
    Attr(String),
}

/// How a predicate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `=`: equal text.
    Eq,
    /// `!=`: not equal; also true when the field is absent.
    Ne,
    /// `~`: glob match, `*` any run of characters, `?` one character.
    Glob,
}

/// A compiled glob; the common shapes get a fast path.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    General(Vec<GlobToken>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum GlobToken {
    Char(char),
    AnyOne,
    AnyRun,
}

const FIELD_NAMES: [&str; 5] = ["id", "name", "status", "labels", "attrs"];
const FIELDS_HINT: &str = "fields: id, name, status, labels.<key>, attrs.<key>";

impl Query {
    /// Parses a query, reporting every bad predicate at once.
    pub fn parse(text: &str) -> Result<Query, Vec<SelectorError>> {
        // SPEC §12: the cost of a query is bounded before any work on it.
        if text.len() > MAX_QUERY_LEN {
            return Err(vec![too_complex(format!(
                "the query is {} bytes long; the limit is {MAX_QUERY_LEN}",
                text.len()
            ))]);
        }
        let spans = split_predicates(text);
        if spans.len() > MAX_PREDICATES {
            return Err(vec![too_complex(format!(
                "the query has {} predicates; the limit is {MAX_PREDICATES}",
                spans.len()
            ))]);
        }
        let mut predicates = Vec::new();
        let mut errors = Vec::new();
        for (index, span) in spans.iter().enumerate() {
            match parse_predicate(text, index, *span) {
                Ok(predicate) => predicates.push(predicate),
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        if errors.is_empty() {
            Ok(Query { predicates })
        } else {
            Err(errors)
        }
    }

    pub fn predicates(&self) -> &[Predicate] {
        &self.predicates
    }

    /// True when every predicate holds for `target`.
    pub fn matches(&self, target: &Target) -> bool {
        self.predicates.iter().all(|p| p.matches(target))
    }

    /// Positions in `host` of the targets of one type (`index`) that match,
    /// in inventory order. Works on the host's columnar view (values read in
    /// memory order), and the cheapest predicates narrow the rows first.
    pub(crate) fn select(&self, host: &HostInventory, index: &TypeIndex) -> Vec<usize> {
        let columns = host.columns(index);
        let mut rows: Vec<u32> = (0..index.members.len() as u32).collect();
        let mut order: Vec<&Predicate> = self.predicates.iter().collect();
        order.sort_by_key(|p| p.cost());
        for predicate in order {
            if rows.is_empty() {
                break;
            }
            predicate.filter(&mut rows, columns, |row| {
                host.target_at(index.members[row as usize])
            });
        }
        rows.into_iter()
            .map(|row| index.members[row as usize])
            .collect()
    }
}

impl Predicate {
    /// True when the predicate holds for `target`. An absent field satisfies
    /// only `!=`.
    pub fn matches(&self, target: &Target) -> bool {
        match &self.field {
            Field::Id => self.test(Some(&target.id)),
            Field::Name => self.test(target.name.as_deref()),
            Field::Status => self.test(target.status.as_deref()),
            Field::Label(key) => self.test(target.labels.get(key).map(String::as_str)),
            Field::Attr(key) => match target.attrs.get(key) {
                None | Some(Value::Null) => self.test(None),
                Some(Value::String(s)) => self.test(Some(s)),
                Some(Value::Bool(b)) => self.test(Some(if *b { "true" } else { "false" })),
                Some(Value::Number(n)) => match (self.op, self.number, n.as_f64()) {
                    (Op::Eq, Some(want), Some(have)) => want == have,
                    (Op::Ne, Some(want), Some(have)) => want != have,
                    _ => self.test(Some(&n.to_string())),
                },
                Some(other) => self.test(Some(&other.to_string())),
            },
        }
    }

    /// Evaluation order: equality first, globs next, attrs (read from each target) last.
    fn cost(&self) -> u8 {
        match (&self.field, self.op) {
            (Field::Attr(_), _) => 3,
            (_, Op::Glob) => 2,
            (_, Op::Eq) => 0,
            (_, Op::Ne) => 1,
        }
    }

    /// Keeps the rows whose target satisfies the predicate.
    fn filter<'a>(
        &self,
        rows: &mut Vec<u32>,
        columns: &Columns,
        target: impl Fn(u32) -> &'a Target,
    ) {
        let column = match &self.field {
            Field::Id => &columns.id,
            Field::Name => &columns.name,
            Field::Status => &columns.status,
            Field::Label(key) => match columns.labels.get(key) {
                Some(column) => column,
                // No target has this label: only `!=` holds, for every row.
                None => {
                    if self.op != Op::Ne {
                        rows.clear();
                    }
                    return;
                }
            },
            Field::Attr(_) => {
                rows.retain(|&row| self.matches(target(row)));
                return;
            }
        };
        rows.retain(|&row| self.test(column.get(row)));
    }

    fn test(&self, actual: Option<&str>) -> bool {
        match (self.op, actual) {
            (Op::Eq, Some(actual)) => actual == self.value,
            (Op::Ne, Some(actual)) => actual != self.value,
            (Op::Glob, Some(actual)) => self.pattern.matches(actual),
            (Op::Ne, None) => true,
            (Op::Eq | Op::Glob, None) => false,
        }
    }
}

/// The longest query text, in bytes (SPEC §12).
pub const MAX_QUERY_LEN: usize = 4096;
/// The most `and`-joined predicates in one query.
pub const MAX_PREDICATES: usize = 32;
/// The longest glob pattern of one `~` predicate, in characters.
pub const MAX_PATTERN_LEN: usize = 256;

fn too_complex(message: String) -> SelectorError {
    SelectorError {
        code: codes::QUERY_TOO_COMPLEX,
        item: None,
        text: String::new(),
        message,
        hint: Some(
            "a query names a few labels or a glob; select with labels (labels.tier = low) instead of long patterns".into(),
        ),
    }
}

impl Pattern {
    fn compile(glob: &str) -> Pattern {
        // `**` matches what `*` matches: runs of stars are one, so the
        // matcher's cost follows the pattern's meaning, not its spelling.
        let collapsed;
        let glob = if glob.contains("**") {
            let mut out = String::with_capacity(glob.len());
            for c in glob.chars() {
                if !(c == '*' && out.ends_with('*')) {
                    out.push(c);
                }
            }
            collapsed = out;
            collapsed.as_str()
        } else {
            glob
        };
        let stars = glob.matches('*').count();
        let plain = |s: &str| !s.contains(['*', '?']);
        if !glob.contains('?') {
            if stars == 0 {
                return Pattern::Exact(glob.to_owned());
            }
            if let Some(prefix) = glob.strip_suffix('*').filter(|p| plain(p)) {
                return Pattern::Prefix(prefix.to_owned());
            }
            if let Some(suffix) = glob.strip_prefix('*').filter(|s| plain(s)) {
                return Pattern::Suffix(suffix.to_owned());
            }
            if let Some(inner) = glob
                .strip_prefix('*')
                .and_then(|s| s.strip_suffix('*'))
                .filter(|s| plain(s))
            {
                return Pattern::Contains(inner.to_owned());
            }
        }
        Pattern::General(
            glob.chars()
                .map(|c| match c {
                    '*' => GlobToken::AnyRun,
                    '?' => GlobToken::AnyOne,
                    c => GlobToken::Char(c),
                })
                .collect(),
        )
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(s) => text == s,
            Pattern::Prefix(s) => text.starts_with(s.as_str()),
            Pattern::Suffix(s) => text.ends_with(s.as_str()),
            Pattern::Contains(s) => text.contains(s.as_str()),
            Pattern::General(tokens) => glob_match(tokens, text),
        }
    }
}

/// Greedy glob matching with one backtrack point (the last `*`): linear in
/// practice, never exponential.
fn glob_match(tokens: &[GlobToken], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let (mut t, mut c) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while c < chars.len() {
        match tokens.get(t) {
            Some(GlobToken::AnyRun) => {
                backtrack = Some((t, c));
                t += 1;
                continue;
            }
            Some(GlobToken::AnyOne) => {
                t += 1;
                c += 1;
                continue;
            }
            Some(GlobToken::Char(want)) if *want == chars[c] => {
                t += 1;
                c += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((star, from)) => {
                t = star + 1;
                c = from + 1;
                backtrack = Some((star, from + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|token| *token == GlobToken::AnyRun)
}

/// Byte spans of the predicates: the text between bare `and` words (any
/// case), quotes respected.
fn split_predicates(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut words = Words { text, pos: 0 };
    while let Some((start, end)) = words.next_word() {
        if text[start..end].eq_ignore_ascii_case("and") {
            spans.push(current.take().unwrap_or((start, start)));
        } else {
            current = Some(current.map_or((start, end), |(s, _)| (s, end)));
        }
    }
    spans.push(current.unwrap_or((text.len(), text.len())));
    spans
}

/// Whitespace-separated words where a double-quoted string (with `\"`
/// escapes) may hold spaces.
struct Words<'a> {
    text: &'a str,
    pos: usize,
}

impl Words<'_> {
    fn next_word(&mut self) -> Option<(usize, usize)> {
        let rest = &self.text[self.pos..];
        let start = self.pos + (rest.len() - rest.trim_start().len());
        if start >= self.text.len() {
            return None;
        }
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = self.text.len();
        for (i, c) in self.text[start..].char_indices() {
            if in_quotes {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_quotes = false,
                    _ => {}
                }
            } else if c == '"' {
                in_quotes = true;
            } else if c.is_whitespace() {
                end = start + i;
                break;
            }
        }
        self.pos = end;
        Some((start, end))
    }
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// A cursor over one predicate, with error reporting that names the
/// predicate and the column in the whole query.
struct PredicateParser<'a> {
    query: &'a str,
    index: usize,
    span: (usize, usize),
    pos: usize,
}

impl<'a> PredicateParser<'a> {
    fn rest(&self) -> &'a str {
        &self.query[self.pos..self.span.1]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn error(
        &self,
        code: &'static str,
        at: usize,
        what: String,
        hint: Option<String>,
    ) -> SelectorError {
        let text = self.query[self.span.0..self.span.1].to_owned();
        let column = self.query[..at].chars().count() + 1;
        SelectorError {
            code,
            item: Some(self.index),
            message: format!(
                "predicate {} `{}` (column {column}): {what}",
                self.index + 1,
                text
            ),
            text,
            hint,
        }
    }

    fn syntax(&self, at: usize, what: impl Into<String>, hint: Option<&str>) -> SelectorError {
        self.error(
            codes::QUERY_SYNTAX,
            at,
            what.into(),
            hint.map(str::to_owned),
        )
    }
}

fn parse_predicate(
    query: &str,
    index: usize,
    span: (usize, usize),
) -> Result<Predicate, Vec<SelectorError>> {
    let mut p = PredicateParser {
        query,
        index,
        span,
        pos: span.0,
    };
    let mut errors = Vec::new();
    if span.0 == span.1 {
        let what = if query.trim().is_empty() {
            "the query is empty"
        } else {
            "empty predicate"
        };
        let hint = "write predicates such as `labels.tier = low`, joined with `and`";
        return Err(vec![p.syntax(span.0, what, Some(hint))]);
    }

    let field_at = p.pos;
    let field_text = p.take_while(is_field_char);
    if field_text.is_empty() {
        let found = p.rest().chars().next().unwrap_or(' ');
        return Err(vec![p.syntax(
            field_at,
            format!("expected a field name, found `{found}`"),
            Some(FIELDS_HINT),
        )]);
    }
    let field = match parse_field(field_text) {
        Ok(field) => Some(field),
        Err(hint) => {
            let what = format!("unknown field `{field_text}`");
            errors.push(p.error(codes::QUERY_FIELD, field_at, what, Some(hint)));
            None
        }
    };

    p.skip_ws();
    let op_at = p.pos;
    let rest = p.rest();
    let (op, len) = if rest.starts_with("!=") {
        (Some(Op::Ne), 2)
    } else if rest.starts_with("==") {
        errors.push(p.syntax(
            op_at,
            "unknown operator `==`",
            Some("write `=` for equality"),
        ));
        return Err(errors);
    } else if rest.starts_with('=') {
        (Some(Op::Eq), 1)
    } else if rest.starts_with('~') {
        (Some(Op::Glob), 1)
    } else {
        (None, 0)
    };
    let Some(op) = op else {
        let found: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        let what = if rest.is_empty() {
            format!("`{field_text}` has no operator")
        } else {
            format!("unknown operator `{found}`")
        };
        errors.push(p.syntax(op_at, what, Some("operators are `=`, `!=` and `~` (glob)")));
        return Err(errors);
    };
    p.pos += len;

    p.skip_ws();
    let value_at = p.pos;
    let value = if p.rest().starts_with('"') {
        match parse_quoted(p.rest()) {
            Ok((value, used)) => {
                p.pos += used;
                value
            }
            Err((offset, what)) => {
                errors.push(p.syntax(
                    value_at + offset,
                    what,
                    Some("close the string with `\"`; write `\\\"` for a quote inside it"),
                ));
                return Err(errors);
            }
        }
    } else {
        let word = p.take_while(|c| !c.is_whitespace());
        if word.is_empty() {
            let hint = "give a value; quote it if it is the word `and`: `\"and\"`";
            errors.push(p.syntax(value_at, "missing value", Some(hint)));
            return Err(errors);
        }
        if let Some(quote) = word.find('"') {
            let hint = "quote the whole value: `name = \"web 1\"`";
            errors.push(p.syntax(
                value_at + quote,
                "unexpected `\"` inside a bare value",
                Some(hint),
            ));
            return Err(errors);
        }
        word.to_owned()
    };

    p.skip_ws();
    if !p.rest().is_empty() {
        let extra_at = p.pos;
        let extra = p.rest();
        let first = extra.split_whitespace().next().unwrap_or(extra);
        let (what, hint) = if first.eq_ignore_ascii_case("or") {
            (
                "`or` is not supported".to_owned(),
                "a query is predicates joined with `and` only; list ids with mode list instead",
            )
        } else {
            (
                format!("unexpected `{extra}` after the value"),
                "join predicates with `and`; quote values that contain spaces",
            )
        };
        errors.push(p.syntax(extra_at, what, Some(hint)));
        return Err(errors);
    }

    if op == Op::Glob && value.chars().count() > MAX_PATTERN_LEN {
        let mut error = too_complex(format!(
            "predicate {}: the glob is {} characters long; the limit is {MAX_PATTERN_LEN}",
            index + 1,
            value.chars().count()
        ));
        error.item = Some(index);
        errors.push(error);
        return Err(errors);
    }
    match field {
        Some(field) if errors.is_empty() => Ok(Predicate {
            pattern: Pattern::compile(&value),
            number: value.parse::<f64>().ok().filter(|n| n.is_finite()),
            field,
            op,
            value,
        }),
        _ => Err(errors),
    }
}

/// `Err(hint)` when the field is not one of `id name status labels.<k> attrs.<k>`.
fn parse_field(text: &str) -> Result<Field, String> {
    let (head, key) = match text.split_once('.') {
        Some((head, key)) => (head, Some(key)),
        None => (text, None),
    };
    match (head, key) {
        ("id", None) => return Ok(Field::Id),
        ("name", None) => return Ok(Field::Name),
        ("status", None) => return Ok(Field::Status),
        ("labels", Some(key)) if !key.is_empty() => return Ok(Field::Label(key.to_owned())),
        ("attrs", Some(key)) if !key.is_empty() => return Ok(Field::Attr(key.to_owned())),
        ("labels" | "attrs", _) => return Err(format!("`{head}` needs a key: `{head}.<key>`")),
        _ => {}
    }
    let known = ["labels", "attrs"];
    let suggestion = match (did_you_mean(head, FIELD_NAMES), key) {
        (Some(near), Some(key)) if known.contains(&near) => Some(format!("{near}.{key}")),
        (Some(near), None) if !known.contains(&near) => Some(near.to_owned()),
        _ => did_you_mean(text, ["id", "name", "status"]).map(str::to_owned),
    };
    Err(match suggestion {
        Some(near) => format!("did you mean `{near}`? {FIELDS_HINT}"),
        None => FIELDS_HINT.to_owned(),
    })
}

/// Reads a double-quoted string at the start of `text`; returns the value and
/// the bytes used, or the byte offset and text of the problem.
fn parse_quoted(text: &str) -> Result<(String, usize), (usize, String)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, i + 1)),
            '\\' => match chars.next() {
                Some((_, c @ ('"' | '\\'))) => value.push(c),
                Some((j, other)) => return Err((j, format!("unknown escape `\\{other}`"))),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err((0, "unterminated string".to_owned()))
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Id => f.write_str("id"),
            Field::Name => f.write_str("name"),
            Field::Status => f.write_str("status"),
            Field::Label(key) => write!(f, "labels.{key}"),
            Field::Attr(key) => write!(f, "attrs.{key}"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Glob => "~",
        })
    }
}

impl fmt::Display for Predicate {
    /// Canonical text: the value is always quoted, so it reparses to the same predicate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = self.value.replace('\\', "\\\\").replace('"', "\\\"");
        write!(f, "{} {} \"{escaped}\"", self.field, self.op)
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, predicate) in self.predicates.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{predicate}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Parses a query and renders its canonical form or every error.
    fn check(input: &str, expect: Expect) {
        let actual = match Query::parse(input) {
            Ok(query) => format!("ok: {query}"),
            Err(errors) => errors
                .iter()
                .map(|e| {
                    let hint = e
                        .hint
                        .as_deref()
                        .map(|h| format!("\n  hint: {h}"))
                        .unwrap_or_default();
                    format!("{} [{:?}]: {}{hint}", e.code, e.item, e.message)
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        expect.assert_eq(&actual);
    }

    fn target() -> Target {
        Target {
            target_type: "vm".into(),
            id: "104".into(),
            name: Some("web-104".into()),
            status: Some("running".into()),
            labels: BTreeMap::from([("tier".into(), "low".into())]),
            attrs: BTreeMap::from([
                ("cores".into(), serde_json::json!(4)),
                ("ha".into(), serde_json::json!(true)),
                ("node".into(), serde_json::json!("pve-a")),
                ("lock".into(), serde_json::Value::Null),
            ]),
        }
    }

    fn matches(query: &str) -> bool {
        Query::parse(query).unwrap().matches(&target())
    }

    #[test]
    fn well_formed_queries_parse_to_their_canonical_form() {
        check(
            r#"labels.tier = low and status = running and name ~ "web-*""#,
            expect![[r#"ok: labels.tier = "low" and status = "running" and name ~ "web-*""#]],
        );
        check(
            "id!=104 AND attrs.node~pve-?",
            expect![[r#"ok: id != "104" and attrs.node ~ "pve-?""#]],
        );
        check(
            r#"name = "say \"hi\" and \\ bye""#,
            expect![[r#"ok: name = "say \"hi\" and \\ bye""#]],
        );
        check(
            "labels.app.kubernetes.io/name = web",
            expect![[r#"ok: labels.app.kubernetes.io/name = "web""#]],
        );
    }

    #[test]
    fn syntax_errors_name_the_predicate_and_column() {
        check(
            "status = running and and name = x",
            expect![[r#"
                selector.query_syntax [Some(1)]: predicate 2 `` (column 22): empty predicate
                  hint: write predicates such as `labels.tier = low`, joined with `and`"#]],
        );
        check(
            "",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `` (column 1): the query is empty
                  hint: write predicates such as `labels.tier = low`, joined with `and`"#]],
        );
        check(
            "status running",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `status running` (column 8): unknown operator `running`
                  hint: operators are `=`, `!=` and `~` (glob)"#]],
        );
        check(
            "status == running",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `status == running` (column 8): unknown operator `==`
                  hint: write `=` for equality"#]],
        );
        check(
            "status =",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `status =` (column 9): missing value
                  hint: give a value; quote it if it is the word `and`: `"and"`"#]],
        );
        check(
            r#"name = "web"#,
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `name = "web` (column 8): unterminated string
                  hint: close the string with `"`; write `\"` for a quote inside it"#]],
        );
        check(
            "name = web 1",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `name = web 1` (column 12): unexpected `1` after the value
                  hint: join predicates with `and`; quote values that contain spaces"#]],
        );
        check(
            "name = a or name = b",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `name = a or name = b` (column 10): `or` is not supported
                  hint: a query is predicates joined with `and` only; list ids with mode list instead"#]],
        );
        check(
            "= low",
            expect![[r#"
                selector.query_syntax [Some(0)]: predicate 1 `= low` (column 1): expected a field name, found `=`
                  hint: fields: id, name, status, labels.<key>, attrs.<key>"#]],
        );
    }

    #[test]
    fn unknown_fields_get_a_did_you_mean_hint() {
        check(
            "staus = running and label.tier = low and labels = x and colour = red",
            expect![[r#"
                selector.query_field [Some(0)]: predicate 1 `staus = running` (column 1): unknown field `staus`
                  hint: did you mean `status`? fields: id, name, status, labels.<key>, attrs.<key>
                selector.query_field [Some(1)]: predicate 2 `label.tier = low` (column 21): unknown field `label.tier`
                  hint: did you mean `labels.tier`? fields: id, name, status, labels.<key>, attrs.<key>
                selector.query_field [Some(2)]: predicate 3 `labels = x` (column 42): unknown field `labels`
                  hint: `labels` needs a key: `labels.<key>`
                selector.query_field [Some(3)]: predicate 4 `colour = red` (column 57): unknown field `colour`
                  hint: fields: id, name, status, labels.<key>, attrs.<key>"#]],
        );
    }

    #[test]
    fn predicates_compare_text_and_globs() {
        assert!(matches(
            "labels.tier = low and status = running and name ~ \"web-*\""
        ));
        assert!(!matches("labels.tier = high"));
        assert!(
            matches("labels.owner != bob"),
            "an absent field satisfies !="
        );
        assert!(!matches("labels.owner ~ *"), "an absent field never globs");
        assert!(matches("name ~ w?b-1*4"));
        assert!(matches("name ~ *-104"));
        assert!(matches("name ~ *eb*"));
        assert!(!matches("name ~ web"));
        assert!(matches("id = 104"));
    }

    #[test]
    fn attrs_compare_against_their_json_scalar_text() {
        assert!(matches("attrs.cores = 4"));
        assert!(matches("attrs.cores = 4.0"), "numbers compare as numbers");
        assert!(matches("attrs.cores ~ 4*"));
        assert!(matches("attrs.ha = true"));
        assert!(matches("attrs.node = pve-a"));
        assert!(!matches("attrs.lock = null"), "null is absent");
        assert!(matches("attrs.lock != x"));
    }

    fn arb_word() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "ab", "ba", "1", "2"]).prop_map(str::to_owned)
    }

    fn arb_target() -> impl Strategy<Value = Target> {
        (
            prop::sample::select(vec!["vm", "ct"]),
            0u32..30,
            proptest::option::of(arb_word()),
            proptest::option::of(arb_word()),
            proptest::collection::btree_map(
                prop::sample::select(vec!["x", "y"]).prop_map(str::to_owned),
                arb_word(),
                0..3,
            ),
            proptest::option::of(prop_oneof![
                Just(serde_json::json!(1)),
                Just(serde_json::json!("a")),
                Just(serde_json::json!(true))
            ]),
        )
            .prop_map(|(target_type, id, name, status, labels, attr)| Target {
                target_type: target_type.to_owned(),
                id: id.to_string(),
                name,
                status,
                labels,
                attrs: attr.into_iter().map(|v| ("k".to_owned(), v)).collect(),
            })
    }

    fn arb_predicate() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec![
                "id", "name", "status", "labels.x", "labels.y", "labels.z", "attrs.k",
            ]),
            prop::sample::select(vec!["=", "!=", "~"]),
            prop::sample::select(vec![
                "a", "b", "ab", "1", "a*", "*b", "?", "*", "zz", "true",
            ]),
        )
            .prop_map(|(field, op, value)| format!("{field} {op} \"{value}\""))
    }

    fn naive_glob(pattern: &[char], text: &[char]) -> bool {
        match (pattern.first(), text.first()) {
            (None, _) => text.is_empty(),
            (Some('*'), _) => {
                naive_glob(&pattern[1..], text)
                    || (!text.is_empty() && naive_glob(pattern, &text[1..]))
            }
            (Some('?'), Some(_)) => naive_glob(&pattern[1..], &text[1..]),
            (Some(p), Some(t)) if p == t => naive_glob(&pattern[1..], &text[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_matching_agrees_with_a_naive_matcher(pattern in "[ab*?]{0,8}", text in "[ab]{0,10}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(Pattern::compile(&pattern).matches(&text), naive_glob(&p, &t));
        }

        #[test]
        fn columnar_selection_agrees_with_matching_each_target(
            targets in proptest::collection::vec(arb_target(), 0..40),
            predicates in proptest::collection::vec(arb_predicate(), 1..4),
        ) {
            let query = Query::parse(&predicates.join(" and ")).unwrap();
            let host = HostInventory::new("h", "p", targets);
            let expected: Vec<String> = host.of_type("vm").filter(|t| query.matches(t)).map(Target::canonical_id).collect();
            let selected: Vec<String> = host
                .type_index("vm")
                .map(|index| query.select(&host, index))
                .unwrap_or_default()
                .into_iter()
                .map(|position| host.target_at(position).canonical_id())
                .collect();
            prop_assert_eq!(selected, expected);
        }

        #[test]
        fn a_parsed_query_reparses_from_its_canonical_form(text in r#"[a-z. =!~"\\*?]{0,40}"#) {
            if let Ok(query) = Query::parse(&text) {
                let again = Query::parse(&query.to_string()).unwrap();
                prop_assert_eq!(again, query);
            }
        }
    }

    #[test]
    fn queries_past_their_limits_are_refused_with_the_number() {
        let long = format!("name ~ \"{}\"", "*".repeat(300_000));
        let errors = Query::parse(&long).unwrap_err();
        assert_eq!(errors[0].code, codes::QUERY_TOO_COMPLEX);
        assert!(errors[0].message.contains("4096"), "{}", errors[0].message);
        let many = vec!["status = running"; 25_000].join(" and ");
        let errors = Query::parse(&many).unwrap_err();
        assert_eq!(errors[0].code, codes::QUERY_TOO_COMPLEX);
        let predicates = vec!["status = running"; 33].join(" and ");
        let errors = Query::parse(&predicates).unwrap_err();
        assert!(
            errors[0].message.contains("33 predicates"),
            "{}",
            errors[0].message
        );
        let glob = format!("name ~ \"{}x\"", "*".repeat(300));
        let errors = Query::parse(&glob).unwrap_err();
        assert_eq!(errors[0].item, Some(0));
        assert!(errors[0].message.contains("256"), "{}", errors[0].message);
    }

    #[test]
    fn runs_of_stars_match_as_one() {
        let p = Pattern::compile("web-****-0?");
        assert!(p.matches("web-east-01"));
        assert!(!p.matches("db-east-01"));
        assert_eq!(Pattern::compile("***"), Pattern::compile("*"));
    }
}
