//! The monotonic clock, `CLOCK_MONOTONIC`: one clock for the whole machine
//! (outside time namespaces), so a time read in one process can be placed
//! on the time line of another (`heapprof verify` places the target's
//! snapshots inside its uprobe window this way).

/// Nanoseconds on `CLOCK_MONOTONIC`. Served by the vDSO, so in practice no
/// syscall, and it never allocates.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds on `CLOCK_MONOTONIC_COARSE`: `CLOCK_MONOTONIC` as of the
/// last timer tick (1-4 ms behind it, never ahead), for a fifth of the
/// cost (the vDSO reads a stored time instead of the TSC and its
/// conversion): what the sampled path stamps allocations with.
pub fn coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_coarse_clock_is_the_same_clock_a_tick_behind() {
        let coarse = super::coarse_ns();
        let fine = super::monotonic_ns();
        assert!(coarse <= fine, "{coarse} > {fine}");
        assert!(fine - coarse < 20_000_000, "{} ns behind", fine - coarse);
    }

    #[test]
    fn is_monotonic_and_agrees_with_std() {
        let a = super::monotonic_ns();
        let t = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = super::monotonic_ns();
        let elapsed = t.elapsed().as_nanos() as u64;
        assert!(b > a);
        assert!(
            (b - a).abs_diff(elapsed) < 5_000_000,
            "{} vs {elapsed}",
            b - a
        );
    }
}
