//! The OOM guard writes profiles when memory crosses its thresholds, and
//! the dump names the function that was growing.

use std::time::{Duration, Instant};

mod common;

use common::{decode, top_inuse_leaf};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

#[inline(never)]
fn grow_toward_limit(kept: &mut Vec<Vec<u8>>) {
    kept.push(vec![7u8; 1 << 20]);
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

/// The leaf function with the most in-use bytes in the profile at `path`.
fn top_function(path: &std::path::Path) -> String {
    top_inuse_leaf(&decode(&std::fs::read(path).unwrap())).0
}

#[test]
fn crossing_thresholds_writes_current_and_peak_profiles() {
    heapprof::set_sample_rate(64 * 1024);
    let dir = std::env::temp_dir().join(format!("heapprof-oom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let limit = rss() + (160 << 20);
    let guard = heapprof::OomGuardConfig::new(&dir)
        .limit_bytes(limit)
        .thresholds(&[0.8, 0.9])
        .interval(Duration::from_millis(20))
        .reserve_bytes(4 << 20)
        .keep(3)
        .start()
        .expect("guard starts");
    assert_eq!(guard.limit(), limit);

    let mut kept = Vec::new();
    let started = Instant::now();
    let dumped = |pct: &str| {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(pct))
    };
    while !(dumped("080pct") && dumped("090pct")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no dumps; rss {}",
            rss()
        );
        if rss() < limit {
            grow_toward_limit(&mut kept);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(guard);

    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    // Two thresholds x (current + peak) = 4 written, 3 kept.
    assert_eq!(files.len(), 3, "{files:?}");
    let current = files
        .iter()
        .find(|p| p.to_string_lossy().contains("090pct-current"))
        .expect("the 90% current profile is among the newest");
    assert!(top_function(current).contains("grow_toward_limit"));
    let peak = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with("peak.pb.gz"))
        .unwrap();
    assert!(top_function(peak).contains("grow_toward_limit"));
    std::fs::remove_dir_all(&dir).ok();
    drop(kept);
}
