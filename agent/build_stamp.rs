//! What `build.rs` stamps into `hazel --version` and the man page: the
//! commit of the checkout being built and the build date. Kept apart from
//! `build.rs` so the agent's unit tests can run it (`cli::packaging`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git -C dir ARGS` and returns its trimmed stdout, `None` when git is
/// missing, fails or prints nothing.
pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The 12-character commit of the checkout whose top level is `workspace`,
/// `None` when `workspace` is not the top of a git work tree: a source
/// tarball, a container build context without `.git`, or a tarball unpacked
/// inside some other repository (whose commit would be a lie).
pub fn git_commit(workspace: &Path) -> Option<String> {
    let top = PathBuf::from(git(workspace, &["rev-parse", "--show-toplevel"])?);
    let same = match (top.canonicalize(), workspace.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return None;
    }
    git(workspace, &["rev-parse", "--short=12", "HEAD"])
}

/// The commit part of the version line: `commit 0123456789ab`, or
/// `unknown commit` when the build had none.
pub fn commit_text(commit: Option<&str>) -> String {
    match commit.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("commit {c}"),
        None => "unknown commit".to_string(),
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time, without a date library in the build
/// script (Howard Hinnant's days-to-civil algorithm).
pub fn civil_date(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
