//! Timing helpers shared by `stack-cost` and `sample-cost`: the TSC,
//! cache eviction and the `RESULT` line both print. Each program uses a
//! subset.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The TSC, fenced so that the measured code stays between two reads.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: lfence and rdtsc have no memory effects.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// TSC ticks per nanosecond.
pub fn ticks_per_ns() -> f64 {
    let (t0, c0) = (Instant::now(), ticks());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, t1) = (ticks(), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_nanos() as f64
}

/// Writes to one byte per cache line of `sweep`.
pub fn evict(sweep: &mut [u8]) {
    for i in (0..sweep.len()).step_by(64) {
        sweep[i] = sweep[i].wrapping_add(1);
    }
    black_box(sweep);
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn report(method: &str, state: &str, mut ns: Vec<f64>, frames: usize) {
    ns.sort_by(f64::total_cmp);
    println!(
        "RESULT method={method} state={state} p50_ns={:.0} p99_ns={:.0} frames={frames}",
        percentile(&ns, 0.5),
        percentile(&ns, 0.99)
    );
}
