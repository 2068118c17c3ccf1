//! A real OpenSSH `sshd` on a free loopback port, for integration tests of
//! the SSH drivers (and anything else that needs an SSH peer).
//!
//! Each [`Sshd`] is a child process with its own config, host key, client
//! keys, authorized_keys, pid file and log in a private temp dir; it is
//! killed by pid and its dir removed when the value is dropped. A missing
//! OpenSSH install is a test failure that says what to install, never a
//! silent skip.
//!
//! ```no_run
//! use drivers::testing::sshd::Sshd;
//! let sshd = Sshd::builder().force_command("/bin/echo hi").start();
//! let (host, port, user) = (sshd.host(), sshd.port(), sshd.user());
//! let key = sshd.client_key_path();
//! let pin = sshd.host_key_fingerprint(); // "SHA256:..."
//! # let _ = (host, port, user, key, pin);
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, temp_dir};

/// Where Debian's openssh-server puts the daemon.
pub const SSHD_BIN: &str = "/usr/sbin/sshd";

/// What to tell a developer whose machine lacks OpenSSH.
pub const INSTALL_HINT: &str = "apt-get install -y openssh-server";

/// How long `start` waits for sshd to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serializes `useradd`/`chpasswd`, which lock `/etc/passwd` and fail when
/// two tests of one binary run them at once.
static USER_LOCK: Mutex<()> = Mutex::new(());

/// Options for one sshd; see [`Sshd::builder`].
#[derive(Debug, Clone, Default)]
pub struct SshdBuilder {
    force_command: Option<String>,
    password_user: Option<(String, String)>,
    extra_config: Vec<String>,
}

/// A running sshd; see the module docs.
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Child,
    user: String,
    password_user: Option<(String, String)>,
    host_key_line: String,
    host_key_fingerprint: String,
}

impl SshdBuilder {
    /// Every session runs this command instead of what the client asked for
    /// (sshd's `ForceCommand`); the client's command is in
    /// `SSH_ORIGINAL_COMMAND`. Used to put a device simulator behind a real
    /// SSH transport.
    pub fn force_command(mut self, command: impl Into<String>) -> Self {
        self.force_command = Some(command.into());
        self
    }

    /// Enables password login for a local user created (or updated) with
    /// `useradd` and `chpasswd`. Needs root; panics saying so otherwise.
    pub fn password_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.password_user = Some((name.into(), password.into()));
        self
    }

    /// Appends one raw line to `sshd_config` (`ClientAliveInterval 1`).
    pub fn config_line(mut self, line: impl Into<String>) -> Self {
        self.extra_config.push(line.into());
        self
    }

    /// Starts sshd and waits until it answers with an SSH banner. Panics with
    /// the sshd log (or with what to install) when it cannot start.
    pub fn start(self) -> Sshd {
        require_openssh();
        if let Some((name, password)) = &self.password_user {
            ensure_password_user(name, password);
        }
        // Readable by a password user whose forced command may need files here.
        let dir = temp_dir("sshd", 0o755);
        keygen(&dir.join("host_ed25519"));
        keygen(&dir.join("client_ed25519"));
        keygen(&dir.join("other_ed25519"));
        let client_pub = read(&dir.join("client_ed25519.pub"));
        std::fs::write(dir.join("authorized_keys"), client_pub).expect("write authorized_keys");
        let host_key_line = read(&dir.join("host_ed25519.pub"))
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let host_key_fingerprint = fingerprint_of(&dir.join("host_ed25519.pub"));
        std::fs::create_dir_all("/run/sshd")
            .expect("create /run/sshd (sshd's privilege separation dir)");

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(dir.join("sshd_config"), self.config_text(&dir, port))
                .expect("write sshd_config");
            let log = dir.join("sshd.log");
            let _ = std::fs::remove_file(&log);
            let child = Command::new(SSHD_BIN)
                .arg("-D")
                .arg("-f")
                .arg(dir.join("sshd_config"))
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {SSHD_BIN}: {e}; install it with `{INSTALL_HINT}`")
                });
            let mut sshd = Sshd {
                dir: dir.clone(),
                port,
                child,
                user: current_user(),
                password_user: self.password_user.clone(),
                host_key_line: host_key_line.clone(),
                host_key_fingerprint: host_key_fingerprint.clone(),
            };
            match sshd.wait_ready() {
                Ok(()) => return sshd,
                Err(why) => {
                    last_log = format!("{why}\n--- sshd log ---\n{}", sshd.log());
                    // Drop kills the child and removes the dir; keep the dir for the retry.
                    let _ = sshd.child.kill();
                    let _ = sshd.child.wait();
                    sshd.dir = PathBuf::new();
                    if !last_log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("sshd did not start: {last_log}");
    }

    fn config_text(&self, dir: &Path, port: u16) -> String {
        let d = dir.display();
        let password = self.password_user.is_some();
        let mut lines = vec![
            format!("Port {port}"),
            "ListenAddress 127.0.0.1".to_owned(),
            format!("HostKey {d}/host_ed25519"),
            format!("PidFile {d}/sshd.pid"),
            format!("AuthorizedKeysFile {d}/authorized_keys"),
            "UsePAM no".to_owned(),
            "StrictModes no".to_owned(),
            "PubkeyAuthentication yes".to_owned(),
            format!(
                "PasswordAuthentication {}",
                if password { "yes" } else { "no" }
            ),
            "KbdInteractiveAuthentication no".to_owned(),
            "PermitRootLogin yes".to_owned(),
            "PermitEmptyPasswords no".to_owned(),
            "PrintMotd no".to_owned(),
            "PrintLastLog no".to_owned(),
            "UseDNS no".to_owned(),
            "MaxStartups 100".to_owned(),
            "MaxAuthTries 10".to_owned(),
            "LoginGraceTime 30".to_owned(),
            "LogLevel VERBOSE".to_owned(),
            "Subsystem sftp internal-sftp".to_owned(),
        ];
        if let Some(command) = &self.force_command {
            lines.push(format!("ForceCommand {command}"));
        }
        lines.extend(self.extra_config.iter().cloned());
        lines.join("\n") + "\n"
    }
}

