//! The event bus: every source (NUT, metrics, timers, webhooks, host probes,
//! the API) publishes normalized [`Event`]s into one bounded queue that the
//! engine consumes in order. A full bus makes the source wait instead of
//! dropping anything, and counts that it had to; shutdown closes the bus and
//! drains what it already accepted.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::event::Event;

/// Default bus capacity: enough for a burst from every source at once.
pub const DEFAULT_CAPACITY: NonZeroUsize = NonZeroUsize::new(1024).unwrap();

/// A snapshot of the bus counters. Counters are updated without a lock, so
/// a snapshot taken while events move may be off by the events in flight.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BusStats {
    /// Events accepted onto the bus.
    pub published: u64,
    /// Publications that found the bus full and had to wait for room.
    pub waited: u64,
    /// Events handed to the consumer.
    pub delivered: u64,
    /// Events on the bus now, accepted but not yet delivered.
    pub depth: usize,
    /// How many events the bus holds at most.
    pub capacity: usize,
    /// `waited`, per source name, for sources that ever had to wait.
    pub waited_by_source: BTreeMap<String, u64>,
}

/// The bus is closed: the consumer shut down. The event comes back to the
/// caller so that it is never lost silently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the event bus is closed")]
pub struct BusClosed(pub Event);

/// Why [`Publisher::try_publish`] did not accept an event; either way the
/// event comes back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TryPublishError {
    /// The bus is at capacity; retry later or use [`Publisher::publish`].
    #[error("the event bus is full")]
    Full(Event),
    /// The consumer shut down.
    #[error("the event bus is closed")]
    Closed(Event),
}

impl TryPublishError {
    /// The event that was not accepted.
    pub fn into_event(self) -> Event {
        match self {
            TryPublishError::Full(e) | TryPublishError::Closed(e) => e,
        }
    }

    /// Whether retrying can succeed (the bus was only full).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TryPublishError::Full(_))
    }
}

/// The sending half, one per source; clone it for more sources.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    source: Arc<str>,
}

/// The receiving half: the engine, the only consumer.
#[derive(Debug)]
pub struct Consumer {
    rx: mpsc::Receiver<Event>,
    counters: Arc<Counters>,
}

/// Creates a bus holding at most `capacity` events. The first publisher's
/// source name is `source`; name clones with [`Publisher::with_source`].
pub fn channel(capacity: NonZeroUsize, source: &str) -> (Publisher, Consumer) {
    // tokio's channel refuses capacities above its semaphore limit.
    let capacity = capacity.get().min(tokio::sync::Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::channel(capacity);
    let counters = Arc::new(Counters::default());
    let publisher = Publisher {
        tx,
        counters: Arc::clone(&counters),
        source: Arc::from(source),
    };
    (publisher, Consumer { rx, counters })
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    waited: AtomicU64,
    delivered: AtomicU64,
    /// Touched only on the slow path, when a publisher has to wait.
    waited_by_source: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn record_wait(&self, source: &str) {
        self.waited.fetch_add(1, Ordering::Relaxed);
        let mut by_source = self
            .waited_by_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *by_source.entry(source.to_string()).or_default() += 1;
    }

    fn snapshot(&self, depth: usize, capacity: usize) -> BusStats {
        BusStats {
            published: self.published.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            depth,
            capacity,
            waited_by_source: self
                .waited_by_source
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }
}

impl Publisher {
    /// A clone of this publisher that reports waits under another source name.
    pub fn with_source(&self, source: &str) -> Publisher {
        Publisher {
            source: Arc::from(source),
            ..self.clone()
        }
    }

    /// The source name waits are counted under.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Puts `event` on the bus, waiting for room when it is full (the wait is
    /// counted in [`BusStats::waited`]). Never drops: on a closed bus the
    /// event comes back in the error.
    pub async fn publish(&self, event: Event) -> Result<(), BusClosed> {
        let event = match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(TrySendError::Closed(event)) => return Err(BusClosed(event)),
            Err(TrySendError::Full(event)) => event,
        };
        self.counters.record_wait(&self.source);
        tracing::debug!(
            source = %self.source,
            capacity = self.tx.max_capacity(),
            "event bus full, source waits"
        );
        match self.tx.send(event).await {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError(event)) => Err(BusClosed(event)),
        }
    }

    /// Puts `event` on the bus only if there is room now; otherwise gives it
    /// back (nothing is dropped silently).
    pub fn try_publish(&self, event: Event) -> Result<(), TryPublishError> {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(event)) => Err(TryPublishError::Full(event)),
            Err(TrySendError::Closed(event)) => Err(TryPublishError::Closed(event)),
        }
    }

    /// Whether the consumer has shut down.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn stats(&self) -> BusStats {
        let capacity = self.tx.max_capacity();
        self.counters
            .snapshot(capacity - self.tx.capacity(), capacity)
    }
}

impl Consumer {
    /// The next event in publication order; `None` once the bus is closed
    /// (or every publisher is gone) and everything accepted was delivered.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await?;
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        Some(event)
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Event> {
        let event = self.rx.try_recv().ok()?;
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        Some(event)
    }

    /// Stops accepting events: publishers get theirs back from now on, and
    /// publishers waiting for room are woken with theirs. What the bus
    /// already accepted stays readable through [`Consumer::recv`].
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// Shutdown: closes the bus and returns every event it had accepted, in
    /// order, so the engine can finish or persist them.
    pub async fn drain(&mut self) -> Vec<Event> {
        self.close();
        let mut out = Vec::with_capacity(self.rx.len());
        while let Some(event) = self.recv().await {
            out.push(event);
        }
        out
    }

