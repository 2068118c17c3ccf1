//! Reads for the web console's live views (SPEC §11): each configured
//! UPS with its latest NUT readings, and the newest run of each policy.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Service, ServiceError};
use crate::engine::conditions::UpsFacts;
use crate::engine::store::{EngineStore, IntentRecord, RunHeadline};

impl Service {
    /// Every configured NUT UPS (by subject id, `ups1@nas.lan:3493`) with
    /// its latest readings; `None` until the first poll answered.
    pub fn ups_readings(&self) -> Vec<(String, Option<UpsFacts>)> {
        let latest: HashMap<String, UpsFacts> = self
            .inner
            .readings
            .as_ref()
            .map(|r| r.snapshot())
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.subject_id.clone(), f))
            .collect();
        self.inner
            .config
            .nut
            .iter()
            .map(|n| {
                let id = n.subject_id();
                let facts = latest.get(&id).cloned();
                (id, facts)
            })
            .collect()
    }

    /// The newest run in the ledger of each of `ids` that has one, as its
    /// headline (when it started, how it ended), in one store query.
    pub async fn last_runs(
        &self,
        ids: Vec<Uuid>,
    ) -> Result<HashMap<Uuid, RunHeadline>, ServiceError> {
        self.store(move |s| s.last_run_headlines(&ids)).await
    }

    /// The items the engine accepted and has not finished, oldest first:
    /// running (`started_at` set) and queued ones (behind another item on
    /// their host, or held by the kill switch). Read from the intents the
    /// engine writes before it queues an item, so the answer is the
    /// store's, not a guess from events.
    pub async fn open_items(&self) -> Result<Vec<IntentRecord>, ServiceError> {
        self.store(|s| {
            let mut items = s.open_intents()?;
            items.sort_by_key(|item| item.created_at);
            Ok(items)
        })
        .await
    }
}
