//! `Config`: the endpoint's limits and access control, as a builder.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use crate::listener::Limits;
use crate::serve::Server;

/// Limits and access control of the endpoint. Build one with
/// [`Config::new`] (defaults) or [`Config::from_env`], adjust it with the
/// builder methods, then get a router ([`Config::router`]) or a server
/// ([`Config::spawn`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) max_builds: usize,
    pub(crate) queue_wait: Duration,
    pub(crate) max_seconds: u64,
    pub(crate) max_delta_requests: usize,
    pub(crate) token: Option<String>,
    pub(crate) announce: bool,
    pub(crate) discovery_dir: Option<PathBuf>,
    pub(crate) limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_builds: 2,
            queue_wait: Duration::from_secs(2),
            max_seconds: 300,
            max_delta_requests: 4,
            token: None,
            announce: true,
            discovery_dir: None,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Defaults: 2 builds at once, 2 s queue wait, `seconds` up to 300,
    /// 4 delta/CPU windows open at once, no token, announce on spawn.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`Config::new`] plus the token from `HEAPPROF_TOKEN` (ignored when
    /// empty).
    pub fn from_env() -> Self {
        let token = std::env::var("HEAPPROF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Config {
            token,
            ..Self::default()
        }
    }

    /// At most `n` (at least 1) profile builds (snapshot + symbolize +
    /// encode) run at once; requests for a profile already being built
    /// share that build and do not count.
    pub fn max_builds(mut self, n: usize) -> Self {
        self.max_builds = n.max(1);
        self
    }

    /// How long a request waits for a build slot before it gets `429` with
    /// `Retry-After`.
    pub fn queue_wait(mut self, wait: Duration) -> Self {
        self.queue_wait = wait;
        self
    }

    /// Largest accepted `seconds` parameter (at least 1); above it, 400.
    pub fn max_seconds(mut self, seconds: u64) -> Self {
        self.max_seconds = seconds.max(1);
        self
    }

    /// At most `n` (at least 1) `?seconds=N` heap deltas wait at once
    /// (each holds one snapshot while it waits); more get `429` at once.
    pub fn max_delta_requests(mut self, n: usize) -> Self {
        self.max_delta_requests = n.max(1);
        self
    }

    /// Require `Authorization: Bearer <token>` on every route (`None`:
    /// open). Compared in constant time.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// At most `n` (at least 1) connections served at once by
    /// [`Config::spawn`] (default 256); more wait in the listen backlog
    /// (1,024) until one ends or one that has sent no request for 1 s is
    /// closed to make room.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self
    }

    /// How long [`Config::spawn`]'s server waits for a request's headers,
    /// and lets a kept-alive connection idle (default 5 s).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Whether [`Config::spawn`] writes the discovery file (default yes).
    pub fn announce(mut self, yes: bool) -> Self {
        self.announce = yes;
        self
    }

    /// Where [`Config::spawn`] writes the discovery file (default
    /// [`crate::discovery_dir`]).
    pub fn discovery_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.discovery_dir = Some(dir.into());
        self
    }

    /// The full router ([`crate::router`]) with these settings.
    pub fn router(&self) -> axum::Router {
        crate::router::build(self)
    }

    /// Only `/metrics` ([`crate::metrics_router`]) with these settings.
    pub fn metrics_router(&self) -> axum::Router {
        crate::router::build_metrics(self)
    }

    /// Serves [`Config::router`] on `addr` from one background thread
    /// running a small current-thread tokio runtime. Port 0 picks a free
    /// port; [`Server::addr`] tells which.
    pub fn spawn(self, addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Server> {
        crate::serve::spawn_with(self, addr)
    }

    /// Where the discovery file goes: the configured directory, else
    /// [`crate::discovery_dir`].
    pub(crate) fn announce_dir(&self) -> PathBuf {
        self.discovery_dir
            .clone()
            .unwrap_or_else(crate::discovery::discovery_dir)
    }
}
