//! The selector grammar (SPEC §2): which targets of one type on one host a
//! policy touches, written as a list/range of ids, a query, or a reference to
//! another policy's ledger.
//!
//! Parsing reports every bad item at once, each naming the item. Expansion to
//! canonical ids (`vm:311`) is offline and capped at [`MAX_IDS`]; the cap is
//! checked arithmetically, so `1-4000000000` fails without materialising
//! anything. Resolution against a [`HostInventory`] uses the host's indexes
//! directly instead of formatting and looking up every expanded id.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::error::{codes, SelectorError};
use crate::finding::{did_you_mean, Finding, Severity};
use crate::index::HostInventory;
pub use crate::model::{id_form, IdForm};
use crate::port::{ParsePortError, Port, PortRange, PortRangeError};
use crate::query::Query;

/// Most ids one selector may expand or resolve to (SPEC §2).
pub const MAX_IDS: usize = 100_000;

/// JSON pointer of a policy's selector value, used by the findings of
/// [`Selector::resolve`].
pub const SELECTOR_VALUE_PATH: &str = "/targets/selector/value";

/// How a selector's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectorMode {
    /// Comma-separated ids and ranges (same grammar as `range`).
    List,
    /// Comma-separated ids and ranges (same grammar as `list`).
    Range,
    /// Predicates over the inventory joined with `and`.
    Query,
    /// The targets another policy's latest successful run changed.
    Ledger,
}

/// A parsed selector for one target type.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    mode: SelectorMode,
    target_type: String,
    value: String,
    body: Body,
}

/// One item of a list/range selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Item {
    /// Inclusive numeric range; a single id has `first == last`.
    Numbers { first: u64, last: u64 },
    /// A port rectangle; a single port is a range of one.
    Ports(PortRange),
    /// A literal id.
    Literal(String),
}

/// The outcome of resolving a selector against one host's inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resolution {
    /// Canonical ids that exist on the host, in expansion order (query:
    /// inventory order), without duplicates.
    pub ids: Vec<String>,
    /// Expanded ids that are not in the host's inventory (always 0 for a query).
    pub missing: usize,
    /// `warn selector.empty` when `ids` is empty; `selector.missing` when
    /// some ids were skipped: `warn` when one of them was named on its own
    /// (`1/B4,1/C1`), `info` when all were gaps inside ranges; paths point
    /// at [`SELECTOR_VALUE_PATH`].
    pub findings: Vec<Finding>,
}

/// `FromStr` error of [`SelectorMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown selector mode `{text}`{}", suggestion.map(|s| format!(", did you mean `{s}`?")).unwrap_or_default())]
pub struct UnknownSelectorMode {
    pub text: String,
    pub suggestion: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Items {
        items: Vec<Item>,
        /// Ids after duplicates are removed.
        count: usize,
        /// Some items overlap, so expansion must remove duplicates.
        overlapping: bool,
    },
    Query(Query),
    Ledger(String),
}

/// Target types Hazel's shipped manifests use, recognised as mistaken id prefixes.
const KNOWN_TYPES: [&str; 7] = [
    "vm",
    "ct",
    "poe-port",
    "interface",
    "host",
    "service",
    "webhook",
];

/// Parses `value` in `mode` for targets of `target_type`, reporting every bad
/// item (or predicate) at once.
pub fn parse_selector(
    mode: SelectorMode,
    value: &str,
    target_type: &str,
) -> Result<Selector, Vec<SelectorError>> {
    if value.trim().is_empty() {
        let hint = match mode {
            SelectorMode::List | SelectorMode::Range => example_ids(id_form(target_type)),
            SelectorMode::Query => "write predicates such as `labels.tier = low`".to_owned(),
            SelectorMode::Ledger => "give the id of the stored forward policy".to_owned(),
        };
        return Err(vec![SelectorError {
            code: codes::SYNTAX,
            item: None,
            text: value.to_owned(),
            message: "the selector value is empty".to_owned(),
            hint: Some(hint),
        }]);
    }
    let body = match mode {
        SelectorMode::List | SelectorMode::Range => parse_items(value, target_type)?,
        SelectorMode::Query => Body::Query(Query::parse(value)?),
        SelectorMode::Ledger => Body::Ledger(parse_ledger(value).map_err(|e| vec![e])?),
    };
    Ok(Selector {
        mode,
        target_type: target_type.to_owned(),
        value: value.to_owned(),
        body,
    })
}

impl SelectorMode {
    /// Every mode, in declaration order.
    pub const ALL: [SelectorMode; 4] = [
        SelectorMode::List,
        SelectorMode::Range,
        SelectorMode::Query,
        SelectorMode::Ledger,
    ];

    /// The lowercase name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorMode::List => "list",
            SelectorMode::Range => "range",
            SelectorMode::Query => "query",
            SelectorMode::Ledger => "ledger",
        }
    }
}

impl fmt::Display for SelectorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SelectorMode {
    type Err = UnknownSelectorMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        SelectorMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| UnknownSelectorMode {
                text: text.to_owned(),
                suggestion: did_you_mean(text, SelectorMode::ALL.map(SelectorMode::as_str)),
            })
    }
}

impl Selector {
    pub fn mode(&self) -> SelectorMode {
        self.mode
    }

    pub fn target_type(&self) -> &str {
        &self.target_type
    }

    /// The value as written.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The items of a list/range selector; empty for query and ledger.
    pub fn items(&self) -> &[Item] {
        match &self.body {
            Body::Items { items, .. } => items,
            _ => &[],
        }
    }

    /// The parsed query of a query selector.
    pub fn query(&self) -> Option<&Query> {
        match &self.body {
            Body::Query(query) => Some(query),
            _ => None,
        }
    }

    /// The forward policy id of a ledger selector, lowercased.
    pub fn ledger_policy_id(&self) -> Option<&str> {
        match &self.body {
            Body::Ledger(id) => Some(id),
            _ => None,
        }
    }

    /// True when only the engine can resolve this selector (ledger mode).
    pub fn needs_engine(&self) -> bool {
        matches!(self.body, Body::Ledger(_))
    }

    /// How many distinct ids a list/range selector expands to; `None` for
    /// query and ledger.
    pub fn count(&self) -> Option<usize> {
        match &self.body {
            Body::Items { count, .. } => Some(*count),
            _ => None,
        }
    }

    /// Offline expansion to canonical ids (`vm:311`) in expansion order,
    /// duplicates removed; `None` for query and ledger, which need an
    /// inventory or the engine.
    pub fn expand(&self) -> Result<Option<Vec<String>>, SelectorError> {
        let Body::Items {
            items,
            count,
            overlapping,
        } = &self.body
        else {
            return Ok(None);
        };
        if *count > MAX_IDS {
            return Err(too_large(None, &self.value, *count as u128));
        }
        let prefix = format!("{}:", self.target_type);
        let mut ids = Vec::with_capacity(*count);
        let mut seen: HashSet<IdRef<'_>> =
            HashSet::with_capacity(if *overlapping { *count } else { 0 });
        for item in items {
            if let Item::Numbers { first, last } = item {
                // The hot path: no formatting machinery, one allocation per id.
                for n in *first..=*last {
                    if !*overlapping || seen.insert(IdRef::Number(n)) {
                        ids.push(canonical_number(&prefix, n));
                    }
                }
                continue;
            }
            for id in item.ids() {
                if !*overlapping || seen.insert(id) {
                    let mut canonical = String::with_capacity(prefix.len() + 8);
                    canonical.push_str(&prefix);
                    let _ = write!(canonical, "{id}");
                    ids.push(canonical);
                }
            }
        }
        Ok(Some(ids))
    }

