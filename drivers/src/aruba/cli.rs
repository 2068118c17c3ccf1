//! The AOS-S command line as the driver speaks it: prompt detection, VT100
//! clean-up, error lines, the `show power-over-ethernet brief` and `show
//! interfaces brief` tables (16.x and 15.x layouts), and the exact command
//! lines of a change. Pure text handling plus one small blocking session
//! type over any `Read + Write` (an ssh2 channel in production).
//!
//! Facts follow `reference/aos-s-poe-cli.md`: prompts `host#`,
//! `host(config)#`, `host(eth-1/A1)#`, operator `host>`; `no page` turns
//! paging off; errors start with `Invalid input:`, `Incomplete input:`,
//! `Module not present for port or invalid port:`; the prompt stays in the
//! same context after an error.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use inventory::port::Port;

/// Prefixes of the lines AOS-S prints when it rejects a command.
pub const ERROR_PREFIXES: &[&str] = &[
    "Invalid input",
    "Incomplete input",
    "Ambiguous input",
    "Module not present",
    "Invalid port",
    "Error:",
    "Unable to",
];

/// The banner some models print before the first prompt.
pub const ANY_KEY: &str = "Press any key to continue";

/// The pager's prompt when paging is on.
pub const MORE: &str = "-- MORE --";

/// Which level a prompt shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `host>`: read-only.
    Operator,
    /// `host#` and every config context below it.
    Manager,
}

/// A parsed prompt: `Core-Switch-1(eth-1/A1)#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub hostname: String,
    /// `config`, `eth-1/A1`, `vlan-10`; `None` at the top level.
    pub context: Option<String>,
    pub level: Level,
}

/// One row of `show power-over-ethernet brief`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoeRow {
    pub port: Port,
    /// `Pwr Enab` / `Power Enable`: PoE administratively on.
    pub enabled: bool,
    /// `low`, `high` or `critical`.
    pub priority: String,
    /// PD draw in watts (`PD Pwr Draw`, or `Actual Power` on 15.x).
    pub draw_w: f64,
    /// `Delivering`, `Searching`, `Disabled`, `Fault`, `Other Fault`, ...
    pub status: String,
    /// PD class, when printed.
    pub class: Option<String>,
}

/// One row of `show interfaces brief`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRow {
    pub port: Port,
    /// `Enabled`: administratively up.
    pub enabled: bool,
    /// `Status`: link `Up` or `Down`.
    pub link_up: bool,
    /// Port type (`100/1000T`, `SFP+SR`).
    pub port_type: String,
}

/// Why a CLI exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The switch rejected a command; `message` is its error line.
    #[error("switch rejected `{command}`: {message}")]
    Rejected { command: String, message: String },
    /// No prompt came back in time.
    #[error("no prompt from the switch within {after:?} (after `{command}`); last output: {last_output:?}")]
    Timeout {
        command: String,
        after: Duration,
        last_output: String,
    },
    /// The session ended while waiting for a prompt.
    #[error("the switch closed the session (after `{command}`)")]
    Closed { command: String },
    /// Reading or writing the session failed.
    #[error("cli i/o after `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// A logged-in CLI with paging off, positioned at a prompt.
pub struct Cli<S> {
    stream: S,
    deadline: Instant,
    /// The prompt seen last.
    pub prompt: Prompt,
    /// Everything read, for diagnostics (bounded).
    transcript: String,
}

impl<S: Read + Write> Cli<S> {
    /// Waits for the first prompt (answering a `Press any key` banner and a
    /// pager), then turns paging off with `no page`. Reads must time out by
    /// themselves (libssh2's session timeout does); `deadline` bounds the
    /// whole session.
    pub fn open(stream: S, deadline: Instant) -> Result<Cli<S>, CliError> {
        let mut cli = Cli {
            stream,
            deadline,
            prompt: Prompt {
                hostname: String::new(),
                context: None,
                level: Level::Manager,
            },
            transcript: String::new(),
        };
        let (_, prompt) = cli.read_until_prompt("<login>", None)?;
        cli.prompt = prompt;
        cli.run("no page")?;
        Ok(cli)
    }