impl Sshd {
    /// Options for a new sshd (key login for the current user, no forced
    /// command, no password login).
    pub fn builder() -> SshdBuilder {
        SshdBuilder::default()
    }

    /// An sshd with the default options.
    pub fn start() -> Sshd {
        Sshd::builder().start()
    }

    /// Always the loopback address sshd listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user that logs in with [`client_key_path`](Self::client_key_path): the one running the tests.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password user and password given to the builder, if any.
    pub fn password_login(&self) -> Option<(&str, &str)> {
        self.password_user
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The private temp dir (config, keys, log); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An authorized private key (ed25519, OpenSSH format, no passphrase).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client_ed25519")
    }

    /// The authorized private key's text, for inline-key configs.
    pub fn client_key_pem(&self) -> String {
        read(&self.client_key_path())
    }

    /// A valid private key that sshd does not accept.
    pub fn unauthorized_key_path(&self) -> PathBuf {
        self.dir.join("other_ed25519")
    }

    /// The host key's SHA-256 fingerprint as OpenSSH prints it (`SHA256:...`).
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key_fingerprint
    }

    /// The host public key as `<type> <base64>`.
    pub fn host_key_line(&self) -> &str {
        &self.host_key_line
    }

    /// Writes a known_hosts file naming this sshd's host key (as OpenSSH
    /// writes it for a non-standard port: `[127.0.0.1]:<port>`) and returns its path.
    pub fn known_hosts_path(&self) -> PathBuf {
        let path = self.dir.join("known_hosts");
        let line = format!("[{}]:{} {}\n", self.host(), self.port, self.host_key_line);
        std::fs::write(&path, line).expect("write known_hosts");
        path
    }

    /// Everything sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Gives `path` to the password user, so a forced command running as that
    /// user can write it. Does nothing without a password user.
    pub fn chown_to_password_user(&self, path: &Path) {
        if let Some((name, _)) = &self.password_user {
            let (uid, gid) = user_ids(name);
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to {name}: {e}", path.display()));
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("sshd exited with {status}"));
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 8];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                    let _ = stream.write_all(b"SSH-2.0-hazel-probe\r\n");
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sshd not ready on port {} after {READY_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Kill by pid (our own child), then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port nobody listens on (bound, then released), for
/// "connection refused" tests.
pub fn closed_port() -> u16 {
    free_port()
}

/// Creates (or updates the password of) a local user for password-login
/// tests and returns nothing; panics when not root.
pub fn ensure_password_user(name: &str, password: &str) {
    let _guard = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let uid = output("id", &["-u"]);
    if uid.trim() != "0" {
        panic!("password-login tests create a local user with useradd/chpasswd and must run as root (uid is {uid})");
    }
    let exists = Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        retry_command("useradd", &["-M", "-s", "/bin/sh", name], None);
    }
    retry_command("chpasswd", &[], Some(format!("{name}:{password}\n")));
}

fn retry_command(program: &str, args: &[&str], stdin: Option<String>) {
    let mut last = String::new();
    for _ in 0..20 {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if let (Some(input), Some(mut pipe)) = (&stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).expect("write to stdin");
        }
        let out = child.wait_with_output().expect("wait");
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // Another process holds the passwd lock: try again shortly.
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{program} {args:?} failed: {last}");
}

fn user_ids(name: &str) -> (u32, u32) {
    let uid = output("id", &["-u", name]).trim().parse().expect("uid");
    let gid = output("id", &["-g", name]).trim().parse().expect("gid");
    (uid, gid)
}

fn require_openssh() {
    if !Path::new(SSHD_BIN).exists() {
        panic!("{SSHD_BIN} not found: these tests need a real OpenSSH server; install it with `{INSTALL_HINT}`");
    }
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        panic!("ssh-keygen not found: install OpenSSH with `{INSTALL_HINT}`");
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hazel-test", "-f"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run ssh-keygen ({e}); install it with `{INSTALL_HINT}`")
        });
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fingerprint_of(public_key: &Path) -> String {
    let text = output(
        "ssh-keygen",
        &[
            "-E",
            "sha256",
            "-l",
            "-f",
            &public_key.display().to_string(),
        ],
    );
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in ssh-keygen output: {text}"))
        .to_owned()
}

fn current_user() -> String {
    output("id", &["-un"]).trim().to_owned()
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
