//! First overhead figure: nanoseconds per alloc+free pair, heapprof over
//! jemalloc and over the system allocator against the plain allocators,
//! measured in one run.
//!
//! `cargo bench --bench alloc_pair`
//!
//! Each configuration's `GlobalAlloc` methods are called directly (the
//! sampler's state is process-wide, so a `Profiler` value behaves exactly as
//! it does as the global allocator). Configurations run interleaved, several
//! rounds; the median of the rounds is reported. Sampled allocations are
//! included at their natural frequency, stack capture and all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use tikv_jemallocator::Jemalloc;

type Run = fn(&[Layout]) -> f64;

/// ns per pair over `rounds` of the size pattern.
fn pairs<A: GlobalAlloc>(a: &A, sizes: &[Layout]) -> f64 {
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        for &layout in sizes {
            // SAFETY: non-zero sizes; each block is freed with its layout.
            unsafe {
                let p = a.alloc(layout);
                black_box(p);
                a.dealloc(p, layout);
            }
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds * sizes.len()) as f64
}

static PROFILED_JEMALLOC: heapprof::Profiler<Jemalloc> = heapprof::Profiler::new(Jemalloc);
static PROFILED_SYSTEM: heapprof::Profiler<System> = heapprof::Profiler::new(System);

fn with_rate(rate: u64, f: impl FnOnce() -> f64) -> f64 {
    heapprof::set_sample_rate(rate);
    f()
}

fn configurations() -> Vec<(&'static str, Run)> {
    vec![
        ("jemalloc", |s| pairs(&Jemalloc, s)),
        ("heapprof-jemalloc-default", |s| {
            with_rate(heapprof::DEFAULT_SAMPLE_RATE, || {
                pairs(&PROFILED_JEMALLOC, s)
            })
        }),
        ("heapprof-jemalloc-64k", |s| {
            with_rate(64 * 1024, || pairs(&PROFILED_JEMALLOC, s))
        }),
        ("heapprof-jemalloc-off", |s| {
            with_rate(0, || pairs(&PROFILED_JEMALLOC, s))
        }),
        ("system", |s| pairs(&System, s)),
        ("heapprof-system-default", |s| {
            with_rate(heapprof::DEFAULT_SAMPLE_RATE, || pairs(&PROFILED_SYSTEM, s))
        }),
    ]
}

fn workloads() -> Vec<(&'static str, Vec<Layout>)> {
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mixed = (0..4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Mostly small, some up to 64 KiB: 16 << (0..=12), skewed low.
            let shift = (rng % 100) as u32 / 8;
            let size = (16usize << shift) + (rng >> 40) as usize % (8 << shift);
            Layout::from_size_align(size.min(64 * 1024), 8).unwrap()
        })
        .collect();
    vec![
        (
            "small16",
            vec![Layout::from_size_align(16, 8).unwrap(); 4096],
        ),
        ("mixed", mixed),
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds = if std::env::var_os("HEAPPROF_BENCH_QUICK").is_some() {
        5
    } else {
        21
    };
    // HEAPPROF_BENCH_ONLY=name runs one configuration (for perf stat).
    let only = std::env::var("HEAPPROF_BENCH_ONLY").ok();
    let configs: Vec<_> = configurations()
        .into_iter()
        .filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n))
        .collect();
    for (workload, sizes) in workloads() {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for (_, run) in &configs {
            run(&sizes); // warm up caches, arenas, symbol-free paths
        }
        for _ in 0..rounds {
            for (i, (_, run)) in configs.iter().enumerate() {
                times[i].push(run(&sizes));
            }
        }
        let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        println!(
            "workload {workload}: median ns per alloc+free pair over {rounds} interleaved rounds"
        );
        for ((name, _), m) in configs.iter().zip(&medians) {
            println!(
                "  {name:<28} {m:>8.2} ns  {:>6.3}x jemalloc",
                m / medians[0]
            );
        }
        for ((name, _), m) in configs.iter().zip(&medians) {
            println!("RATIO {workload} {name} {:.4}", m / medians[0]);
        }
    }
}
