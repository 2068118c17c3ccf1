//! The offline commands of the `hazel` binary: `validate` and `compile`.
//! They read files, print for people or for scripts (`--json`), and return
//! the documented exit code; no agent is involved.

use std::io::Write;
use std::path::{Path, PathBuf};

use drivers::manifest::ManifestSet;
use inventory::index::Inventory;
use inventory::Severity;
use serde::Serialize;

use super::{EXIT_BLOCKED, EXIT_OK, EXIT_USAGE};
use crate::compile::CompileContext;
use crate::validate::{validate_text, ValidationReport};

/// The environment variable that overrides where manifests are loaded from.
pub const PLUGINS_ENV: &str = "HAZEL_PLUGINS";

/// Options shared by `validate` and `compile`.
#[derive(Debug, Clone, Default)]
pub struct OfflineOptions {
    /// Manifest directory; `None` means `$HAZEL_PLUGINS`, else `plugin-specs/`
    /// found from the working directory upwards, else the embedded manifests.
    pub plugins: Option<PathBuf>,
    /// Inventory file to resolve selectors against.
    pub inventory: Option<PathBuf>,
}

/// One file's result in `hazel validate --json`.
#[derive(Debug, Serialize)]
pub struct FileReport<'a> {
    pub file: &'a str,
    #[serde(flatten)]
    pub report: &'a ValidationReport,
}

/// A problem that makes the command unusable (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The manifest directory has invalid manifests.
    #[error("invalid plugin manifests in {dir}:\n{errors}")]
    Manifests { dir: String, errors: String },
    /// The inventory file is malformed.
    #[error("invalid inventory file {path}: {message}")]
    Inventory { path: String, message: String },
}

/// Finds and loads the manifests (see [`OfflineOptions::plugins`]).
pub fn load_manifests(explicit: Option<&Path>) -> Result<ManifestSet, CliError> {
    let dir = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(PLUGINS_ENV).map(PathBuf::from))
        .or_else(find_plugin_dir);
    let Some(dir) = dir else {
        return Ok(ManifestSet::embedded());
    };
    ManifestSet::load_dir(&dir).map_err(|errors| CliError::Manifests {
        dir: dir.display().to_string(),
        errors: errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

fn find_plugin_dir() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|d| d.join("plugin-specs"))
        .find(|d| d.is_dir())
}

/// Reads an inventory file (YAML or JSON).
pub fn load_inventory(path: &Path) -> Result<Inventory, CliError> {
    let text = super::read_bounded(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })?;
    inventory::file::parse_inventory(&text, None).map_err(|e| CliError::Inventory {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// `hazel validate`: validates every file, prints, and returns the exit code.
pub fn validate_files(
    files: &[PathBuf],
    opts: &OfflineOptions,
    json: bool,
    out: &mut impl Write,
) -> i32 {
    let (manifests, inventory) = match load_context(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hazel: {e}");
            return EXIT_USAGE;
        }
    };
    let ctx = CompileContext {
        inventory: inventory.as_ref(),
        now: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ..CompileContext::default()
    };
    let mut reports = Vec::with_capacity(files.len());
    let mut unreadable = false;
    for file in files {
        match super::read_bounded(file) {
            Ok(text) => reports.push((
                file.display().to_string(),
                validate_text(&text, &manifests, &ctx).report,
            )),
            Err(e) => {
                eprintln!("hazel: cannot read {}: {e}", file.display());
                unreadable = true;
            }
        }
    }
    if json {
        let list: Vec<FileReport<'_>> = reports
            .iter()
            .map(|(file, report)| FileReport { file, report })
            .collect();
        let _ = serde_json::to_writer_pretty(&mut *out, &list);
        let _ = writeln!(out);
    } else {
        print_human(&reports, out);
    }
    if unreadable {
        EXIT_USAGE
    } else if reports.iter().any(|(_, r)| !r.ok) {
        EXIT_BLOCKED
    } else {
        EXIT_OK
    }
}

/// `hazel compile`: prints the IR of one file, or its findings when it has blockers.
pub fn compile_file(file: &Path, opts: &OfflineOptions, out: &mut impl Write) -> i32 {
    let (manifests, inventory) = match load_context(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hazel: {e}");
            return EXIT_USAGE;
        }
    };
    let text = match super::read_bounded(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hazel: cannot read {}: {e}", file.display());
            return EXIT_USAGE;
        }
    };
    let ctx = CompileContext {
        inventory: inventory.as_ref(),
        now: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ..CompileContext::default()
    };
    let report = validate_text(&text, &manifests, &ctx).report;
    match &report.ir {
        Some(ir) => {
            let _ = serde_json::to_writer_pretty(&mut *out, ir);
            let _ = writeln!(out);
            for issue in &report.issues {
                eprintln!("{}", finding_line(&issue.finding));
            }
            EXIT_OK
        }
        None => {
            print_human(
                &[(file.display().to_string(), report)],
                &mut std::io::stderr(),
            );
            EXIT_BLOCKED
        }
    }
}

fn load_context(opts: &OfflineOptions) -> Result<(ManifestSet, Option<Inventory>), CliError> {
    let manifests = load_manifests(opts.plugins.as_deref())?;
    let inventory = opts.inventory.as_deref().map(load_inventory).transpose()?;
    Ok((manifests, inventory))
}

fn finding_line(f: &inventory::Finding) -> String {
    let path = if f.path.is_empty() {
        "/"
    } else {
        f.path.as_str()
    };
    let mut line = format!(
        "  {:<7} {:<28} {path}: {}",
        f.severity.as_str(),
        f.code,
        f.message
    );
    if let Some(hint) = &f.hint {
        line.push_str(&format!(" (hint: {hint})"));
    }
    line
}

fn print_human(reports: &[(String, ValidationReport)], out: &mut impl Write) {
    let mut counts = [0usize; 4];
    for (file, report) in reports {
        let status = if report.ok { "ok" } else { "blocked" };
        match &report.hash {
            Some(hash) => {
                let _ = writeln!(out, "{file}: {status} (hash {})", &hash[..12]);
            }
            None => {
                let _ = writeln!(out, "{file}: {status}");
            }
        }
        for issue in &report.issues {
            counts[issue.finding.severity as usize] += 1;
            let _ = writeln!(out, "{}", finding_line(&issue.finding));
        }
    }
    let blocked = reports.iter().filter(|(_, r)| !r.ok).count();
    let _ = writeln!(
        out,
        "{} file(s): {} ok, {} blocked; findings: {} blocker, {} error, {} warn, {} info",
        reports.len(),
        reports.len() - blocked,
        blocked,
        counts[Severity::Blocker as usize],
        counts[Severity::Error as usize],
        counts[Severity::Warn as usize],
        counts[Severity::Info as usize],
    );
}
