//! Process-wide settings read by the allocator path: the sample rate, the
//! site-table bound and the sampler seed.
//!
//! The environment is read once, lazily, from inside the allocator, without
//! allocating (`env`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::env::env_u64;

/// Go's `runtime.MemProfileRate`: one sample per 512 KiB allocated, on average.
pub const DEFAULT_SAMPLE_RATE: u64 = 512 * 1024;

/// Default bound on distinct call sites (`HEAPPROF_MAX_SITES` overrides it).
pub const DEFAULT_MAX_SITES: usize = 32 * 1024;

/// Largest accepted `HEAPPROF_MAX_SITES`.
pub const MAX_SITES_LIMIT: usize = 1 << 20;

const UNSET: u64 = u64::MAX;

static SAMPLE_RATE: AtomicU64 = AtomicU64::new(UNSET);
/// Bumped by every rate change so each thread redraws its sampling gap.
static RATE_EPOCH: AtomicU32 = AtomicU32::new(0);

/// Current sample rate in bytes (0 = off, 1 = every allocation).
///
/// The first call reads `HEAPPROF_SAMPLE_RATE`; it never allocates.
#[inline]
pub fn sample_rate() -> u64 {
    let rate = SAMPLE_RATE.load(Ordering::Relaxed);
    if rate != UNSET {
        return rate;
    }
    init_rate_from_env()
}

#[cold]
fn init_rate_from_env() -> u64 {
    let rate = env_u64(c"HEAPPROF_SAMPLE_RATE").unwrap_or(DEFAULT_SAMPLE_RATE);
    // Another thread (or `set_sample_rate`) may have won; keep its value.
    match SAMPLE_RATE.compare_exchange(UNSET, rate, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => rate,
        Err(current) => current,
    }
}

/// Sets the mean number of bytes between samples, at run time.
///
/// `0` turns sampling off, `1` samples every allocation. The calling thread
/// uses the new rate from its next allocation; other threads pick it up at
/// their next sample point (for a thread that had sampling off: within 1 MiB
/// of allocation), as Go does with `MemProfileRate`. Set it early.
pub fn set_sample_rate(bytes: u64) {
    let bytes = if bytes == UNSET { UNSET - 1 } else { bytes };
    SAMPLE_RATE.store(bytes, Ordering::Relaxed);
    RATE_EPOCH.fetch_add(1, Ordering::Release);
    super::sampler::reset_current_thread();
}

/// Generation number of the sample rate, compared by each thread's sampler.
#[inline]
pub(crate) fn rate_epoch() -> u32 {
    RATE_EPOCH.load(Ordering::Acquire)
}

/// Bound on distinct call sites, from `HEAPPROF_MAX_SITES` (read once).
pub(crate) fn max_sites() -> usize {
    env_u64(c"HEAPPROF_MAX_SITES")
        .map(|n| (n as usize).clamp(16, MAX_SITES_LIMIT))
        .unwrap_or(DEFAULT_MAX_SITES)
}

/// Seed for the samplers' random numbers, from `HEAPPROF_SEED` if set
/// (reproducible runs, used by the accuracy benchmark).
pub(crate) fn seed() -> Option<u64> {
    env_u64(c"HEAPPROF_SEED")
}
