//! A small AOS-S command line simulator for tests and `hazel demo`: a
//! line-oriented switch CLI on stdin/stdout that follows
//! `reference/aos-s-poe-cli.md` (prompts, `no page`, the `show
//! power-over-ethernet brief` and `show interfaces brief` tables in 16.x or
//! 15.x layout, `configure` / `interface <list>` / `[no]
//! power-over-ethernet` / `enable` / `disable` / `exit` / `end` / `write
//! memory`, and the switch's error lines).
//!
//! Port lists are read the way a switch reads them, not the way Hazel's
//! selectors do: `1/A1-1/B4` is every port from 1/A1 through 1/B4 in the
//! switch's own port order (all of module A), which is exactly why the
//! driver sends compressed runs instead. Port state lives in a JSON state
//! file (tests pre-set and inspect it); every line received is appended to a
//! command log, so tests can assert exactly what the driver sent. Run it as
//! an sshd `ForceCommand` (binary `aoss-cli-sim`) to put it behind a real
//! SSH transport. `--stall-after COMMAND` makes it a switch that hangs: it
//! applies that command, then never answers again (it keeps logging what
//! it receives until the session ends), for timeout tests.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Env var naming the state file when `--state` is not given.
pub const STATE_ENV: &str = "AOSS_SIM_STATE";
/// Env var naming the command log when `--log` is not given.
pub const LOG_ENV: &str = "AOSS_SIM_LOG";
/// Env var naming the command after which the CLI stalls, when
/// `--stall-after` is not given.
pub const STALL_AFTER_ENV: &str = "AOSS_SIM_STALL_AFTER";
/// Env var naming the arrival-time log when `--times` is not given.
pub const TIMES_ENV: &str = "AOSS_SIM_TIMES";

/// Which software generation's table layout to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Layout {
    /// 16.x: `Pwr Enab`, `PD Pwr Draw`, `PLC Cls Type` columns.
    #[default]
    #[serde(rename = "16")]
    V16,
    /// 15.x: `PoE | Power Enable ...` with a `|` after the port.
    #[serde(rename = "15")]
    V15,
}

/// The simulated switch, as stored in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimState {
    /// Shown in every prompt.
    pub hostname: String,
    /// Print a banner ending in `Press any key to continue` and wait for a key.
    #[serde(default)]
    pub banner: bool,
    /// Table layout.
    #[serde(default)]
    pub layout: Layout,
    /// Every port, in the switch's port order (ranges follow this order).
    pub ports: Vec<SimPort>,
    /// Fault injection: ports still listed in tables whose module the CLI
    /// reports as not present (a module pulled since the last read).
    #[serde(default)]
    pub unplugged: Vec<String>,
    /// Fault injection: commands (compared without surrounding blanks and
    /// case) the CLI rejects with `Invalid input`, as a firmware or a
    /// restricted account may reject `show interfaces brief`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
    /// How many times `write memory` ran.
    #[serde(default)]
    pub write_memory_count: u32,
    /// The port states saved by the last `write memory` (startup config).
    #[serde(default)]
    pub saved: Option<Vec<SimPort>>,
}

/// One port of the simulated switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimPort {
    /// Port id as the switch prints it (`1/A1`, `A1`, `1/24`, `24`).
    pub port: String,
    /// PoE enabled (`power-over-ethernet`).
    #[serde(default = "yes")]
    pub poe: bool,
    /// Interface administratively enabled (`enable`/`disable`).
    #[serde(default = "yes")]
    pub admin: bool,
    /// PoE priority: `low`, `high` or `critical`.
    #[serde(default = "low")]
    pub priority: String,
    /// Whether a powered device is attached (`Delivering` vs `Searching`).
    #[serde(default = "yes")]
    pub pd: bool,
    /// What the attached device draws while powered, in watts.
    #[serde(default = "default_draw")]
    pub draw_w: f64,
}

fn yes() -> bool {
    true
}

fn low() -> String {
    "low".into()
}

fn default_draw() -> f64 {
    4.7
}

