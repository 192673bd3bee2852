//! Nanoseconds per sampled allocation, the whole path, for `cargo bench
//! --bench stack_cost` (which runs this once per unwinder).
//!
//! `sample-cost [LEVELS]` allocates and frees 64-byte blocks through
//! `heapprof::Profiler<Jemalloc>` at the bottom of a chain of LEVELS
//! (default 20) calls, once with sampling off and once with every block
//! sampled (rate 2 bytes: a sample point falls in every 64-byte block, so
//! each one takes the whole sampled path, weight computation included).
//! The allocation and the free are timed apart, and for each it prints
//!
//! ```text
//! RESULT op=alloc|free sampled=0|1 state=S p50_ns=X p99_ns=Y
//! ```
//!
//! with the states of `stack-cost` (`warm`, `evicted-l2`, `evicted-all`).
//! The cost of a sample is the sampled figure minus the unsampled one.
//! The unwinder is the one `HEAPPROF_UNWIND` names; it prints
//! `UNWINDER name` once the first sample has been taken.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::Duration;

use timing::{evict, percentile, ticks, ticks_per_ns};

#[path = "timing.rs"]
mod timing;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

#[inline(never)]
fn chain(level: u32, bottom: &mut dyn FnMut()) {
    if level == 0 {
        bottom();
    } else {
        chain(level - 1, bottom);
    }
    black_box(level);
}

/// One allocation and its free, timed apart, in TSC ticks.
#[inline(never)]
fn alloc_free(layout: Layout) -> (u64, u64) {
    let t0 = ticks();
    // SAFETY: a non-zero layout; the block is freed below with it.
    let p = unsafe { ALLOC.alloc(layout) };
    let t1 = ticks();
    assert!(!p.is_null(), "out of memory");
    // SAFETY: p is a fresh 64-byte block.
    unsafe { p.write_volatile(1) };
    let t2 = ticks();
    // SAFETY: p was allocated above with layout.
    unsafe { ALLOC.dealloc(black_box(p), layout) };
    let t3 = ticks();
    (t1 - t0, t3 - t2)
}

fn print(op: &str, sampled: bool, state: &str, mut ns: Vec<f64>) {
    ns.sort_by(f64::total_cmp);
    println!(
        "RESULT op={op} sampled={} state={state} p50_ns={:.0} p99_ns={:.0}",
        u8::from(sampled),
        percentile(&ns, 0.5),
        percentile(&ns, 0.99)
    );
}

fn main() {
    let levels: u32 = std::env::args()
        .nth(1)
        .map_or(20, |l| l.parse().expect("LEVELS"));
    if std::env::var("HEAPPROF_UNWIND").as_deref() == Ok("table") {
        heapprof::stack_hooks::wait_for_tables(None, Duration::from_secs(30))
            .expect("unwind tables");
    }
    let per_ns = ticks_per_ns();
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let mut all = vec![0u8; 64 << 20];
    let mut l2 = vec![0u8; 4 << 20];
    let mut bottom = || {
        for (rate, sampled) in [(0, false), (2, true)] {
            heapprof::set_sample_rate(rate);
            // Warms the path up (and, sampled, lets the unwinder settle).
            for _ in 0..100 {
                alloc_free(layout);
            }
            if sampled {
                println!("UNWINDER {}", heapprof::unwinder().as_str());
            }
            let run = |state: &str, n: usize, mut sweep: Option<&mut Vec<u8>>| {
                let (mut allocs, mut frees) = (Vec::new(), Vec::new());
                for _ in 0..n {
                    if let Some(sweep) = sweep.as_deref_mut() {
                        evict(sweep);
                    }
                    let (a, f) = alloc_free(layout);
                    allocs.push(a as f64 / per_ns);
                    frees.push(f as f64 / per_ns);
                }
                print("alloc", sampled, state, allocs);
                print("free", sampled, state, frees);
            };
            run("warm", 5000, None);
            run("evicted-l2", 300, Some(&mut l2));
            run("evicted-all", 300, Some(&mut all));
        }
    };
    chain(levels, &mut bottom);
}