    /// Sends one command line and returns its output (without the echo and
    /// the prompt). An error line from the switch is [`CliError::Rejected`].
    pub fn run(&mut self, command: &str) -> Result<String, CliError> {
        self.send(command)?;
        let (output, prompt) =
            self.read_until_prompt(command, Some(&self.prompt.hostname.clone()))?;
        self.prompt = prompt;
        let output = strip_echo(&output, command);
        if let Some(message) = error_line(&output) {
            return Err(CliError::Rejected {
                command: command.to_owned(),
                message,
            });
        }
        Ok(output)
    }

    /// The session text read so far (bounded), for error reports.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Gives the underlying stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    fn send(&mut self, line: &str) -> Result<(), CliError> {
        let io = |source| CliError::Io {
            command: line.to_owned(),
            source,
        };
        self.stream.write_all(line.as_bytes()).map_err(io)?;
        self.stream.write_all(b"\r").map_err(io)?;
        self.stream.flush().map_err(io)
    }

    /// Reads until the text ends with a prompt line. Returns the cleaned text
    /// before the prompt and the prompt.
    fn read_until_prompt(
        &mut self,
        command: &str,
        hostname: Option<&str>,
    ) -> Result<(String, Prompt), CliError> {
        let started = Instant::now();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered_banner = false;
        loop {
            let text = clean(&String::from_utf8_lossy(&raw));
            let last_line = text.rsplit('\n').next().unwrap_or("");
            if let Some(prompt) =
                parse_prompt(last_line).filter(|p| hostname.is_none_or(|h| p.hostname == h))
            {
                let body = text[..text.len() - last_line.len()].to_owned();
                return Ok((body, prompt));
            }
            if last_line.contains(MORE) {
                // Paging still on: drop the pager line, ask for the next page.
                drain_through(&mut raw, MORE);
                self.stream
                    .write_all(b" ")
                    .and_then(|()| self.stream.flush())
                    .map_err(|source| CliError::Io {
                        command: command.to_owned(),
                        source,
                    })?;
            }
            if !answered_banner && text.contains(ANY_KEY) {
                answered_banner = true;
                drain_through(&mut raw, ANY_KEY);
                self.send("")?;
            }
            if Instant::now() >= self.deadline {
                return Err(self.timeout(command, &text, started));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(CliError::Closed {
                        command: command.to_owned(),
                    })
                }
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    self.record(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    return Err(self.timeout(command, &text, started));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CliError::Io {
                        command: command.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    fn timeout(&self, command: &str, text: &str, started: Instant) -> CliError {
        CliError::Timeout {
            command: command.to_owned(),
            after: started.elapsed(),
            last_output: crate::ssh::tail(text, 200),
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        self.transcript.push_str(&String::from_utf8_lossy(bytes));
        if self.transcript.len() > 64 * 1024 {
            let cut = self.transcript.len() - 32 * 1024;
            let cut = (cut..self.transcript.len())
                .find(|i| self.transcript.is_char_boundary(*i))
                .unwrap_or(0);
            self.transcript.drain(..cut);
        }
    }
}

/// Drops `raw` up to and including the first `marker` (and the rest of its
/// line), keeping whatever came after it.
fn drain_through(raw: &mut Vec<u8>, marker: &str) {
    let Some(at) = raw
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
    else {
        return;
    };
    let mut end = at + marker.len();
    while end < raw.len() && !matches!(raw[end], b'\n' | 0x1b) {
        end += 1;
    }
    raw.drain(..end);
}

/// Parses a prompt line (`host#`, `host(config)#`, `host(eth-1/A1)#`,
/// `host>`), ignoring trailing blanks.
pub fn parse_prompt(line: &str) -> Option<Prompt> {
    let line = line.trim();
    let (body, level) = if let Some(b) = line.strip_suffix('#') {
        (b, Level::Manager)
    } else if let Some(b) = line.strip_suffix('>') {
        (b, Level::Operator)
    } else {
        return None;
    };
    let (hostname, context) = match body.split_once('(') {
        Some((host, rest)) => {
            let ctx = rest.strip_suffix(')')?;
            if ctx.is_empty()
                || !ctx
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | ',' | '_' | '.'))
            {
                return None;
            }
            (host, Some(ctx.to_owned()))
        }
        None => (body, None),
    };
    if hostname.is_empty()
        || hostname.len() > 64
        || !hostname.chars().all(|c| c.is_ascii_graphic() && c != '#')
    {
        return None;
    }
    if context.is_some() && level == Level::Operator {
        return None;
    }
    Some(Prompt {
        hostname: hostname.to_owned(),
        context,
        level,
    })
}

/// Strips VT100 control sequences and carriage returns; a cursor move to a
/// row (`ESC[24;1H`) becomes a line break, as it is one on screen.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    let mut last = None;
                    for n in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&n) {
                            last = Some(n);
                            break;
                        }
                    }
                    if last == Some('H') && !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                }
                Some('(' | ')') => {
                    chars.next();
                }
                _ => {}
            },
            '\r' | '\x07' | '\0' => {}
            '\x08' => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The first line of `output` that reports a rejected command, if any.