/// Where the simulator keeps its state and log, and the fault it injects
/// (from args or env).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPaths {
    pub state: PathBuf,
    pub log: Option<PathBuf>,
    /// Also log `<ns since the epoch> <line>` per line received, for tests
    /// that check how calls are paced.
    pub times: Option<PathBuf>,
    /// After receiving this command line (compared without surrounding
    /// blanks and case), apply it and then stop answering: no output, no
    /// prompt, ever again in this session.
    pub stall_after: Option<String>,
}

impl SimPort {
    /// A port with PoE on, enabled, a 4.7 W device attached.
    pub fn new(port: impl Into<String>) -> SimPort {
        SimPort {
            port: port.into(),
            poe: true,
            admin: true,
            priority: low(),
            pd: true,
            draw_w: default_draw(),
        }
    }

    fn status(&self) -> &'static str {
        match (self.poe, self.pd) {
            (false, _) => "Disabled",
            (true, true) => "Delivering",
            (true, false) => "Searching",
        }
    }

    fn draw(&self) -> f64 {
        if self.poe && self.pd {
            self.draw_w
        } else {
            0.0
        }
    }
}

impl SimState {
    /// A VSF switch: member `member`, slots `slots`, ports 1..=`per_slot` in
    /// each, all with PoE on (`1/A1`...).
    pub fn vsf(hostname: &str, member: u32, slots: &[char], per_slot: u32) -> SimState {
        let ports = slots
            .iter()
            .flat_map(|s| (1..=per_slot).map(move |n| SimPort::new(format!("{member}/{s}{n}"))))
            .collect();
        SimState::with_ports(hostname, ports)
    }

    /// A standalone switch with ports `1..=count`.
    pub fn standalone(hostname: &str, count: u32) -> SimState {
        SimState::with_ports(
            hostname,
            (1..=count).map(|n| SimPort::new(n.to_string())).collect(),
        )
    }

