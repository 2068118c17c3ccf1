//! Device-side tasks a driver started and has not seen end yet (SPEC §6
//! "Persistence and restarts"): the seam through which an `execute` hands
//! its task handle (a Proxmox UPID) to the engine *before* it waits for the
//! task, so that an agent killed mid-wait finds the handle in the intent at
//! its next start and reads the task instead of guessing from one state
//! read.
//!
//! The engine runs each `execute` inside [`with_task_sink`]; a driver calls
//! [`report_task`] right after the device accepted a change and returned a
//! handle. The sink is task-local, like the guard's
//! [`crate::guard::CallContext`], so the [`crate::driver::Driver`] signature
//! stays as it is and a driver with nothing to report does nothing. Outside
//! a sink (dry-runs, tests calling a driver directly) a report is dropped.
//!
//! At start the engine asks [`crate::driver::Driver::task_status`] about
//! each reported handle; drivers without tasks answer
//! [`TaskStatus::Unknown`] and the engine falls back to reading state.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A change one target's device accepted and runs on its own: the handle
/// to ask about it later. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHandle {
    /// Canonical target id (`vm:104`).
    pub target: String,
    /// The device's task id, opaque to the engine (a Proxmox UPID).
    pub handle: String,
}

/// What a device says about a task it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskStatus {
    /// Still running: the target may still change.
    Running,
    /// Ended without error; `exit` is the device's exit text (`OK`).
    Succeeded { exit: String },
    /// Ended with an error; `exit` says which.
    Failed { exit: String },
    /// The driver has no tasks, or the device no longer knows this one
    /// (task logs rotate): read the target's state instead.
    Unknown,
}

impl TaskStatus {
    /// Whether the task still runs.
    pub fn is_running(&self) -> bool {
        matches!(self, TaskStatus::Running)
    }
}

/// Where reported task handles go: the engine persists each into the
/// intent the running `execute` serves. Called synchronously from the
/// driver's task, so it must not block for long.
pub type TaskSink = Arc<dyn Fn(&TaskHandle) + Send + Sync>;

tokio::task_local! {
    static SINK: TaskSink;
}

/// Runs `call` (an `execute`) with `sink` receiving every task handle the
/// driver reports through [`report_task`].
pub async fn with_task_sink<F: Future>(sink: TaskSink, call: F) -> F::Output {
    SINK.scope(sink, call).await
}

/// Hands `handle` to the sink of the running call, if there is one. A
/// driver calls it as soon as the device accepted a change and returned a
/// handle, before it waits for the task to end.
pub fn report_task(handle: TaskHandle) {
    let _ = SINK.try_with(|sink| sink(&handle));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn reports_reach_the_sink_only_inside_with_task_sink() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink: TaskSink = {
            let seen = seen.clone();
            Arc::new(move |h: &TaskHandle| seen.lock().unwrap().push(h.clone()))
        };
        let handle = TaskHandle {
            target: "vm:100".into(),
            handle: "UPID:pve1:1:2:3:qmshutdown:100:root@pam:".into(),
        };
        report_task(handle.clone());
        with_task_sink(sink, async { report_task(handle.clone()) }).await;
        report_task(handle.clone());
        assert_eq!(*seen.lock().unwrap(), vec![handle]);
    }
}
