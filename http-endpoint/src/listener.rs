//! Accepting connections so that a flood of them cannot take the endpoint
//! down, and a scraper's `/metrics` keeps its answer:
//!
//! - at most [`Limits::max_connections`] are served at once, well below
//!   the usual 1,024 file descriptors; past it, a new connection waits
//!   (in the kernel's listen backlog of [`Limits::backlog`]) until one
//!   ends, or until one has waited [`STALLED_AFTER`] for its first
//!   request: that one is closed to make room, the longest-waiting first;
//! - a client has [`Limits::header_timeout`] to send each request's
//!   headers; the same bound closes a kept-alive connection that stays
//!   idle;
//! - at most [`Limits::max_stalled`] connections may be waiting for their
//!   first request for longer than [`STALLED_AFTER`]: each new one beyond
//!   closes the one that has waited longest. A client that trickles bytes
//!   holds a place only until clients that send requests arrive, and a
//!   flood of them cannot keep those out, while a burst of real clients,
//!   which send their request at once, is never cut.
//!
//! Measured: with 1,100 clients that each trickle a request head one byte
//! a second and connect again when closed, against a service limited to
//! 1,024 descriptors, every `/metrics` answered within 10 s
//! (`cargo test -p heapprof-cli --test hostile_endpoint`).
//!
//! Connections speak HTTP/1.1 (every pprof client does). On shutdown the
//! listener stops accepting and every connection finishes the request it
//! is serving.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The listener's bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request's headers (and to stay idle between requests).
    pub header_timeout: Duration,
    /// Connections waiting for their first request, at most.
    pub max_stalled: usize,
    /// Connections the kernel queues while every slot is taken (capped by
    /// `net.core.somaxconn`): enough to hold a flood and the clients
    /// behind it, whose connection attempts would otherwise be dropped
    /// and retried only seconds later.
    pub backlog: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            max_stalled: 32,
            backlog: 1024,
        }
    }
}

/// A connection that has not sent its first request by then counts as
/// stalled (a real client sends it right after connecting).
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Connections that have not started a request yet, oldest first.
#[derive(Default)]
struct Stalled {
    waiting: Mutex<VecDeque<(u64, Instant, Arc<Notify>)>>,
}

impl Stalled {
    /// Registers connection `id` at `now`; while more than `max` have
    /// waited longer than [`STALLED_AFTER`], tells the oldest to close.
    /// Returns what closes `id`.
    fn register(&self, id: u64, now: Instant, max: usize) -> Arc<Notify> {
        let close = Arc::new(Notify::new());
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.push_back((id, now, Arc::clone(&close)));
        let stalled = waiting
            .iter()
            .filter(|(_, since, _)| now.duration_since(*since) >= STALLED_AFTER)
            .count();
        for _ in max..stalled {
            if let Some((_, _, oldest)) = waiting.pop_front() {
                oldest.notify_one();
            }
        }
        close
    }

    /// Closes the connection that has waited longest for its first
    /// request, if it has waited at least [`STALLED_AFTER`] by `now`.
    /// Returns whether one was closed.
    fn close_oldest(&self, now: Instant) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.front() {
            Some((_, since, _)) if now.duration_since(*since) >= STALLED_AFTER => {
                if let Some((_, _, oldest)) = waiting.pop_front() {
                    oldest.notify_one();
                }
                true
            }
            _ => false,
        }
    }

    /// Connection `id` started a request (or ended): no longer stalled.
    fn remove(&self, id: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|(i, _, _)| *i != id);
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then lets the requests in progress finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stalled = Arc::new(Stalled::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    'accept: for id in 0u64.. {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: back off, keep serving.
                    eprintln!("heapprof-http: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A slot: a free one, else the one of the connection that has
        // stalled longest, once one has stalled long enough.
        let permit = loop {
            if let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                break permit;
            }
            stalled.close_oldest(Instant::now());
            tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => break permit,
                    Err(_) => break 'accept,
                },
                () = tokio::time::sleep(STALLED_AFTER / 10) => {}
                () = &mut shutdown => break 'accept,
            }
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let close = stalled.register(id, Instant::now(), limits.max_stalled);
        let (stalled, router, mut stop) = (Arc::clone(&stalled), router.clone(), stop_rx.clone());
        connections.spawn(async move {
            let _permit = permit;
            let started = Arc::new(AtomicBool::new(false));
            let service = {
                let (started, stalled) = (Arc::clone(&started), Arc::clone(&stalled));
                hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                    if !started.swap(true, Ordering::Relaxed) {
                        stalled.remove(id);
                    }
                    router.clone().oneshot(request.map(axum::body::Body::new))
                })
            };
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = close.notified(), if !started.load(Ordering::Relaxed) => break,
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.as_mut().await;
                            break;
                        }
                    }
                }
            }
            stalled.remove(id);
        });
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_stalled_connection_is_closed_first() {
        let stalled = Stalled::default();
        let t0 = Instant::now();
        let late = t0 + STALLED_AFTER * 2;
        let first = stalled.register(1, t0, 2);
        let _second = stalled.register(2, t0, 2);
        stalled.remove(2);
        let _third = stalled.register(3, t0, 2);
        // A burst: many new connections at once are never cut.
        let burst: Vec<_> = (10..60).map(|i| stalled.register(i, t0, 2)).collect();
        // Later, 1 and 3 have stalled (and the burst, which never sent a
        // request): the oldest go first, 4 itself stays.
        let fourth = stalled.register(4, late, 2);
        let waited = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                let one = tokio::time::timeout(Duration::from_millis(50), first.notified());
                let four = tokio::time::timeout(Duration::from_millis(50), fourth.notified());
                (one.await.is_ok(), four.await.is_ok())
            });
        assert_eq!(waited, (true, false));
        drop(burst);
    }

    #[test]
    fn at_capacity_only_a_stalled_connection_makes_room() {
        let stalled = Stalled::default();
        let t0 = Instant::now();
        let half = t0 + STALLED_AFTER / 2;
        let first = stalled.register(1, t0, 32);
        let second = stalled.register(2, half, 32);
        assert!(!stalled.close_oldest(half), "none has stalled yet");
        assert!(stalled.close_oldest(t0 + STALLED_AFTER), "the first has");
        assert!(
            !stalled.close_oldest(t0 + STALLED_AFTER),
            "the second has waited half as long"
        );
        stalled.remove(2);
        assert!(!stalled.close_oldest(t0 + STALLED_AFTER * 9), "none left");
        let closed = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                let wait = |n: Arc<Notify>| async move {
                    tokio::time::timeout(Duration::from_millis(50), n.notified())
                        .await
                        .is_ok()
                };
                (wait(first).await, wait(second).await)
            });
        assert_eq!(closed, (true, false));
    }
}