    fn with_ports(hostname: &str, ports: Vec<SimPort>) -> SimState {
        SimState {
            hostname: hostname.into(),
            banner: false,
            layout: Layout::V16,
            ports,
            unplugged: Vec::new(),
            rejected: Vec::new(),
            write_memory_count: 0,
            saved: None,
        }
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> std::io::Result<SimState> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes the state file atomically (temp file, then rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// The port named `id` (slot letters in any case).
    pub fn port(&self, id: &str) -> Option<&SimPort> {
        self.ports.iter().find(|p| p.port.eq_ignore_ascii_case(id))
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.ports
            .iter()
            .position(|p| p.port.eq_ignore_ascii_case(id))
    }

    /// Resolves a switch port list (`1/A1-1/A4,1/B2`) in the switch's own
    /// order; the error is the switch's error line.
    fn resolve(&self, list: &str) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        for item in list.split(',') {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let not_present = |t: &str| format!("Module not present for port or invalid port: {t}");
            let ia = self.index_of(a).ok_or_else(|| not_present(a))?;
            let ib = self.index_of(b).ok_or_else(|| not_present(b))?;
            if ia > ib {
                return Err(format!("Invalid input: {item}"));
            }
            for i in ia..=ib {
                let name = &self.ports[i].port;
                if self.unplugged.iter().any(|u| u.eq_ignore_ascii_case(name)) {
                    return Err(not_present(name));
                }
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
        if out.is_empty() {
            return Err("Incomplete input: interface".into());
        }
        Ok(out)
    }

    fn poe_brief(&self) -> String {
        let used: f64 = self.ports.iter().map(SimPort::draw).sum();
        let mut out = String::new();
        match self.layout {
            Layout::V16 => {
                out.push_str("\n Status and Configuration Information\n\n");
                out.push_str(&format!(
                    "  Available: 370 W  Used: {used:.0} W  Remaining: {:.0} W\n\n",
                    370.0 - used
                ));
                out.push_str(" PoE    Pwr  Pwr      Pre-std Alloc Alloc  PSE Pwr PD Pwr  PoE Port     PLC PLC\n");
                out.push_str(" Port   Enab Priority Detect  Cfg   Actual Rsrvd   Draw    Status       Cls Type\n");
                out.push_str(" ------ ---- -------- ------- ----- ------ ------- ------- ------------ --- ----\n");
                for p in &self.ports {
                    let draw = p.draw();
                    let (cls, typ) = if draw > 0.0 { ("3", "1") } else { ("0", "-") };
                    out.push_str(&format!(
                        " {:<6} {:<4} {:<8} off     usage usage  {:<7} {:<7} {:<12}  {}   {}\n",
                        p.port,
                        if p.poe { "Yes" } else { "No" },
                        p.priority,
                        format!("{:.1} W", if draw > 0.0 { draw + 0.2 } else { 0.0 }),
                        format!("{draw:.1} W"),
                        p.status(),
                        cls,
                        typ
                    ));
                }
            }
            Layout::V15 => {
                out.push_str("\n Status and Counters - Port Power Status\n\n");
                out.push_str(&format!(
                    "  Available: 370 W  Used: {used:.0} W  Remaining: {:.0} W\n\n",
                    370.0 - used
                ));
                out.push_str(
                    "  PoE   | Power  Power    Alloc Alloc Actual Configured  Detection   Power\n",
                );
                out.push_str(
                    "  Port  | Enable Priority By    Power Power  Type        Status      Class\n",
                );
                out.push_str(
                    "  ----- + ------ -------- ----- ----- ------ ----------- ----------- -----\n",
                );
                for p in &self.ports {
                    let draw = p.draw();
                    out.push_str(&format!(
                        "  {:<5} | {:<6} {:<8} usage 17 W  {:<6}             {:<11} {}\n",
                        p.port,
                        if p.poe { "Yes" } else { "No" },
                        p.priority,
                        format!("{draw:.1} W"),
                        p.status(),
                        if draw > 0.0 { "3" } else { "0" }
                    ));
                }
            }
        }
        out
    }

    fn interfaces_brief(&self) -> String {
        let mut out = String::from("\n Status and Counters - Port Status\n\n");
        out.push_str(
            "                          | Intrusion                           MDI  Flow Bcast\n",
        );
        out.push_str(
            "  Port         Type       | Alert     Enabled Status Mode       Mode Ctrl Limit\n",
        );
        out.push_str(
            "  ------------ ---------- + --------- ------- ------ ---------- ---- ---- -----\n",
        );
        for p in &self.ports {
            let up = p.admin && p.pd;
            out.push_str(&format!(
                "  {:<12} 100/1000T  | No        {:<7} {:<6} 1000FDx    MDIX off  0\n",
                p.port,
                if p.admin { "Yes" } else { "No" },
                if up { "Up" } else { "Down" }
            ));
        }
        out
    }
}

/// Where the CLI is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Context {
    Manager,
    Config,
    /// Interface context over these port indexes; `label` is the list as typed.
    Interface {
        ports: Vec<usize>,
        label: String,
    },
}

/// What a port-level command does.
#[derive(Debug, Clone, Copy)]
enum PortCommand {
    Poe(bool, Option<&'static str>),
    Admin(bool),
}

/// Reads `--state PATH`, `--log PATH`, `--times PATH` and `--stall-after
/// COMMAND` (or [`STATE_ENV`] / [`LOG_ENV`] / [`TIMES_ENV`] / [`STALL_AFTER_ENV`]).
pub fn paths_from_args(args: impl IntoIterator<Item = String>) -> Result<SimPaths, String> {
    let mut state = std::env::var_os(STATE_ENV).map(PathBuf::from);
    let mut log = std::env::var_os(LOG_ENV).map(PathBuf::from);
    let mut times = std::env::var_os(TIMES_ENV).map(PathBuf::from);
    let mut stall_after = std::env::var(STALL_AFTER_ENV).ok();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state" => state = Some(args.next().ok_or("--state needs a path")?.into()),
            "--log" => log = Some(args.next().ok_or("--log needs a path")?.into()),
            "--times" => times = Some(args.next().ok_or("--times needs a path")?.into()),
            "--stall-after" => {
                stall_after = Some(args.next().ok_or("--stall-after needs a command")?)
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (usage: aoss-cli-sim --state FILE [--log FILE] [--times FILE] [--stall-after COMMAND])"
                ))
            }
        }
    }
    let state =
        state.ok_or_else(|| format!("no state file: pass --state FILE or set {STATE_ENV}"))?;
    Ok(SimPaths {
        state,
        log,
        times,
        stall_after,
    })
}

