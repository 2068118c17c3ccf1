//! Helpers for tests that need real protocol peers on loopback (SPEC: "real
//! protocol peers over loopback for integration tests"). Built only with the
//! `sim` feature, so release builds of the agent carry none of it.

pub mod sshd;