pub fn error_line(output: &str) -> Option<String> {
    output
        .lines()
        .map(str::trim)
        .find(|l| {
            ERROR_PREFIXES.iter().any(|p| l.starts_with(p))
                || l.contains("too long. Allowed length is")
        })
        .map(str::to_owned)
}

/// Drops the echoed command (the first line, when it repeats `command`).
fn strip_echo(output: &str, command: &str) -> String {
    let trimmed = output.trim_start_matches('\n');
    match trimmed.split_once('\n') {
        Some((first, rest)) if first.trim() == command.trim() => rest.to_owned(),
        None if trimmed.trim() == command.trim() => String::new(),
        _ => trimmed.to_owned(),
    }
}

/// Parses `show power-over-ethernet brief`, 16.x or 15.x layout. Rows are the
/// lines that start with a port id and carry two wattages (`N.N W`); other
/// lines (titles, power summaries, `Member 1 Power`) are skipped.
pub fn parse_poe_brief(text: &str) -> Vec<PoeRow> {
    text.lines().filter_map(parse_poe_row).collect()
}

fn parse_poe_row(line: &str) -> Option<PoeRow> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let port: Port = tokens.first()?.parse().ok()?;
    let watts: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == "W")
        .map(|(i, _)| i)
        .collect();
    if watts.len() < 2 {
        return None;
    }
    let draw_at = watts[1];
    let draw_w: f64 = tokens.get(draw_at.checked_sub(1)?)?.parse().ok()?;
    let legacy = tokens.get(1) == Some(&"|");
    let (enabled, priority) = if legacy {
        (*tokens.get(2)?, *tokens.get(3)?)
    } else {
        (*tokens.get(1)?, *tokens.get(2)?)
    };
    let enabled = match enabled {
        "Yes" => true,
        "No" => false,
        _ => return None,
    };
    let rest = &tokens[draw_at + 1..];
    let (status, class) = if legacy {
        // [configured type words...] status words, class
        let (class, before) = rest.split_last()?;
        let status = if before.len() >= 2 && before[before.len() - 2..] == ["Other", "Fault"] {
            "Other Fault".to_owned()
        } else {
            (*before.last()?).to_owned()
        };
        (status, Some((*class).to_owned()))
    } else {
        // status words, class, type
        if rest.len() < 3 {
            return None;
        }
        let status = rest[..rest.len() - 2].join(" ");
        (status, Some(rest[rest.len() - 2].to_owned()))
    };
    Some(PoeRow {
        port,
        enabled,
        priority: priority.to_owned(),
        draw_w,
        status,
        class,
    })
}

/// Parses `show interfaces brief`: `Port Type | Alert Enabled Status ...`.
/// Trunk members listed as `1/45-Trk45` keep their port id; trunk rows
/// (`Trk1`) are skipped.
pub fn parse_interfaces_brief(text: &str) -> Vec<InterfaceRow> {
    text.lines()
        .filter_map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let first = tokens.first()?;
            let port_text = first.split_once("-Trk").map_or(*first, |(p, _)| p);
            let port: Port = port_text.parse().ok()?;
            let bar = tokens.iter().position(|t| *t == "|")?;
            let enabled = match *tokens.get(bar + 2)? {
                "Yes" => true,
                "No" => false,
                _ => return None,
            };
            let link_up = match *tokens.get(bar + 3)? {
                "Up" => true,
                "Down" => false,
                _ => return None,
            };
            Some(InterfaceRow {
                port,
                enabled,
                link_up,
                port_type: tokens[1..bar].join(" "),
            })
        })
        .collect()
}

