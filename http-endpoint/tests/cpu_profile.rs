//! `/debug/pprof/profile` while four threads allocate as fast as they can,
//! with heapprof sampling often: the CPU profiler's signal handler must not
//! deadlock with the sampling allocator, and the profile must show the
//! allocating function.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use heapprof_http::Config;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

#[inline(never)]
fn cpu_test_churn(stop: &AtomicBool, rounds: &AtomicU64) {
    let mut n: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut kept = Vec::with_capacity(64);
        for i in 0..64 {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            kept.push(vec![i as u8; 16 + (n >> 54)]);
        }
        black_box(&kept);
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}

/// One test: the CPU profiler and the sample rate are process-wide.
#[test]
fn cpu_profile_while_four_threads_allocate_hard() {
    // Sample about every 4 KiB, so the allocator's sampled path (backtrace
    // capture) is often what the profiling signal interrupts.
    heapprof::set_sample_rate(4096);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
            std::thread::spawn(move || cpu_test_churn(&stop, &rounds))
        })
        .collect();

    let server = Config::new().announce(false).spawn("127.0.0.1:0").unwrap();
    let before = rounds.load(Ordering::Relaxed);
    // The client reads with a 120 s timeout: a deadlock fails the test.
    let r = get(server.addr(), "/debug/pprof/profile?seconds=3");
    let during = rounds.load(Ordering::Relaxed) - before;
    std::thread::sleep(Duration::from_millis(200));
    let after = rounds.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("allocating thread");
    }

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(
        during > 0,
        "the allocating threads made progress while profiled"
    );
    assert!(
        after > before + during,
        "and still do afterwards (no deadlock)"
    );
    let p = decode(&r.body);
    assert!(!p.sample.is_empty(), "samples were taken");
    let names = function_names(&p);
    assert!(
        names.iter().any(|n| n.contains("cpu_test_churn")),
        "the allocating function is in the CPU profile: {names:?}"
    );

    // The CPU profiler is process-wide: while one profile runs, a second
    // is refused at once with 409 and when to retry, not queued or 500.
    let addr = server.addr();
    let first = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=3"));
    std::thread::sleep(Duration::from_millis(500));
    let second = get(addr, "/debug/pprof/profile?seconds=1");
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(
        second.text().contains("already being taken"),
        "{}",
        second.text()
    );
    let retry: u64 = second
        .header("retry-after")
        .expect("Retry-After on 409")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "retry after {retry} s");
    assert_eq!(first.join().unwrap().status, 200);
    // And afterwards the next one runs.
    assert_eq!(get(addr, "/debug/pprof/profile?seconds=1").status, 200);
}
