//! The shared vocabulary of findings: a severity and a `{severity, code, path,
//! message, hint?}` record. Every layer of Hazel (selector grammar, spec
//! validation, compile, driver preflight, engine) reports problems in this one
//! shape, so an operator reads them the same way everywhere.

use serde::{Deserialize, Serialize};

/// How bad a finding is, ordered from harmless to fatal (SPEC §4).
///
/// `Ord` follows the gate order, so the worst severity of a list is its `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Valid; a no-op (already in the desired state) or suppressed.
    Info,
    /// Valid with caveats: stale inventory, empty selection, partial refresh failure.
    Warn,
    /// Preflight failed (auth denied, host unreachable, runtime error): blocks Enable, not Save.
    Error,
    /// Schema or compile failure: blocks Save.
    Blocker,
}

impl Severity {
    /// The lowercase name used in JSON and in human output.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
            Severity::Blocker => "blocker",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem (or remark) about a policy, a selector, a manifest or a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Dotted, stable code such as `schema.unknown_field` or `selector.empty`.
    pub code: String,
    /// JSON pointer into the document the finding is about (`/actions/0/verb`);
    /// empty for the whole document.
    pub path: String,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
    /// What to do about it, when Hazel can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    pub fn new(
        severity: Severity,
        code: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code: code.into(),
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Attaches a hint (builder style).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901: `~` -> `~0`, `/` -> `~1`).
pub fn pointer_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.contains(['~', '/']) {
        token.replace('~', "~0").replace('/', "~1").into()
    } else {
        token.into()
    }
}

/// The closest candidate to `word` when it is close enough to be a likely typo,
/// for "did you mean" hints.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The hint for a word that is none of `known`: "did you mean `x`?" when one
/// is close ([`did_you_mean`]), else "expected one of: a, b", or `None` when
/// nothing is known. Manifest checks and host validation attach it to their
/// findings.
pub fn did_you_mean_hint<'a>(
    word: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let known: Vec<&str> = known.into_iter().collect();
    match did_you_mean(word, known.iter().copied()) {
        Some(close) => Some(format!("did you mean `{close}`?")),
        None if known.is_empty() => None,
        None => Some(format!("expected one of: {}", known.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_severity_is_the_max() {
        let all = [
            Severity::Warn,
            Severity::Blocker,
            Severity::Info,
            Severity::Error,
        ];
        assert_eq!(all.iter().max(), Some(&Severity::Blocker));
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(pointer_token("a/b~c"), "a~1b~0c");
        assert_eq!(pointer_token("plain"), "plain");
    }

    #[test]
    fn did_you_mean_finds_close_words_only() {
        let known = ["priority", "trigger_group", "targets"];
        assert_eq!(did_you_mean("priorty", known), Some("priority"));
        assert_eq!(did_you_mean("zzz", known), None);
    }

    #[test]
    fn the_hint_names_the_close_word_or_lists_the_known_ones() {
        let known = ["priority", "targets"];
        assert_eq!(
            did_you_mean_hint("priorty", known).as_deref(),
            Some("did you mean `priority`?")
        );
        assert_eq!(
            did_you_mean_hint("zzz", known).as_deref(),
            Some("expected one of: priority, targets")
        );
        assert_eq!(did_you_mean_hint("zzz", []), None);
    }
}
