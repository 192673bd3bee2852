//! `/debug/heapprof/sampling` in a process whose profiler wraps glibc's
//! malloc (`std::alloc::System`): the allocator's figures come from
//! `mallinfo2`, and the part that means what the profile means agrees with
//! the profiler's estimate of it within the estimate's sampling error.

mod common;

use std::hint::black_box;

use heapprof::wire::SamplingDocument;

#[global_allocator]
static ALLOC: heapprof::Profiler<std::alloc::System> = heapprof::Profiler::new(std::alloc::System);

/// One test: the heap is process-wide.
#[test]
fn glibc_figures_agree_with_the_profiler() {
    let rate = 16 * 1024u64;
    heapprof::set_sample_rate(rate);
    let addr = heapprof_http::Config::new()
        .announce(false)
        .spawn("127.0.0.1:0")
        .unwrap()
        .detach();
    // 4 MB of small objects in the arenas, 6 MB of mmapped chunks.
    let small: Vec<Box<[u8; 200]>> = (0..20_000).map(|_| Box::new([1u8; 200])).collect();
    let large: Vec<Vec<u8>> = (0..20).map(|_| vec![2u8; 300_000]).collect();
    let answer = common::get(addr, "/debug/heapprof/sampling");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let doc: SamplingDocument = serde_json::from_slice(&answer.body).unwrap();
    let a = doc.allocator.expect("allocator figures");
    assert_eq!(a.name, "glibc");
    assert_eq!((a.cached, a.internal), (0, 0), "glibc says neither");
    let e = &a.estimate;
    let allowed = 3.0 * e.standard_error().max(rate as f64) + 0.1 * a.comparable as f64;
    eprintln!(
        "glibc: {} handed out, {} comparable; profiler {:.0} ± {:.0} from {} samples",
        a.allocated,
        a.comparable,
        e.bytes,
        e.standard_error(),
        e.samples
    );
    assert!(a.comparable >= 10_000_000, "{a:?}");
    assert!(
        (e.bytes - a.comparable as f64).abs() <= allowed,
        "profiler {} vs glibc {} (allowed {allowed})",
        e.bytes,
        a.comparable
    );
    black_box((small, large));
}
