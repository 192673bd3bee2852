//! `heapprof verify --uprobes` on the incident examples that have no
//! verify test of their own (incident 2 is in `verify_children.rs`, 3 in
//! `verify_claims.rs`, 4 in `incident4_thread_growth.rs`): the profiler
//! is held against exact allocator counts over one window, and no check
//! of it fails falsely; the leaking function is named on both sides; the
//! RSS partition adds up.
//!
//! Needs root (uprobes); fails with a clear message otherwise, unless
//! HEAPPROF_SKIP_BPF=1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{
    TempDir, assert_agrees, assert_profiler_not_failed, assert_rss_partition,
    bpf_skipped_by_request, check, family, serve_example, verify_json,
};

/// Incident 1: the route cache that never evicts. Heavy churn (parse
/// buffers) beside a slow leak: the window's allocated bytes are judged
/// (hundreds of samples), and both the profiler and the uprobes name
/// `RouteCache::insert`.
#[test]
fn route_cache_window_agrees_and_names_the_cache() {
    if bpf_skipped_by_request("route_cache_window_agrees_and_names_the_cache") {
        return;
    }
    let dir = TempDir::new("incident1");
    let (target, _addr) = serve_example("route_cache", &[], &dir, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let pid = target.pid().to_string();
    let (code, report, stderr) = verify_json(
        &[&pid, "--uprobes", "--duration", "6"],
        &[("HEAPPROF_DIR", &dir.0)],
        || {},
    );
    eprintln!("window: {}", report["window"]["statement"]);
    assert_profiler_not_failed(&report);
    assert_agrees(&report, "window_alloc");
    let alloc = check(&report, "window_alloc");
    assert!(
        alloc["sampling"]["samples"].as_u64().unwrap() >= 50,
        "the churn gives many samples: {alloc:#}"
    );
    let je = family(&report, "jemalloc");
    eprintln!(
        "uprobes: {} allocated, {} live, own work {} ({} allocations)",
        je["alloc_bytes"], je["live_bytes"], je["own_alloc_bytes"], je["own_alloc_count"]
    );
    let top = report["uprobes"]["top_stacks"][0]["frames"].to_string();
    assert!(
        top.contains("route_cache::RouteCache::insert"),
        "top outstanding uprobe stack: {top}\n{stderr}"
    );
    assert!(
        !report["uprobes"]["top_stacks"][0]["frames"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("heapprof::"),
        "uprobe stacks start past heapprof's frames: {top}"
    );
    let grower = report["profiler_window"]["top_growth"].to_string();
    assert!(
        grower.contains("route_cache::RouteCache::insert"),
        "the profiler's top grower: {grower}"
    );
    let (sum, rss) = assert_rss_partition(&report);
    eprintln!("{}", report["reconciliation"]["detail"]["explanation"]);
    eprintln!("parts {sum} vs RSS {rss}");
    assert_eq!(code, 0, "{:#}", report["checks"]);
}

/// A list request, in one connection.
fn list(addr: &str) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    body.len()
}

/// Incident 5: a list request that builds a huge answer. Two requests in
/// the window allocate tens of MiB and free it: the window's allocated
/// bytes are judged and agree; nothing is left live to blame.
#[test]
fn list_spike_window_agrees_during_a_burst() {
    if bpf_skipped_by_request("list_spike_window_agrees_during_a_burst") {
        return;
    }
    let dir = TempDir::new("incident5");
    let (target, addr) = serve_example("list_spike", &["--pods", "3000"], &dir, &[]);
    let pid = target.pid().to_string();
    let mut burst = Vec::new();
    let (code, report, stderr) = verify_json(
        &[&pid, "--uprobes", "--duration", "6"],
        &[("HEAPPROF_DIR", &dir.0)],
        || {
            for _ in 0..2 {
                let addr = addr.clone();
                burst.push(std::thread::spawn(move || list(&addr)));
            }
        },
    );
    for b in burst {
        assert!(b.join().unwrap() > 3000 * 3000, "a whole list came back");
    }
    eprintln!("window: {}", report["window"]["statement"]);
    assert_profiler_not_failed(&report);
    assert_agrees(&report, "window_alloc");
    let je = family(&report, "jemalloc");
    assert!(
        je["alloc_bytes"].as_u64().unwrap() >= 40 << 20,
        "two lists of 3000 pods: {je:#}\n{stderr}"
    );
    let (sum, rss) = assert_rss_partition(&report);
    eprintln!("{}", report["reconciliation"]["detail"]["explanation"]);
    eprintln!("parts {sum} vs RSS {rss}");
    assert_eq!(code, 0, "{:#}", report["checks"]);
}