/// Runs one CLI session until `exit` at the top level, `logout` or end of
/// input. A missing state file is created with a demo VSF switch
/// (`1/A1`-`1/A24`, `1/B1`-`1/B24`).
pub fn run(paths: &SimPaths, input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
    let mut state = if paths.state.exists() {
        SimState::load(&paths.state)?
    } else {
        let state = SimState::vsf("aoss-sim", 1, &['A', 'B'], 24);
        state.save(&paths.state)?;
        state
    };
    let mut log = Recorder {
        log: paths.log.as_deref().map(append).transpose()?,
        times: paths.times.as_deref().map(append).transpose()?,
    };
    let mut lines = input.lines();
    // Real AOS-S sets a scroll region and positions the cursor on connect.
    write!(output, "\x1b[1;24r\x1b[24;1H")?;
    if state.banner {
        write!(
            output,
            "HP J9850A Switch 5406Rzl2\nSoftware revision KB.16.10.0009\n\nPress any key to continue"
        )?;
        output.flush()?;
        match lines.next() {
            Some(line) => log.line(&line?)?,
            None => return Ok(()),
        }
        writeln!(output)?;
    }
    let mut context = Context::Manager;
    loop {
        write!(output, "\x1b[2K{}", prompt(&state.hostname, &context))?;
        output.flush()?;
        let Some(line) = lines.next() else {
            return Ok(());
        };
        let line = line?;
        let line = line.trim_end_matches(['\r', '\n']);
        log.line(line)?;
        let stall = paths
            .stall_after
            .as_deref()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case(line.trim()));
        if stall {
            // Apply the command, then hang: answer nothing, keep logging.
            match execute(&mut state, &mut context, line) {
                Step::Changed => state.save(&paths.state)?,
                Step::Output(_) => {}
                Step::Logout => return Ok(()),
            }
            for line in lines.by_ref() {
                // A read error is the session going away (the PTY hung up).
                let Ok(line) = line else { break };
                log.line(line.trim_end_matches(['\r', '\n']))?;
            }
            return Ok(());
        }
        match execute(&mut state, &mut context, line) {
            Step::Output(text) => {
                if !text.is_empty() {
                    write!(output, "{text}")?;
                    if !text.ends_with('\n') {
                        writeln!(output)?;
                    }
                }
            }
            Step::Changed => state.save(&paths.state)?,
            Step::Logout => {
                output.flush()?;
                return Ok(());
            }
        }
    }
}

/// The command log and the arrival-time log, each optional.
struct Recorder {
    log: Option<std::fs::File>,
    times: Option<std::fs::File>,
}

