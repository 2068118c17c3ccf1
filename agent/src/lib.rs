//! Hazel's agent: policy spec parsing and validation, compile to the runtime
//! IR with its stable hash, and (in later layers) the engine and the API.

pub mod api;
pub mod cli;
pub mod client;
pub mod compile;
pub mod demo;
pub mod engine;
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
