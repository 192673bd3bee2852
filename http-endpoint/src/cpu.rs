//! CPU profiles through `heapprof::cpu_profile`, which samples with
//! `SIGPROF` into a fixed ring, holds a few MiB while it runs and nothing
//! afterwards, and runs one at a time per process (the HTTP route and the
//! gops agent share it).

use std::time::Duration;

use crate::error::{Error, Result};

/// Profiles the whole process for `window` (blocking the caller), then
/// returns the gzipped profile.proto. A second profile while one runs is
/// [`Error::Conflict`], with the time left as `Retry-After`.
pub(crate) fn profile(window: Duration) -> Result<Vec<u8>> {
    heapprof::cpu_profile(window).map_err(|e| match e {
        heapprof::CpuProfileError::Busy { remaining } => Error::Conflict {
            what: e.to_string(),
            retry_after: remaining.max(Duration::from_secs(1)),
        },
        heapprof::CpuProfileError::NoRoom(room) => Error::NoRoom(room),
        other => Error::CpuProfiler(other.to_string()),
    })
}
