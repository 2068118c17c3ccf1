//! The dashboard's live updates (SPEC §11): one server-sent event stream
//! per open dashboard, `GET /ui/dashboard/events`. Every second it sends a
//! `beat` (the time, so the page can tell a quiet stream from a dead one),
//! and, when they changed since the last send, the `live` fragment (UPSes,
//! hosts, runs) and the `kill` fragment (the kill switch). The page's
//! script (`/assets/live.js`) swaps them in and shows the "stale" marker
//! when the stream errors or has been quiet for five seconds; the browser
//! reconnects by itself, and the script reopens a stream the server
//! refused. The stream ends when the server stops, so a graceful shutdown
//! never waits on an open dashboard.
//!
//! Every open stream shares one snapshot ([`Snapshots`]): the service is
//! read at most once per half beat however many dashboards are open, so
//! ten tabs cost what one does.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use askama::Template;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::Utc;
use futures::StreamExt;

use super::{kill_view, live, time, KillFragment, KillView, LiveFragment, Viewer};
use crate::api::conn::Stopping;
use crate::api::AppState;
use crate::engine::conditions::UpsFacts;
use crate::service::{Actor, Service, ServiceError};

/// How often the stream looks for changes and sends a beat.
const BEAT: Duration = Duration::from_secs(1);

const LIVE_JS: &[u8] = include_bytes!("assets/live.js");

pub(super) async fn live_js() -> Response {
    super::asset("text/javascript; charset=utf-8", LIVE_JS)
}

/// One UPS as the dashboard draws it.
pub struct UpsRow {
    pub id: String,
    /// `on_battery`, `on_mains` or `unknown` (no reading yet).
    pub state: &'static str,
    /// The other states it is in (`low_battery`, `comm_lost`).
    pub conditions: String,
    pub charge: String,
    pub runtime: String,
    pub load: String,
}

/// The dashboard's UPS rows, from the NUT pollers' latest readings.
pub fn ups_rows(service: &Service) -> Vec<UpsRow> {
    service
        .ups_readings()
        .into_iter()
        .map(|(id, facts)| ups_row(id, facts.as_ref()))
        .collect()
}

