//! The remote commands of the `linux.ssh` driver: per-host templates, how
//! they are filled in (unit names validated and shell-quoted, so a target id
//! can never inject shell syntax), and how their output is read.

use crate::ssh::shell_quote;

/// Placeholder for the shell-quoted service (unit) name in a template.
pub const SERVICE: &str = "{service}";
/// Placeholder for the power delay in seconds in a template.
pub const DELAY: &str = "{delay_s}";

/// Why a unit name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Empty name.
    #[error("empty unit name")]
    Empty,
    /// A character outside `[A-Za-z0-9_.@:-]`.
    #[error("unit name `{0}` has characters outside [A-Za-z0-9_.@:-]")]
    Characters(String),
    /// A leading `-` would read as an option of the service command.
    #[error("unit name `{0}` starts with `-`")]
    LeadingDash(String),
}

/// Checks a unit name: `[A-Za-z0-9_.@:-]+`, not starting with `-`.
pub fn validate_unit(unit: &str) -> Result<(), UnitError> {
    if unit.is_empty() {
        return Err(UnitError::Empty);
    }
    if !unit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-'))
    {
        return Err(UnitError::Characters(unit.to_owned()));
    }
    if unit.starts_with('-') {
        return Err(UnitError::LeadingDash(unit.to_owned()));
    }
    Ok(())
}

/// Fills `template`: `{service}` shell-quoted (validate it first),
/// `{delay_s}` as a number.
pub fn render(template: &str, service: Option<&str>, delay_s: Option<u64>) -> String {
    let mut out = template.to_owned();
    if let Some(service) = service {
        out = out.replace(SERVICE, &shell_quote(service));
    }
    if let Some(delay) = delay_s {
        out = out.replace(DELAY, &delay.to_string());
    }
    out
}

/// Who runs the changing commands (the host config's `sudo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// The login user, as is.
    LoginUser,
    /// Through `sudo -n` (passwordless sudo: a password prompt would hang).
    Sudo,
}

impl RunAs {
    /// `command` as this user runs it: prefixed with `sudo -n` for [`RunAs::Sudo`].
    pub fn wrap(self, command: &str) -> String {
        match self {
            RunAs::LoginUser => command.to_owned(),
            RunAs::Sudo => format!("sudo -n {command}"),
        }
    }
}

/// A power command with a delay: run in the background after `delay_s`
/// seconds, so the session returns at once. Templates that use `{delay_s}`
/// handle the delay themselves and are returned as they are.
pub fn delayed(template: &str, command: String, delay_s: u64) -> String {
    if delay_s == 0 || template.contains(DELAY) {
        return command;
    }
    let inner = format!("sleep {delay_s} && {command}");
    format!("nohup sh -c {} >/dev/null 2>&1 &", shell_quote(&inner))
}

/// The program a command line runs (its first word after `sudo -n` and
/// `VAR=value` assignments), for the `command -v` precondition. Give it
/// the command before [`delayed`] wraps it: the wrapper's program is `nohup`.
pub fn program_of(command: &str) -> Option<&str> {
    let mut words = command.split_whitespace().peekable();
    if words.peek() == Some(&"sudo") {
        words.next();
        while words.peek().is_some_and(|w| w.starts_with('-')) {
            words.next();
        }
    }
    words.find(|w| !is_assignment(w))
}

/// `NAME=value`, as a shell reads a leading word.
fn is_assignment(word: &str) -> bool {
    word.find('=').is_some_and(|at| at > 0)
}

/// The first word of a status command's stdout (`active`, `inactive`,
/// `failed`, ...), as `systemctl is-active` prints it.
pub fn parse_state(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

/// One row of `systemctl list-units --type=service --all --no-legend --plain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRow {
    pub unit: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub description: String,
}

/// Parses `systemctl list-units` output (`UNIT LOAD ACTIVE SUB DESCRIPTION`),
/// skipping the `●` marker of failed units and lines whose unit name would
/// not be a valid target id.
pub fn parse_list_units(text: &str) -> Vec<UnitRow> {
    text.lines()
        .filter_map(|line| {
            let line = line
                .trim_start()
                .trim_start_matches('●')
                .trim_start_matches('*');
            let mut words = line.split_whitespace();
            let unit = words.next()?;
            validate_unit(unit).ok()?;
            let load = words.next()?;
            let active = words.next()?;
            let sub = words.next()?;
            let description = words.collect::<Vec<_>>().join(" ");
            Some(UnitRow {
                unit: unit.to_owned(),
                load: load.to_owned(),
                active: active.to_owned(),
                sub: sub.to_owned(),
                description,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_outside_the_grammar_are_refused() {
        assert!(validate_unit("nginx.service").is_ok());
        assert!(validate_unit("getty@tty1.service").is_ok());
        assert!(validate_unit("x;rm -rf /").is_err());
        assert!(validate_unit("$(reboot)").is_err());
        assert!(validate_unit("--force").is_err());
        assert!(validate_unit("").is_err());
    }

    #[test]
    fn templates_quote_the_unit_and_prefix_sudo() {
        let cmd = render("systemctl restart {service}", Some("nginx.service"), None);
        assert_eq!(cmd, "systemctl restart 'nginx.service'");
        assert_eq!(
            RunAs::Sudo.wrap(&cmd),
            "sudo -n systemctl restart 'nginx.service'"
        );
        assert_eq!(RunAs::LoginUser.wrap(&cmd), cmd);
    }

    #[test]
    fn delayed_power_commands_run_in_the_background() {
        assert_eq!(
            delayed("systemctl poweroff", "systemctl poweroff".into(), 0),
            "systemctl poweroff"
        );
        assert_eq!(
            delayed(
                "systemctl poweroff",
                "sudo -n systemctl poweroff".into(),
                30
            ),
            "nohup sh -c 'sleep 30 && sudo -n systemctl poweroff' >/dev/null 2>&1 &"
        );
        assert_eq!(
            delayed("shutdown -P +{delay_s}", "shutdown -P +1".into(), 60),
            "shutdown -P +1"
        );
    }

    #[test]
    fn the_program_skips_sudo_and_assignments() {
        assert_eq!(program_of("sudo -n systemctl poweroff"), Some("systemctl"));
        assert_eq!(program_of("LC_ALL=C touch /tmp/x"), Some("touch"));
        assert_eq!(program_of(""), None);
    }

    #[test]
    fn list_units_output_parses() {
        let text = "  cron.service   loaded active   running Regular background program processing daemon\n\
                    ● nginx.service loaded failed   failed  A high performance web server\n";
        let rows = parse_list_units(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].unit, "nginx.service");
        assert_eq!(rows[1].active, "failed");
        assert_eq!(
            rows[0].description,
            "Regular background program processing daemon"
        );
    }

    #[test]
    fn the_state_is_the_first_word_of_output() {
        assert_eq!(parse_state("\ninactive\n").as_deref(), Some("inactive"));
        assert_eq!(parse_state("  \n"), None);
    }
}
