//! The `hazel` commands behind the binary's argument parsing: the offline
//! ones that read files ([`offline`]), the client commands that talk to a
//! running agent's HTTP API ([`client_cmds`]), and how their answers print
//! for people ([`render`]). Each returns the documented exit code; `main`
//! only parses arguments and exits.

pub mod client_cmds;
pub mod config_check;
pub mod offline;
pub mod packaging;
mod render;
pub mod store_cmds;
pub mod users;
pub mod why;

pub use client_cmds::{ClientOptions, Failure, Outcome};
pub use offline::{
    compile_file, load_inventory, load_manifests, validate_files, CliError, FileReport,
    OfflineOptions, PLUGINS_ENV,
};
pub use render::use_utc;

/// The largest file a command reads (a policy, an event, an inventory):
/// the API's default body limit (SPEC §12), so a file the agent would
/// refuse is refused here too, before it is read into memory.
pub const MAX_FILE_BYTES: u64 = crate::api::DEFAULT_BODY_LIMIT as u64;

/// Reads a text file of at most [`MAX_FILE_BYTES`]; a larger one is an
/// error naming the limit, found without reading it whole.
pub fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is larger than {MAX_FILE_BYTES} bytes, the most Hazel reads (docs/limits.md)"),
        ));
    }
    Ok(text)
}

/// Exit code: every file is free of blockers.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one file has a blocker; for the client commands, the
/// agent refused the request or its result has an error or a blocker.
pub const EXIT_BLOCKED: i32 = 1;
/// Exit code: bad usage, or a file, plugin dir or inventory that cannot be read.
pub const EXIT_USAGE: i32 = 2;
/// Exit code (client commands): the agent cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code (client commands): the token is missing, invalid, or its role
/// is too low (HTTP 401 or 403).
pub const EXIT_AUTH: i32 = 4;
