//! The CPU slots (SPEC §12): CPU-bound work of API requests (validation,
//! compile, selector resolution) runs on the blocking pool, never on the
//! async workers, and never more than [`CPU_SLOTS`] jobs at once.
//!
//! Gated work (saves, dry-runs) waits for a slot as long as it takes: one
//! is at most a few per operator action. A validation, which anyone with a
//! token can send in a loop, waits for a slot at most [`VALIDATION_WAIT`]
//! and only while fewer than [`VALIDATION_QUEUE`] others wait; past either,
//! it is answered `503 service.busy` with `Retry-After`. A burst of
//! clients is served in turn instead of refused, and a flood costs a
//! bounded queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many CPU-bound jobs run at once on the blocking pool.
pub const CPU_SLOTS: usize = 4;

/// How many validations may wait for a slot at once.
pub const VALIDATION_QUEUE: usize = 64;

/// How long a validation waits for a slot.
pub const VALIDATION_WAIT: Duration = Duration::from_secs(1);

/// The slots and the validations waiting for one.
pub(crate) struct CpuSlots {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    wait: Duration,
}

impl Default for CpuSlots {
    fn default() -> Self {
        CpuSlots::new(CPU_SLOTS, VALIDATION_QUEUE, VALIDATION_WAIT)
    }
}

/// Counts a waiter out when its wait ends, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CpuSlots {
    pub(crate) fn new(slots: usize, queue: usize, wait: Duration) -> CpuSlots {
        CpuSlots {
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            queue,
            wait,
        }
    }

    /// Jobs holding a slot now.
    pub(crate) fn running(&self, total: usize) -> usize {
        total - self.slots.available_permits()
    }

    /// A slot, waited for as long as it takes; `None` only once the slots
    /// are closed (never, today).
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }

    /// A slot for a validation: at once when one is free; else after a
    /// wait of at most `wait` in a queue of at most `queue`; else `None`.
    pub(crate) async fn acquire_bounded(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(permit);
        }
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.queue {
            return None;
        }
        tokio::time::timeout(self.wait, Arc::clone(&self.slots).acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_validation_waits_in_a_bounded_queue_for_a_bounded_time() {
        let slots = Arc::new(CpuSlots::new(1, 2, Duration::from_secs(1)));
        let held = slots.acquire_bounded().await.expect("a free slot at once");
        // Two wait; a third finds the queue full and is refused at once.
        let first = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire_bounded().await }
        });
        let second = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire_bounded().await.is_some() }
        });
        for _ in 0..1000 {
            if slots.waiting.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 2, "both wait");
        assert!(slots.acquire_bounded().await.is_none(), "the queue is full");
        // The slot frees within the wait: the first waiter gets it and
        // keeps it; the second waits its second out and is refused.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        let kept = first.await.unwrap();
        assert!(kept.is_some(), "served after a wait");
        assert!(!second.await.unwrap(), "refused after the wait");
        assert_eq!(
            slots.waiting.load(Ordering::SeqCst),
            0,
            "both left the queue"
        );
        drop(kept);
        assert_eq!(slots.running(1), 0, "every slot came back");
    }
}
