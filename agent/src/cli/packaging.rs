//! What a packaged `hazel` ships besides itself, generated from the clap
//! definitions so they never drift from the real options: shell completions
//! (`hazel completions bash|zsh|fish`) and the man page (`hazel man`, roff on
//! stdout). `scripts/build-deb.sh` runs both from the release binary to put
//! them in the Debian package (docs/install.md).

use std::io::Write;

/// The shells `hazel completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// Bash (bash-completion).
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// Writes the completion script of `shell` for the command `cmd` (the
/// binary's whole clap definition) and returns the exit code.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut impl Write) -> i32 {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, &mut buf)
        }
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, &mut buf),
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, &mut buf)
        }
    }
    write_all(out, &buf)
}

/// Writes the man page (section 1, roff) of the command `cmd`, its
/// subcommands included, and returns the exit code.
pub fn man(cmd: clap::Command, out: &mut impl Write) -> i32 {
    let mut buf = Vec::new();
    match render_man(cmd, &mut buf) {
        Ok(()) => write_all(out, &buf),
        Err(e) => {
            eprintln!("hazel man: {e}");
            super::EXIT_BLOCKED
        }
    }
}

/// The page: clap_mangen's name, synopsis, description and options, then
/// one section per subcommand with its own options (on this one page:
/// clap_mangen's own list would point at `hazel-validate(1)` pages that are
/// not shipped), the exit codes (the `after_help` text) and the version.
fn render_man(cmd: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .date(BUILD_DATE)
        .source(concat!("hazel ", env!("CARGO_PKG_VERSION")))
        .manual("Hazel manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    for sub in cmd.get_subcommands().filter(|s| shown(s)) {
        render_subcommand(sub, cmd.get_name(), out)?;
    }
    if let Some(after) = cmd.get_after_help() {
        writeln!(out, ".SH \"EXIT STATUS\"")?;
        writeln!(out, ".nf")?;
        let text = after.to_string();
        let text = text.strip_prefix("Exit codes:\n").unwrap_or(&text);
        writeln!(out, "{}", roff_escape(text))?;
        writeln!(out, ".fi")?;
    }
    man.render_version_section(out)?;
    Ok(())
}

/// One `.SH` per subcommand (nested ones as `hazel policy apply`): its long
/// help and its arguments as tagged paragraphs.
fn render_subcommand(sub: &clap::Command, parent: &str, out: &mut Vec<u8>) -> std::io::Result<()> {
    let path = format!("{parent} {}", sub.get_name());
    writeln!(out, ".SH \"{}\"", roff_escape(&path.to_uppercase()))?;
    let about = sub
        .get_long_about()
        .or_else(|| sub.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default();
    for para in about.split("\n\n") {
        writeln!(out, ".PP")?;
        writeln!(out, "{}", roff_escape(para.trim()))?;
    }
    for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let flag = match (arg.get_long(), arg.get_short()) {
            (Some(long), Some(short)) => format!("-{short}, --{long}{}", value_of(arg)),
            (Some(long), None) => format!("--{long}{}", value_of(arg)),
            (None, Some(short)) => format!("-{short}{}", value_of(arg)),
            (None, None) => arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| id.to_uppercase()),
        };
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|s| s.to_string())
            .unwrap_or_default();
        writeln!(out, ".TP")?;
        writeln!(out, "\\fB{}\\fR", roff_escape(&flag))?;
        writeln!(out, "{}", roff_escape(help.trim()))?;
    }
    for nested in sub.get_subcommands().filter(|s| shown(s)) {
        render_subcommand(nested, &path, out)?;
    }
    Ok(())
}

/// ` <NAME>` after an option that takes a value, nothing after a flag.
fn value_of(arg: &clap::Arg) -> String {
    if !arg.get_action().takes_values() {
        return String::new();
    }
    let name = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    format!(" <{name}>")
}

/// Whether a subcommand gets a section: not hidden, and not clap's own
/// `help` subcommand.
fn shown(cmd: &clap::Command) -> bool {
    !cmd.is_hide_set() && cmd.get_name() != "help"
}

/// Escapes text for a roff body line: backslashes, and a leading `.` or `'`
/// that roff would read as a request.
fn roff_escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    text.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_all(out: &mut impl Write, bytes: &[u8]) -> i32 {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => super::EXIT_OK,
        // A closed pipe (`hazel man | head`) is not the page's fault.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => super::EXIT_OK,
        Err(e) => {
            eprintln!("hazel: cannot write: {e}");
            super::EXIT_BLOCKED
        }
    }
}

/// The build date stamped by `build.rs` (`SOURCE_DATE_EPOCH` when set).
pub const BUILD_DATE: &str = env!("HAZEL_BUILD_DATE");

/// The commit stamped by `build.rs`: `commit 0123456789ab`, or `unknown
/// commit` when built outside a git checkout (a source tarball).
pub const COMMIT_TEXT: &str = env!("HAZEL_COMMIT_TEXT");

/// What `hazel --version` prints after the name: the crate version, the
/// commit and the build date, e.g. `0.1.0 (commit 0123456789ab, built
/// 2026-12-07)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HAZEL_COMMIT_TEXT"),
    ", built ",
    env!("HAZEL_BUILD_DATE"),
    ")"
);

#[cfg(test)]
#[path = "../../build_stamp.rs"]
mod build_stamp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_escape_keeps_lines_from_being_read_as_requests() {
        assert_eq!(roff_escape(".hidden\n'quoted"), "\\&.hidden\n\\&'quoted");
        assert_eq!(roff_escape("a\\b --x"), "a\\eb \\-\\-x");
    }

    #[test]
    fn the_version_names_the_commit_and_a_build_date() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains(COMMIT_TEXT));
        let date = BUILD_DATE.as_bytes();
        assert_eq!(date.len(), 10, "{BUILD_DATE}");
        assert!(date[4] == b'-' && date[7] == b'-', "{BUILD_DATE}");
    }

    #[test]
    fn a_build_outside_a_git_checkout_says_unknown_commit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(build_stamp::git_commit(dir.path()), None);
        assert_eq!(build_stamp::commit_text(None), "unknown commit");
        assert_eq!(build_stamp::commit_text(Some("  ")), "unknown commit");
    }

    #[test]
    fn a_source_tree_inside_another_repository_does_not_take_its_commit() {
        // The agent crate is inside the workspace's checkout but is not its
        // top level: a tarball unpacked there has no commit of its own.
        let agent = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(build_stamp::git_commit(agent), None);
    }

    #[test]
    fn a_checkout_names_its_twelve_character_commit() {
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if !workspace.join(".git").exists() {
            panic!("this test needs the git checkout (run it from a clone)");
        }
        let commit = build_stamp::git_commit(&workspace).expect("a commit");
        assert_eq!(commit.len(), 12, "{commit}");
        assert_eq!(
            build_stamp::commit_text(Some(&commit)),
            format!("commit {commit}")
        );
    }

    #[test]
    fn build_dates_are_civil_utc_days() {
        assert_eq!(build_stamp::civil_date(0), "1970-01-01");
        assert_eq!(build_stamp::civil_date(951_782_400), "2000-02-29");
        assert_eq!(build_stamp::civil_date(1_796_601_599), "2026-12-06");
    }
}
