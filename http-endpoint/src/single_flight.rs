//! Single flight: concurrent requests for the same key share one build.
//!
//! The first request for a key starts the build as its own task (so a
//! client that hangs up does not cancel it for the others) and every
//! request, first or late, awaits the same outcome on a `watch` channel.
//! The entry is removed when the build ends, so a request that arrives
//! afterwards gets fresh data. The outcome is `Bytes` (reference-counted):
//! a hundred waiters hold one buffer, not a hundred copies.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tokio::sync::watch;

use crate::error::{Error, Result};

type Outcome = Option<Result<Bytes>>;

/// Builds in flight, by key.
pub(crate) struct SingleFlight<K> {
    in_flight: Mutex<HashMap<K, watch::Receiver<Outcome>>>,
}

impl<K: Eq + Hash + Clone + Send + 'static> SingleFlight<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(SingleFlight {
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The outcome of the build for `key`: joins the one in flight, or
    /// starts `build` (on the current tokio runtime) if there is none.
    /// Returns whether this call started it, for tests and logs.
    pub async fn run<F, Fut>(self: &Arc<Self>, key: K, build: F) -> (Result<Bytes>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        let (mut rx, started) = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = build();
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        let outcome = fut.await;
                        // Remove first: a request arriving from now on
                        // starts a new build rather than joining a finished one.
                        this.in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        let _ = tx.send(Some(outcome));
                    });
                    (rx, true)
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or_else(unreachable_outcome),
            Err(_) => Err(Error::Build(
                "the build task ended without an answer".into(),
            )),
        };
        (outcome, started)
    }

    /// Builds currently in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.in_flight.lock().unwrap().len()
    }
}

fn unreachable_outcome() -> Result<Bytes> {
    Err(Error::Build("no outcome recorded".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_build() {
        let flights = SingleFlight::<u8>::new();
        let builds = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let flights = Arc::clone(&flights);
            let builds = Arc::clone(&builds);
            tasks.push(tokio::spawn(async move {
                flights
                    .run(1, move || async move {
                        builds.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(Bytes::from_static(b"profile"))
                    })
                    .await
            }));
        }
        let mut started = 0;
        for t in tasks {
            let (outcome, s) = t.await.unwrap();
            assert_eq!(outcome.unwrap(), Bytes::from_static(b"profile"));
            started += s as usize;
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(started, 1);
        assert_eq!(flights.len(), 0, "the finished flight is removed");

        // A later call builds anew.
        let (_, s) = flights
            .run(1, || async { Ok(Bytes::from_static(b"again")) })
            .await;
        assert!(s);
    }

    #[tokio::test]
    async fn errors_are_shared_too() {
        let flights = SingleFlight::<u8>::new();
        let (outcome, _) = flights
            .run(2, || async { Err(Error::Build("boom".into())) })
            .await;
        assert!(outcome.unwrap_err().to_string().contains("boom"));
    }
}
