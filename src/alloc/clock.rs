//! Monotonic time without allocation, for allocation ages (nanoseconds).

/// Nanoseconds on `CLOCK_MONOTONIC` (see `sys::clock`); used only on the
/// sampled path and in snapshots.
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    crate::sys::clock::monotonic_ns()
}
