//! What a default Parca or Grafana Alloy scrape asks for (Parca's
//! `DefaultScrapeConfig` and Alloy's `DefaultProfilingConfig`: allocs,
//! block, goroutine, mutex, profile, plus heap): every path answers 200
//! with `application/octet-stream` (Alloy rejects anything else) and a
//! body `go tool pprof -raw` reads. A missing Go fails the test (install
//! golang-go).

mod common;

use common::*;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// One test: the CPU profiler and the thread dump are process-wide.
#[test]
fn every_default_scrape_path_is_a_profile_go_tool_pprof_reads() {
    let addr = heapprof_http::Config::new()
        .announce(false)
        .spawn("127.0.0.1:0")
        .unwrap()
        .detach();
    let keep: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 16 * 1024]).collect();
    for (path, sample_type) in [
        ("allocs", "alloc_objects/count"),
        ("heap", "inuse_space/bytes"),
        ("profile?seconds=1", "cpu/nanoseconds"),
        ("goroutine", "goroutine/count"),
        ("block", "contentions/count"),
        ("mutex", "delay/nanoseconds"),
        ("threadcreate", "threadcreate/count"),
    ] {
        let r = get(addr, &format!("/debug/pprof/{path}"));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/octet-stream"),
            "{path}"
        );
        let raw = pprof_raw(path, &r.body);
        assert!(
            raw.contains(sample_type),
            "{path}: no {sample_type}:\n{raw}"
        );
    }

    // The goroutine profile has one sample per thread, and its debug=1 text
    // goes through pprof's legacy parser too.
    let r = get(addr, "/debug/pprof/goroutine");
    let threads = decode(&r.body).sample.len();
    let text = get(addr, "/debug/pprof/goroutine?debug=1");
    assert_eq!(text.status, 200);
    let raw = pprof_raw("goroutine?debug=1", &text.body);
    assert!(raw.contains("goroutine/count"), "{raw}");
    assert!(threads > 2, "{threads} samples");
    drop(keep);
}
