//! Hazel's agent: policy spec parsing and validation, compile to the runtime
//! IR with its stable hash, the engine that reacts to events, the service
//! and its store, the HTTP API, the NUT event source and the `hazel` CLI.
//!
//! # Layout
//!
//! - `spec` -> `validate` -> `compile` (-> `ir`, `hash`): what a user writes,
//!   checked and turned into the runtime IR (SPEC §2–§4).
//! - `engine`: events, bus, triggers, conditions, the decider, the
//!   scheduler, the engine's storage trait and the runner (SPEC §6); pure
//!   where it decides. `engine::subjects` is the last known state per UPS.
//! - `service`: the one handle the API, the CLI tests and the demo share
//!   (`open`, `policies`, `hosts`, `events`, `kill_switch`, `audit`), over
//!   `store` (SQLite: policies, hosts, sealed secrets, and the engine's tables).
//! - `api` (HTTP only here), `client` and `cli` (the client commands and their
//!   rendering), `serve` and `demo` (the long-running commands).
//! - `nut`: the UPS event source; `inventory_service`: refresh and discovery;
//!   `inverse`: generated inverse policies.

pub mod api;
pub mod cli;
pub mod client;
pub mod compile;
pub mod console;
pub mod demo;
pub mod engine;
pub mod fuzz_entry;
pub mod hash;
pub mod inventory_service;
pub mod inverse;
pub mod ir;
pub mod nut;
pub mod serve;
pub mod service;
pub mod spec;
pub mod store;
pub mod validate;

/// An error and its `source` chain on one line, for people: each cause
/// after a `: `, left out when the text so far already says it (many
/// errors repeat their source in their own message).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_chain_names_each_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error, &'static str);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.1)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = || std::io::Error::other("disk full");
        assert_eq!(
            super::error_chain(&Outer(io(), "cannot save")),
            "cannot save: disk full"
        );
        assert_eq!(
            super::error_chain(&Outer(io(), "cannot save (disk full)")),
            "cannot save (disk full)"
        );
    }
}
