//! What a thread dump costs the profiled process in memory, for a process
//! with about 300 parked threads (incident 4 had 328): anonymous RSS, its
//! peak (sampled every millisecond while the request runs) and jemalloc's
//! allocated bytes around the first heap profile, the first dump (which
//! symbolizes the threads' addresses) and later ones. Printed for the
//! record (`--nocapture`) and bounded loosely so a regression shows.
//!
//! Anonymous memory is what is bounded: the symbolizer maps the binary's
//! debug sections and touches what it reads, file pages the kernel
//! reclaims under pressure (VmHWM counts them, so it is printed, not
//! bounded); they are unmapped after each batch, which the test checks.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::serve::{Parked, http_get, spawn_endpoint};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const THREADS: usize = 300;
const MIB: f64 = 1024.0 * 1024.0;

#[inline(never)]
fn parked_for_the_memory_test(rx: mpsc::Receiver<()>) {
    let _ = rx.recv();
    std::hint::black_box(());
}

/// (RssAnon, RssFile, VmHWM), bytes.
fn memory() -> (u64, u64, u64) {
    let s = heapprof::sys::procfs::self_status();
    (s.rss_anon, s.rss_file, s.vm_hwm)
}

/// Runs `f` while sampling RssAnon every millisecond; its peak and `f`'s
/// result.
fn anon_peak<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let peak = Arc::new(AtomicU64::new(memory().0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(memory().0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (peak.load(Ordering::Relaxed).max(memory().0), out)
}

/// Bytes the application holds in jemalloc (freed pages jemalloc keeps
/// resident are in RssAnon but not here).
fn allocated() -> u64 {
    tikv_jemalloc_ctl::epoch::advance().unwrap();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap() as u64
}

/// One test: RSS is process-wide.
#[test]
fn a_300_thread_dump_costs_little_memory() {
    let addr = spawn_endpoint();
    let parked = Parked::start(
        THREADS,
        "idle",
        Some(128 * 1024),
        parked_for_the_memory_test,
    );
    std::thread::sleep(Duration::from_millis(200));
    // Sampled allocations, so that the heap profile below symbolizes.
    heapprof::set_sample_rate(64 * 1024);
    let kept: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
    // Warm the endpoint itself (runtime, connection handling) on a route
    // that does not symbolize.
    assert_eq!(http_get(addr, "/debug/pprof/cmdline").0, 200);

    let mut report = String::new();
    let mut growth = Vec::new();
    for (what, path) in [
        ("heap (cold)", "/debug/pprof/heap"),
        ("cold pprof", "/debug/pprof/goroutine"),
        ("warm pprof", "/debug/pprof/goroutine"),
        ("warm debug=1", "/debug/pprof/goroutine?debug=1"),
        ("warm debug=2", "/debug/pprof/goroutine?debug=2"),
    ] {
        let (anon0, file0, hwm0) = memory();
        let held0 = allocated();
        let (peak, (status, body)) = anon_peak(|| http_get(addr, path));
        assert_eq!(status, 200, "{path}");
        let (anon1, file1, hwm1) = memory();
        let held = allocated() as f64 - held0 as f64;
        let anon = anon1 as f64 - anon0 as f64;
        let rise = peak.saturating_sub(anon0) as f64;
        let file = file1 as f64 - file0 as f64;
        let hwm = hwm1.saturating_sub(hwm0) as f64;
        report.push_str(&format!(
            "{what:>13}: body {:>7} B, held {:+6.2} MiB, RssAnon {:+7.2} MiB (peak {:+7.2}, now {:.1} MiB), RssFile {:+7.2} MiB, VmHWM {:+7.2} MiB\n",
            body.len(),
            held / MIB,
            anon / MIB,
            rise / MIB,
            anon1 as f64 / MIB,
            file / MIB,
            hwm / MIB,
        ));
        growth.push((what, anon, rise, file));
    }
    eprintln!(
        "thread dump of {} threads:\n{report}",
        heapprof::sys::procfs::self_status().threads
    );
    // The first heap profile pays for the symbolizer (shared by every
    // profile); the first dump symbolizes the threads' new addresses; the
    // dumps after that reuse the symbol cache.
    for (i, (what, anon, rise, file)) in growth.iter().enumerate() {
        let limit = if i <= 1 { 16.0 * MIB } else { 8.0 * MIB };
        assert!(*anon < limit, "{what}: RssAnon grew {anon} B\n{report}");
        assert!(
            *rise < limit,
            "{what}: RssAnon peaked {rise} B higher\n{report}"
        );
        // The debug sections' pages are unmapped after each batch.
        assert!(*file < 8.0 * MIB, "{what}: RssFile grew {file} B\n{report}");
    }
    drop(std::hint::black_box(kept));
    parked.release();
}
