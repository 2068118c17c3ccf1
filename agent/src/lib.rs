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
