//! The unsampled path allocates nothing of its own: every allocation the
//! program makes reaches the inner allocator exactly once, and nothing else
//! does (pprof-rs's test_no_alloc_during_unwind, applied to the fast path).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static INNER_ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the test's own thread counts: libtest's main thread allocates
    /// (its table of running tests) while the test thread starts.
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards to System unchanged, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
            INNER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: caller's contract forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: caller's contract forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Counting> = heapprof::Profiler::new(Counting);

fn inner_allocs_for(n: usize) -> usize {
    // Warm up the thread's sampler before counting.
    black_box(Box::new(0u64));
    let before = INNER_ALLOCS.load(Ordering::Relaxed);
    for i in 0..n {
        black_box(Box::new(i));
    }
    INNER_ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn unsampled_allocations_reach_the_inner_allocator_exactly_once() {
    COUNTED.with(|c| c.set(true));
    // Sampling on, but no sample point within the loop's 80 KB.
    heapprof::set_sample_rate(1 << 40);
    assert_eq!(inner_allocs_for(10_000), 10_000);
    // Sampling off.
    heapprof::set_sample_rate(0);
    assert_eq!(inner_allocs_for(10_000), 10_000);
    // Every allocation sampled: still one inner allocation each (the
    // profiler's bookkeeping lives in its own mmap'ed tables).
    heapprof::set_sample_rate(1);
    let n = inner_allocs_for(2_000);
    assert!(n >= 2_000, "{n}");
    assert!(
        n <= 2_000 + 64,
        "sampled path allocated {} extra times",
        n - 2_000
    );
}
