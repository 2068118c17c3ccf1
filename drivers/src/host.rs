//! A host bound to its manifest: [`ValidatedHost`] is what the registry's
//! validation hands every driver constructor, with the connection's defaults
//! filled in. It sits below the registry and the drivers so that drivers
//! read their host from here, never from the registry that names them, and
//! it masks secrets and URL credentials in everything it can print.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::manifest::Manifest;
use crate::secret::{Secret, MASK};

/// A host whose connection passed its manifest's schema, with defaults
/// filled in. `Debug` and `Serialize` show [`ValidatedHost::masked_connection`]:
/// every `secret: true` field masked, and the credentials of any URL in the
/// other fields.
#[derive(Clone)]
pub struct ValidatedHost {
    pub id: String,
    pub plugin: String,
    pub self_host: bool,
    connection: Map<String, Value>,
    manifest: Arc<Manifest>,
}

impl ValidatedHost {
    /// A host the registry's validation accepted, its `connection` already
    /// checked against `manifest` and completed with its defaults.
    pub(crate) fn new(
        id: String,
        plugin: String,
        self_host: bool,
        connection: Map<String, Value>,
        manifest: Arc<Manifest>,
    ) -> ValidatedHost {
        ValidatedHost {
            id,
            plugin,
            self_host,
            connection,
            manifest,
        }
    }

    /// The manifest the host was validated against (defaults, capabilities, rate limits).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A connection field (defaults applied), secrets included: only for the
    /// driver's own use. Prefer [`ValidatedHost::secret`] for secret fields.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.connection.get(name)
    }

    /// A string field (secrets included; see [`ValidatedHost::value`]).
    pub fn str(&self, name: &str) -> Option<&str> {
        self.value(name).and_then(Value::as_str)
    }

    pub fn u64(&self, name: &str) -> Option<u64> {
        self.value(name).and_then(Value::as_u64)
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        self.value(name).and_then(Value::as_bool)
    }

    /// The string items of an array field (`protected_ports`); empty when unset.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.value(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A string field wrapped so it cannot be printed by accident.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.str(name).map(Secret::new)
    }

    /// Whether the manifest marks `name` as secret.
    pub fn is_secret(&self, name: &str) -> bool {
        self.manifest
            .schema
            .connection
            .get(name)
            .is_some_and(|f| f.secret)
    }

    /// Names of the set fields, sorted.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.connection.keys().map(String::as_str)
    }

    /// The connection as logs and API answers may show it: every secret
    /// field replaced by [`MASK`], and every other string (nested ones
    /// included) passed through [`mask_url`], because a URL carries its
    /// credentials in itself (`https://user:pass@host/`) whether or not the
    /// manifest thought to mark its field secret.
    pub fn masked_connection(&self) -> Map<String, Value> {
        let secrets: BTreeSet<&str> = self.manifest.secret_fields().collect();
        self.connection
            .iter()
            .map(|(k, v)| {
                let shown = if secrets.contains(k.as_str()) {
                    Value::String(MASK.into())
                } else {
                    mask_urls(v)
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

/// `text` with the credentials a URL may carry masked: the userinfo
/// (`https://user:pass@host/` -> `https://***@host/`) and the values of
/// query params whose names look like credentials (`?token=***`, see
/// [`is_credential_name`]). A string that is not an absolute URL
/// (`scheme://...`) comes back unchanged.
pub fn mask_url(text: &str) -> Cow<'_, str> {
    let Some(scheme_end) = text.find("://") else {
        return Cow::Borrowed(text);
    };
    let scheme = &text[..scheme_end];
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return Cow::Borrowed(text);
    }
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..scheme_end + 3]);
    match authority.rfind('@') {
        Some(at) => {
            changed = true;
            out.push_str(MASK);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, value)) if is_credential_name(name) && value != MASK => {
                        changed = true;
                        out.push_str(name);
                        out.push('=');
                        out.push_str(MASK);
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Whether a name (query param, header, field) looks like it holds a
/// credential: it contains `auth`, `token`, `secret`, `key`, `pass`,
/// `pwd`, `sig`, `session`, `credential` or `cookie`, in any case.
pub fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "secret",
        "key",
        "pass",
        "pwd",
        "sig",
        "session",
        "credential",
        "cookie",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// `value` with [`mask_url`] applied to every string in it.
fn mask_urls(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(mask_url(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(mask_urls).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), mask_urls(v))).collect())
        }
        other => other.clone(),
    }
}

impl std::fmt::Debug for ValidatedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedHost")
            .field("id", &self.id)
            .field("plugin", &self.plugin)
            .field("self_host", &self.self_host)
            .field("connection", &self.masked_connection())
            .finish()
    }
}

impl Serialize for ValidatedHost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ValidatedHost", 4)?;
        s.serialize_field("id", &self.id)?;
        s.serialize_field("plugin", &self.plugin)?;
        s.serialize_field("self", &self.self_host)?;
        s.serialize_field("connection", &self.masked_connection())?;
        s.end()
    }
}