/// What a change does inside the interface context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    PoeOn,
    PoeOff,
    /// PoE off, a pause, PoE on.
    PoeCycle,
    AdminUp,
    AdminDown,
}

/// Where a change is kept (the host config's `save_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Only in the running config: a reboot brings the saved state back.
    RunningConfig,
    /// Also saved to the startup config with `write memory`.
    StartupConfig,
}

/// The exact lines of one change over `runs` (already compressed, see
/// [`inventory::port::compress_runs`]). The pause of a cycle is not a
/// line; [`CYCLE_PAUSE`] marks where it goes.
pub fn change_lines(runs: &[String], change: Change, persist: Persist) -> Vec<String> {
    let mut lines = vec![
        "configure".to_owned(),
        format!("interface {}", runs.join(",")),
    ];
    match change {
        Change::PoeOn => lines.push("power-over-ethernet".into()),
        Change::PoeOff => lines.push("no power-over-ethernet".into()),
        Change::PoeCycle => {
            lines.push("no power-over-ethernet".into());
            lines.push(CYCLE_PAUSE.into());
            lines.push("power-over-ethernet".into());
        }
        Change::AdminUp => lines.push("enable".into()),
        Change::AdminDown => lines.push("disable".into()),
    }
    lines.push("exit".into());
    lines.push("end".into());
    if persist == Persist::StartupConfig {
        lines.push("write memory".into());
    }
    lines
}

