//! The `hazel` binary: argument parsing and exit codes; the work lives in the
//! `agent` library.

use std::path::PathBuf;

use agent::cli::{self, OfflineOptions};
use clap::{Parser, Subcommand};

/// Hazel: event-driven infrastructure automation with driver preflight.
#[derive(Debug, Parser)]
#[command(name = "hazel", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate policy files (JSON or YAML) and report every finding.
    ///
    /// Exit codes: 0 no file has a blocker, 1 some file has one, 2 usage error
    /// or unreadable file.
    Validate {
        /// Print a JSON array, one `{file, ok, issues, hash, ir}` per file.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        offline: OfflineArgs,
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the compiled IR of a policy file (findings go to stderr).
    Compile {
        #[command(flatten)]
        offline: OfflineArgs,
        /// Policy file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct OfflineArgs {
    /// Inventory file (YAML or JSON) to resolve selectors against.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Plugin manifest directory [default: $HAZEL_PLUGINS, else plugin-specs/
    /// found from the working directory upwards, else the built-in manifests].
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
}

impl From<OfflineArgs> for OfflineOptions {
    fn from(a: OfflineArgs) -> Self {
        OfflineOptions {
            plugins: a.plugins,
            inventory: a.inventory,
        }
    }
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let code = match args.command {
        Command::Validate {
            json,
            offline,
            files,
        } => cli::validate_files(&files, &offline.into(), json, &mut stdout),
        Command::Compile { offline, file } => {
            cli::compile_file(&file, &offline.into(), &mut stdout)
        }
    };
    std::process::exit(code);
}