impl Recorder {
    fn line(&mut self, line: &str) -> std::io::Result<()> {
        if let Some(file) = &mut self.log {
            writeln!(file, "{line}")?;
            file.flush()?;
        }
        if let Some(file) = &mut self.times {
            let ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            writeln!(file, "{ns} {line}")?;
            file.flush()?;
        }
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn prompt(hostname: &str, context: &Context) -> String {
    match context {
        Context::Manager => format!("{hostname}# "),
        Context::Config => format!("{hostname}(config)# "),
        Context::Interface { label, .. } => format!("{hostname}(eth-{label})# "),
    }
}

enum Step {
    Output(String),
    Changed,
    Logout,
}

fn invalid(token: &str) -> Step {
    Step::Output(format!("Invalid input: {token}"))
}

fn execute(state: &mut SimState, context: &mut Context, line: &str) -> Step {
    let words: Vec<&str> = line.split_whitespace().collect();
    if state
        .rejected
        .iter()
        .any(|r| r.trim().eq_ignore_ascii_case(line.trim()))
    {
        return invalid(words.first().copied().unwrap_or(line));
    }
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let w: Vec<&str> = lower.iter().map(String::as_str).collect();
    match (w.as_slice(), &*context) {
        ([], _) => Step::Output(String::new()),
        (["no", "page"], _) | (["terminal", "length" | "width", _], _) => {
            Step::Output(String::new())
        }
        (["show", "power-over-ethernet", "brief"], _)
        | (["show", "power-over-ethernet", "ethernet", "brief"], _) => {
            Step::Output(state.poe_brief())
        }
        (["show", "interfaces", "brief"], _) => Step::Output(state.interfaces_brief()),
        (["show", rest @ ..], _) => invalid(rest.first().copied().unwrap_or("show")),
        (["configure"] | ["config"] | ["conf", "t"] | ["configure", "terminal"], _) => {
            if *context == Context::Manager {
                *context = Context::Config;
            }
            Step::Output(String::new())
        }
        (["write", "memory" | "mem"], _) => {
            state.write_memory_count += 1;
            state.saved = Some(state.ports.clone());
            Step::Changed
        }
        (["end"], _) => {
            *context = Context::Manager;
            Step::Output(String::new())
        }
        (["exit"], Context::Manager) | (["logout"], _) => Step::Logout,
        (["exit"], Context::Config) => {
            *context = Context::Manager;
            Step::Output(String::new())
        }
        (["exit"], Context::Interface { .. }) => {
            *context = Context::Config;
            Step::Output(String::new())
        }
        // `interface <list>` (enter the context) or `interface <list> <command>` inline.
        (["interface", _, rest @ ..], Context::Config | Context::Interface { .. }) => {
            let list = words[1].to_ascii_uppercase();
            let ports = match state.resolve(&list) {
                Ok(ports) => ports,
                Err(message) => return Step::Output(message),
            };
            if rest.is_empty() {
                *context = Context::Interface { ports, label: list };
                return Step::Output(String::new());
            }
            match port_command(rest, false) {
                Some(cmd) => apply(state, &ports, cmd),
                None => invalid(words[2]),
            }
        }
        (["no", "interface", _, rest @ ..], Context::Config | Context::Interface { .. }) => {
            let list = words[2].to_ascii_uppercase();
            let ports = match state.resolve(&list) {
                Ok(ports) => ports,
                Err(message) => return Step::Output(message),
            };
            match port_command(rest, true) {
                Some(cmd) => apply(state, &ports, cmd),
                None => invalid(words.get(3).copied().unwrap_or("interface")),
            }
        }
        (["interface", ..], _) => invalid("interface"),
        (_, Context::Interface { ports, .. }) => {
            let (negate, rest) = match w.as_slice() {
                ["no", rest @ ..] => (true, rest),
                rest => (false, rest),
            };
            match port_command(rest, negate) {
                Some(cmd) => {
                    let ports = ports.clone();
                    apply(state, &ports, cmd)
                }
                None => invalid(words[0]),
            }
        }
        _ => invalid(words[0]),
    }
}

fn port_command(words: &[&str], negate: bool) -> Option<PortCommand> {
    match (words, negate) {
        (["power-over-ethernet"], n) => Some(PortCommand::Poe(!n, None)),
        (["power-over-ethernet", prio], false) => {
            let prio = match *prio {
                "low" => "low",
                "high" => "high",
                "critical" => "critical",
                _ => return None,
            };
            Some(PortCommand::Poe(true, Some(prio)))
        }
        (["enable"], false) => Some(PortCommand::Admin(true)),
        (["disable"], false) => Some(PortCommand::Admin(false)),
        _ => None,
    }
}

fn apply(state: &mut SimState, ports: &[usize], command: PortCommand) -> Step {
    for &i in ports {
        let port = &mut state.ports[i];
        match command {
            PortCommand::Poe(on, priority) => {
                port.poe = on;
                if let Some(p) = priority {
                    port.priority = p.into();
                }
            }
            PortCommand::Admin(up) => port.admin = up,
        }
    }
    Step::Changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: &SimState, input: &str) -> (String, SimState, String) {
        let dir = tempfile::tempdir().unwrap();
        let paths = SimPaths {
            state: dir.path().join("state.json"),
            log: Some(dir.path().join("log")),
            times: None,
            stall_after: None,
        };
        state.save(&paths.state).unwrap();
        let mut out = Vec::new();
        run(&paths, input.as_bytes(), &mut out).unwrap();
        let log = std::fs::read_to_string(paths.log.as_ref().unwrap()).unwrap();
        (
            String::from_utf8(out).unwrap(),
            SimState::load(&paths.state).unwrap(),
            log,
        )
    }

    #[test]
    fn switch_ranges_run_through_the_switch_port_order() {
        let state = SimState::vsf("sw1", 1, &['A', 'B'], 8);
        let (_, after, _) = session(
            &state,
            "configure\ninterface 1/A1-1/B4\nno power-over-ethernet\nend\n",
        );
        let off: Vec<&str> = after
            .ports
            .iter()
            .filter(|p| !p.poe)
            .map(|p| p.port.as_str())
            .collect();
        // The switch reads A1 through B4 linearly: all of module A, then B1-B4.
        assert_eq!(off.len(), 12);
        assert_eq!(off.last(), Some(&"1/B4"));
    }

    #[test]
    fn bad_ports_and_commands_print_the_switch_error_lines() {
        let state = SimState::standalone("sw1", 4);
        let (out, after, log) = session(&state, "configure\ninterface 9\nfrobnicate\n");
        assert!(
            out.contains("Module not present for port or invalid port: 9"),
            "{out}"
        );
        assert!(out.contains("Invalid input: frobnicate"), "{out}");
        assert!(out.contains("sw1(config)# "), "{out}");
        assert_eq!(after, state);
        assert_eq!(log, "configure\ninterface 9\nfrobnicate\n");
    }

    #[test]
    fn a_stalled_switch_applies_the_command_then_never_answers_but_keeps_logging() {
        let state = SimState::standalone("sw1", 2);
        let dir = tempfile::tempdir().unwrap();
        let paths = SimPaths {
            state: dir.path().join("state.json"),
            log: Some(dir.path().join("log")),
            times: Some(dir.path().join("times")),
            stall_after: Some("interface 2 disable".into()),
        };
        state.save(&paths.state).unwrap();
        let mut out = Vec::new();
        let input = "configure\ninterface 2 disable\nshow interfaces brief\nend\n";
        run(&paths, input.as_bytes(), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("sw1(config)# "), "{out:?}");
        assert!(!SimState::load(&paths.state).unwrap().ports[1].admin);
        let log = std::fs::read_to_string(paths.log.as_ref().unwrap()).unwrap();
        assert_eq!(log, input);
        let times = std::fs::read_to_string(paths.times.as_ref().unwrap()).unwrap();
        let timed: Vec<&str> = times
            .lines()
            .map(|l| l.split_once(' ').unwrap().1)
            .collect();
        assert_eq!(timed, input.lines().collect::<Vec<_>>());
    }

    #[test]
    fn the_stall_command_comes_from_the_arguments() {
        let args = [
            "--state",
            "s.json",
            "--stall-after",
            "show interfaces brief",
        ];
        let paths = paths_from_args(args.map(String::from)).unwrap();
        assert_eq!(paths.stall_after.as_deref(), Some("show interfaces brief"));
        assert!(paths_from_args(["--stall-after".to_owned()]).is_err());
    }

    #[test]
    fn write_memory_saves_the_running_state() {
        let state = SimState::standalone("sw1", 2);
        let (_, after, _) = session(&state, "configure\ninterface 2 disable\nwrite memory\n");
        assert_eq!(after.write_memory_count, 1);
        assert!(!after.saved.unwrap()[1].admin);
    }

    #[test]
    fn the_tables_parse_with_the_driver_parser_in_both_layouts() {
        let mut state = SimState::vsf("sw1", 1, &['A'], 3);
        state.ports[1].poe = false;
        for layout in [Layout::V16, Layout::V15] {
            state.layout = layout;
            let rows = crate::aruba::cli::parse_poe_brief(&state.poe_brief());
            assert_eq!(rows.len(), 3, "{layout:?}");
            assert!(!rows[1].enabled && rows[0].enabled);
            assert_eq!(rows[0].draw_w, 4.7);
            assert_eq!(rows[1].status, "Disabled");
        }
        let rows = crate::aruba::cli::parse_interfaces_brief(&state.interfaces_brief());
        assert_eq!(rows.len(), 3);
    }
}
