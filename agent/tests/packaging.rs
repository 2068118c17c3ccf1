//! What a packaged `hazel` ships besides itself, run through the real
//! binary: `--version` with the commit and build date, `hazel completions
//! bash|zsh|fish` and `hazel man` (docs/install.md).

use std::process::{Command, Output};

fn hazel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hazel"))
        .args(args)
        .output()
        .expect("the hazel binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn version_names_the_crate_version_the_commit_and_the_build_date() {
    let out = hazel(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let rest = text
        .strip_prefix(&format!("hazel {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{text}"));
    let (commit, rest) = rest
        .split_once(", built ")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
    let date = rest.strip_suffix(")\n").unwrap_or_else(|| panic!("{text}"));
    assert!(
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "{text}"
    );
}

#[test]
fn completions_are_written_for_bash_zsh_and_fish_with_every_subcommand() {
    for (shell, marker) in [
        ("bash", "complete -F _hazel"),
        ("zsh", "#compdef hazel"),
        ("fish", "complete -c hazel"),
    ] {
        let out = hazel(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = stdout(&out);
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["validate", "serve", "dry-run", "restore-set", "completions"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = hazel(&["completions", "powershell"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_documents_every_subcommand_its_options_and_the_exit_codes() {
    let out = hazel(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = stdout(&out);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH hazel 1 "), "{page}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH \"HAZEL VALIDATE\"",
        ".SH \"HAZEL SERVE\"",
        ".SH \"HAZEL POLICY APPLY\"",
        ".SH \"HAZEL COMPLETIONS\"",
        ".SH \"EXIT STATUS\"",
        ".SH VERSION",
    ] {
        assert!(page.contains(section), "the man page lacks {section}");
    }
    // Options that take a value show it; a roff request never starts a
    // line of help text.
    assert!(page.contains("\\fB\\-\\-config <FILE>\\fR"), "{page}");
    assert!(!page.contains(".SH \"HAZEL HELP\""));
}
