//! The NUT network protocol's wire format (upsd, `docs/net-protocol.txt`):
//! tokenising reply lines with upsd's quoting and escaping rules, quoting
//! request words, and reading `ERR <CODE>` replies into a typed code. Pure
//! functions over strings; the TCP side is in [`super::client`].

/// An `ERR <CODE>` reply from upsd, typed. Codes Hazel acts on have their
/// own variant; any other code is kept verbatim in [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorCode {
    /// The driver is connected but has not updated within upsd's `MAXAGE`.
    #[error("DATA-STALE")]
    DataStale,
    /// upsd has no connection to the UPS's driver.
    #[error("DRIVER-NOT-CONNECTED")]
    DriverNotConnected,
    /// No UPS of that name in upsd's `ups.conf`.
    #[error("UNKNOWN-UPS")]
    UnknownUps,
    /// Bad credentials or a missing right (checked only by commands that need them).
    #[error("ACCESS-DENIED")]
    AccessDenied,
    /// The variable does not exist on this UPS.
    #[error("VAR-NOT-SUPPORTED")]
    VarNotSupported,
    /// upsd does not know the verb.
    #[error("UNKNOWN-COMMAND")]
    UnknownCommand,
    /// Wrong argument count or unknown sub-command.
    #[error("INVALID-ARGUMENT")]
    InvalidArgument,
    /// A second `USERNAME` on one connection.
    #[error("ALREADY-SET-USERNAME")]
    AlreadySetUsername,
    /// A second `PASSWORD` on one connection.
    #[error("ALREADY-SET-PASSWORD")]
    AlreadySetPassword,
    /// A command that needs `USERNAME` came before it.
    #[error("USERNAME-REQUIRED")]
    UsernameRequired,
    /// A command that needs `PASSWORD` came before it.
    #[error("PASSWORD-REQUIRED")]
    PasswordRequired,
    /// Any other code, as upsd sent it (`FEATURE-NOT-CONFIGURED`).
    #[error("{0}")]
    Other(String),
}

impl ErrorCode {
    /// Reads the code word of an `ERR` line (`DATA-STALE`).
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "DATA-STALE" => ErrorCode::DataStale,
            "DRIVER-NOT-CONNECTED" => ErrorCode::DriverNotConnected,
            "UNKNOWN-UPS" => ErrorCode::UnknownUps,
            "ACCESS-DENIED" => ErrorCode::AccessDenied,
            "VAR-NOT-SUPPORTED" => ErrorCode::VarNotSupported,
            "UNKNOWN-COMMAND" => ErrorCode::UnknownCommand,
            "INVALID-ARGUMENT" => ErrorCode::InvalidArgument,
            "ALREADY-SET-USERNAME" => ErrorCode::AlreadySetUsername,
            "ALREADY-SET-PASSWORD" => ErrorCode::AlreadySetPassword,
            "USERNAME-REQUIRED" => ErrorCode::UsernameRequired,
            "PASSWORD-REQUIRED" => ErrorCode::PasswordRequired,
            other => ErrorCode::Other(other.to_string()),
        }
    }

    /// Whether asking again later can succeed without anyone changing
    /// configuration: a stale or disconnected driver comes back by itself,
    /// an unknown UPS or a denied access does not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ErrorCode::DataStale | ErrorCode::DriverNotConnected)
    }
}

/// A reply line that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A `"` opened a word that the line never closes.
    #[error("unterminated quote")]
    UnterminatedQuote,
    /// The line ends in a lone `\`.
    #[error("trailing backslash")]
    TrailingBackslash,
}

/// Splits a line into words by upsd's parseconf rules: whitespace separates
/// words (CR counts as whitespace), `"..."` makes one word that may hold
/// spaces, `\` makes the next character literal inside or outside quotes,
/// and `#` outside quotes starts a comment. An empty quoted word (`""`) is
/// a word.
pub fn tokenize(line: &str) -> Result<Vec<String>, LineError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next().ok_or(LineError::TrailingBackslash)?;
                word.push(next);
                in_word = true;
            }
            '"' if quoted => quoted = false,
            '"' => {
                quoted = true;
                in_word = true;
            }
            c if quoted => word.push(c),
            '#' => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(LineError::UnterminatedQuote);
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// One request word as upsd reads it: bare when it is a plain token,
/// otherwise in quotes with `"`, `\` and `#` escaped.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\\' | '#' | '='));
    if plain {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        if matches!(c, '"' | '\\' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A request line: the words quoted as needed, joined by spaces, with the
/// terminating LF.
pub fn request_line(words: &[&str]) -> String {
    let mut line = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    line.push('\n');
    line
}

/// What one reply line is, read without knowing which request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyLine {
    /// `ERR <CODE> [...]`.
    Err(ErrorCode),
    /// Any other line, split into words.
    Words(Vec<String>),
}

/// Reads one reply line (without its LF). A line starting with the word
/// `ERR` is an error reply whatever follows.
pub fn parse_reply(line: &str) -> Result<ReplyLine, LineError> {
    let words = tokenize(line)?;
    match words.as_slice() {
        [first, code, ..] if first == "ERR" => Ok(ReplyLine::Err(ErrorCode::parse(code))),
        [first] if first == "ERR" => Ok(ReplyLine::Err(ErrorCode::Other(String::new()))),
        _ => Ok(ReplyLine::Words(words)),
    }
}

/// The words of `request` upsd repeats after `BEGIN LIST` / `END LIST`,
/// compared case-insensitively (keywords and UPS names are).
pub fn same_words(got: &[String], want: &[&str]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.eq_ignore_ascii_case(w))
}

