//! Shared helpers for Hazel's end-to-end tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `target/<profile>/` directory this test executable was built in
/// (`target/debug/deps/console-…` -> `target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The `hazel` binary `cargo test --workspace` builds next to the test
/// executable, from the same profile. Fails with the command that builds
/// it when it is missing.
pub fn hazel_binary() -> PathBuf {
    let bin = profile_dir().join("hazel");
    assert!(
        bin.exists(),
        "the hazel binary is not built at {}: run `cargo build -p hazel-agent --bin hazel` \
         (`cargo test --workspace`, the README's test command, builds it)",
        bin.display()
    );
    bin
}

/// Polls `check` every 100 ms until it returns `Some`. After `within` it
/// fails with `what` and the text `context` gives (an agent log, a page
/// source), so a timeout says what was awaited and what was seen.
pub async fn eventually<T, F, Fut, C, CFut>(
    what: &str,
    within: Duration,
    mut check: F,
    context: C,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
    C: FnOnce() -> CFut,
    CFut: Future<Output = String>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}; {}", context().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
