//! `State`: what every route shares: the configuration, the builds in
//! flight and the admission limits (semaphores).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::single_flight::SingleFlight;

/// Which profile a heap-route build produces; requests with equal keys
/// share one build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ProfileKey {
    /// `/allocs` (default sample type `alloc_space`) rather than `/heap`.
    pub allocs: bool,
    /// Go's text format rather than gzipped protobuf.
    pub text: bool,
    /// Purge the allocator first.
    pub gc: bool,
    /// The peak profile instead of the current one.
    pub peak: bool,
    /// Only live allocations at least this old.
    pub min_age: Option<std::time::Duration>,
    /// Ages as sample labels.
    pub ages: bool,
    /// The resident view.
    pub resident: bool,
}

/// Shared by all routes of one router.
#[derive(Clone)]
pub(crate) struct AppState(pub Arc<Inner>);

pub(crate) struct Inner {
    pub config: Config,
    pub flights: Arc<SingleFlight<ProfileKey>>,
    /// Profile builds (heap, allocs, deltas' encodes) running at once.
    builds: Arc<Semaphore>,
    /// Delta and CPU-profile windows open at once.
    windows: Arc<Semaphore>,
}

impl AppState {
    pub fn new(config: &Config) -> Self {
        AppState(Arc::new(Inner {
            builds: Arc::new(Semaphore::new(config.max_builds)),
            windows: Arc::new(Semaphore::new(config.max_delta_requests)),
            flights: SingleFlight::new(),
            config: config.clone(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// A build slot, waiting at most [`Config::queue_wait`]; else 429.
    pub async fn build_permit(&self) -> Result<OwnedSemaphorePermit> {
        let wait = self.0.config.queue_wait;
        match tokio::time::timeout(wait, Arc::clone(&self.0.builds).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Busy {
                what: format!(
                    "{} profile builds already running and none finished within {} ms",
                    self.0.config.max_builds,
                    wait.as_millis()
                ),
                retry_after: wait,
            }),
        }
    }

    /// A window slot for a `seconds=N` request, now or 429.
    pub fn window_permit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.0.windows)
            .try_acquire_owned()
            .map_err(|_| Error::Busy {
                what: format!(
                    "{} seconds=N profiles already in progress",
                    self.0.config.max_delta_requests
                ),
                retry_after: std::time::Duration::from_secs(5),
            })
    }
}
