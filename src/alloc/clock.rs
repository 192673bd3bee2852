//! Monotonic time without allocation, for allocation ages (nanoseconds).

/// Nanoseconds on `CLOCK_MONOTONIC` (see `sys::clock`): snapshots.
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    crate::sys::clock::monotonic_ns()
}

/// When a sampled allocation is born: `CLOCK_MONOTONIC` as of the last
/// timer tick, at most a few milliseconds behind [`monotonic_ns`], which
/// ages in seconds and windows of seconds do not notice.
#[inline]
pub(crate) fn birth_ns() -> u64 {
    crate::sys::clock::coarse_ns()
}
