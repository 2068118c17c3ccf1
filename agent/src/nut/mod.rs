//! UPS events from Network UPS Tools: a read-only client for upsd's TCP
//! protocol ([`client`], wire format in [`protocol`]) and the event source
//! that polls it and publishes `ups.state` and `metric.threshold` events
//! onto the engine's bus ([`source`]). [`testing`] starts a real upsd with
//! the `dummy-ups` driver for tests. Operator docs: `docs/nut.md`.

pub mod client;
pub mod protocol;
pub mod source;
pub mod testing;

pub use client::{ClientOptions, NutClient, NutError};
pub use protocol::ErrorCode;
pub use source::{spawn, LatestReadings, NutConfig, NutSources};
