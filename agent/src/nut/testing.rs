//! Test support: a real NUT `upsd` with the `dummy-ups` driver on a free
//! loopback port, for the NUT integration tests and the end-to-end test.
//! Not used by the agent itself.
//!
//! Each [`Upsd`] runs `/lib/nut/dummy-ups` and `/lib/nut/upsd` (Debian's
//! paths; `/usr/sbin/upsd` is a wrapper that does nothing unless
//! `/etc/nut/nut.conf` enables it) as root (`-u root`) in the foreground,
//! with `NUT_CONFPATH` and `NUT_STATEPATH` pointing at a private temp dir.
//! The UPS's variables live in a `.dev` file that [`Upsd::set_status`] and
//! [`Upsd::set_vars`] rewrite; dummy-ups re-reads it when its mtime changes
//! (about once a second). upsd can be killed and restarted on the same port
//! ([`Upsd::kill_upsd`], [`Upsd::start_upsd`]). Both processes are killed by
//! pid and the dir removed on drop. A machine without NUT fails the test
//! with what to install, never skips it.
//!
//! ```no_run
//! use agent::nut::testing::Upsd;
//! let upsd = Upsd::builder().user("monitor", "s3cret").start();
//! upsd.set_status("OB DISCHRG");
//! upsd.wait_for_var("ups.status", "OB DISCHRG");
//! let config = upsd.config(); // a NutConfig for this UPS
//! # let _ = config;
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::protocol::{self, ReplyLine};
use super::source::NutConfig;
use drivers::secret::Secret;
use drivers::testing::{free_port, set_mode, temp_dir};

/// Debian's upsd binary (not the `/usr/sbin/upsd` wrapper).
pub const UPSD_BIN: &str = "/lib/nut/upsd";

/// Debian's dummy-ups driver.
pub const DUMMY_UPS_BIN: &str = "/lib/nut/dummy-ups";

/// What to tell a developer whose machine lacks NUT.
pub const INSTALL_HINT: &str = "apt-get install -y nut-server nut-client";

/// How long starting waits for upsd to serve the UPS.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Options for one upsd; see [`Upsd::builder`].
#[derive(Debug, Clone)]
pub struct UpsdBuilder {
    ups: String,
    desc: String,
    user: Option<(String, String)>,
    vars: BTreeMap<String, String>,
}

/// A running upsd with one dummy UPS; see the module docs.
#[derive(Debug)]
pub struct Upsd {
    dir: PathBuf,
    port: u16,
    ups: String,
    user: Option<(String, String)>,
    upsd: Option<Child>,
    driver: Child,
    vars: Mutex<BTreeMap<String, String>>,
    dev_writes: AtomicU64,
}

