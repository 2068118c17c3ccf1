//! The errors of the selector grammar (SPEC §2): the stable `selector.*`
//! codes and [`SelectorError`], the one record every list, range, query and
//! ledger problem is reported in. They sit below both `selector` and `query`,
//! which build them, so neither has to import the other for them.

use std::fmt;

use crate::finding::{Finding, Severity};

/// The stable `selector.*` finding codes.
pub mod codes {
    /// Blocker: empty value, empty item, bad characters, a type prefix, a malformed range.
    pub const SYNTAX: &str = "selector.syntax";
    /// Blocker: an id form the target type does not use (a port for a VM, a range for a host).
    pub const WRONG_FORM: &str = "selector.wrong_form";
    /// Blocker: a range whose start is after its end.
    pub const REVERSED_RANGE: &str = "selector.reversed_range";
    /// Blocker: more than [`MAX_IDS`](crate::selector::MAX_IDS) ids.
    pub const TOO_LARGE: &str = "selector.too_large";
    /// Blocker: a query predicate that does not parse.
    pub const QUERY_SYNTAX: &str = "selector.query_syntax";
    /// Blocker: a query field other than `id name status labels.<k> attrs.<k>`.
    pub const QUERY_FIELD: &str = "selector.query_field";
    /// Blocker: a query longer, with more predicates or a longer glob than
    /// the limits of [`crate::query`] allow (SPEC §12).
    pub const QUERY_TOO_COMPLEX: &str = "selector.query_too_complex";
    /// Blocker: a ledger value that is not a policy id (uuid).
    pub const LEDGER_ID: &str = "selector.ledger_id";
    /// Warn: resolution selected nothing.
    pub const EMPTY: &str = "selector.empty";
    /// Info: some listed ids are not in the host's inventory (they are skipped).
    pub const MISSING: &str = "selector.missing";
    /// Info: a ledger selector is resolved by the engine at execution, not here.
    pub const LEDGER_DEFERRED: &str = "selector.ledger_deferred";
}

/// One problem with a selector, naming the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    /// One of [`codes`].
    pub code: &'static str,
    /// 0-based index of the offending item (list/range) or predicate (query);
    /// `None` when the whole value is at fault. Messages count from 1.
    pub item: Option<usize>,
    /// The offending item, predicate or value as written.
    pub text: String,
    /// What is wrong, naming the item: "item 3 `A1-A4`: ports are not ids of target type vm".
    pub message: String,
    /// What to write instead, when Hazel can tell.
    pub hint: Option<String>,
}

impl SelectorError {
    /// Blocker for grammar problems; info for [`codes::LEDGER_DEFERRED`].
    pub fn severity(&self) -> Severity {
        match self.code {
            codes::LEDGER_DEFERRED => Severity::Info,
            codes::EMPTY => Severity::Warn,
            _ => Severity::Blocker,
        }
    }

    /// True for the "the engine resolves this" answer of a ledger selector,
    /// which compile leaves unresolved without a finding.
    pub fn is_deferred(&self) -> bool {
        self.code == codes::LEDGER_DEFERRED
    }

    /// The finding for this error at `path` (a JSON pointer, usually
    /// [`SELECTOR_VALUE_PATH`](crate::selector::SELECTOR_VALUE_PATH)).
    pub fn to_finding(&self, path: &str) -> Finding {
        let finding = Finding::new(self.severity(), self.code, path, self.message.clone());
        match &self.hint {
            Some(hint) => finding.with_hint(hint.clone()),
            None => finding,
        }
    }

    pub(crate) fn item(
        code: &'static str,
        index: usize,
        text: &str,
        what: impl fmt::Display,
        hint: Option<String>,
    ) -> Self {
        SelectorError {
            code,
            item: Some(index),
            text: text.to_owned(),
            message: format!("item {} `{text}`: {what}", index + 1),
            hint,
        }
    }
}
