//! The execution engine (SPEC §1 and §6): normalized events in, decided and
//! executed actions out, with what must survive a restart persisted.
//!
//! - [`event`]: the normalized event every source publishes;
//! - [`bus`]: the bounded event bus with backpressure;
//! - [`conditions`]: condition evaluation against a facts view;
//! - [`triggers`]: the trigger index and the trigger semantics of SPEC §2
//!   (edges, `for` debounce, `ALL`, timers), as pure state machines;
//! - [`decide`]: steps 1–3 for one event in memory (shortlist, order,
//!   triggers, conditions), the part measured by `benches/decide.rs`;
//! - [`scheduler`]: per-host single-flight FIFO queues under a global cap,
//!   and the kill switch that holds queued items;
//! - [`store`]: persistence of window state, deadlines, intents and the
//!   ledger behind a trait, with an embedded SQLite implementation;
//! - [`runner`]: the [`runner::Engine`], which runs SPEC §6 for one event
//!   (shortlist, order, triggers and conditions, suppression, re-resolution,
//!   idempotency, preflight guards, intent, enqueue, ledger, stop_on_match),
//!   the event dry-run, restarts and the kill switch. Its module docs list
//!   the known limits.

pub mod bus;
pub mod conditions;
pub mod decide;
pub mod event;
pub mod runner;
pub mod scheduler;
pub mod store;
pub mod subjects;
pub mod triggers;
