//! Shared by `profile-cost` (heapprof) and `profile-cost-jemalloc`
//! (jemalloc_pprof): N distinct call stacks and the measurement.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type Step = fn(u32, u32, &mut Vec<Vec<u8>>);

macro_rules! steps {
    ($($name:ident = $byte:literal),*) => {
        $(
            // Distinct bodies (the fill byte), or rustc's function merging
            // folds the ten into one and the stacks are no longer distinct.
            #[inline(never)]
            fn $name(path: u32, level: u32, kept: &mut Vec<Vec<u8>>) {
                if level == 0 {
                    kept.push(vec![$byte; 64]);
                } else {
                    STEPS[(path % 10) as usize](path / 10, level - 1, kept);
                    black_box(path);
                }
                black_box(level);
            }
        )*
        static STEPS: [Step; 10] = [$($name),*];
    };
}

steps!(
    s0 = 0u8,
    s1 = 1u8,
    s2 = 2u8,
    s3 = 3u8,
    s4 = 4u8,
    s5 = 5u8,
    s6 = 6u8,
    s7 = 7u8,
    s8 = 8u8,
    s9 = 9u8
);

pub fn proc_status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn allocated() -> usize {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0)
}

/// Runs `f`, measuring wall time and memory peaks.
fn measure(label: &str, f: impl FnOnce() -> Vec<u8>, extra: &dyn Fn() -> String) {
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // reset VmHWM
    let rss_before = proc_status_kib("VmRSS:");
    let before = allocated();
    let peak = AtomicUsize::new(before);
    let stop = AtomicBool::new(false);
    let (elapsed, len) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(allocated(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let start = Instant::now();
        let out = f();
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        (elapsed, out.len())
    });
    peak.fetch_max(allocated(), Ordering::Relaxed);
    let hwm = proc_status_kib("VmHWM:");
    println!(
        "COST call={label} ms={:.1} heap_peak_mb={:.1} hwm_rise_mb={:.1} kept_mb={:.1} bytes={len} {}",
        elapsed.as_secs_f64() * 1e3,
        (peak.load(Ordering::Relaxed) - before) as f64 / 1048576.0,
        hwm.saturating_sub(rss_before) as f64 / 1024.0,
        (allocated() as f64 - before as f64) / 1048576.0,
        extra(),
    );
}

/// Allocates from N distinct stacks (N from the first argument), then
/// measures `make_profile` twice; `extra` adds profiler-specific figures.
pub fn run(make_profile: &dyn Fn() -> Vec<u8>, extra: &dyn Fn() -> String) {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let levels = (n as f64).log10().round() as u32;
    let mut kept = Vec::with_capacity(n as usize);
    for path in 0..n {
        STEPS[(path % 10) as usize](path / 10, levels - 1, &mut kept);
    }
    measure("first", make_profile, extra);
    measure("cached", make_profile, extra);
    black_box(&kept);
}