impl Default for UpsdBuilder {
    fn default() -> Self {
        let vars = [
            ("ups.status", "OL"),
            ("battery.charge", "100"),
            ("battery.runtime", "1800"),
            ("ups.load", "20"),
            ("ups.mfr", "Hazel"),
            ("ups.model", "Dummy UPS"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        UpsdBuilder {
            ups: "dummy".into(),
            desc: "Hazel test UPS".into(),
            user: None,
            vars,
        }
    }
}

impl UpsdBuilder {
    /// The UPS name (default `dummy`).
    pub fn ups(mut self, name: impl Into<String>) -> Self {
        self.ups = name.into();
        self
    }

    /// The UPS description `LIST UPS` shows (default `Hazel test UPS`).
    pub fn desc(mut self, desc: impl Into<String>) -> Self {
        self.desc = desc.into();
        self
    }

    /// Adds a user to `upsd.users` (with `actions = SET` and `instcmds = ALL`).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// An initial variable value (`ups.status` is `OL` unless set).
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Starts dummy-ups and upsd and waits until upsd serves the UPS's
    /// status. Panics with both logs (or with what to install) on failure.
    pub fn start(self) -> Upsd {
        require_nut();
        let dir = temp_dir("upsd", 0o700);
        let ups_conf = format!(
            "[{}]\n  driver = dummy-ups\n  port = {}.dev\n  desc = {}\n  pollinterval = 1\n",
            self.ups,
            self.ups,
            protocol::quote(&self.desc)
        );
        write(&dir.join("ups.conf"), &ups_conf);
        let users = match &self.user {
            Some((name, password)) => format!(
                "[{name}]\n  password = {}\n  actions = SET\n  instcmds = ALL\n",
                protocol::quote(password)
            ),
            None => String::new(),
        };
        write(&dir.join("upsd.users"), &users);
        set_mode(&dir.join("upsd.users"), 0o600);
        let mut upsd_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            write(
                &dir.join("upsd.conf"),
                &format!("LISTEN 127.0.0.1 {port}\nMAXAGE 15\n"),
            );
            let pending = Upsd {
                dir: dir.clone(),
                port,
                ups: self.ups.clone(),
                user: self.user.clone(),
                upsd: None,
                driver: spawn_placeholder(),
                vars: Mutex::new(self.vars.clone()),
                dev_writes: AtomicU64::new(0),
            };
            let mut upsd = pending;
            upsd.write_dev();
            upsd.driver = upsd.spawn_driver();
            upsd.wait_driver_socket();
            match upsd.try_start_upsd() {
                Ok(()) => return upsd,
                Err(why) => {
                    upsd_log = why;
                    // Keep the dir for the next attempt; drop kills the children.
                    upsd.dir = PathBuf::new();
                    drop(upsd);
                    if !upsd_log.contains("in use") {
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("upsd did not start: {upsd_log}");
    }
}

impl Upsd {
    /// Options for a new upsd.
    pub fn builder() -> UpsdBuilder {
        UpsdBuilder::default()
    }

    /// A upsd with the default options (UPS `dummy`, status `OL`, no users).
    pub fn start() -> Upsd {
        Upsd::builder().start()
    }

    /// Always the loopback address upsd listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The UPS name.
    pub fn ups(&self) -> &str {
        &self.ups
    }

    /// The user and password given to the builder, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A source config for this UPS (with the builder's credentials).
    pub fn config(&self) -> NutConfig {
        let mut config = NutConfig::new(self.host(), &self.ups);
        config.port = self.port;
        if let Some((user, password)) = &self.user {
            config.user = Some(user.clone());
            config.password = Some(Secret::new(password.clone()));
        }
        config
    }

    /// The private temp dir (configs, `.dev` file, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets `ups.status` (`"OB LB"`) in the `.dev` file.
    pub fn set_status(&self, status: &str) {
        self.set_vars(&[("ups.status", status)]);
    }

    /// Sets variables in the `.dev` file (others keep their values).
    pub fn set_vars(&self, vars: &[(&str, &str)]) {
        {
            let mut all = self.vars.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in vars {
                all.insert(k.to_string(), v.to_string());
            }
        }
        self.write_dev();
    }

    /// Waits (up to 15 s) until upsd answers `value` for `var`; panics
    /// with the logs otherwise. Use after [`Upsd::set_vars`] when a test
    /// must know upsd has the new value.
    pub fn wait_for_var(&self, var: &str, value: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let got = self.raw(&[&format!("GET VAR {} {var}", self.ups)]);
            if let Some(line) = got.first() {
                if let Ok(ReplyLine::Words(w)) = protocol::parse_reply(line) {
                    if w.len() == 4 && w[3] == value {
                        return;
                    }
                }
                last = line.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "upsd never answered {var} = {value:?} (last: {last:?})\n{}",
            self.logs()
        );
    }

    /// Sends raw request lines on a fresh connection and returns one reply
    /// line per request (a `LIST` block counts as its lines up to `END`).
    /// For commands the client never sends (`INSTCMD` to provoke
    /// `ERR ACCESS-DENIED`). Returns what it got when upsd stops answering.
    pub fn raw(&self, requests: &[&str]) -> Vec<String> {
        let Ok(mut stream) = TcpStream::connect((self.host(), self.port)) else {
            return Vec::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let mut text = requests.join("\n");
        text.push('\n');
        if stream.write_all(text.as_bytes()).is_err() {
            return Vec::new();
        }
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        let mut pending = requests.len();
        let mut in_list = false;
        while pending > 0 {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = line.trim_end().to_string();
            if line.starts_with("BEGIN LIST") {
                in_list = true;
            } else if line.starts_with("END LIST") {
                in_list = false;
            }
            if !in_list {
                pending -= 1;
            }
            out.push(line);
        }
        out
    }

    /// Kills upsd (SIGKILL, by pid); the driver keeps running.
    pub fn kill_upsd(&mut self) {
        if let Some(mut child) = self.upsd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts upsd again on the same port and waits until it serves the
    /// UPS. Panics with the logs when it cannot.
    pub fn start_upsd(&mut self) {
        assert!(self.upsd.is_none(), "upsd is already running");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.try_start_upsd() {
                Ok(()) => return,
                // The old listening socket may take a moment to go away.
                Err(why) if why.contains("in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!("upsd did not restart: {why}"),
            }
        }
    }

    /// Whether upsd is running (not killed by [`Upsd::kill_upsd`]).
    pub fn is_running(&self) -> bool {
        self.upsd.is_some()
    }

    /// upsd's and the driver's logs.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- upsd log ---\n{}\n--- dummy-ups log ---\n{}",
            read("upsd.log"),
            read("driver.log")
        )
    }

    fn write_dev(&self) {
        let text: String = {
            let vars = self.vars.lock().unwrap_or_else(|e| e.into_inner());
            vars.iter()
                .map(|(k, v)| format!("{k}: {}\n", protocol::quote(v)))
                .collect()
        };
        let path = self.dir.join(format!("{}.dev", self.ups));
        let tmp = self.dir.join(format!("{}.dev.tmp", self.ups));
        write(&tmp, &text);
        // dummy-ups compares whole-second mtimes: give every write its own
        // second so two writes within one second are both seen.
        let n = self.dev_writes.fetch_add(1, Ordering::Relaxed);
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000 + n);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(mtime))
            .unwrap_or_else(|e| panic!("set mtime of {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
    }

    fn command(&self, bin: &str, log: &str) -> Command {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap_or_else(|e| panic!("open {log}: {e}"));
        let mut cmd = Command::new(bin);
        cmd.env("NUT_CONFPATH", &self.dir)
            .env("NUT_STATEPATH", &self.dir)
            .env("NUT_ALTPIDPATH", &self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        cmd
    }

    fn spawn_driver(&self) -> Child {
        // A driver killed by an earlier attempt in this dir leaves its PID
        // file behind. dummy-ups SIGTERMs whatever process holds that PID
        // ("Duplicate driver instance detected ... Terminating other
        // driver!"); by now the PID may belong to any process on the
        // machine. No PID file, no signal.
        remove_pid_files(&self.dir);
        self.command(DUMMY_UPS_BIN, "driver.log")
            .args(["-a", &self.ups, "-u", "root", "-F"])
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {DUMMY_UPS_BIN}: {e}; install `{INSTALL_HINT}`"))
    }

    fn wait_driver_socket(&mut self) {
        let socket = self.dir.join(format!("dummy-ups-{}", self.ups));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !socket.exists() {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("dummy-ups exited with {status}\n{}", self.logs());
            }
            if Instant::now() > deadline {
                panic!(
                    "dummy-ups made no socket in {READY_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts upsd and waits until it serves the UPS's status; on failure
    /// kills it and returns the logs.
    fn try_start_upsd(&mut self) -> Result<(), String> {
        let child = self
            .command(UPSD_BIN, "upsd.log")
            .args(["-u", "root", "-F"])
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {UPSD_BIN}: {e}; install `{INSTALL_HINT}`"));
        self.upsd = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.upsd.as_mut().map(|c| c.try_wait()) {
                self.upsd = None;
                return Err(format!("upsd exited with {status}\n{}", self.logs()));
            }
            let got = self.raw(&[&format!("GET VAR {} ups.status", self.ups)]);
            if let Some(Ok(ReplyLine::Words(w))) =
                got.first().map(|line| protocol::parse_reply(line))
            {
                if w.len() == 4 && !protocol::is_wait_status(&w[3]) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill_upsd();
                return Err(format!(
                    "upsd not serving {} on port {} after {READY_TIMEOUT:?}\n{}",
                    self.ups,
                    self.port,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Upsd {
    fn drop(&mut self) {
        self.kill_upsd();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Panics with what to install when the NUT binaries are missing.
pub fn require_nut() {
    for bin in [UPSD_BIN, DUMMY_UPS_BIN] {
        if !Path::new(bin).exists() {
            panic!(
                "{bin} not found: the NUT tests need a real upsd and the dummy-ups driver; \
                 install the Debian packages nut-server and nut-client (`{INSTALL_HINT}`)"
            );
        }
    }
}

/// A child that has already exited, standing in until the driver starts.
fn spawn_placeholder() -> Child {
    let mut child = Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run `true`");
    let _ = child.wait();
    child
}

/// Removes the `*.pid` files in `dir` (see [`Upsd::spawn_driver`]).
fn remove_pid_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pid") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_pid_files_are_removed_before_a_driver_starts_and_nothing_else_is() {
        let dir = temp_dir("pidfiles", 0o700);
        write(&dir.join("dummy-ups-dummy.pid"), "12345\n");
        write(&dir.join("dummy.dev"), "ups.status: OL\n");
        remove_pid_files(&dir);
        assert!(!dir.join("dummy-ups-dummy.pid").exists());
        assert!(dir.join("dummy.dev").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
