//! heapprof-http: the debug endpoint of a process profiled by `heapprof`.
//!
//! It answers what curl, `go tool pprof`, gops, Parca, Grafana Alloy and
//! Prometheus already ask, with Go's `net/http/pprof` as the reference:
//!
//! | route | answer |
//! | --- | --- |
//! | `/debug/pprof/` | index page listing the profiles |
//! | `/debug/pprof/heap` | gzipped pprof heap profile; `?debug=1` text, `?seconds=N` delta, `?gc=1` purge first; heapprof's `?peak=1`, `?min_age=60s`, and `?resident=1` (a `resident_space` sample type that accounts for the whole RSS) |
//! | `/debug/pprof/allocs` | the same, viewers start on `alloc_space` |
//! | `/debug/pprof/profile?seconds=N` | gzipped pprof CPU profile (default 30 s) |
//! | `/debug/pprof/goroutine` | every OS thread's current stack as Go's goroutine profile; `?debug=1` grouped text, `?debug=2` per-thread dump |
//! | `/debug/pprof/block`, `mutex`, `threadcreate` | valid, always-empty profiles whose comment says why (Rust records no contention) |
//! | `/debug/pprof/cmdline` | argv, NUL-separated |
//! | `/debug/pprof/symbol` | Go's remote symbolization protocol |
//! | `/debug/heapprof/leaks` | leak suspects from the growth history (JSON) |
//! | `/debug/heapprof/sampling` | the estimates with the samples and sampling error behind them, the allocator's figures next to them, the live heap's resident bytes (JSON, read by `heapprof verify`) |
//! | `/metrics` | Prometheus text exposition |
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
//!     heapprof::Profiler::new(tikv_jemallocator::Jemalloc);
//!
//! // A service without tokio: one background thread serves the endpoint.
//! let addr = heapprof_http::spawn("127.0.0.1:0")?;
//! println!("go tool pprof http://{addr}/debug/pprof/heap");
//! # Ok::<(), heapprof_http::Error>(())
//! ```
//!
//! An axum service nests [`router()`] instead, and may call [`announce`] so
//! `heapprof ps` finds it. A service nothing scrapes can push its heap
//! profile to Grafana Pyroscope instead: [`push::PushConfig`].
//!
//! # The endpoint must not become the incident
//! Profile requests are bounded ([`Config`]): concurrent requests for the
//! same profile share one build (single flight), at most
//! [`Config::max_builds`] builds run at once, a request that cannot start
//! within [`Config::queue_wait`] gets `429 Too Many Requests` with
//! `Retry-After`, `seconds` is bounded by [`Config::max_seconds`], and every
//! bad parameter is a `400` whose body says what to send instead. The
//! listener binds loopback unless told otherwise; with `HEAPPROF_TOKEN` set,
//! every route wants `Authorization: Bearer <token>`.

#![warn(missing_docs)]

mod allocator;
mod auth;
mod config;
mod cpu;
mod discovery;
mod error;
pub mod gops;
#[cfg(feature = "jemalloc")]
mod jemalloc;
mod listener;
mod metrics;
mod params;
pub mod push;
mod router;
mod routes;
mod serve;
mod single_flight;
mod state;

pub use config::Config;
pub use discovery::{AnnounceGuard, Announcement, announce, announce_in, discovery_dir};
pub use error::{Error, Result};
pub use metrics::render as render_metrics;
pub use router::{metrics_router, router};
pub use serve::{DEFAULT_ADDR, Server, cleanup, spawn, spawn_from_env};