    /// Resolves against one host's inventory: list/range keep the ids that
    /// exist there (of this target type), a query is evaluated over the
    /// host's targets of this type. A ledger selector answers
    /// `Err` with [`codes::LEDGER_DEFERRED`] (see [`SelectorError::is_deferred`]).
    pub fn resolve(&self, host: &HostInventory) -> Result<Resolution, SelectorError> {
        let (positions, missing) = match &self.body {
            Body::Items {
                items,
                count,
                overlapping,
            } => {
                if *count > MAX_IDS {
                    return Err(too_large(None, &self.value, *count as u128));
                }
                let positions = self.resolve_items(host, items, *count, *overlapping);
                let missing = count - positions.len();
                (positions, missing)
            }
            Body::Query(query) => {
                let positions = host
                    .type_index(&self.target_type)
                    .map(|index| query.select(host, index))
                    .unwrap_or_default();
                if positions.len() > MAX_IDS {
                    return Err(too_large(None, &self.value, positions.len() as u128));
                }
                (positions, 0)
            }
            Body::Ledger(id) => {
                return Err(SelectorError {
                    code: codes::LEDGER_DEFERRED,
                    item: None,
                    text: self.value.clone(),
                    message: format!(
                    "the targets of ledger selector `{id}` are resolved by the engine at execution"
                ),
                    hint: None,
                })
            }
        };
        let ids: Vec<String> = positions
            .iter()
            .map(|&i| host.canonical_at(i).to_owned())
            .collect();
        let mut findings = Vec::new();
        if ids.is_empty() {
            findings.push(self.empty_finding(host));
        } else if missing > 0 {
            findings.push(self.missing_finding(host, missing));
        }
        Ok(Resolution {
            ids,
            missing,
            findings,
        })
    }

    /// Positions in `host` of the listed ids that exist, in expansion order.
    /// `count` (the distinct ids listed) bounds the result, so the list is
    /// allocated once instead of growing.
    fn resolve_items(
        &self,
        host: &HostInventory,
        items: &[Item],
        count: usize,
        overlapping: bool,
    ) -> Vec<usize> {
        let Some(index) = host.type_index(&self.target_type) else {
            return Vec::new();
        };
        let mut positions = Vec::with_capacity(count.min(host.len()));
        let mut seen = if overlapping {
            vec![false; host.len()]
        } else {
            Vec::new()
        };
        let mut take = |position: usize, positions: &mut Vec<usize>| {
            if !overlapping {
                positions.push(position);
            } else if !seen[position] {
                seen[position] = true;
                positions.push(position);
            }
        };
        for item in items {
            match item {
                Item::Numbers { first, last } => {
                    let start = index.numeric.partition_point(|(n, _)| n < first);
                    for &(_, position) in
                        index.numeric[start..].iter().take_while(|(n, _)| n <= last)
                    {
                        take(position, &mut positions);
                    }
                }
                Item::Ports(range) if range.count() <= index.ports_sorted.len() as u128 => {
                    for port in range.iter() {
                        if let Some(&position) = index.ports.get(&port) {
                            take(position, &mut positions);
                        }
                    }
                }
                Item::Ports(range) => {
                    let (first, last) = (range.first(), range.last());
                    let start = index.ports_sorted.partition_point(|(p, _)| *p < first);
                    for (port, position) in index.ports_sorted[start..]
                        .iter()
                        .take_while(|(p, _)| *p <= last)
                    {
                        if range.contains(port) {
                            take(*position, &mut positions);
                        }
                    }
                }
                Item::Literal(id) => {
                    if let Some(position) = host.position_of(&self.target_type, id) {
                        take(position, &mut positions);
                    }
                }
            }
        }
        positions
    }

    fn empty_finding(&self, host: &HostInventory) -> Finding {
        let (t, h) = (&self.target_type, &host.host_id);
        let why = match &self.body {
            Body::Items { count, .. } => format!("none of its {count} ids is in the inventory"),
            _ => format!("no {t} matches the query"),
        };
        let message = format!(
            "selector `{}` selects no {t} on host {h}: {why}",
            self.value
        );
        let available = host.count_of_type(t);
        let hint = if available == 0 {
            let types = host.types();
            let types = if types.is_empty() {
                "none".to_owned()
            } else {
                types.join(", ")
            };
            format!("host {h} has no {t} targets (its target types: {types})")
        } else {
            let examples: Vec<String> = host.of_type(t).take(3).map(|t| t.id.clone()).collect();
            format!(
                "host {h} has {available} {t} targets, e.g. {}",
                examples.join(", ")
            )
        };
        Finding::new(Severity::Warn, codes::EMPTY, SELECTOR_VALUE_PATH, message).with_hint(hint)
    }

    fn missing_finding(&self, host: &HostInventory, missing: usize) -> Finding {
        const EXAMPLES: usize = 5;
        let index = host.type_index(&self.target_type);
        // Membership through the indexes, without formatting every id.
        let exists = |id: &IdRef<'_>| match (index, id) {
            (None, _) => false,
            (Some(index), IdRef::Number(n)) => {
                index.numeric.binary_search_by_key(n, |(m, _)| *m).is_ok()
            }
            (Some(index), IdRef::Port(port)) => index.ports.contains_key(port),
            (Some(_), IdRef::Literal(id)) => host.position_of(&self.target_type, id).is_some(),
        };
        let mut examples = Vec::new();
        let mut seen = HashSet::new();
        for id in self.items().iter().flat_map(Item::ids) {
            if examples.len() == EXAMPLES {
                break;
            }
            if !exists(&id) && seen.insert(id) {
                examples.push(format!("{}:{id}", self.target_type));
            }
        }
        let more = if missing > examples.len() {
            ", ..."
        } else {
            ""
        };
        let total = self.count().unwrap_or(missing);
        let message = format!(
            "{missing} of {total} ids are not in the inventory of host {} and are skipped: {}{more}",
            host.host_id,
            examples.join(", ")
        );
        // An id named on its own (`1/B4,1/C1`) that is missing is likely a
        // typo or a stale inventory: a caveat (SPEC §4 warn). Gaps inside a
        // range (`311-318`) are expected: info.
        let named: Vec<String> = self
            .items()
            .iter()
            .filter(|item| item.count() == 1)
            .flat_map(Item::ids)
            .filter(|id| !exists(id))
            .take(EXAMPLES)
            .map(|id| format!("{}:{id}", self.target_type))
            .collect();
        if named.is_empty() {
            return Finding::new(Severity::Info, codes::MISSING, SELECTOR_VALUE_PATH, message);
        }
        let hint = format!(
            "{} named on its own and not on host {}: check the spelling, or refresh the inventory",
            named.join(", "),
            host.host_id
        );
        Finding::new(Severity::Warn, codes::MISSING, SELECTOR_VALUE_PATH, message).with_hint(hint)
    }
}

