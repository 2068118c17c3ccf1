//! The kill switch (SPEC §9): engaged or released through the engine, which
//! persists it; reads come from the store. Dry-runs keep working while paused.

use super::{Actor, KillSwitchView, Service, ServiceError};
use crate::engine::store::EngineStore;

impl Service {
    /// The kill switch.
    pub async fn kill_switch(&self) -> Result<KillSwitchView, ServiceError> {
        let state = self.store(|s| s.kill_switch()).await?;
        Ok(KillSwitchView {
            paused: state.paused,
            since: state.since,
            by: state.by,
            reason: state.reason,
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
            self.engine_call(self.inner.engine.pause(&actor.subject, &reason))
                .await?;
        } else {
            self.engine_call(self.inner.engine.resume()).await?;
        }
        self.kill_switch().await
    }
}
