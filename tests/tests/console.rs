//! The web console in a real headless browser: Debian's `chromium` driven
//! over WebDriver (`chromedriver`) against the real `hazel serve` binary
//! with the Proxmox simulator, at a phone's width (360 px). Each test
//! saves a screenshot of every page it visits under
//! `target/console-screenshots/` and checks that no page shows a template
//! error.
//!
//! The WebDriver client is the few W3C endpoints these tests use, written
//! on `reqwest` (already a dependency) rather than pulling in a WebDriver
//! crate and its TLS stack.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::api::auth::{mint, JwtKey};
use agent::nut::testing::Upsd;
use agent::service::Role;
use base64::Engine as _;
use drivers::proxmox::sim::{ProxmoxSim, SimConfig, SimGuest, SimKind, SimStatus};
use drivers::testing::free_port;
use serde_json::{json, Value};

const JWT_KEY: &str = "console-test-key-0123456789abcdef012345";
const ADMIN_PW: &str = "admin-password-1";
const VIEWER_PW: &str = "viewer-password-1";

/// The browsers run one at a time: the machine's cores are shared.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn target_dir() -> PathBuf {
    // target/debug -> target/
    hazel_tests::profile_dir()
        .parent()
        .expect("target dir")
        .to_path_buf()
}

use hazel_tests::hazel_binary;

