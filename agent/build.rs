//! Stamps the `hazel` binary with what `hazel --version` prints: the short
//! git commit and the build date (`build_stamp.rs`). Outside a git checkout
//! (a source tarball, a container build without `.git`) the version says
//! `unknown commit` unless `HAZEL_GIT_COMMIT` names it. The date is
//! `SOURCE_DATE_EPOCH` when set (reproducible builds), else the day the build
//! script ran; it only reruns when the commit or those variables change, so
//! ordinary edits do not restamp (and rebuild) the crate.

use std::path::{Path, PathBuf};

#[path = "build_stamp.rs"]
mod build_stamp;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_stamp.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=HAZEL_GIT_COMMIT");
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let workspace = manifest.parent().unwrap_or(&manifest).to_path_buf();
    let commit = std::env::var("HAZEL_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| build_stamp::git_commit(&workspace));
    if commit.is_some() {
        watch_git_head(&workspace);
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    println!(
        "cargo:rustc-env=HAZEL_COMMIT_TEXT={}",
        build_stamp::commit_text(commit.as_deref())
    );
    println!(
        "cargo:rustc-env=HAZEL_BUILD_DATE={}",
        build_stamp::civil_date(epoch)
    );
}

/// Reruns this script when HEAD moves: the HEAD file (a branch switch) and
/// the branch's ref (a commit), loose or packed.
fn watch_git_head(workspace: &Path) {
    let Some(git_dir) = build_stamp::git(workspace, &["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let git_dir = PathBuf::from(git_dir);
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    let common = build_stamp::git(workspace, &["rev-parse", "--git-common-dir"])
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace.join(p)
            }
        })
        .unwrap_or_else(|| git_dir.clone());
    if let Some(head_ref) = build_stamp::git(workspace, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = common.join(&head_ref);
        if loose.exists() {
            println!("cargo:rerun-if-changed={}", loose.display());
        }
    }
    let packed = common.join("packed-refs");
    if packed.exists() {
        println!("cargo:rerun-if-changed={}", packed.display());
    }
}