fn ups_row(id: String, facts: Option<&UpsFacts>) -> UpsRow {
    let number = |v: Option<f64>, unit: &str| {
        v.map_or_else(|| "–".to_string(), |v| format!("{}{unit}", round(v)))
    };
    UpsRow {
        id,
        state: facts
            .and_then(|f| f.state)
            .map_or("unknown", |s| s.as_str()),
        conditions: facts
            .map(|f| {
                f.conditions
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        charge: number(facts.and_then(|f| f.charge_pct), " %"),
        runtime: number(facts.and_then(|f| f.runtime_minutes), " min"),
        load: number(facts.and_then(|f| f.load), " %"),
    }
}

/// A reading with at most one decimal, without a trailing `.0`.
fn round(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// How long a snapshot serves every stream before the service is read
/// again: half a beat, so a stream shows what is at most 1.5 beats old.
const FRESH: Duration = Duration::from_millis(500);

/// What every stream of a beat shows: the rendered `live` fragment (the
/// same for every viewer) and the kill switch (drawn per viewer: only some
/// roles get its buttons).
pub(crate) struct Snapshot {
    live: String,
    kill: KillView,
}

/// The dashboard's shared snapshot.
pub(crate) type Snapshots = Latest<Snapshot>;

/// The latest outcome of a read and when it was made. The lock is held
/// while a read runs, so streams that tick together wait for that one read
/// rather than each reading the service (single flight). A failure is
/// kept as fresh as a value: while it is, callers get
/// [`Unread::Recently`] at once instead of each repeating a slow failing
/// read in turn behind the lock.
pub(crate) struct Latest<T> {
    last: tokio::sync::Mutex<Option<(Instant, Option<Arc<T>>)>>,
}

/// Why [`Latest::get`] has no value.
#[derive(Debug, PartialEq)]
pub(crate) enum Unread<E> {
    /// The read this call made failed.
    Failed(E),
    /// A read failed less than the freshness ago (logged by its caller).
    Recently,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest {
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T> Latest<T> {
    /// The outcome of the read made less than `fresh` ago, or of a new one
    /// from `read`.
    async fn get<E, Fut>(
        &self,
        fresh: Duration,
        read: impl FnOnce() -> Fut,
    ) -> Result<Arc<T>, Unread<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = last.as_ref() {
            if at.elapsed() < fresh {
                return outcome.clone().ok_or(Unread::Recently);
            }
        }
        match read().await {
            Ok(value) => {
                let value = Arc::new(value);
                *last = Some((Instant::now(), Some(Arc::clone(&value))));
                Ok(value)
            }
            Err(e) => {
                *last = Some((Instant::now(), None));
                Err(Unread::Failed(e))
            }
        }
    }
}

/// Reads the service for one snapshot.
async fn snapshot(state: &AppState) -> Result<Snapshot, ServiceError> {
    let live = live(state).await?;
    let kill = kill_view(state).await?;
    Ok(Snapshot {
        live: LiveFragment { live }.render().unwrap_or_default(),
        kill,
    })
}

/// What a stream last sent, to send only changes.
struct Feed {
    state: AppState,
    viewer: Viewer,
    live: String,
    kill: String,
    first: bool,
    tick: tokio::time::Interval,
}

impl Feed {
    /// The events of one beat: the changed fragments, then the beat; none
    /// when the service cannot answer (the page then goes stale).
    async fn next(&mut self) -> Vec<Event> {
        self.tick.tick().await;
        let feed = self.state.dashboard_feed();
        let snapshot = match feed.get(FRESH, || snapshot(&self.state)).await {
            Ok(snapshot) => snapshot,
            Err(Unread::Failed(e)) => {
                tracing::warn!(error = %e, "dashboard stream: the service did not answer");
                return Vec::new();
            }
            Err(Unread::Recently) => return Vec::new(),
        };
        let mut events = Vec::new();
        if self.first {
            events.push(
                Event::default()
                    .retry(Duration::from_secs(2))
                    .comment("hello"),
            );
            self.first = false;
        }
        if snapshot.live != self.live {
            events.push(Event::default().event("live").data(&snapshot.live));
            self.live.clone_from(&snapshot.live);
        }
        let kill = KillFragment {
            viewer: self.viewer.clone(),
            kill: snapshot.kill.clone(),
        }
        .render()
        .unwrap_or_default();
        if kill != self.kill {
            events.push(Event::default().event("kill").data(&kill));
            self.kill = kill;
        }
        events.push(Event::default().event("beat").data(time(&Utc::now())));
        events
    }
}

/// `GET /ui/dashboard/events`: the dashboard's event stream.
pub(super) async fn dashboard_events(
    State(state): State<AppState>,
    actor: Actor,
    stopping: Option<Extension<Stopping>>,
) -> Response {
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let feed = Feed {
        state,
        viewer: Viewer::of_actor(&actor),
        live: String::new(),
        kill: String::new(),
        first: true,
        tick,
    };
    let stopping = stopping.map(|Extension(s)| s);
    let stop = async move {
        match stopping {
            Some(s) => s.wait().await,
            None => std::future::pending().await,
        }
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let events = feed.next().await;
        let events = futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
        Some((events, feed))
    })
    .flatten()
    .take_until(Box::pin(stop));
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::UpsState;

    #[test]
    fn a_ups_row_shows_its_state_conditions_and_rounded_readings() {
        let mut facts = UpsFacts::new("ups1@nas.lan:3493");
        facts.state = Some(UpsState::OnBattery);
        facts.conditions = vec![UpsState::LowBattery];
        facts.charge_pct = Some(42.0);
        facts.runtime_minutes = Some(12.345);
        let row = ups_row("ups1@nas.lan:3493".into(), Some(&facts));
        assert_eq!(
            (
                row.state,
                row.conditions.as_str(),
                row.charge.as_str(),
                row.runtime.as_str(),
                row.load.as_str()
            ),
            ("on_battery", "low_battery", "42 %", "12.3 min", "–")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn streams_share_one_read_while_it_is_fresh_and_a_failure_too() {
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        let latest: Latest<u32> = Latest::default();
        let reads = AtomicU32::new(0);
        let fails = std::sync::atomic::AtomicBool::new(false);
        // Each read takes a while, so the streams of one beat overlap it.
        let read = || async {
            let n = reads.fetch_add(1, SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if fails.load(SeqCst) {
                Err("down")
            } else {
                Ok(n)
            }
        };
        let fresh = Duration::from_millis(500);
        // Ten streams ticking together: one read, one value.
        let values = futures::future::join_all((0..10).map(|_| latest.get(fresh, read))).await;
        assert!(values.iter().all(|v| v.as_ref().map(|v| **v) == Ok(1)));
        assert_eq!(reads.load(SeqCst), 1);
        // Past the freshness: read again.
        tokio::time::sleep(fresh).await;
        assert_eq!(latest.get(fresh, read).await.map(|v| *v), Ok(2));
        // A failing service: the first stream of the beat reads and fails,
        // the others are told at once and do not repeat the read.
        tokio::time::sleep(fresh).await;
        fails.store(true, SeqCst);
        let outcomes = futures::future::join_all((0..10).map(|_| latest.get(fresh, read))).await;
        assert_eq!(
            outcomes[0].as_ref().map(|v| **v),
            Err(&Unread::Failed("down"))
        );
        assert!(outcomes[1..]
            .iter()
            .all(|o| o.as_ref().map(|v| **v) == Err(&Unread::Recently)));
        assert_eq!(reads.load(SeqCst), 3);
        // Once the failure is older than the freshness, the next call reads.
        tokio::time::sleep(fresh).await;
        fails.store(false, SeqCst);
        assert_eq!(latest.get(fresh, read).await.map(|v| *v), Ok(4));
    }

    #[test]
    fn a_ups_not_yet_read_is_unknown() {
        let row = ups_row("ups1@nas.lan:3493".into(), None);
        assert_eq!((row.state, row.charge.as_str()), ("unknown", "–"));
    }
}