/// Fails loudly when Chromium or its driver is missing.
fn require_browser() {
    for (binary, _package) in [
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {binary}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{binary}` is not installed: the console tests drive a real headless browser. \
             Install Debian's packages: `apt-get install -y chromium chromium-driver` \
             (scripts/install-deps.sh does it)"
        );
    }
}

/// `hazel serve`, the simulator, chromedriver and a browser session.
struct World {
    agent: Child,
    driver: Child,
    base: String,
    log: PathBuf,
    webdriver: String,
    session: String,
    /// The viewport width [`World::window`] set last, in CSS pixels.
    width: std::sync::atomic::AtomicU64,
    http: reqwest::Client,
    token: String,
    _sim: ProxmoxSim,
    upsd: Option<Upsd>,
    _dir: tempfile::TempDir,
    shots: PathBuf,
    test: &'static str,
}

/// Chromium's flags. Besides headless and no sandbox (root in CI), they keep
/// the browser on loopback: by default it looks up and calls Google's update,
/// sign-in and safe-browsing hosts, and a test must never send traffic
/// anywhere but 127.0.0.0/8. Every name resolves to "not found" except
/// 127.0.0.1, and anything that still tries the network goes to a proxy on a
/// closed loopback port.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=360,900",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--metrics-recording-only",
    "--no-pings",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater,DialMediaRouteProvider,NetworkTimeServiceQuerying,SafeBrowsing",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
];

impl World {
    async fn start(test: &'static str) -> World {
        World::start_opts(test, false).await
    }

    /// [`World::start`] with a real NUT `upsd` (UPS `ups1`, on mains) the
    /// agent polls every 200 ms.
    async fn start_with_ups(test: &'static str) -> World {
        World::start_opts(test, true).await
    }

    async fn start_opts(test: &'static str, with_ups: bool) -> World {
        require_browser();
        let upsd = with_ups.then(|| Upsd::builder().ups("ups1").start());
        let dir = tempfile::tempdir().unwrap();
        let sim = ProxmoxSim::start(SimConfig {
            guests: vec![
                SimGuest::new(101, SimKind::Qemu, "pve1", SimStatus::Running).named("vm-101"),
                SimGuest::new(102, SimKind::Qemu, "pve1", SimStatus::Running).named("vm-102"),
            ],
            task_delay_ms: 50,
            ..SimConfig::default()
        })
        .await
        .expect("the Proxmox simulator binds");
        let mut dead = sim.connection();
        // A host that never answers: its dry-runs fail, so Enable is refused.
        dead.insert("port".into(), json!(free_port()));
        let port = free_port();
        let mut config = json!({
            "listen": format!("127.0.0.1:{port}"),
            "data_dir": dir.path().join("data"),
            "shutdown_grace": "2s",
            "hosts": [
                {"id": "pve-01", "plugin": "proxmox.ve", "connection": sim.connection()},
                {"id": "pve-dead", "plugin": "proxmox.ve", "connection": dead},
            ],
        });
        if let Some(upsd) = &upsd {
            let nut = upsd.config();
            config["nut"] = json!([{
                "host": nut.host, "port": nut.port, "ups": nut.ups,
                "poll_interval_ms": 200, "comm_lost_after_ms": 5000,
            }]);
        }
        let config_path = dir.path().join("hazel.yaml");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        add_user(&config_path, "admin", "admin", ADMIN_PW);
        add_user(&config_path, "vera", "viewer", VIEWER_PW);

        let log = dir.path().join("agent.log");
        let agent = Command::new(hazel_binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("HAZEL_JWT_KEY", JWT_KEY)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("hazel serve starts");
        let driver_port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts (apt-get install -y chromium-driver)");
        let key = JwtKey::from_bytes(JWT_KEY.as_bytes().to_vec()).unwrap();
        let token = mint(
            &key,
            "test",
            Role::Admin,
            Duration::from_secs(3600),
            chrono::Utc::now(),
        );
        let shots = target_dir().join("console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let mut world = World {
            agent,
            driver,
            base: format!("http://127.0.0.1:{port}"),
            log,
            webdriver: format!("http://127.0.0.1:{driver_port}"),
            session: String::new(),
            width: std::sync::atomic::AtomicU64::new(0),
            // A stuck browser or agent fails the test instead of hanging it.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("an HTTP client"),
            token,
            _sim: sim,
            upsd,
            _dir: dir,
            shots,
            test,
        };
        world.wait_ready().await;
        world.session = world.new_session().await;
        world.window(360, 900).await;
        world
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let agent = self.http.get(format!("{}/readyz", self.base)).send().await;
            let driver = self
                .http
                .get(format!("{}/status", self.webdriver))
                .send()
                .await;
            if agent.is_ok_and(|r| r.status() == 200) && driver.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hazel serve or chromedriver did not become ready; agent log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ---- the WebDriver protocol (W3C) --------------------------------------

    /// A WebDriver command's value; a command chromedriver refuses (an
    /// error answer) fails the test with the error.
    async fn wd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let value = self.wd_answer(method, path, body).await;
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            panic!(
                "WebDriver refused {path}: {error}: {}",
                value["message"].as_str().unwrap_or_default()
            );
        }
        value
    }

    /// A WebDriver command's value, error answers included.
    async fn wd_answer(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.webdriver);
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer: Value = req
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver answers JSON");
        answer["value"].clone()
    }

    async fn new_session(&self) -> String {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": CHROMIUM_ARGS,
            },
        }}});
        let value = self.wd(reqwest::Method::POST, "/session", Some(caps)).await;
        value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium did not start a session: {value}"))
            .to_string()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.wd(
            reqwest::Method::POST,
            &self.s("/url"),
            Some(json!({"url": url})),
        )
        .await;
    }

    async fn url(&self) -> String {
        let v = self.wd(reqwest::Method::GET, &self.s("/url"), None).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The element `css` selects, `None` when there is none yet.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .wd_answer(
                reqwest::Method::POST,
                &self.s("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        match v.get("error").and_then(Value::as_str) {
            None => v["element-6066-11e4-a52e-4f735466cecf"]
                .as_str()
                .map(str::to_string),
            Some("no such element") => None,
            Some(error) => panic!("WebDriver refused to find `{css}`: {error}: {v}"),
        }
    }

    async fn count(&self, css: &str) -> usize {
        let v = self
            .wd(
                reqwest::Method::POST,
                &self.s("/elements"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    async fn element(&self, css: &str) -> String {
        self.eventually(&format!("an element `{css}`"), || self.find(css))
            .await
    }

    /// Clicks `css`; an element the live updates replaced between the find
    /// and the click is found again.
    async fn click(&self, css: &str) {
        self.eventually(&format!("a click on `{css}`"), || async {
            let id = self.find(css).await?;
            let v = self
                .wd_answer(
                    reqwest::Method::POST,
                    &self.s(&format!("/element/{id}/click")),
                    Some(json!({})),
                )
                .await;
            not_stale(css, v).map(|_| ())
        })
        .await;
    }

    /// Replaces the text of `css` with `text`, finding it again if a live
    /// update replaced it meanwhile.
    async fn type_into(&self, css: &str, text: &str) {
        self.eventually(&format!("typing into `{css}`"), || async {
            let id = self.find(css).await?;
            for (command, body) in [("clear", json!({})), ("value", json!({"text": text}))] {
                let v = self
                    .wd_answer(
                        reqwest::Method::POST,
                        &self.s(&format!("/element/{id}/{command}")),
                        Some(body),
                    )
                    .await;
                not_stale(css, v)?;
            }
            Some(())
        })
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let Some(id) = self.find(css).await else {
            return String::new();
        };
        let v = self
            .wd_answer(
                reqwest::Method::GET,
                &self.s(&format!("/element/{id}/text")),
                None,
            )
            .await;
        // Replaced by a live update since the find: no text yet.
        not_stale(css, v)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Waits until `css`'s text contains `needle`; returns the text.
    async fn text_contains(&self, css: &str, needle: &str) -> String {
        self.eventually(&format!("`{css}` to contain {needle:?}"), || async {
            let text = self.text(css).await;
            text.contains(needle).then_some(text)
        })
        .await
    }

    async fn script(&self, script: &str) -> Value {
        self.wd(
            reqwest::Method::POST,
            &self.s("/execute/async"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs `script` synchronously in the page; answers its return value.
    async fn sync_script(&self, script: &str) -> Value {
        self.wd(
            reqwest::Method::POST,
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Whether `css` is shown (its computed `display` is not `none`).
    async fn shown(&self, css: &str) -> bool {
        let script = format!(
            "const e = document.querySelector({css:?}); return !!e && getComputedStyle(e).display !== 'none';"
        );
        self.sync_script(&script).await == json!(true)
    }

    /// Waits until `css` is shown (`true`) or hidden (`false`).
    async fn wait_shown(&self, css: &str, shown: bool) {
        self.eventually(&format!("`{css}` shown={shown}"), || async {
            (self.shown(css).await == shown).then_some(())
        })
        .await;
    }

    /// Sets the page's viewport to `width` × `height` CSS pixels. Chromium's
    /// window is never narrower than about 500 px, so a phone's width is
    /// emulated (DevTools' device metrics, as its device toolbar does)
    /// instead of asked of the window; the page then lays out at exactly
    /// `width`.
    async fn window(&self, width: u32, height: u32) {
        self.wd(
            reqwest::Method::POST,
            &self.s("/window/rect"),
            Some(json!({"width": width.max(500), "height": height})),
        )
        .await;
        self.wd(
            reqwest::Method::POST,
            &self.s("/goog/cdp/execute"),
            Some(
                json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                    "width": width, "height": height, "deviceScaleFactor": 1,
                    "mobile": width < 600,
                }}),
            ),
        )
        .await;
        self.width
            .store(u64::from(width), std::sync::atomic::Ordering::Relaxed);
    }

    /// Fails when the page is wider than its viewport: at a phone's width
    /// only a table's own scroll box may scroll sideways, never the page.
    async fn fits_the_width(&self, page: &str) {
        let widths = self
            .sync_script("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        let width = self.width.load(std::sync::atomic::Ordering::Relaxed);
        // A phone widens its layout to the widest content: name what pokes
        // out, outside a scroll box.
        let wide = self
            .sync_script(&format!(
                "return [...document.querySelectorAll('body *')]
                   .filter(e => e.getBoundingClientRect().right > {width} + 1
                             && !e.closest('.scroll, pre, textarea'))
                   .slice(0, 8)
                   .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className
                             + ' ' + Math.round(e.getBoundingClientRect().right));"
            ))
            .await;
        assert_eq!(
            widths[1].as_u64(),
            Some(width),
            "{page} lays out at the {width} px the test set; wider: {wide}"
        );
        assert!(
            widths[0].as_u64() <= widths[1].as_u64(),
            "{page} is wider than the viewport (scroll width, viewport): {widths}"
        );
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to `hazel serve`.
    fn signal_agent(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.agent.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} the agent");
    }

    async fn cookies(&self) -> Value {
        self.wd(reqwest::Method::GET, &self.s("/cookie"), None)
            .await
    }

    /// Saves a screenshot as `<test>-<name>.png` and checks the page shows
    /// no template error.
    async fn shot(&self, name: &str) {
        let source = self
            .wd(reqwest::Method::GET, &self.s("/source"), None)
            .await;
        let source = source.as_str().unwrap_or_default();
        for bad in ["could not be drawn", "{{", "{%", "askama"] {
            assert!(
                !source.contains(bad),
                "page {name} shows {bad:?}:\n{source}"
            );
        }
        self.fits_the_width(name).await;
        let png = self
            .wd(reqwest::Method::GET, &self.s("/screenshot"), None)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        let path = self.shots.join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, bytes).unwrap();
    }

    /// Polls `check` every 100 ms for up to 15 s; a timeout shows the page
    /// source and the agent log.
    async fn eventually<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        hazel_tests::eventually(what, Duration::from_secs(15), check, || async {
            let source = self
                .wd(reqwest::Method::GET, &self.s("/source"), None)
                .await;
            format!(
                "page:\n{}\nagent log:\n{}",
                source.as_str().unwrap_or_default(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
        .await
    }

    // ---- the console ------------------------------------------------------

    async fn sign_in(&self, user: &str, password: &str) {
        self.goto("/login").await;
        self.type_into("#username", user).await;
        self.type_into("#password", password).await;
        self.click("#sign-in").await;
    }

    /// Signs in as the admin and waits for the page to say so.
    async fn sign_in_as_admin(&self) {
        self.sign_in("admin", ADMIN_PW).await;
        self.text_contains("#signed-in-as", "admin").await;
    }

    /// Opens the wizard on a new policy and waits for its first live
    /// findings (a blank spec has blockers).
    async fn open_new_policy(&self) {
        self.goto("/policies/new").await;
        self.text_contains("#findings-summary", "blocker").await;
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("X-Hazel-CSRF", "1");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer = req.send().await.expect("agent answers");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }
}

/// A WebDriver element command's value; `None` when the element went
/// stale (a live update replaced it: find it again); any other error fails
/// the test.
fn not_stale(css: &str, value: Value) -> Option<Value> {
    match value.get("error").and_then(Value::as_str) {
        None => Some(value),
        Some("stale element reference") => None,
        Some(error) => panic!("WebDriver refused a command on `{css}`: {error}: {value}"),
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // chromedriver leads its own process group, its Chromium with it:
        // end the group so no browser outlives a failed test.
        // `kill -s KILL -- -PGID`, never `kill -KILL -PGID`: procps-ng 4.0.2
        // (Debian 12) reads the latter as kill(-1, SIGKILL) and ends every
        // process on the machine, the test runner and CI with it.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

fn add_user(config: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(hazel_binary())
        .args(["user", "add", name, "--role", role, "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hazel user add runs");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hazel user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("user {name} added")));
}

fn policy(name: &str, host: &str) -> Value {
    json!({
        "version": 1,
        "name": name,
        "enabled": false,
        "trigger_group": {"triggers": [{"type": "ups.state", "equals": "on_battery", "ups": "ups1", "for": "2m"}]},
        "targets": {"host_id": host, "target_type": "vm", "selector": {"mode": "list", "value": "101"}},
        "actions": [{"capability_id": "proxmox.vm", "verb": "shutdown", "params": {"grace_s": 5}}],
    })
}

#[tokio::test]
async fn a_user_signs_in_sees_the_dashboard_and_signs_out() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("sign-in-out").await;
    w.goto("/").await;
    w.eventually("a redirect to /login", || async {
        w.url().await.ends_with("/login").then_some(())
    })
    .await;
    w.shot("login").await;
    w.sign_in("admin", ADMIN_PW).await;
    w.text_contains("#signed-in-as", "admin (admin)").await;
    w.text_contains("#hosts", "pve-01").await;
    w.shot("dashboard").await;
    let cookies = w.cookies().await;
    let session = cookies
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "hazel_session"))
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"))
        .clone();
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["secure"], false, "plain HTTP: not Secure");

    w.click("#sign-out").await;
    w.eventually("the sign-in page after signing out", || async {
        w.url().await.ends_with("/login").then_some(())
    })
    .await;
    w.goto("/policies").await;
    w.eventually("signed out for good", || async {
        w.url().await.ends_with("/login").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_repeated_failures_are_rate_limited() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("rate-limit").await;
    for attempt in 1..=5 {
        w.sign_in("admin", "not-the-password").await;
        w.text_contains("#login-result", "Wrong user name or password")
            .await;
        assert!(w.url().await.ends_with("/login"), "attempt {attempt}");
        // Clear the answer so the next one is seen afresh.
        w.script("document.getElementById('login-result').textContent=''; arguments[0](1)")
            .await;
    }
    w.sign_in("admin", ADMIN_PW).await;
    let text = w
        .text_contains("#login-result", "Too many failed sign-ins")
        .await;
    assert!(text.contains("auth.rate_limited"), "{text}");
    w.shot("rate-limited").await;
    assert!(
        w.url().await.ends_with("/login"),
        "the right password waits too"
    );
}

#[tokio::test]
async fn the_policies_table_lists_an_api_policy_and_shows_why_enable_is_refused() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("policies").await;
    let (status, created) = w
        .api(
            reqwest::Method::POST,
            "/api/policies",
            Some(policy("Stop vm 101 on the dead host", "pve-dead")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, ok) = w
        .api(
            reqwest::Method::POST,
            "/api/policies",
            Some(policy("Stop vm 101 on battery", "pve-01")),
        )
        .await;
    assert_eq!(status, 201, "{ok}");

    w.sign_in_as_admin().await;
    w.goto("/policies").await;
    let table = w
        .text_contains("#policies", "Stop vm 101 on the dead host")
        .await;
    assert!(
        table.contains("when ups1 is on battery for 2 minutes"),
        "{table}"
    );
    w.shot("policies").await;
    w.click(&format!("#policy-{id} button.enable")).await;
    let refusal = w
        .text_contains(&format!("#result-{id}"), "Enable refused")
        .await;
    assert!(refusal.contains("policy.enable_blocked"), "{refusal}");
    assert!(
        w.count(&format!("#result-{id} .errors li")).await >= 1,
        "the dry-run's errors are listed"
    );
    w.shot("enable-refused").await;
    let (_, after) = w
        .api(reqwest::Method::GET, &format!("/api/policies/{id}"), None)
        .await;
    assert_eq!(after["status"], "disabled");

    w.goto(&format!("/policies/{}", ok["id"].as_str().unwrap()))
        .await;
    w.click("#dry-run").await;
    let preflight = w.text_contains("#preflight-table", "vm:101").await;
    assert!(preflight.contains("proxmox.vm shutdown"), "{preflight}");
    // Effects read "from → to"; each precondition is a named check.
    assert!(
        preflight.contains("vm:101: running → stopped"),
        "{preflight}"
    );
    assert!(preflight.contains("vm_state"), "{preflight}");
    assert!(
        w.count("#preflight-table ol.plan li").await >= 1,
        "a plan preview"
    );
    w.text_contains("#spec", "on_battery").await;
    w.shot("policy").await;
}

#[tokio::test]
async fn an_admin_pauses_and_resumes_execution_with_the_kill_switch() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("kill-switch").await;
    w.sign_in("admin", ADMIN_PW).await;
    w.text_contains("#kill-state", "Running").await;
    w.type_into("#pause-reason", "console test").await;
    w.click("#pause").await;
    let state = w.text_contains("#kill-state", "Paused").await;
    assert!(
        state.contains("console test") && state.contains("by admin"),
        "{state}"
    );
    let (_, api) = w.api(reqwest::Method::GET, "/api/kill-switch", None).await;
    assert_eq!(
        (api["paused"].as_bool(), api["by"].as_str()),
        (Some(true), Some("admin"))
    );
    w.shot("paused").await;
    w.click("#resume").await;
    w.text_contains("#kill-state", "Running").await;
    let (_, api) = w.api(reqwest::Method::GET, "/api/kill-switch", None).await;
    assert_eq!(api["paused"], false);
}

/// POSTs from the page's own origin with fetch, as a forged request would,
/// and answers `status code`.
const FORGE: &str = "const done = arguments[0];
fetch('/ui/kill-switch', {method: 'POST', headers: HEADERS,
  body: new URLSearchParams({action: 'pause', reason: 'forged'})})
  .then(r => r.text().then(t => done(r.status + ' ' + t)))
  .catch(e => done('error ' + e));";

#[tokio::test]
async fn a_viewer_sees_no_control_and_a_request_without_the_csrf_header_is_refused() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("viewer").await;
    let (status, created) = w
        .api(
            reqwest::Method::POST,
            "/api/policies",
            Some(policy("Viewer sees this", "pve-01")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    w.sign_in("vera", VIEWER_PW).await;
    w.text_contains("#signed-in-as", "vera (viewer)").await;
    w.text_contains("#kill-state", "Running").await;
    assert_eq!(w.count("#pause, #resume, #pause-reason").await, 0);
    w.shot("viewer-dashboard").await;
    w.goto("/policies").await;
    w.text_contains("#policies", "Viewer sees this").await;
    assert_eq!(w.count("#policies button").await, 0, "no enable/disable");
    w.goto(&format!("/policies/{}", created["id"].as_str().unwrap()))
        .await;
    w.text_contains("#spec", "on_battery").await;
    assert_eq!(w.count("#dry-run").await, 0);
    w.shot("viewer-policy").await;
    // With the header, the viewer's role is still too low.
    let answer = w
        .script(&FORGE.replace("HEADERS", "{'X-Hazel-CSRF': '1'}"))
        .await;
    assert!(answer.as_str().unwrap().starts_with("403"), "{answer}");
    assert!(
        answer.as_str().unwrap().contains("auth.forbidden"),
        "{answer}"
    );

    // An admin's session without the CSRF header: refused, nothing paused.
    w.click("#sign-out").await;
    w.eventually("signed out", || async {
        w.url().await.ends_with("/login").then_some(())
    })
    .await;
    w.sign_in("admin", ADMIN_PW).await;
    w.text_contains("#signed-in-as", "admin (admin)").await;
    let answer = w.script(&FORGE.replace("HEADERS", "{}")).await;
    let answer = answer.as_str().unwrap_or_default().to_string();
    assert!(answer.starts_with("403"), "{answer}");
    assert!(answer.contains("csrf.missing"), "{answer}");
    let (_, api) = w.api(reqwest::Method::GET, "/api/kill-switch", None).await;
    assert_eq!(api["paused"], false, "the forged pause did nothing");
}

/// A policy that shuts vm 101 down as soon as ups1 is on battery.
fn immediate_policy(name: &str) -> Value {
    let mut p = policy(name, "pve-01");
    p["trigger_group"]["triggers"][0]
        .as_object_mut()
        .unwrap()
        .remove("for");
    p
}

/// Creates `spec` through the API and enables it; answers its id.
async fn enabled_policy(w: &World, spec: Value) -> String {
    let (status, created) = w
        .api(reqwest::Method::POST, "/api/policies", Some(spec))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, enabled) = w
        .api(
            reqwest::Method::POST,
            &format!("/api/policies/{id}/enable"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{enabled}");
    id
}

/// Waits until the dashboard's event stream has sent a beat.
async fn stream_connected(w: &World) {
    let first = w.text("#live-updated").await;
    w.eventually("a beat from the event stream", || async {
        let now = w.text("#live-updated").await;
        (!now.is_empty() && now != first).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_on_battery_event_appears_live_on_the_dashboard_and_in_the_ledger() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start_with_ups("live").await;
    let id = enabled_policy(&w, immediate_policy("Stop vm 101 on battery")).await;
    w.sign_in_as_admin().await;
    let ups = w.text_contains("#ups", "on_mains").await;
    assert!(
        ups.contains("ups1@127.0.0.1") && ups.contains("100 %"),
        "{ups}"
    );
    w.text_contains("#runs", "No runs yet").await;
    stream_connected(&w).await;
    // A mark on this document: gone if the page reloads.
    w.sync_script("window.hazelSameDocument = true; return 1;")
        .await;

    // Paused, the shutdown waits in its queue: the dashboard lists it as
    // queued until the kill switch is released.
    w.type_into("#pause-reason", "hold the shutdown").await;
    w.click("#pause").await;
    w.text_contains("#kill-state", "Paused").await;
    let upsd = w.upsd.as_ref().unwrap();
    upsd.set_vars(&[("ups.status", "OB DISCHRG"), ("battery.charge", "87")]);
    let ups = w.text_contains("#ups", "on_battery").await;
    assert!(ups.contains("87 %"), "{ups}");
    let active = w.text_contains("#active", "queued").await;
    assert!(
        active.contains("Stop vm 101 on battery")
            && active.contains("proxmox.vm shutdown on pve-01")
            && active.contains("vm:101"),
        "{active}"
    );
    assert!(w.text("#runs").await.contains("No runs yet"));
    w.shot("dashboard-queued").await;
    w.click("#resume").await;
    w.text_contains("#kill-state", "Running").await;
    let runs = w.text_contains("#runs", "Stop vm 101 on battery").await;
    assert!(
        runs.contains("proxmox.vm shutdown on pve-01") && runs.contains("vm:101"),
        "{runs}"
    );
    w.text_contains("#runs", "ok").await;
    w.text_contains("#active", "Nothing running").await;
    assert_eq!(
        w.sync_script("return window.hazelSameDocument === true;")
            .await,
        json!(true),
        "the run arrived without a page reload"
    );
    assert!(!w.shown("#stale-marker").await);
    w.shot("dashboard").await;
    w.window(1200, 1150).await;
    w.shot("dashboard-desktop").await;
    w.window(360, 900).await;

    w.goto(&format!("/policies/{id}")).await;
    let ledger = w.text_contains(".run summary", "ok").await;
    assert!(ledger.contains("ups.state"), "{ledger}");
    w.shot("ledger").await;
    w.goto("/policies").await;
    let row = w.text_contains(&format!("#policy-{id}"), "ok").await;
    assert!(!row.contains("never"), "the last run is shown: {row}");
}

#[tokio::test]
async fn the_dashboard_shows_a_stale_marker_when_the_event_stream_drops() {
    let _one = ONE_BROWSER.lock().await;
    let mut w = World::start("stale").await;
    w.sign_in("admin", ADMIN_PW).await;
    w.text_contains("#hosts", "pve-01").await;
    stream_connected(&w).await;
    assert!(!w.shown("#stale-marker").await, "fresh at first");

    // A stuck agent: the stream stays open but goes quiet.
    w.signal_agent("STOP");
    w.wait_shown("#stale-marker", true).await;
    w.shot("stale").await;
    w.signal_agent("CONT");
    w.wait_shown("#stale-marker", false).await;

    // A stopped agent: the stream ends with the server, which does not
    // wait for the open dashboard to stop.
    w.signal_agent("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut agent_exited = false;
    while Instant::now() < deadline {
        if w.agent.try_wait().expect("the agent's status").is_some() {
            agent_exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent_exited,
        "hazel serve stopped within 10 s with a dashboard open"
    );
    w.wait_shown("#stale-marker", true).await;
    w.text_contains("#stale-marker", "Disconnected").await;
}

#[tokio::test]
async fn the_audit_page_filters_by_kind_policy_and_time() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("audit").await;
    let mut ids = Vec::new();
    for (name, vm) in [("Audit one", "101"), ("Audit two", "102")] {
        // Two different specs: an identical one would be refused.
        let mut spec = policy(name, "pve-01");
        spec["targets"]["selector"]["value"] = json!(vm);
        let (status, created) = w
            .api(reqwest::Method::POST, "/api/policies", Some(spec))
            .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    w.api(
        reqwest::Method::POST,
        "/api/kill-switch",
        Some(json!({"paused": true, "reason": "audit test"})),
    )
    .await;
    w.sign_in_as_admin().await;
    w.goto("/runs").await;
    let all = w.text_contains("#audit", "policy.created").await;
    let all_rows = w.count("#audit tbody tr").await;
    assert!(all_rows > 2, "every kind at first (the pause too): {all}");

    w.type_into("#filter-kind", "policy.created").await;
    w.click("#filter-apply").await;
    w.eventually("the kind filter in the URL", || async {
        w.url().await.contains("kind=policy.created").then_some(())
    })
    .await;
    let rows = w.count("#audit tbody tr").await;
    let kinds = w.text("#audit").await;
    assert_eq!(rows, 2, "{kinds}");
    assert_eq!(kinds.matches("policy.created").count(), 2, "{kinds}");

    w.click(&format!("#filter-policy option[value='{}']", ids[1]))
        .await;
    w.click("#filter-apply").await;
    w.eventually("the policy filter in the URL", || async {
        w.url().await.contains(&ids[1]).then_some(())
    })
    .await;
    let one = w.text("#audit").await;
    assert_eq!(w.count("#audit tbody tr").await, 1, "{one}");
    assert!(
        one.contains("Audit two") && !one.contains("Audit one"),
        "{one}"
    );
    w.shot("audit-filtered").await;

    w.click("#filter-since option[value='1h']").await;
    w.click("#filter-apply").await;
    w.eventually("the since filter in the URL", || async {
        w.url().await.contains("since=1h").then_some(())
    })
    .await;
    assert_eq!(
        w.count("#audit tbody tr").await,
        1,
        "written within the hour"
    );
}

#[tokio::test]
async fn the_power_failure_simulation_shows_the_timeline() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("simulate").await;
    enabled_policy(&w, policy("Stop vm 101 after 2 minutes", "pve-01")).await;
    w.sign_in_as_admin().await;
    w.goto("/runs").await;
    w.type_into("#simulate-ups", "ups1").await;
    w.click("#simulate-state option[value='on_battery']").await;
    w.click("#simulate").await;
    let timeline = w.text_contains("#timeline", "countdown").await;
    assert!(
        timeline.contains("Stop vm 101 after 2 minutes")
            && timeline.contains("proxmox.vm shutdown on pve-01: vm:101"),
        "{timeline}"
    );
    w.text_contains("#simulation", "If ups1 went on_battery now")
        .await;
    w.shot("simulation").await;
    let (_, runs) = w
        .api(
            reqwest::Method::GET,
            "/api/audit?kind=execution.finished",
            None,
        )
        .await;
    assert_eq!(runs["items"], json!([]), "a simulation executes nothing");
}

/// axe-core, vendored for the tests only (tests/fixtures/axe-core).
const AXE: &str = include_str!("../fixtures/axe-core/axe.min.js");

/// Runs axe-core on the page; answers the critical violations, and any
/// violation of the rules that every control has a name (label).
const AXE_RUN: &str = "const done = arguments[0];
axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations
  .filter(v => v.impact === 'critical' || v.impact === 'serious' || ['label', 'button-name', 'select-name', 'link-name'].includes(v.id))
  .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))
  .catch(e => done(['axe failed: ' + e]));";

async fn axe_check(w: &World, page: &str) {
    let loaded = w.sync_script(&format!("{AXE}\nreturn typeof axe;")).await;
    assert_eq!(loaded, json!("object"), "axe-core loads on {page}");
    let found = w.script(AXE_RUN).await;
    assert_eq!(
        found,
        json!([]),
        "page {page} has critical or serious accessibility violations"
    );
}

#[tokio::test]
async fn every_console_page_passes_the_axe_check_with_no_critical_or_serious_violations() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start_with_ups("axe").await;
    let id = enabled_policy(&w, policy("Stop vm 101 after 2 minutes", "pve-01")).await;
    w.goto("/login").await;
    w.element("#sign-in").await;
    axe_check(&w, "/login").await;
    w.sign_in("admin", ADMIN_PW).await;
    w.text_contains("#ups", "ups1").await;
    axe_check(&w, "/").await;
    for page in [
        "/policies".to_string(),
        format!("/policies/{id}"),
        "/runs".into(),
    ] {
        w.goto(&page).await;
        w.element("main h1").await;
        axe_check(&w, &page).await;
    }
    w.click("#simulate").await;
    w.element("#timeline, #timeline-empty").await;
    axe_check(&w, "/runs with a simulation").await;
    w.goto(&format!("/policies/{id}")).await;
    // The Schema and Compile panes: the stored hash, the IR, the findings.
    let (_, stored) = w
        .api(reqwest::Method::GET, &format!("/api/policies/{id}"), None)
        .await;
    let hash = stored["hash"].as_str().expect("a stored hash").to_string();
    w.text_contains("#compile-hash", &hash).await;
    w.element("#schema-pane").await;
    w.click("#dry-run").await;
    w.element("#preflight-table").await;
    axe_check(&w, "/policies/{id} with a preflight").await;

    // The wizard: each step with its live findings, the text view, editing
    // a stored policy and its inverse (the inverse test checks the
    // highlighted needs_input).
    w.open_new_policy().await;
    axe_check(&w, "/policies/new, step 1 with findings").await;
    for step in 1..=4 {
        w.click(&format!("#next-{step}")).await;
        axe_check(&w, &format!("/policies/new, step {}", step + 1)).await;
    }
    w.click("#to-text").await;
    w.element("#spec-text").await;
    axe_check(&w, "/policies/new as text").await;
    w.goto(&format!("/policies/{id}/edit")).await;
    w.text_contains("#findings-summary", "Valid").await;
    axe_check(&w, "/policies/{id}/edit").await;
    w.goto(&format!("/policies/{id}/inverse")).await;
    w.text_contains("h1", "Inverse of").await;
    w.element("#findings-summary").await;
    axe_check(&w, "/policies/{id}/inverse").await;
}

// ---- the policy wizard ------------------------------------------------------

impl World {
    /// The current value of a form control.
    async fn value(&self, css: &str) -> String {
        let css = serde_json::to_string(css).unwrap();
        let v = self
            .script(&format!(
                "const e = document.querySelector({css}); arguments[0](e ? e.value : null)"
            ))
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Picks `value` in the `<select>` `css` by clicking its option.
    async fn choose(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    /// Whether the element `css` has the boolean property `property`; a
    /// missing element fails the test (it is not "not hidden").
    async fn flag(&self, css: &str, property: &str) -> bool {
        let quoted = serde_json::to_string(css).unwrap();
        let answer = self
            .sync_script(&format!(
                "const e = document.querySelector({quoted}); return e ? !!e.{property} : null;"
            ))
            .await;
        answer
            .as_bool()
            .unwrap_or_else(|| panic!("no element `{css}` to read `{property}` of"))
    }

    async fn hidden(&self, css: &str) -> bool {
        self.flag(css, "hidden").await
    }

    async fn disabled(&self, css: &str) -> bool {
        self.flag(css, "disabled").await
    }

    /// Waits until the control `css` is disabled (`true`) or enabled.
    async fn until_disabled(&self, css: &str, disabled: bool) {
        self.eventually(&format!("`{css}` disabled = {disabled}"), || async {
            (self.disabled(css).await == disabled).then_some(())
        })
        .await;
    }

    /// Waits for the host's first inventory snapshot (the preview reads it).
    async fn inventory_ready(&self, host: &str) {
        self.eventually("the host's inventory", || async {
            let (status, inv) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/api/hosts/{host}/inventory?refresh=true"),
                    None,
                )
                .await;
            (status == 200 && inv.to_string().contains("101")).then_some(())
        })
        .await;
    }
}

const FOR_FIELD: &str = "w-trigger_group-triggers-0-for";

#[tokio::test]
async fn an_admin_creates_a_policy_through_the_five_steps_of_the_wizard() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("wizard-create").await;
    w.inventory_ready("pve-01").await;
    w.sign_in_as_admin().await;
    w.open_new_policy().await;
    assert!(w.disabled("#save").await, "nothing to save yet");
    // Step 1: Basics.
    w.type_into("#w-name", "Stop vm 101 on battery (wizard)")
        .await;
    w.shot("step-1").await;
    w.click("#next-1").await;
    // Step 2: Trigger (ups.state on_battery is the default).
    w.type_into("#w-trigger_group-triggers-0-ups", "ups1").await;
    w.type_into(&format!("#{FOR_FIELD}"), "2m").await;
    // Only the fields of the chosen trigger type show.
    let schedule = "#field-w-trigger_group-triggers-0-schedule";
    assert!(w.hidden(schedule).await, "no schedule for ups.state");
    w.choose("#w-trigger_group-triggers-0-type", "timer.at")
        .await;
    assert!(!w.hidden(schedule).await, "a schedule for timer.at");
    w.choose("#w-trigger_group-triggers-0-type", "ups.state")
        .await;
    assert!(w.hidden(schedule).await);
    w.shot("step-2").await;
    w.click("#next-2").await;
    // Step 3: Conditions.
    fill_condition(&w, 0, ("ups", "runtime_minutes", ">=", "5")).await;
    w.shot("step-3").await;
    w.click("#next-3").await;
    // Step 4: Targets & Actions.
    fill_vm_101_shutdown(&w).await;
    w.type_into("#w-actions-0-params", r#"{"grace_s": 5}"#)
        .await;
    w.text_contains("#preview-count", "1 target(s)").await;
    w.shot("step-4").await;
    w.click("#next-4").await;
    // Step 5: Review.
    let review = w.text_contains("#review-spec", "runtime_minutes").await;
    assert!(
        review.contains("ups1") && review.contains("grace_s: 5"),
        "{review}"
    );
    w.until_disabled("#save", false).await;
    w.shot("step-5").await;

    // The same spec as text, changed there, and back in the wizard.
    w.click("#to-text").await;
    let text = w.text_contains("#spec-text", "name: Stop vm 101").await;
    assert!(text.contains("for: 2m"), "{text}");
    let edited = serde_json::to_string(&text.replace("(wizard)", "(edited as YAML)")).unwrap();
    w.script(&format!(
        "const t = document.getElementById('spec-text'); t.value = {edited};
         t.dispatchEvent(new Event('input', {{bubbles: true}})); arguments[0](1)"
    ))
    .await;
    w.text_contains("#findings-summary", "Valid").await;
    w.shot("text").await;
    w.click("#to-wizard").await;
    w.eventually("the edited name in the wizard", || async {
        (w.value("#w-name").await == "Stop vm 101 on battery (edited as YAML)").then_some(())
    })
    .await;
    assert_eq!(w.value(&format!("#{FOR_FIELD}")).await, "2m");
    w.until_disabled("#save", false).await;
    w.click("#save").await;
    w.eventually("the saved policy's page", || async {
        let url = w.url().await;
        (url.contains("/policies/") && !url.ends_with("/new")).then_some(())
    })
    .await;
    w.text_contains("h1", "(edited as YAML)").await;
    w.shot("saved").await;
    let (_, list) = w.api(reqwest::Method::GET, "/api/policies", None).await;
    let saved = &list["items"][0];
    assert_eq!(saved["name"], "Stop vm 101 on battery (edited as YAML)");
    assert_eq!(saved["spec"]["trigger_group"]["triggers"][0]["for"], "2m");
    assert_eq!(saved["spec"]["conditions"]["all"][0]["value"], 5);
    assert_eq!(saved["spec"]["targets"]["selector"]["value"], "101");
    assert_eq!(saved["status"], "disabled");
}

/// Fills condition row `i` of the wizard: scope, field, comparison, value.
async fn fill_condition(w: &World, i: usize, (scope, field, op, value): (&str, &str, &str, &str)) {
    w.choose(&format!("#w-conditions-all-{i}-scope"), scope)
        .await;
    w.type_into(&format!("#w-conditions-all-{i}-field"), field)
        .await;
    w.choose(&format!("#w-conditions-all-{i}-op"), op).await;
    w.type_into(&format!("#w-conditions-all-{i}-value"), value)
        .await;
}

/// Fills the wizard's targets (vm 101 on pve-01) and its first action
/// (`proxmox.vm shutdown`).
async fn fill_vm_101_shutdown(w: &World) {
    w.choose("#w-targets-host_id", "pve-01").await;
    w.type_into("#w-targets-target_type", "vm").await;
    w.type_into("#w-targets-selector-value", "101").await;
    w.type_into("#w-actions-0-capability_id", "proxmox.vm")
        .await;
    w.type_into("#w-actions-0-verb", "shutdown").await;
}

/// The id of the focused element.
async fn focused(w: &World) -> String {
    w.sync_script("return document.activeElement ? document.activeElement.id : '';")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_admin_adds_and_removes_triggers_conditions_and_actions_in_the_wizard() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("wizard-items").await;
    w.sign_in_as_admin().await;
    w.open_new_policy().await;
    w.type_into("#w-name", "Two triggers, two actions").await;
    w.click("#next-1").await;

    // Step 2: a second trigger, drawn on the same step and focused.
    w.type_into("#w-trigger_group-triggers-0-ups", "ups1").await;
    w.click("#add-triggers").await;
    w.element("#w-trigger_group-triggers-1-type").await;
    assert!(!w.hidden("#step-2").await, "still on the trigger step");
    assert_eq!(focused(&w).await, "w-trigger_group-triggers-1-type");
    assert_eq!(w.value("#w-trigger_group-triggers-0-ups").await, "ups1");
    w.choose("#w-trigger_group-triggers-1-type", "metric.threshold")
        .await;
    // Each trigger shows the fields of its own type (the ups.state field
    // goes once the next validation no longer finds it missing).
    w.eventually("trigger 2's ups.state field hidden", || async {
        w.hidden("#field-w-trigger_group-triggers-1-equals")
            .await
            .then_some(())
    })
    .await;
    assert!(!w.hidden("#field-w-trigger_group-triggers-0-equals").await);
    assert!(!w.hidden("#field-w-trigger_group-triggers-1-metric").await);
    w.type_into("#w-trigger_group-triggers-1-metric", "charge_pct")
        .await;
    w.type_into("#w-trigger_group-triggers-1-op", "<").await;
    w.type_into("#w-trigger_group-triggers-1-value", "50").await;
    w.shot("two-triggers").await;
    w.click("#next-2").await;

    // Step 3: two conditions, then the first removed.
    w.choose("#w-conditions-all-0-scope", "host").await;
    w.type_into("#w-conditions-all-0-field", "reachable").await;
    w.click("#add-conditions").await;
    w.element("#w-conditions-all-1-scope").await;
    assert_eq!(focused(&w).await, "w-conditions-all-1-scope");
    fill_condition(&w, 1, ("ups", "runtime_minutes", ">=", "5")).await;
    w.click("button[aria-label='Remove condition 1']").await;
    w.eventually("condition 2 in condition 1's place", || async {
        (w.value("#w-conditions-all-0-field").await == "runtime_minutes").then_some(())
    })
    .await;
    assert_eq!(w.count("#w-conditions-all-1-scope").await, 0);
    assert!(!w.hidden("#step-3").await, "still on the conditions step");
    w.click("#next-3").await;

    // Step 4: two actions.
    fill_vm_101_shutdown(&w).await;
    w.click("#add-actions").await;
    w.element("#w-actions-1-capability_id").await;
    assert_eq!(focused(&w).await, "w-actions-1-capability_id");
    w.type_into("#w-actions-1-capability_id", "proxmox.vm")
        .await;
    w.type_into("#w-actions-1-verb", "stop").await;
    w.shot("two-actions").await;
    w.click("#next-4").await;
    let review = w.text_contains("#review-spec", "verb: stop").await;
    assert!(review.contains("charge_pct"), "{review}");
    w.until_disabled("#save", false).await;
    w.click("#save").await;
    w.eventually("the saved policy's page", || async {
        let url = w.url().await;
        (url.contains("/policies/") && !url.ends_with("/new")).then_some(())
    })
    .await;
    let (_, list) = w.api(reqwest::Method::GET, "/api/policies", None).await;
    let spec = &list["items"][0]["spec"];
    assert_eq!(
        spec["trigger_group"]["triggers"],
        json!([
            {"type": "ups.state", "equals": "on_battery", "ups": "ups1"},
            {"type": "metric.threshold", "metric": "charge_pct", "op": "<", "value": 50},
        ]),
        "{spec}"
    );
    assert_eq!(
        spec["conditions"]["all"],
        json!([{"scope": "ups", "field": "runtime_minutes", "op": ">=", "value": 5}])
    );
    assert_eq!(spec["actions"][1]["verb"], "stop", "{spec}");
    assert_eq!(spec["actions"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_live_error_appears_at_its_field_while_typing_and_disappears_when_fixed() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("wizard-live-error").await;
    w.sign_in_as_admin().await;
    w.open_new_policy().await;
    w.click("#next-1").await;
    w.type_into(&format!("#{FOR_FIELD}"), "2x").await;
    let at_field = w
        .text_contains(&format!("#find-{FOR_FIELD}"), "schema.duration")
        .await;
    assert!(at_field.contains("invalid duration"), "{at_field}");
    assert!(
        !w.text("#other-findings").await.contains("schema.duration"),
        "shown at its field, not in the list of the rest"
    );
    w.text_contains("#step-count-2", "1 to check").await;
    w.shot("error").await;
    w.type_into(&format!("#{FOR_FIELD}"), "2m").await;
    w.eventually("the error to go", || async {
        w.text(&format!("#find-{FOR_FIELD}"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(w.text("#step-count-2").await, "");
    w.shot("fixed").await;
    // Drafts are validated without an audit record per keystroke.
    let (_, audit) = w
        .api(
            reqwest::Method::GET,
            "/api/audit?kind=policy.validated",
            None,
        )
        .await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(0), "{audit}");
}

#[tokio::test]
async fn the_selector_preview_counts_the_targets_and_names_the_missing_ids() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("wizard-selector").await;
    w.inventory_ready("pve-01").await;
    w.sign_in_as_admin().await;
    w.goto("/policies/new").await;
    w.click("#wizard .step-link[data-go=\"4\"]").await;
    w.choose("#w-targets-host_id", "pve-01").await;
    w.type_into("#w-targets-target_type", "vm").await;
    w.type_into("#w-targets-selector-value", "101,102,199")
        .await;
    let count = w.text_contains("#preview-count", "2 target(s)").await;
    assert!(count.contains("1 missing"), "{count}");
    let ids = w.text("#preview-ids").await;
    assert!(ids.contains("vm:101") && ids.contains("vm:102"), "{ids}");
    let missing = w.text_contains("#preview-missing", "vm:199").await;
    assert!(!missing.contains("vm:101"), "{missing}");
    // The validator says so too, at the selector's field.
    w.text_contains("#find-w-targets-selector-value", "selector.missing")
        .await;
    // Suggestions from the inventory search index, on the last id typed.
    w.type_into("#w-targets-selector-value", "101,10").await;
    let suggestions = w.text_contains("#suggestions", "vm:102 vm-102").await;
    assert!(suggestions.contains("vm:101 vm-101"), "{suggestions}");
    w.shot("preview").await;
    // A query resolves on the same inventory.
    w.choose("#w-targets-selector-mode", "query").await;
    w.type_into("#w-targets-selector-value", "status = running")
        .await;
    w.text_contains("#preview-count", "2 target(s)").await;
}

#[tokio::test]
async fn save_is_disabled_on_a_blocker_and_enabled_when_fixed() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("wizard-save-gate").await;
    let (status, created) = w
        .api(
            reqwest::Method::POST,
            "/api/policies",
            Some(policy("Stop vm 101 on battery", "pve-01")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    w.sign_in_as_admin().await;
    w.goto(&format!("/policies/{id}")).await;
    w.click("#edit-policy").await;
    w.eventually("the policy in the wizard", || async {
        (w.value("#w-name").await == "Stop vm 101 on battery").then_some(())
    })
    .await;
    w.until_disabled("#save", false).await;
    w.type_into("#w-name", "x").await;
    w.text_contains("#find-w-name", "schema.name_too_short")
        .await;
    w.until_disabled("#save", true).await;
    w.text_contains("#save-note", "disabled while there is a blocker")
        .await;
    w.shot("blocked").await;
    // The server refuses a blocked draft whatever the page does.
    let forged = w
        .script(
            "const done = arguments[0];
             const form = new URLSearchParams(new FormData(document.getElementById('wizard')));
             fetch('/ui/wizard/save', {method: 'POST', headers: {'X-Hazel-CSRF': '1'}, body: form})
               .then(r => done(r.status)).catch(e => done('error ' + e));",
        )
        .await;
    assert_eq!(forged, json!(400));
    let (_, stored) = w
        .api(reqwest::Method::GET, &format!("/api/policies/{id}"), None)
        .await;
    assert_eq!(stored["version_int"], 1, "nothing saved");

    w.type_into("#w-name", "Stop vm 101 on battery, renamed")
        .await;
    w.until_disabled("#save", false).await;
    assert_eq!(w.text("#find-w-name").await, "");
    w.shot("fixed").await;
    w.click("#save").await;
    w.eventually("the policy's page", || async {
        w.url()
            .await
            .ends_with(&format!("/policies/{id}"))
            .then_some(())
    })
    .await;
    let (_, stored) = w
        .api(reqwest::Method::GET, &format!("/api/policies/{id}"), None)
        .await;
    assert_eq!(stored["version_int"], 2);
    assert_eq!(stored["name"], "Stop vm 101 on battery, renamed");
}

#[tokio::test]
async fn create_inverse_opens_the_inverse_disabled_with_its_needs_input_highlighted() {
    let _one = ONE_BROWSER.lock().await;
    let w = World::start("wizard-inverse").await;
    let mut weekly = policy("Weekly stop of vm 101", "pve-01");
    weekly["trigger_group"] =
        json!({"triggers": [{"type": "timer.at", "schedule": {"cron": "0 1 * * 0"}}]});
    let (status, created) = w
        .api(reqwest::Method::POST, "/api/policies", Some(weekly))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (_, inverse) = w
        .api(
            reqwest::Method::POST,
            &format!("/api/policies/{id}/inverse"),
            None,
        )
        .await;
    let needs = inverse["needs_input"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let schedule = needs
        .iter()
        .find(|n| n["path"] == "/trigger_group/triggers/0/schedule")
        .unwrap_or_else(|| panic!("the inverse needs a schedule: {inverse}"));
    let note = schedule["note"].as_str().unwrap();

    w.sign_in_as_admin().await;
    w.goto(&format!("/policies/{id}")).await;
    w.click("#create-inverse").await;
    let list = w
        .text_contains("#needs-list", "/trigger_group/triggers/0/schedule")
        .await;
    assert_eq!(
        w.count("#needs-list li").await,
        needs.len(),
        "every needs_input listed: {list}"
    );
    assert_eq!(w.value("#w-enabled").await, "false", "opened disabled");
    // Highlighted at its field, on the Trigger step, with its note.
    w.click("#next-1").await;
    assert_eq!(
        w.count("#field-w-trigger_group-triggers-0-schedule.needs-input")
            .await,
        1
    );
    let at_field = w
        .text_contains("#need-w-trigger_group-triggers-0-schedule", "Needs input")
        .await;
    assert!(at_field.contains(note), "{at_field} / {note}");
    w.shot("inverse").await;
}
