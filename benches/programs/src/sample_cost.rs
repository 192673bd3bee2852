//! Nanoseconds per sampled allocation, the whole path, for `cargo bench
//! --bench stack_cost` (which runs this once per unwinder).
//!
//! `sample-cost [LEVELS]` allocates and frees 64-byte blocks through
//! `heapprof::Profiler<Jemalloc>` at the bottom of a chain of LEVELS
//! (default 20) calls, at a sample rate of 1100 bytes: about one block in
//! 18 is sampled, through the same path as at the default rate (the
//! weight from its series, `size / rate < 1/16`). A sampled block is told
//! apart by where its pointer is (offset 4080 in its page, heapprof's
//! tag), so each allocation and free is timed and filed as sampled or
//! not. For each it prints
//!
//! ```text
//! RESULT op=alloc|free sampled=0|1 state=S p50_ns=X p99_ns=Y
//! ```
//!
//! with the states of `stack-cost` (`warm`, `evicted-l2`, `evicted-all`).
//! The cost of a sample is the sampled figure minus the unsampled one.
//! The unwinder is the one `HEAPPROF_UNWIND` names; it prints
//! `UNWINDER name` once samples have been taken.

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

/// Sample rate for the run, bytes: 64-byte blocks are sampled with
/// probability `1 - exp(-64 / 1100)`, about 5.7%.
const RATE: u64 = 1100;

/// One allocation and its free, timed apart, in TSC ticks, and whether
/// the block was sampled (its pointer at heapprof's tag).
#[inline(never)]
fn alloc_free(layout: Layout) -> (u64, u64, bool) {
    let t0 = ticks();
    // SAFETY: a non-zero layout; the block is freed below with it.
    let p = unsafe { ALLOC.alloc(layout) };
    let t1 = ticks();
    assert!(!p.is_null(), "out of memory");
    // SAFETY: p is a fresh 64-byte block.
    unsafe { p.write_volatile(1) };
    let sampled = p as usize % 4096 == 4080;
    let t2 = ticks();
    // SAFETY: p was allocated above with layout.
    unsafe { ALLOC.dealloc(black_box(p), layout) };
    let t3 = ticks();
    (t1 - t0, t3 - t2, sampled)
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
        heapprof::set_sample_rate(RATE);
        // Warms the path up and lets the unwinder settle.
        for _ in 0..100_000 {
            alloc_free(layout);
        }
        println!("UNWINDER {}", heapprof::unwinder().as_str());
        // (state, sampled blocks wanted, sweep before each allocation)
        let states: [(&str, usize, Option<&mut Vec<u8>>); 3] = [
            ("warm", 5000, None),
            ("evicted-l2", 300, Some(&mut l2)),
            ("evicted-all", 100, Some(&mut all)),
        ];
        for (state, wanted, mut sweep) in states {
            // [sampled][alloc, free]
            let mut ns: [[Vec<f64>; 2]; 2] = Default::default();
            while ns[1][0].len() < wanted {
                if let Some(sweep) = sweep.as_deref_mut() {
                    evict(sweep);
                }
                let (a, f, sampled) = alloc_free(layout);
                let times = &mut ns[usize::from(sampled)];
                times[0].push(a as f64 / per_ns);
                times[1].push(f as f64 / per_ns);
            }
            for (sampled, [allocs, frees]) in [false, true].into_iter().zip(ns) {
                print("alloc", sampled, state, allocs);
                print("free", sampled, state, frees);
            }
        }
    };
    chain(levels, &mut bottom);
}
