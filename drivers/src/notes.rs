//! What a discovery could not read although it succeeded (SPEC §4: a
//! partial refresh is a warning, not an error): the seam through which a
//! driver says "the inventory has the PoE ports but no interfaces" so that
//! `hazel hosts`, `GET /api/hosts` and the console show it next to the
//! host, not only in the log.
//!
//! Like [`crate::task`], the collector is task-local: the inventory service
//! runs each `discover` inside [`with_discovery_notes`], a driver calls
//! [`report_partial`] from the async side of its `discover` (not from a
//! blocking closure, which runs on another thread), and the
//! [`crate::driver::Driver`] signature stays as it is. Outside a collector
//! a note is dropped.

use std::future::Future;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static NOTES: Arc<Mutex<Vec<String>>>;
}

/// Runs `call` (a `discover`) and returns its output with every note the
/// driver reported through [`report_partial`], in order.
pub async fn with_discovery_notes<F: Future>(call: F) -> (F::Output, Vec<String>) {
    let notes = Arc::new(Mutex::new(Vec::new()));
    let output = NOTES.scope(Arc::clone(&notes), call).await;
    let notes = std::mem::take(&mut *notes.lock().unwrap_or_else(|e| e.into_inner()));
    (output, notes)
}

/// Says that the running discovery succeeded without part of what it
/// reads: `note` names what is missing and what it means for actions.
/// Never holds a secret.
pub fn report_partial(note: impl Into<String>) {
    let note = note.into();
    let _ = NOTES.try_with(|notes| {
        notes.lock().unwrap_or_else(|e| e.into_inner()).push(note);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_reach_the_collector_of_their_call_and_are_dropped_outside_one() {
        report_partial("nobody listens");
        let (answer, notes) = with_discovery_notes(async {
            report_partial("no interface table");
            tokio::task::yield_now().await;
            report_partial("no LLDP table");
            42
        })
        .await;
        assert_eq!(answer, 42);
        assert_eq!(notes, ["no interface table", "no LLDP table"]);
        let ((), notes) = with_discovery_notes(async {}).await;
        assert!(notes.is_empty());
    }
}