impl Item {
    /// How many ids the item expands to (before duplicates across items are removed).
    pub fn count(&self) -> u128 {
        match self {
            Item::Numbers { first, last } => u128::from(last - first) + 1,
            Item::Ports(range) => range.count(),
            Item::Literal(_) => 1,
        }
    }

    /// The item's ids, lazily, in expansion order.
    fn ids(&self) -> Box<dyn Iterator<Item = IdRef<'_>> + '_> {
        match self {
            Item::Numbers { first, last } => Box::new((*first..=*last).map(IdRef::Number)),
            Item::Ports(range) => Box::new(range.iter().map(IdRef::Port)),
            Item::Literal(id) => Box::new(std::iter::once(IdRef::Literal(id))),
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Numbers { first, last } if first == last => write!(f, "{first}"),
            Item::Numbers { first, last } => write!(f, "{first}-{last}"),
            Item::Ports(range) => write!(f, "{range}"),
            Item::Literal(id) => f.write_str(id),
        }
    }
}

/// `<prefix><n>` without going through `fmt`.
fn canonical_number(prefix: &str, mut n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut canonical = String::with_capacity(prefix.len() + digits.len() - start);
    canonical.push_str(prefix);
    canonical.extend(digits[start..].iter().map(|&d| char::from(d)));
    canonical
}

/// One expanded id without its type prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IdRef<'a> {
    Number(u64),
    Port(Port),
    Literal(&'a str),
}

impl fmt::Display for IdRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRef::Number(n) => write!(f, "{n}"),
            IdRef::Port(p) => write!(f, "{p}"),
            IdRef::Literal(s) => f.write_str(s),
        }
    }
}

fn parse_items(value: &str, target_type: &str) -> Result<Body, Vec<SelectorError>> {
    let form = id_form(target_type);
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in value.split(',').enumerate() {
        let text = raw.trim();
        match parse_item(index, text, target_type, form) {
            Ok(item) => items.push((index, text, item)),
            Err(error) => errors.push(error),
        }
    }
    let mut any_too_large = false;
    for (index, text, item) in &items {
        let count = item.count();
        if count > MAX_IDS as u128 {
            any_too_large = true;
            errors.push(too_large(Some(*index), text, count));
        }
    }
    let items: Vec<Item> = items.into_iter().map(|(_, _, item)| item).collect();
    let total: u128 = items.iter().map(Item::count).sum();
    let count = if any_too_large {
        total
    } else {
        unique_count(&items)
    };
    if !any_too_large && count > MAX_IDS as u128 {
        errors.push(too_large(None, value, count));
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.item.unwrap_or(usize::MAX));
        return Err(errors);
    }
    Ok(Body::Items {
        overlapping: count < total,
        count: count as usize,
        items,
    })
}

fn parse_item(
    index: usize,
    text: &str,
    target_type: &str,
    form: IdForm,
) -> Result<Item, SelectorError> {
    let syntax = |what: String, hint: Option<String>| {
        SelectorError::item(codes::SYNTAX, index, text, what, hint)
    };
    let wrong_form = |what: String, hint: String| {
        SelectorError::item(codes::WRONG_FORM, index, text, what, Some(hint))
    };
    if text.is_empty() {
        return Err(SelectorError {
            code: codes::SYNTAX,
            item: Some(index),
            text: String::new(),
            message: format!("item {} is empty", index + 1),
            hint: Some("remove the extra comma".to_owned()),
        });
    }
    if let Some(fixed) = strip_type_prefixes(text, target_type, form) {
        let what = "ids are written without the type prefix".to_owned();
        return Err(syntax(what, Some(format!("write `{fixed}`"))));
    }

    let dashes = text.matches('-').count();
    if dashes == 1 && (form != IdForm::Literal || looks_like_range(text)) {
        let (a, b) = text.split_once('-').unwrap_or((text, ""));
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() || b.is_empty() {
            let missing = if a.is_empty() { "start" } else { "end" };
            return Err(syntax(
                format!("the range has no {missing}"),
                Some(example_ids(form)),
            ));
        }
        return parse_range(index, text, a, b, target_type, form);
    }
    if dashes > 1 && form != IdForm::Literal {
        return Err(syntax(
            "more than one `-`: a range is `A-B`".to_owned(),
            Some(example_ids(form)),
        ));
    }

    let number = parse_number(text).map_err(|what| syntax(what, None))?;
    if let (IdForm::Numeric, Some(n)) = (form, number) {
        return Ok(Item::Numbers { first: n, last: n });
    }
    let port = text.parse::<Port>();
    match form {
        IdForm::Numeric => match (number, port) {
            (Some(n), _) => Ok(Item::Numbers { first: n, last: n }),
            (None, Ok(_)) => Err(wrong_form(
                format!("ports are not ids of target type {target_type}"),
                example_ids(form),
            )),
            (None, Err(_)) if is_literal(text) => Err(wrong_form(
                format!("target type {target_type} takes numeric ids"),
                format!(
                    "{}; to select by name use mode query: `name = {text}`",
                    example_ids(form)
                ),
            )),
            (None, Err(_)) => Err(syntax(bad_chars(text), Some(example_ids(form)))),
        },
        IdForm::Port => match port {
            Ok(port) => Ok(Item::Ports(PortRange::single(port))),
            Err(ParsePortError::LowercaseSlot { upper, .. }) => Err(syntax(
                "slot letters are uppercase".to_owned(),
                Some(format!("write `{upper}`")),
            )),
            Err(ParsePortError::TooLarge(_)) => Err(syntax("number too large".to_owned(), None)),
            Err(_) if is_literal(text) => Err(wrong_form(
                format!("not a switch port; target type {target_type} takes ports"),
                example_ids(form),
            )),
            Err(_) => Err(syntax(bad_chars(text), Some(example_ids(form)))),
        },
        IdForm::Literal => {
            if is_literal(text) {
                Ok(Item::Literal(text.to_owned()))
            } else if port.is_ok() {
                Err(wrong_form(
                    format!("ports are not ids of target type {target_type}"),
                    example_ids(form),
                ))
            } else {
                Err(syntax(bad_chars(text), Some(example_ids(form))))
            }
        }
    }
}

/// For literal target types: a dashed item is a range only when both ends
/// are numbers or both are ports (then it is the wrong form); otherwise it is
/// a literal such as `web-01`.
fn looks_like_range(text: &str) -> bool {
    let Some((a, b)) = text.split_once('-') else {
        return false;
    };
    let (a, b) = (a.trim(), b.trim());
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    numeric(a) && numeric(b) || a.parse::<Port>().is_ok() && b.parse::<Port>().is_ok()
}

