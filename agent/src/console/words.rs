//! Policies told in words for the console's tables: a trigger group becomes
//! "when ups1 is on battery for 2 minutes", read straight from the spec
//! JSON the API shows (SPEC §2), so the console needs nothing of the
//! compiler. Unknown shapes fall back to the trigger's type.

use serde_json::Value;

/// The spec's `trigger_group` in one sentence.
pub fn trigger_summary(spec: &Value) -> String {
    let group = &spec["trigger_group"];
    let triggers: Vec<String> = group["triggers"]
        .as_array()
        .map(|ts| ts.iter().map(trigger).collect())
        .unwrap_or_default();
    if triggers.is_empty() {
        return "no trigger".into();
    }
    let joiner = if group["logic"].as_str() == Some("ALL") {
        " and "
    } else {
        " or "
    };
    format!("when {}", triggers.join(joiner))
}

fn trigger(t: &Value) -> String {
    let text = |k: &str| t[k].as_str().map(str::to_string);
    let ups = text("ups").unwrap_or_else(|| "any UPS".into());
    let hold = text("for")
        .map(|d| format!(" for {}", duration(&d)))
        .unwrap_or_default();
    match t["type"].as_str().unwrap_or("") {
        "ups.state" => format!(
            "{ups} is {}{hold}",
            state(&text("equals").unwrap_or_default())
        ),
        "metric.threshold" => format!(
            "{} {} {}{hold}",
            text("metric").unwrap_or_else(|| "a metric".into()),
            text("op").unwrap_or_default(),
            scalar(&t["value"])
        ),
        "timer.at" => schedule(&t["schedule"]),
        "timer.after" => {
            let since = &t["since_event"];
            let what = match since["type"].as_str() {
                Some("ups.state") => format!(
                    "a UPS is {}",
                    state(since["equals"].as_str().unwrap_or_default())
                ),
                Some(other) => other.to_string(),
                None => "an event".into(),
            };
            format!(
                "{} after {what}",
                duration(&text("after").unwrap_or_default())
            )
        }
        "webhook.custom" => format!("the webhook {} is called", text("name").unwrap_or_default()),
        other => other.to_string(),
    }
}

fn state(s: &str) -> String {
    s.replace('_', " ")
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn schedule(s: &Value) -> String {
    if let Some(cron) = s["cron"].as_str() {
        return format!("the schedule `{cron}` comes");
    }
    let at = s["at"].as_str().unwrap_or("?");
    match s["repeat"].as_str() {
        Some("weekly") => {
            let days: Vec<&str> = s["days"]
                .as_array()
                .map(|d| d.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("it is {at} on {}", days.join(", "))
        }
        _ => format!("it is {at} (daily)"),
    }
}

/// `2m` as "2 minutes", `1h30m` as "1 hour 30 minutes"; text that is not a
/// duration is shown as written.
pub fn duration(text: &str) -> String {
    let mut out = Vec::new();
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => "second",
            'm' => "minute",
            'h' => "hour",
            'd' => "day",
            _ => return text.to_string(),
        };
        if digits.is_empty() {
            return text.to_string();
        }
        let plural = if digits == "1" { "" } else { "s" };
        out.push(format!("{digits} {unit}{plural}"));
        digits.clear();
    }
    if out.is_empty() || !digits.is_empty() {
        return text.to_string();
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(group: Value) -> String {
        trigger_summary(&json!({ "trigger_group": group }))
    }

    #[test]
    fn a_held_ups_state_reads_as_a_sentence() {
        assert_eq!(
            summary(
                json!({"triggers": [{"type": "ups.state", "equals": "on_battery", "ups": "ups1", "for": "2m"}]})
            ),
            "when ups1 is on battery for 2 minutes"
        );
        assert_eq!(
            summary(json!({"triggers": [{"type": "ups.state", "equals": "on_mains"}]})),
            "when any UPS is on mains"
        );
    }

    #[test]
    fn every_trigger_type_has_words_and_logic_joins_them() {
        let group = json!({"logic": "ALL", "triggers": [
            {"type": "metric.threshold", "metric": "load", "op": ">", "value": 60, "for": "120s"},
            {"type": "webhook.custom", "name": "deploy"},
        ]});
        assert_eq!(
            summary(group),
            "when load > 60 for 120 seconds and the webhook deploy is called"
        );
        let group = json!({"triggers": [
            {"type": "timer.at", "schedule": {"repeat": "weekly", "at": "01:00", "days": ["sun"]}},
            {"type": "timer.at", "schedule": {"cron": "0 1 * * 0"}},
            {"type": "timer.after", "after": "10m", "since_event": {"type": "ups.state", "equals": "on_mains"}},
        ]});
        assert_eq!(
            summary(group),
            "when it is 01:00 on sun or the schedule `0 1 * * 0` comes or 10 minutes after a UPS is on mains"
        );
        assert_eq!(summary(json!({})), "no trigger");
    }

    #[test]
    fn durations_read_in_units_and_anything_else_is_kept() {
        assert_eq!(duration("1h30m"), "1 hour 30 minutes");
        assert_eq!(duration("1d"), "1 day");
        assert_eq!(duration("300"), "300");
        assert_eq!(duration("10mx"), "10mx");
    }
}