    pub fn stats(&self) -> BusStats {
        self.counters
            .snapshot(self.rx.len(), self.rx.max_capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::{EventKind, Subject, SubjectKind};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::Map;
    use std::time::Duration;
    use uuid::Uuid;

    /// A webhook event whose name is `source/n`, so order and origin show.
    fn event(source: &str, n: usize) -> Event {
        let mut attrs = Map::new();
        attrs.insert("name".into(), format!("{source}/{n}").into());
        Event {
            kind: EventKind::WebhookCustom,
            subject: Subject {
                kind: SubjectKind::Integration,
                id: source.to_string(),
            },
            attrs,
            ts: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            correlation_id: Uuid::nil(),
        }
    }

    fn name(event: &Event) -> String {
        event.webhook_name().unwrap_or_default().to_string()
    }

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_delivered_in_publication_order() {
        let (tx, mut rx) = channel(cap(8), "nut");
        for n in 0..5 {
            tx.publish(event("nut", n)).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(name(&e));
        }
        assert_eq!(got, ["nut/0", "nut/1", "nut/2", "nut/3", "nut/4"]);
        let stats = rx.stats();
        assert_eq!((stats.published, stats.delivered, stats.waited), (5, 5, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bus_makes_the_publisher_wait_and_counts_it() {
        let (tx, mut rx) = channel(cap(2), "nut");
        tx.publish(event("nut", 0)).await.unwrap();
        tx.publish(event("nut", 1)).await.unwrap();
        assert_eq!(tx.stats().depth, 2);

        let webhook = tx.with_source("webhook");
        let blocked = tokio::spawn(async move { webhook.publish(event("webhook", 0)).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!blocked.is_finished(), "publisher should wait for room");
        let stats = rx.stats();
        assert_eq!((stats.waited, stats.published, stats.depth), (1, 2, 2));
        assert_eq!(stats.waited_by_source.get("webhook"), Some(&1));

        assert_eq!(name(&rx.recv().await.unwrap()), "nut/0");
        blocked.await.unwrap().unwrap();
        let rest: Vec<_> = [rx.recv().await.unwrap(), rx.recv().await.unwrap()]
            .iter()
            .map(name)
            .collect();
        assert_eq!(rest, ["nut/1", "webhook/0"]);
        let stats = rx.stats();
        assert_eq!(
            (
                stats.published,
                stats.delivered,
                stats.waited,
                stats.depth,
                stats.capacity
            ),
            (3, 3, 1, 0, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_publish_on_a_full_bus_gives_the_event_back() {
        let (tx, mut rx) = channel(cap(1), "api");
        tx.try_publish(event("api", 0)).unwrap();
        let refused = tx.try_publish(event("api", 1)).unwrap_err();
        assert!(refused.is_retryable());
        assert_eq!(name(&refused.into_event()), "api/1");
        assert_eq!(rx.stats().published, 1);
        assert_eq!(name(&rx.recv().await.unwrap()), "api/0");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_everything_accepted_and_refuses_the_rest() {
        let (tx, mut rx) = channel(cap(3), "nut");
        for n in 0..3 {
            tx.publish(event("nut", n)).await.unwrap();
        }
        let waiting = tx.clone();
        let blocked = tokio::spawn(async move { waiting.publish(event("nut", 3)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;

        let drained: Vec<_> = rx.drain().await.iter().map(name).collect();
        assert_eq!(drained, ["nut/0", "nut/1", "nut/2"]);
        // The publisher that was waiting gets its event back, not a silent drop.
        let BusClosed(returned) = blocked.await.unwrap().unwrap_err();
        assert_eq!(name(&returned), "nut/3");
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_publish(event("nut", 4)),
            Err(TryPublishError::Closed(_))
        ));
        let stats = rx.stats();
        assert_eq!((stats.published, stats.delivered, stats.depth), (3, 3, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn a_burst_from_many_sources_loses_nothing_and_keeps_each_sources_order(
            capacity in 1usize..8,
            bursts in proptest::collection::vec(0usize..40, 1..6),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let (got, stats) = rt.block_on(async {
                let (tx, mut rx) = channel(cap(capacity), "root");
                let mut tasks = Vec::new();
                for (s, &count) in bursts.iter().enumerate() {
                    let tx = tx.with_source(&format!("s{s}"));
                    tasks.push(tokio::spawn(async move {
                        for n in 0..count {
                            tx.publish(event(&format!("s{s}"), n)).await.unwrap();
                        }
                    }));
                }
                drop(tx);
                let mut got = Vec::new();
                while let Some(e) = rx.recv().await {
                    got.push(name(&e));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                (got, rx.stats())
            });
            let total: usize = bursts.iter().sum();
            prop_assert_eq!(got.len(), total);
            prop_assert_eq!(stats.published, total as u64);
            prop_assert_eq!(stats.delivered, total as u64);
            prop_assert!(stats.waited <= total as u64);
            for (s, &count) in bursts.iter().enumerate() {
                let prefix = format!("s{s}/");
                let mine: Vec<_> = got.iter().filter(|n| n.starts_with(&prefix)).cloned().collect();
                let expected: Vec<_> = (0..count).map(|n| format!("s{s}/{n}")).collect();
                prop_assert_eq!(mine, expected);
            }
        }
    }
}