fn parse_range(
    index: usize,
    text: &str,
    a: &str,
    b: &str,
    target_type: &str,
    form: IdForm,
) -> Result<Item, SelectorError> {
    let syntax = |what: String, hint: Option<String>| {
        SelectorError::item(codes::SYNTAX, index, text, what, hint)
    };
    let wrong_form = |what: String| {
        let hint = example_ids(form);
        SelectorError::item(codes::WRONG_FORM, index, text, what, Some(hint))
    };
    let (na, nb) = (
        parse_number(a).map_err(|w| syntax(w, None))?,
        parse_number(b).map_err(|w| syntax(w, None))?,
    );
    if let (IdForm::Numeric, Some(first), Some(last)) = (form, na, nb) {
        if first <= last {
            return Ok(Item::Numbers { first, last });
        }
    }
    let (pa, pb) = (a.parse::<Port>(), b.parse::<Port>());
    match form {
        IdForm::Literal if na.is_some() && nb.is_some() || pa.is_ok() && pb.is_ok() => Err(
            wrong_form(format!("ranges are not ids of target type {target_type}")),
        ),
        IdForm::Numeric => match (na, nb) {
            (Some(first), Some(last)) if first <= last => Ok(Item::Numbers { first, last }),
            (Some(first), Some(last)) => Err(SelectorError::item(
                codes::REVERSED_RANGE,
                index,
                text,
                format!("reversed range: {first} is after {last}"),
                Some(format!("write `{last}-{first}`")),
            )),
            _ if pa.is_ok() && pb.is_ok() => Err(wrong_form(format!(
                "ports are not ids of target type {target_type}"
            ))),
            _ if is_literal(text) => Err(SelectorError::item(
                codes::WRONG_FORM,
                index,
                text,
                format!("target type {target_type} takes numeric ids"),
                Some(format!(
                    "{}; to select by name use mode query: `name = {text}`",
                    example_ids(form)
                )),
            )),
            _ => Err(syntax(bad_chars(text), Some(example_ids(form)))),
        },
        IdForm::Port => {
            let (first, last) = match (pa, pb) {
                (Ok(first), Ok(last)) => (first, last),
                (Err(ParsePortError::LowercaseSlot { .. }), _)
                | (_, Err(ParsePortError::LowercaseSlot { .. })) => {
                    let fixed = format!("{}-{}", upper_port(a), upper_port(b));
                    return Err(syntax(
                        "slot letters are uppercase".to_owned(),
                        Some(format!("write `{fixed}`")),
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    return match e {
                        ParsePortError::TooLarge(_) => {
                            Err(syntax("number too large".to_owned(), None))
                        }
                        _ if is_literal(a) && is_literal(b) => Err(wrong_form(format!(
                            "not a range of switch ports; target type {target_type} takes ports"
                        ))),
                        _ => Err(syntax(bad_chars(text), Some(example_ids(form)))),
                    };
                }
            };
            match PortRange::new(first, last) {
                Ok(range) => Ok(Item::Ports(range)),
                Err(err @ PortRangeError::Reversed { .. }) => {
                    let lo = Port::new(
                        first.member.min(last.member),
                        first.slot.min(last.slot),
                        first.number.min(last.number),
                    );
                    let hi = Port::new(
                        first.member.max(last.member),
                        first.slot.max(last.slot),
                        first.number.max(last.number),
                    );
                    Err(SelectorError::item(
                        codes::REVERSED_RANGE,
                        index,
                        text,
                        err,
                        Some(format!("write `{lo}-{hi}`")),
                    ))
                }
                Err(err) => Err(syntax(
                    err.to_string(),
                    Some("write both ends in the same form, e.g. `1/A1-1/B4`".to_owned()),
                )),
            }
        }
        IdForm::Literal => Err(syntax(bad_chars(text), Some(example_ids(form)))),
    }
}

/// The uppercase-slot spelling of a port written with a lowercase slot.
fn upper_port(text: &str) -> String {
    match text.parse::<Port>() {
        Err(ParsePortError::LowercaseSlot { upper, .. }) => upper,
        Ok(port) => port.to_string(),
        Err(_) => text.to_owned(),
    }
}

/// `Ok(None)` when `text` is not all digits; an error message when it is but
/// does not fit in 64 bits.
fn parse_number(text: &str) -> Result<Option<u64>, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("number `{text}` is too large"))
}

/// `[A-Za-z0-9_.@:-]+`
fn is_literal(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-'))
}

fn bad_chars(text: &str) -> String {
    let bad = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-' | '/')))
        .unwrap_or('/');
    format!("`{}` is not allowed in an id", bad.escape_debug())
}

fn example_ids(form: IdForm) -> String {
    match form {
        IdForm::Numeric => "ids are numbers such as `104` or ranges such as `311-318`".to_owned(),
        IdForm::Port => "ids are switch ports such as `1/24`, `1/A1`, `A1` or `24`, or ranges such as `1/A1-1/A4`".to_owned(),
        IdForm::Literal => "ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`".to_owned(),
    }
}

/// The item without a mistaken type prefix (`vm:104` -> `104`,
/// `vm:311-vm:318` -> `311-318`), or `None` when it has none.
fn strip_type_prefixes(text: &str, target_type: &str, form: IdForm) -> Option<String> {
    // Every prefix ends in `:`; most items have none, so skip the work.
    if !text.contains(':') {
        return None;
    }
    let mut candidates: Vec<&str> = KNOWN_TYPES.to_vec();
    if !target_type.is_empty() && !candidates.contains(&target_type) {
        candidates.push(target_type);
    }
    let mut fixed = text.to_owned();
    let mut found = false;
    for candidate in candidates {
        let prefix = format!("{candidate}:");
        if let Some(rest) = fixed.strip_prefix(&prefix) {
            fixed = rest.to_owned();
            found = true;
        }
        let inner = format!("-{prefix}");
        if form != IdForm::Literal && fixed.contains(&inner) {
            fixed = fixed.replace(&inner, "-");
            found = true;
        }
    }
    found.then_some(fixed)
}

/// A ledger value: a policy id, 8-4-4-4-12 hex digits.
fn parse_ledger(value: &str) -> Result<String, SelectorError> {
    let text = value.trim();
    let is_uuid = text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if is_uuid {
        return Ok(text.to_ascii_lowercase());
    }
    Err(SelectorError {
        code: codes::LEDGER_ID,
        item: None,
        text: text.to_owned(),
        message: format!("`{text}` is not a policy id"),
        hint: Some("the ledger mode takes the uuid of a stored policy, e.g. `3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7b`".to_owned()),
    })
}

fn too_large(item: Option<usize>, text: &str, count: u128) -> SelectorError {
    let what = format!("expands to {count} ids, more than the limit of {MAX_IDS}");
    let hint = Some("narrow the ranges, or select by query against the inventory".to_owned());
    match item {
        Some(index) => SelectorError::item(codes::TOO_LARGE, index, text, what, hint),
        None => SelectorError {
            code: codes::TOO_LARGE,
            item: None,
            text: text.to_owned(),
            message: format!("the selector {what}"),
            hint,
        },
    }
}

/// A member and slot: the ports that differ only by their number.
type PortGroup = (Option<u32>, Option<char>);

/// Distinct ids across items, without materialising them: numeric ranges are
/// merged as intervals, port rectangles as number intervals per member and
/// slot, literals through a set. Each item is already within [`MAX_IDS`].
fn unique_count(items: &[Item]) -> u128 {
    let mut numbers: Vec<(u64, u64)> = Vec::new();
    let mut ports: HashMap<PortGroup, Vec<(u64, u64)>> = HashMap::new();
    let mut literals: HashSet<&str> = HashSet::new();
    for item in items {
        match item {
            Item::Numbers { first, last } => numbers.push((*first, *last)),
            Item::Ports(range) => {
                let (first, last) = (range.first(), range.last());
                let span = (u64::from(first.number), u64::from(last.number));
                // Each (member, slot) pair of the rectangle holds the same span of numbers.
                if let Ok(groups) = PortRange::new(
                    first,
                    Port {
                        number: first.number,
                        ..last
                    },
                ) {
                    for port in groups.iter() {
                        ports
                            .entry((port.member, port.slot))
                            .or_default()
                            .push(span);
                    }
                }
            }
            Item::Literal(id) => {
                literals.insert(id);
            }
        }
    }
    let mut total = merged_len(numbers) + literals.len() as u128;
    for spans in ports.into_values() {
        total += merged_len(spans);
    }
    total
}

