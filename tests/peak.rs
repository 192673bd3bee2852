//! The peak profile keeps the breakdown at the high-water mark: a spike
//! that was freed still names the function that built it.

use std::hint::black_box;

mod common;

use common::site_inuse;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

#[inline(never)]
fn build_spike(mib: usize) -> Vec<Vec<u8>> {
    (0..mib * 16).map(|i| vec![i as u8; 64 * 1024]).collect()
}

#[inline(never)]
fn steady(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 4096]).collect()
}

#[test]
fn peak_profile_names_the_spike_after_it_is_gone() {
    heapprof::set_sample_rate(4096);
    let base = steady(1024); // 4 MiB that stay
    let spike = build_spike(40);
    drop(spike);
    let after = steady(256);

    let current = heapprof::snapshot();
    assert!(
        site_inuse(&current, "build_spike").abs() < 1 << 20,
        "spike freed"
    );
    let peak = heapprof::peak_snapshot().expect("a peak was captured");
    let spike_at_peak = site_inuse(&peak, "build_spike");
    // Captured within 1/16 of the true peak, estimated within ~1%.
    let want = 40.0 * 1024.0 * 1024.0;
    assert!(
        (spike_at_peak as f64) > want * (1.0 - 1.0 / 16.0 - 0.03)
            && (spike_at_peak as f64) < want * 1.03,
        "build_spike at peak: {spike_at_peak}"
    );
    let top = peak.sites().iter().max_by_key(|s| s.inuse_bytes).unwrap();
    assert!(top.frames()[0].function.contains("build_spike"));
    assert!(heapprof::stats().peak_inuse_bytes >= spike_at_peak);
    // A normal profile, as ?peak=1 serves it.
    assert!(!peak.to_pprof().is_empty());

    // After a reset the peak starts from what is live now.
    heapprof::reset_peak();
    let more = steady(64);
    let peak = heapprof::peak_snapshot().expect("recaptured after reset");
    assert!(site_inuse(&peak, "build_spike").abs() < 1 << 20);
    assert!(site_inuse(&peak, "steady") > 4 << 20);
    black_box((base, after, more));
}
