//! Monotonic time without allocation, for allocation ages (nanoseconds).

/// Nanoseconds on `CLOCK_MONOTONIC`. Served by the vDSO, so in practice no
/// syscall; used only on the sampled path and in snapshots.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}
