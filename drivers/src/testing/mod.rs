//! Helpers for tests that need real protocol peers on loopback (SPEC: "real
//! protocol peers over loopback for integration tests"). Built only with the
//! `sim` feature, so release builds of the agent carry none of it.
//!
//! Besides the peers themselves ([`sshd`]; the agent's `nut::testing` runs
//! upsd), it holds what every peer needs: a free loopback port and a
//! private temp dir.

pub mod sshd;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A loopback port nothing listens on right now: the OS picks it, the
/// listener is closed again, and the peer started next binds it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A new directory `hazel-<name>-<pid>-<n>-<nanos>` under the system temp
/// dir, with permission bits `mode` (`0o755` when another local user must
/// read it, `0o700` otherwise). The caller removes it; the peers do on drop.
pub fn temp_dir(name: &str, mode: u32) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hazel-{name}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    set_mode(&dir, mode);
    dir
}

/// Sets the permission bits of `path`, panicking with the path on failure.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
