//! The kill switch (SPEC §9, §12): engaged through the engine, in memory
//! first and persisted second (a pause the store cannot write still holds,
//! answered with `persisted: false`, a loud log line and a metric);
//! released only when the release is written. Reads come from the store
//! unless a pause is held in memory only. Dry-runs keep working while paused.

use super::{Actor, KillSwitchView, Service, ServiceError};
use crate::engine::store::EngineStore;

impl Service {
    /// The kill switch.
    pub async fn kill_switch(&self) -> Result<KillSwitchView, ServiceError> {
        if let Some(view) = self.inner.unpersisted_pause.lock().await.clone() {
            return Ok(view);
        }
        let state = self.store(|s| s.kill_switch()).await?;
        Ok(KillSwitchView {
            paused: state.paused,
            since: state.since,
            by: state.by,
            reason: state.reason,
            persisted: true,
        })
    }

    /// Engages or releases the kill switch (persisted; dry-runs keep working).
    pub async fn set_kill_switch(
        &self,
        actor: &Actor,
        paused: bool,
        reason: Option<String>,
    ) -> Result<KillSwitchView, ServiceError> {
        if paused {
            let reason = reason.unwrap_or_else(|| "paused through the API".into());
            let persisted = self
                .engine_call(self.inner.engine.pause(&actor.subject, &reason))
                .await?;
            let mut memory = self.inner.unpersisted_pause.lock().await;
            if !persisted {
                self.inner.metrics.kill_switch_unpersisted();
                *memory = Some(KillSwitchView {
                    paused: true,
                    since: Some(chrono::Utc::now()),
                    by: Some(actor.subject.clone()),
                    reason: Some(reason),
                    persisted: false,
                });
            } else {
                *memory = None;
            }
        } else {
            // Release needs the write: an agent must never come back
            // paused-forgotten or released-unrecorded.
            self.engine_call(self.inner.engine.resume()).await?;
            *self.inner.unpersisted_pause.lock().await = None;
        }
        self.kill_switch().await
    }
}