/// Placeholder line in [`change_lines`] for the pause between off and on.
pub const CYCLE_PAUSE: &str = "<pause>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_of_every_context_are_recognized() {
        let p = parse_prompt("Core-Switch-1(eth-1/A1)# ").unwrap();
        assert_eq!(p.hostname, "Core-Switch-1");
        assert_eq!(p.context.as_deref(), Some("eth-1/A1"));
        assert_eq!(
            parse_prompt("idf02(config)#").unwrap().context.as_deref(),
            Some("config")
        );
        assert_eq!(parse_prompt("switch>").unwrap().level, Level::Operator);
        assert_eq!(
            parse_prompt("sw1(eth-1/A1-1/A4,1/B1-1/B4)#")
                .unwrap()
                .hostname,
            "sw1"
        );
        assert!(parse_prompt("Press any key to continue").is_none());
        assert!(parse_prompt(" PoE    Pwr  Pwr").is_none());
        assert!(parse_prompt("").is_none());
    }

    #[test]
    fn vt100_sequences_are_stripped_and_cursor_moves_break_lines() {
        let raw = "\x1b[1;24r\x1b[24;1Hshow x\r\nline\x1b[24;1H\x1b[2Ksw1# ";
        assert_eq!(clean(raw), "show x\nline\nsw1# ");
    }

    #[test]
    fn error_lines_are_found() {
        assert_eq!(
            error_line("interface 99\nModule not present for port or invalid port: 99\n")
                .as_deref(),
            Some("Module not present for port or invalid port: 99")
        );
        assert_eq!(
            error_line("Invalid input: foo").as_deref(),
            Some("Invalid input: foo")
        );
        assert!(error_line(" Status and Configuration Information").is_none());
    }

    #[test]
    fn the_16x_brief_table_parses_including_two_word_statuses() {
        let text = "
 Status and Configuration Information

  Available: 370 W  Used: 11 W  Remaining: 359 W

 PoE    Pwr  Pwr      Pre-std Alloc Alloc  PSE Pwr PD Pwr  PoE Port     PLC PLC
 Port   Enab Priority Detect  Cfg   Actual Rsrvd   Draw    Status       Cls Type
 ------ ---- -------- ------- ----- ------ ------- ------- ------------ --- ----
 1      Yes  low      off     usage usage  0.0 W   0.0 W   Searching     0   -
 22     Yes  low      off     usage usage  4.9 W   4.7 W   Delivering    3   1
 23     Yes  critical off     usage usage  6.0 W   5.7 W   Other Fault   3   1
 1/A24  No   low      off     usage usage  0.0 W   0.0 W   Disabled      0   -
";
        let rows = parse_poe_brief(text);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].draw_w, 4.7);
        assert_eq!(rows[1].status, "Delivering");
        assert_eq!(rows[2].status, "Other Fault");
        assert_eq!(rows[2].priority, "critical");
        assert_eq!(rows[3].port.to_string(), "1/A24");
        assert!(!rows[3].enabled);
    }

    #[test]
    fn the_15x_brief_table_parses_with_a_blank_configured_type() {
        let text = "
  PoE   | Power  Power    Alloc Alloc Actual Configured  Detection   Power
  Port  | Enable Priority By    Power Power  Type        Status      Class
  ----- + ------ -------- ----- ----- ------ ----------- ----------- -----
  4     | Yes    low      usage 17 W  2.4 W              Delivering  2
  6     | No     low      usage 17 W  0.0 W  AP          Disabled    0
";
        let rows = parse_poe_brief(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].enabled, rows[0].draw_w, rows[0].status.as_str()),
            (true, 2.4, "Delivering")
        );
        assert_eq!(
            (rows[1].enabled, rows[1].status.as_str()),
            (false, "Disabled")
        );
    }

    #[test]
    fn interfaces_brief_parses_trunk_members_and_skips_trunks() {
        let text = "
  Port         Type       | Alert     Enabled Status Mode       Mode Ctrl Limit
  ------------ ---------- + --------- ------- ------ ---------- ---- ---- -----
  1/1          100/1000T  | No        Yes     Up     1000FDx    MDIX off  0
  1/2          100/1000T  | No        No      Down   1000FDx    Auto off  0
  1/45-Trk45   100/1000T  | No        Yes     Down   1000FDx    NA   off  0
  Trk1         100/1000T  | No        Yes     Down   1000FDx    NA   off  0
";
        let rows = parse_interfaces_brief(text);
        let ports: Vec<String> = rows.iter().map(|r| r.port.to_string()).collect();
        assert_eq!(ports, ["1/1", "1/2", "1/45"]);
        assert!(!rows[1].enabled);
    }

    #[test]
    fn change_lines_write_memory_only_when_saving() {
        let runs = vec!["1/A1-1/A4".to_owned(), "1/B1-1/B4".to_owned()];
        assert_eq!(
            change_lines(&runs, Change::PoeOff, Persist::RunningConfig),
            [
                "configure",
                "interface 1/A1-1/A4,1/B1-1/B4",
                "no power-over-ethernet",
                "exit",
                "end"
            ]
        );
        assert_eq!(
            change_lines(&runs, Change::PoeOn, Persist::StartupConfig)
                .last()
                .unwrap(),
            "write memory"
        );
    }

    /// A scripted switch: each line written releases the next canned answer.
    struct Fake {
        answers: std::collections::VecDeque<&'static str>,
        pending: Vec<u8>,
        written: Vec<u8>,
    }

    impl Fake {
        fn new(login: &'static str, answers: &[&'static str]) -> Fake {
            Fake {
                answers: answers.iter().copied().collect(),
                pending: login.as_bytes().to_vec(),
                written: Vec::new(),
            }
        }
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pending.is_empty() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            // Small chunks, as a network read may split anything.
            let n = buf.len().min(self.pending.len()).min(5);
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            for _ in buf.iter().filter(|b| **b == b'\r') {
                if let Some(answer) = self.answers.pop_front() {
                    self.pending.extend_from_slice(answer.as_bytes());
                }
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_session_answers_the_banner_turns_paging_off_and_reports_rejections() {
        let fake = Fake::new(
            "Welcome\r\nPress any key to continue",
            &[
                "\x1b[1;24r\x1b[24;1Hsw1# ",
                "no page\r\n\x1b[24;1H\x1b[2Ksw1# ",
                "interface 9\r\nModule not present for port or invalid port: 9\r\nsw1# ",
            ],
        );
        let mut cli = Cli::open(fake, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(cli.prompt.hostname, "sw1");
        let err = cli.run("interface 9").unwrap_err();
        assert!(
            matches!(&err, CliError::Rejected { message, .. } if message == "Module not present for port or invalid port: 9"),
            "{err}"
        );
        let written = String::from_utf8(cli.into_inner().written).unwrap();
        assert_eq!(written, "\rno page\rinterface 9\r");
    }
}
