//! Hazel's drivers: the [`driver::Driver`] contract the engine talks to, the
//! plugin manifests that describe each driver's capabilities, and the driver
//! implementations. Only [`registry`] names concrete drivers.

pub mod aruba;
pub mod breaker;
pub mod connection;
pub mod driver;
pub mod guard;
pub mod host;
pub mod linux_ssh;
pub mod manifest;
pub mod notes;
pub mod proxmox;
pub mod ratelimit;
pub mod registry;
pub mod secret;
pub mod ssh;
pub mod task;
#[cfg(feature = "sim")]
pub mod testing;
pub mod webhook;