/// Whether `status` (the value of `ups.status`) is upsd's `WAIT`: it has
/// (re)connected to the driver and waits for its first full update. Not a
/// reading and not a failure: "no information yet".
pub fn is_wait_status(status: &str) -> bool {
    status.split_whitespace().any(|t| t == "WAIT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(line: &str, expect: Expect) {
        let got = match parse_reply(line) {
            Ok(ReplyLine::Err(code)) => format!("err {code:?}"),
            Ok(ReplyLine::Words(words)) => format!("words {words:?}"),
            Err(e) => format!("malformed: {e}"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn reply_lines_split_into_words_with_quotes_and_escapes() {
        check(
            r#"VAR ups1 ups.status "OL CHRG""#,
            expect![[r#"words ["VAR", "ups1", "ups.status", "OL CHRG"]"#]],
        );
        check(
            r#"VAR ups1 ups.mfr "a\"b\\c\#d""#,
            expect![[r#"words ["VAR", "ups1", "ups.mfr", "a\"b\\c#d"]"#]],
        );
        check(
            r#"UPS spare "Description unavailable""#,
            expect![[r#"words ["UPS", "spare", "Description unavailable"]"#]],
        );
        check(
            "VAR ups1 ups.load \"023.4\"\r",
            expect![[r#"words ["VAR", "ups1", "ups.load", "023.4"]"#]],
        );
        check(
            r#"VAR ups1 ups.alarm """#,
            expect![[r#"words ["VAR", "ups1", "ups.alarm", ""]"#]],
        );
        check(
            "BEGIN LIST VAR ups1",
            expect![[r#"words ["BEGIN", "LIST", "VAR", "ups1"]"#]],
        );
        check("", expect![[r#"words []"#]]);
        check(
            "OK Goodbye # trailing comment",
            expect![[r#"words ["OK", "Goodbye"]"#]],
        );
    }

    #[test]
    fn err_replies_become_typed_codes() {
        check("ERR DATA-STALE", expect!["err DataStale"]);
        check(
            "ERR DRIVER-NOT-CONNECTED",
            expect!["err DriverNotConnected"],
        );
        check("ERR UNKNOWN-UPS", expect!["err UnknownUps"]);
        check("ERR ACCESS-DENIED", expect!["err AccessDenied"]);
        check("ERR VAR-NOT-SUPPORTED", expect!["err VarNotSupported"]);
        check("ERR UNKNOWN-COMMAND", expect!["err UnknownCommand"]);
        check(
            r#"ERR ACCESS-DENIED "certificate rejected""#,
            expect!["err AccessDenied"],
        );
        check(
            "ERR FEATURE-NOT-CONFIGURED",
            expect![[r#"err Other("FEATURE-NOT-CONFIGURED")"#]],
        );
        check("ERR", expect![[r#"err Other("")"#]]);
    }

    #[test]
    fn malformed_lines_are_errors_not_guesses() {
        check(
            r#"VAR ups1 ups.status "OL"#,
            expect!["malformed: unterminated quote"],
        );
        check(r#"VAR ups1 x \"#, expect!["malformed: trailing backslash"]);
        check(
            r#"ERR "DATA-STALE"#,
            expect!["malformed: unterminated quote"],
        );
    }

    #[test]
    fn only_stale_and_disconnected_drivers_are_retryable() {
        assert!(ErrorCode::DataStale.is_retryable());
        assert!(ErrorCode::DriverNotConnected.is_retryable());
        assert!(!ErrorCode::UnknownUps.is_retryable());
        assert!(!ErrorCode::AccessDenied.is_retryable());
        assert!(!ErrorCode::Other("X".into()).is_retryable());
    }

    #[test]
    fn request_words_are_quoted_only_when_needed_and_round_trip() {
        expect![[r#"
            "LIST VAR ups1\n"
        "#]]
        .assert_debug_eq(&request_line(&["LIST", "VAR", "ups1"]));
        expect![[r#"
            "PASSWORD \"p w\\\"\\\\\\#\"\n"
        "#]]
        .assert_debug_eq(&request_line(&["PASSWORD", "p w\"\\#"]));
        for word in ["plain", "two words", "a\"b", "back\\slash", "#x", "", "a=b"] {
            assert_eq!(tokenize(&quote(word)).unwrap(), vec![word.to_string()]);
        }
    }

    #[test]
    fn wait_status_is_recognised() {
        assert!(is_wait_status("WAIT"));
        assert!(!is_wait_status("OL"));
        assert!(!is_wait_status("OB LB"));
    }
}