/// Total length of the union of inclusive intervals.
fn merged_len(mut spans: Vec<(u64, u64)>) -> u128 {
    spans.sort_unstable();
    let mut total = 0u128;
    let mut current: Option<(u64, u64)> = None;
    for (lo, hi) in spans {
        current = match current {
            Some((clo, chi)) if lo <= chi.saturating_add(1) => Some((clo, chi.max(hi))),
            Some((clo, chi)) => {
                total += u128::from(chi - clo) + 1;
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    if let Some((lo, hi)) = current {
        total += u128::from(hi - lo) + 1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;
    use expect_test::{expect, Expect};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn render_errors(errors: &[SelectorError]) -> String {
        errors
            .iter()
            .map(|e| {
                let item = e.item.map_or("-".to_owned(), |i| i.to_string());
                let hint = e
                    .hint
                    .as_deref()
                    .map(|h| format!("\n  hint: {h}"))
                    .unwrap_or_default();
                format!(
                    "{} {} [item {item}]: {}{hint}",
                    e.severity(),
                    e.code,
                    e.message
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Parses `value` in `mode` for `target_type` and renders the offline
    /// expansion (or what the selector waits for), or every error.
    fn check(mode: SelectorMode, target_type: &str, value: &str, expect: Expect) {
        let actual = match parse_selector(mode, value, target_type) {
            Ok(selector) => match selector.expand() {
                Ok(Some(ids)) => format!("{} ids: {}", ids.len(), ids.join(" ")),
                Ok(None) => match (selector.query(), selector.ledger_policy_id()) {
                    (Some(query), _) => format!("query, needs an inventory: {query}"),
                    (_, Some(id)) => format!("ledger of policy {id}, needs the engine"),
                    _ => "nothing".to_owned(),
                },
                Err(e) => render_errors(&[e]),
            },
            Err(errors) => render_errors(&errors),
        };
        expect.assert_eq(&actual);
    }

    fn target(target_type: &str, id: &str, name: &str, status: &str, tier: &str) -> Target {
        Target {
            target_type: target_type.into(),
            id: id.into(),
            name: Some(name.into()),
            status: Some(status.into()),
            labels: [("tier".to_owned(), tier.to_owned())].into_iter().collect(),
            attrs: Default::default(),
        }
    }

    fn host() -> HostInventory {
        HostInventory::new(
            "pve-01",
            "proxmox.ve",
            vec![
                target("vm", "104", "web-104", "running", "low"),
                target("vm", "204", "db-204", "running", "high"),
                target("vm", "311", "web-311", "stopped", "low"),
                target("vm", "313", "web-313", "running", "low"),
                target("ct", "312", "proxy", "running", "low"),
                target("poe-port", "1/A1", "ap-1", "on", "low"),
                target("poe-port", "1/A3", "ap-3", "off", "low"),
                target("poe-port", "1/B2", "cam-2", "on", "high"),
                target("poe-port", "2/A1", "ap-9", "on", "low"),
                target("service", "nginx.service", "nginx", "running", "low"),
            ],
        )
    }

    /// Resolves against [`host`] and renders the ids, the missing count and the findings.
    fn check_resolve(mode: SelectorMode, target_type: &str, value: &str, expect: Expect) {
        let selector = parse_selector(mode, value, target_type)
            .unwrap_or_else(|e| panic!("{}", render_errors(&e)));
        let actual = match selector.resolve(&host()) {
            Ok(resolution) => {
                let mut out = format!(
                    "ids: {} (missing {})",
                    resolution.ids.join(" "),
                    resolution.missing
                );
                for f in &resolution.findings {
                    let hint = f
                        .hint
                        .as_deref()
                        .map(|h| format!("\n  hint: {h}"))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "\n{} {} at {}: {}{hint}",
                        f.severity, f.code, f.path, f.message
                    ));
                }
                out
            }
            Err(e) => render_errors(&[e]),
        };
        expect.assert_eq(&actual);
    }

    use SelectorMode::{Ledger, List, Query as Q, Range};

    #[test]
    fn numeric_ids_and_ranges_expand_in_order_without_duplicates() {
        check(
            Range,
            "vm",
            "104,204,311-318",
            expect![
                "10 ids: vm:104 vm:204 vm:311 vm:312 vm:313 vm:314 vm:315 vm:316 vm:317 vm:318"
            ],
        );
        check(
            List,
            "ct",
            " 105 , 101-103,102, 105",
            expect!["4 ids: ct:105 ct:101 ct:102 ct:103"],
        );
        check(List, "vm", "0104", expect!["1 ids: vm:104"]);
        check(Range, "vm", "7-7", expect!["1 ids: vm:7"]);
    }

    #[test]
    fn every_port_form_expands_for_switch_targets() {
        check(List, "poe-port", "1/24", expect!["1 ids: poe-port:1/24"]);
        check(List, "poe-port", "1/A1", expect!["1 ids: poe-port:1/A1"]);
        check(List, "poe-port", "A1", expect!["1 ids: poe-port:A1"]);
        check(List, "poe-port", "24", expect!["1 ids: poe-port:24"]);
        check(
            Range,
            "interface",
            "1/1-1/4",
            expect!["4 ids: interface:1/1 interface:1/2 interface:1/3 interface:1/4"],
        );
        check(
            Range,
            "poe-port",
            "1/A1-1/B4",
            expect!["8 ids: poe-port:1/A1 poe-port:1/A2 poe-port:1/A3 poe-port:1/A4 poe-port:1/B1 poe-port:1/B2 poe-port:1/B3 poe-port:1/B4"],
        );
        check(
            Range,
            "poe-port",
            "1/1-2/2",
            expect!["4 ids: poe-port:1/1 poe-port:1/2 poe-port:2/1 poe-port:2/2"],
        );
        check(
            Range,
            "poe-port",
            "A1-A4",
            expect!["4 ids: poe-port:A1 poe-port:A2 poe-port:A3 poe-port:A4"],
        );
        check(
            Range,
            "poe-port",
            "22-24,1/1, 23",
            expect!["4 ids: poe-port:22 poe-port:23 poe-port:24 poe-port:1/1"],
        );
    }

    #[test]
    fn literal_ids_keep_their_dashes_and_dots() {
        check(
            List,
            "host",
            "web-01, nas.lan,ups1@nas.lan:3493,web-01",
            expect!["3 ids: host:web-01 host:nas.lan host:ups1@nas.lan:3493"],
        );
        check(
            List,
            "service",
            "nginx.service",
            expect!["1 ids: service:nginx.service"],
        );
        check(
            List,
            "webhook",
            "deploy,24",
            expect!["2 ids: webhook:deploy webhook:24"],
        );
    }

    #[test]
    fn empty_values_and_items_are_syntax_errors() {
        check(
            List,
            "vm",
            "  ",
            expect![[r#"
                blocker selector.syntax [item -]: the selector value is empty
                  hint: ids are numbers such as `104` or ranges such as `311-318`"#]],
        );
        check(
            List,
            "vm",
            "104,,105,",
            expect![[r#"
                blocker selector.syntax [item 1]: item 2 is empty
                  hint: remove the extra comma
                blocker selector.syntax [item 3]: item 4 is empty
                  hint: remove the extra comma"#]],
        );
        check(
            Range,
            "vm",
            "-5,5-, 1-2-3",
            expect![[r#"
                blocker selector.syntax [item 0]: item 1 `-5`: the range has no start
                  hint: ids are numbers such as `104` or ranges such as `311-318`
                blocker selector.syntax [item 1]: item 2 `5-`: the range has no end
                  hint: ids are numbers such as `104` or ranges such as `311-318`
                blocker selector.syntax [item 2]: item 3 `1-2-3`: more than one `-`: a range is `A-B`
                  hint: ids are numbers such as `104` or ranges such as `311-318`"#]],
        );
        check(
            List,
            "host",
            "web 01,a/b,né",
            expect![[r#"
                blocker selector.syntax [item 0]: item 1 `web 01`: ` ` is not allowed in an id
                  hint: ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`
                blocker selector.syntax [item 1]: item 2 `a/b`: `/` is not allowed in an id
                  hint: ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`
                blocker selector.syntax [item 2]: item 3 `né`: `é` is not allowed in an id
                  hint: ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`"#]],
        );
        check(
            List,
            "vm",
            "99999999999999999999999",
            expect!["blocker selector.syntax [item 0]: item 1 `99999999999999999999999`: number `99999999999999999999999` is too large"],
        );
    }

    #[test]
    fn ids_written_with_a_type_prefix_get_a_hint_to_drop_it() {
        check(
            List,
            "vm",
            "vm:104, vm:311-vm:318, ct:105",
            expect![[r#"
                blocker selector.syntax [item 0]: item 1 `vm:104`: ids are written without the type prefix
                  hint: write `104`
                blocker selector.syntax [item 1]: item 2 `vm:311-vm:318`: ids are written without the type prefix
                  hint: write `311-318`
                blocker selector.syntax [item 2]: item 3 `ct:105`: ids are written without the type prefix
                  hint: write `105`"#]],
        );
        check(
            Range,
            "poe-port",
            "poe-port:1/A1-poe-port:1/A4",
            expect![[r#"
                blocker selector.syntax [item 0]: item 1 `poe-port:1/A1-poe-port:1/A4`: ids are written without the type prefix
                  hint: write `1/A1-1/A4`"#]],
        );
        check(
            List,
            "host",
            "host:nas",
            expect![[r#"
                blocker selector.syntax [item 0]: item 1 `host:nas`: ids are written without the type prefix
                  hint: write `nas`"#]],
        );
    }

    #[test]
    fn forms_that_do_not_fit_the_target_type_are_wrong_form() {
        check(
            Range,
            "vm",
            "104,204,A1-A4,1/24,web01,web-01",
            expect![[r#"
                blocker selector.wrong_form [item 2]: item 3 `A1-A4`: ports are not ids of target type vm
                  hint: ids are numbers such as `104` or ranges such as `311-318`
                blocker selector.wrong_form [item 3]: item 4 `1/24`: ports are not ids of target type vm
                  hint: ids are numbers such as `104` or ranges such as `311-318`
                blocker selector.wrong_form [item 4]: item 5 `web01`: target type vm takes numeric ids
                  hint: ids are numbers such as `104` or ranges such as `311-318`; to select by name use mode query: `name = web01`
                blocker selector.wrong_form [item 5]: item 6 `web-01`: target type vm takes numeric ids
                  hint: ids are numbers such as `104` or ranges such as `311-318`; to select by name use mode query: `name = web-01`"#]],
        );
        check(
            List,
            "poe-port",
            "eth0,Trk1-Trk2",
            expect![[r#"
                blocker selector.wrong_form [item 0]: item 1 `eth0`: not a switch port; target type poe-port takes ports
                  hint: ids are switch ports such as `1/24`, `1/A1`, `A1` or `24`, or ranges such as `1/A1-1/A4`
                blocker selector.wrong_form [item 1]: item 2 `Trk1-Trk2`: not a range of switch ports; target type poe-port takes ports
                  hint: ids are switch ports such as `1/24`, `1/A1`, `A1` or `24`, or ranges such as `1/A1-1/A4`"#]],
        );
        check(
            List,
            "host",
            "10-20,A1-A4,1/24",
            expect![[r#"
                blocker selector.wrong_form [item 0]: item 1 `10-20`: ranges are not ids of target type host
                  hint: ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`
                blocker selector.wrong_form [item 1]: item 2 `A1-A4`: ranges are not ids of target type host
                  hint: ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`
                blocker selector.wrong_form [item 2]: item 3 `1/24`: ports are not ids of target type host
                  hint: ids are names made of letters, digits and `_ . @ : -`, listed one by one: `web-01,web-02`"#]],
        );
    }

    #[test]
    fn malformed_port_ranges_are_syntax_errors() {
        check(
            Range,
            "poe-port",
            "1/A1-B4, 1/a1-1/a4, 1/99999999999",
            expect![[r#"
                blocker selector.syntax [item 0]: item 1 `1/A1-B4`: range ends have different forms: `1/A1` is member/slot+port, `B4` is slot+port
                  hint: write both ends in the same form, e.g. `1/A1-1/B4`
                blocker selector.syntax [item 1]: item 2 `1/a1-1/a4`: slot letters are uppercase
                  hint: write `1/A1-1/A4`
                blocker selector.syntax [item 2]: item 3 `1/99999999999`: number too large"#]],
        );
    }

    #[test]
    fn reversed_ranges_are_blockers_with_the_range_turned_around() {
        check(
            Range,
            "vm",
            "318-311",
            expect![[r#"
                blocker selector.reversed_range [item 0]: item 1 `318-311`: reversed range: 318 is after 311
                  hint: write `311-318`"#]],
        );
        check(
            Range,
            "poe-port",
            "1/4-1/1,2/A1-1/B1",
            expect![[r#"
                blocker selector.reversed_range [item 0]: item 1 `1/4-1/1`: reversed range: port number goes from 4 down to 1
                  hint: write `1/1-1/4`
                blocker selector.reversed_range [item 1]: item 2 `2/A1-1/B1`: reversed range: member goes from 2 down to 1
                  hint: write `1/A1-2/B1`"#]],
        );
    }

    #[test]
    fn selectors_above_the_limit_are_too_large_and_fail_fast() {
        let started = Instant::now();
        check(
            Range,
            "vm",
            "1-4000000000",
            expect![[r#"
                blocker selector.too_large [item 0]: item 1 `1-4000000000`: expands to 4000000000 ids, more than the limit of 100000
                  hint: narrow the ranges, or select by query against the inventory"#]],
        );
        check(
            Range,
            "poe-port",
            "1/A1-4000/Z4000",
            expect![[r#"
                blocker selector.too_large [item 0]: item 1 `1/A1-4000/Z4000`: expands to 416000000 ids, more than the limit of 100000
                  hint: narrow the ranges, or select by query against the inventory"#]],
        );
        check(
            Range,
            "vm",
            "0-18446744073709551615",
            expect![[r#"
                blocker selector.too_large [item 0]: item 1 `0-18446744073709551615`: expands to 18446744073709551616 ids, more than the limit of 100000
                  hint: narrow the ranges, or select by query against the inventory"#]],
        );
        check(
            Range,
            "interface",
            "0/A0-4294967295/Z4294967295",
            expect![[r#"
                blocker selector.too_large [item 0]: item 1 `0/A0-4294967295/Z4294967295`: expands to 479615345916448342016 ids, more than the limit of 100000
                  hint: narrow the ranges, or select by query against the inventory"#]],
        );
        check(
            Range,
            "vm",
            "1-60000,60001-100001",
            expect![[r#"
                blocker selector.too_large [item -]: the selector expands to 100001 ids, more than the limit of 100000
                  hint: narrow the ranges, or select by query against the inventory"#]],
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the cap must be checked without expanding"
        );
        let overlapping = parse_selector(Range, "1-60000,1-60000,30000-100000", "vm").unwrap();
        assert_eq!(
            overlapping.count(),
            Some(100_000),
            "duplicates do not count against the limit"
        );
        let ports =
            parse_selector(Range, "1/1-1/60000,1/1-1/60000,2/1-2/40000", "poe-port").unwrap();
        assert_eq!(ports.count(), Some(100_000));
    }

    #[test]
    fn query_selectors_parse_and_wait_for_an_inventory() {
        check(
            Q,
            "vm",
            r#"labels.tier = low and status = running and name ~ "web-*""#,
            expect![[
                r#"query, needs an inventory: labels.tier = "low" and status = "running" and name ~ "web-*""#
            ]],
        );
        check(
            Q,
            "vm",
            "status = running and staus = x and name",
            expect![[r#"
                blocker selector.query_field [item 1]: predicate 2 `staus = x` (column 22): unknown field `staus`
                  hint: did you mean `status`? fields: id, name, status, labels.<key>, attrs.<key>
                blocker selector.query_syntax [item 2]: predicate 3 `name` (column 40): `name` has no operator
                  hint: operators are `=`, `!=` and `~` (glob)"#]],
        );
    }

    #[test]
    fn ledger_selectors_take_a_policy_id() {
        check(
            Ledger,
            "vm",
            " 3F2A0C1E-8B4D-4E6F-9A1B-2C3D4E5F6A7B ",
            expect!["ledger of policy 3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7b, needs the engine"],
        );
        check(
            Ledger,
            "vm",
            "last-run",
            expect![[r#"
                blocker selector.ledger_id [item -]: `last-run` is not a policy id
                  hint: the ledger mode takes the uuid of a stored policy, e.g. `3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7b`"#]],
        );
        check(
            Ledger,
            "vm",
            "3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7",
            expect![[r#"
                blocker selector.ledger_id [item -]: `3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7` is not a policy id
                  hint: the ledger mode takes the uuid of a stored policy, e.g. `3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7b`"#]],
        );
    }

    #[test]
    fn a_missing_id_named_on_its_own_is_a_warning_and_gaps_in_a_range_are_info() {
        check_resolve(
            Range,
            "poe-port",
            "1/A1,1/B4",
            expect![[r#"
                ids: poe-port:1/A1 (missing 1)
                warn selector.missing at /targets/selector/value: 1 of 2 ids are not in the inventory of host pve-01 and are skipped: poe-port:1/B4
                  hint: poe-port:1/B4 named on its own and not on host pve-01: check the spelling, or refresh the inventory"#]],
        );
        check_resolve(
            Range,
            "vm",
            "104,204,999",
            expect![[r#"
                ids: vm:104 vm:204 (missing 1)
                warn selector.missing at /targets/selector/value: 1 of 3 ids are not in the inventory of host pve-01 and are skipped: vm:999
                  hint: vm:999 named on its own and not on host pve-01: check the spelling, or refresh the inventory"#]],
        );
        check_resolve(
            Range,
            "poe-port",
            "1/A1-1/A3",
            expect![[r#"
                ids: poe-port:1/A1 poe-port:1/A3 (missing 1)
                info selector.missing at /targets/selector/value: 1 of 3 ids are not in the inventory of host pve-01 and are skipped: poe-port:1/A2"#]],
        );
    }

    #[test]
    fn resolution_keeps_only_ids_in_the_inventory() {
        check_resolve(
            Range,
            "vm",
            "104,311-318,204",
            expect![[r#"
                ids: vm:104 vm:311 vm:313 vm:204 (missing 6)
                info selector.missing at /targets/selector/value: 6 of 10 ids are not in the inventory of host pve-01 and are skipped: vm:312, vm:314, vm:315, vm:316, vm:317, ..."#]],
        );
        check_resolve(
            Range,
            "vm",
            "1-100000",
            expect![[r#"
            ids: vm:104 vm:204 vm:311 vm:313 (missing 99996)
            info selector.missing at /targets/selector/value: 99996 of 100000 ids are not in the inventory of host pve-01 and are skipped: vm:1, vm:2, vm:3, vm:4, vm:5, ..."#]],
        );
        check_resolve(
            Range,
            "vm",
            "311-313,104,311-313",
            expect![[r#"
            ids: vm:311 vm:313 vm:104 (missing 1)
            info selector.missing at /targets/selector/value: 1 of 4 ids are not in the inventory of host pve-01 and are skipped: vm:312"#]],
        );
        check_resolve(
            Range,
            "poe-port",
            "1/A1-2/B3",
            expect![[r#"
            ids: poe-port:1/A1 poe-port:1/A3 poe-port:1/B2 poe-port:2/A1 (missing 8)
            info selector.missing at /targets/selector/value: 8 of 12 ids are not in the inventory of host pve-01 and are skipped: poe-port:1/A2, poe-port:1/B1, poe-port:1/B3, poe-port:2/A2, poe-port:2/A3, ..."#]],
        );
        check_resolve(
            Range,
            "poe-port",
            "1/A1-1/A999",
            expect![[r#"
            ids: poe-port:1/A1 poe-port:1/A3 (missing 997)
            info selector.missing at /targets/selector/value: 997 of 999 ids are not in the inventory of host pve-01 and are skipped: poe-port:1/A2, poe-port:1/A4, poe-port:1/A5, poe-port:1/A6, poe-port:1/A7, ..."#]],
        );
        check_resolve(
            List,
            "service",
            "nginx.service",
            expect!["ids: service:nginx.service (missing 0)"],
        );
    }

    #[test]
    fn an_empty_resolution_is_a_warning_not_an_error() {
        check_resolve(
            Range,
            "vm",
            "500-510",
            expect![[r#"
                ids:  (missing 11)
                warn selector.empty at /targets/selector/value: selector `500-510` selects no vm on host pve-01: none of its 11 ids is in the inventory
                  hint: host pve-01 has 4 vm targets, e.g. 104, 204, 311"#]],
        );
        check_resolve(
            List,
            "host",
            "pve-01",
            expect![[r#"
                ids:  (missing 1)
                warn selector.empty at /targets/selector/value: selector `pve-01` selects no host on host pve-01: none of its 1 ids is in the inventory
                  hint: host pve-01 has no host targets (its target types: ct, poe-port, service, vm)"#]],
        );
        check_resolve(
            Q,
            "vm",
            "labels.tier = none",
            expect![[r#"
                ids:  (missing 0)
                warn selector.empty at /targets/selector/value: selector `labels.tier = none` selects no vm on host pve-01: no vm matches the query
                  hint: host pve-01 has 4 vm targets, e.g. 104, 204, 311"#]],
        );
    }

    #[test]
    fn queries_are_evaluated_against_the_targets_of_the_selected_type() {
        check_resolve(
            Q,
            "vm",
            r#"labels.tier = low and status = running and name ~ "web-*""#,
            expect!["ids: vm:104 vm:313 (missing 0)"],
        );
        check_resolve(
            Q,
            "poe-port",
            "status != on",
            expect!["ids: poe-port:1/A3 (missing 0)"],
        );
        check_resolve(Q, "ct", "id = 312", expect!["ids: ct:312 (missing 0)"]);
    }

    #[test]
    fn ledger_selectors_are_left_to_the_engine() {
        let selector =
            parse_selector(Ledger, "3f2a0c1e-8b4d-4e6f-9a1b-2c3d4e5f6a7b", "vm").unwrap();
        assert!(selector.needs_engine());
        let err = selector.resolve(&host()).unwrap_err();
        assert!(err.is_deferred());
        assert_eq!(err.severity(), Severity::Info);
        assert_eq!(selector.expand(), Ok(None));
    }

    #[test]
    fn errors_become_findings_at_the_given_path() {
        let errors = parse_selector(Range, "104,204,A1-A4", "vm").unwrap_err();
        let finding = errors[0].to_finding("/targets/selector/value");
        expect![[r#"
            Finding {
                severity: Blocker,
                code: "selector.wrong_form",
                path: "/targets/selector/value",
                message: "item 3 `A1-A4`: ports are not ids of target type vm",
                hint: Some(
                    "ids are numbers such as `104` or ranges such as `311-318`",
                ),
            }
        "#]]
        .assert_debug_eq(&finding);
    }

    #[test]
    fn modes_and_id_forms_have_stable_names() {
        for mode in SelectorMode::ALL {
            assert_eq!(mode.as_str().parse::<SelectorMode>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
        }
        expect!["unknown selector mode `rnage`, did you mean `range`?"]
            .assert_eq(&"rnage".parse::<SelectorMode>().unwrap_err().to_string());
        assert_eq!(id_form("vm"), IdForm::Numeric);
        assert_eq!(id_form("ct"), IdForm::Numeric);
        assert_eq!(id_form("poe-port"), IdForm::Port);
        assert_eq!(id_form("interface"), IdForm::Port);
        assert_eq!(id_form("service"), IdForm::Literal);
    }

    const TYPES: [&str; 8] = [
        "vm",
        "ct",
        "poe-port",
        "interface",
        "host",
        "service",
        "webhook",
        "",
    ];

    fn arb_numeric_item() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u64..60).prop_map(|n| n.to_string()),
            (1u64..60, 0u64..20).prop_map(|(a, d)| format!("{a}-{}", a + d)),
        ]
    }

    fn arb_port_item() -> impl Strategy<Value = String> {
        let port = (1u32..3, prop::sample::select(vec!['A', 'B', 'C']), 1u32..6);
        prop_oneof![
            port.clone().prop_map(|(m, s, n)| format!("{m}/{s}{n}")),
            (port.clone(), port).prop_map(|((m0, s0, n0), (m1, s1, n1))| {
                format!(
                    "{}/{}{}-{}/{}{}",
                    m0.min(m1),
                    s0.min(s1),
                    n0.min(n1),
                    m0.max(m1),
                    s0.max(s1),
                    n0.max(n1)
                )
            }),
        ]
    }

    /// Naive expansion through the public port grammar, duplicates removed
    /// at first occurrence.
    fn naive(items: &[String], target_type: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for item in items {
            let ids: Vec<String> = if id_form(target_type) == IdForm::Port {
                item.parse::<PortRange>()
                    .unwrap()
                    .iter()
                    .map(|p| p.to_string())
                    .collect()
            } else {
                let (a, b) = item.split_once('-').unwrap_or((item, item));
                (a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap())
                    .map(|n| n.to_string())
                    .collect()
            };
            for id in ids {
                let id = format!("{target_type}:{id}");
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn expansion_is_stable_duplicate_free_and_in_first_seen_order(items in proptest::collection::vec(arb_numeric_item(), 1..8)) {
            let value = items.join(",");
            let selector = parse_selector(Range, &value, "vm").unwrap();
            let ids = selector.expand().unwrap().unwrap();
            prop_assert_eq!(&ids, &naive(&items, "vm"));
            prop_assert_eq!(Some(ids.len()), selector.count());
            prop_assert_eq!(parse_selector(List, &value, "vm").unwrap().expand().unwrap().unwrap(), ids);
        }

        #[test]
        fn port_expansion_is_stable_duplicate_free_and_in_first_seen_order(items in proptest::collection::vec(arb_port_item(), 1..6)) {
            let value = items.join(" , ");
            let selector = parse_selector(Range, &value, "poe-port").unwrap();
            let ids = selector.expand().unwrap().unwrap();
            prop_assert_eq!(&ids, &naive(&items, "poe-port"));
            prop_assert_eq!(Some(ids.len()), selector.count());
        }

        #[test]
        fn resolution_is_the_expansion_filtered_by_the_inventory(
            items in proptest::collection::vec(arb_port_item(), 1..6),
            present in proptest::collection::vec(arb_port_item(), 0..6),
        ) {
            let targets: Vec<Target> = present
                .iter()
                .flat_map(|item| item.parse::<PortRange>().unwrap().iter().collect::<Vec<_>>())
                .map(|port| target("poe-port", &port.to_string(), "p", "on", "low"))
                .collect();
            let host = HostInventory::new("sw", "aruba.aoss", targets);
            let selector = parse_selector(Range, &items.join(","), "poe-port").unwrap();
            let expanded = selector.expand().unwrap().unwrap();
            let expected: Vec<String> = expanded.iter().filter(|id| host.contains(id)).cloned().collect();
            let resolution = selector.resolve(&host).unwrap();
            prop_assert_eq!(resolution.missing, expanded.len() - expected.len());
            prop_assert_eq!(resolution.ids, expected);
        }

        #[test]
        fn no_mode_or_target_type_panics_on_arbitrary_text(
            text in prop_oneof![any::<String>(), r#"[0-9A-Za-z/,: .@_"=~!*?\\-]{0,24}"#],
        ) {
            let host = host();
            for mode in SelectorMode::ALL {
                for target_type in TYPES {
                    match parse_selector(mode, &text, target_type) {
                        Ok(selector) => {
                            let _ = selector.expand();
                            let _ = selector.resolve(&host);
                        }
                        Err(errors) => {
                            prop_assert!(!errors.is_empty());
                            for error in errors {
                                prop_assert!(error.code.starts_with("selector."));
                                prop_assert_eq!(error.severity(), Severity::Blocker);
                            }
                        }
                    }
                }
            }
        }
    }
}
