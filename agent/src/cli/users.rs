//! `hazel user add NAME --role ROLE [--config FILE]`: adds (or replaces) a
//! web console account in the agent's store, which it opens directly (the
//! agent may be running: the store is one SQLite file in WAL mode). The
//! password is read from a prompt without echo when stdin is a terminal,
//! else from the first line of stdin (`printf '%s\n' "$PW" | hazel user add`),
//! so it never appears in the process list or the shell history.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use crate::service::users::{add_user, UserError};
use crate::service::{Config, Role};
use crate::store::SqliteStore;

use super::{EXIT_OK, EXIT_USAGE};

/// Runs `hazel user add`; returns the exit code.
pub fn add(name: &str, role: &str, config: Option<&Path>, out: &mut impl Write) -> i32 {
    let Some(role) = Role::parse(role) else {
        eprintln!("hazel user add: unknown role {role:?}: use viewer, operator or admin");
        return EXIT_USAGE;
    };
    let config = match config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("hazel user add: {e}");
                return EXIT_USAGE;
            }
        },
        None => Config::default(),
    };
    let password = match read_password() {
        Ok(p) => p,
        Err(message) => {
            eprintln!("hazel user add: {message}");
            return EXIT_USAGE;
        }
    };
    let path = config.data_dir.join(SqliteStore::DEFAULT_FILE_NAME);
    // Opening would create a missing database; where the directory's
    // marker says there was one, that would hide its loss from the next
    // start ("replaced" instead of "missing, restore it").
    if !path.exists() && config.data_dir.join(crate::store::MARKER_FILE).exists() {
        eprintln!(
            "hazel user add: the store {} is missing, but its data directory held one: restore it first (`hazel restore BACKUP`, docs/operations.md)",
            path.display()
        );
        return super::EXIT_BLOCKED;
    }
    let store = match SqliteStore::open(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "hazel user add: cannot open the store {}: {e}",
                path.display()
            );
            return super::EXIT_BLOCKED;
        }
    };
    match add_user(&store, name, role, &password, "cli") {
        Ok(created) => {
            let verb = if created { "added" } else { "updated" };
            let _ = writeln!(out, "user {name} {verb} with role {}", role.as_str());
            EXIT_OK
        }
        Err(e @ (UserError::BadName(_) | UserError::ShortPassword)) => {
            eprintln!("hazel user add: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("hazel user add: {e}");
            super::EXIT_BLOCKED
        }
    }
}

fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = prompt("Password: ")?;
    let second = prompt("Again: ")?;
    if first != second {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

/// Reads one line from the terminal with echo off (`stty -echo`).
fn prompt(text: &str) -> Result<String, String> {
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !stty("-echo") {
        return Err(
            "cannot turn the terminal's echo off; pipe the password on stdin instead".into(),
        );
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    eprintln!();
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
