//! Incident 5 turned on the endpoint itself: 100 concurrent
//! `/debug/pprof/heap` requests must all be answered (200, or 429 with
//! `Retry-After`) without the endpoint causing a memory spike of its own.
//!
//! What is compared (jemalloc `stats.allocated`, sampled every 200 µs):
//! - `single`: the peak growth over the baseline while ONE request is
//!   served: the snapshot, symbolization and encoding working memory, the
//!   encoded profile and one connection's buffers;
//! - `burst`: the peak growth over the baseline while 100 requests are served.
//!
//! Without single flight and the build limit, 100 requests would build up
//! to 100 profiles at once (≈100 × `single`). With them, at most one build
//! runs per profile kind and its result is shared, so `burst` must stay
//! within `single` plus 4 MiB for the connections themselves (the
//! project's target: 100 concurrent heap requests cost at most one build
//! and the encoded bytes). The clients run in this process but stream the
//! body into a fixed buffer, so they do not hold copies of it.

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use heapprof_http::Config;
use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const REQUESTS: usize = 100;

/// 2^DEPTH distinct allocating stacks, so the profile is a real one.
const DEPTH: u32 = 11;

#[inline(never)]
fn left(depth: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    branch(depth, path, kept);
}

#[inline(never)]
fn right(depth: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    branch(depth, path, kept);
}

#[inline(never)]
fn branch(depth: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    if depth == 0 {
        kept.push(black_box(vec![7u8; 16 * 1024]).into_boxed_slice());
    } else if path & 1 == 0 {
        left(depth - 1, path >> 1, kept);
    } else {
        right(depth - 1, path >> 1, kept);
    }
}

fn allocated() -> u64 {
    epoch::advance().unwrap();
    stats::allocated::read().unwrap() as u64
}

/// Runs `f` while a thread samples `stats.allocated`; returns `f`'s value
/// and the peak growth over the allocated bytes just before.
fn peak_growth_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let baseline = allocated();
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(allocated(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let value = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    peak.fetch_max(allocated(), Ordering::Relaxed);
    (value, peak.load(Ordering::Relaxed).saturating_sub(baseline))
}

/// One GET whose body is counted, not kept. Returns (status, body bytes,
/// whether a 429 carried Retry-After).
fn fetch_counting(addr: SocketAddr, path: &str) -> (u16, usize, bool) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 16 * 1024];
    let mut head = [0u8; 1024];
    let mut head_len = 0;
    let mut total = 0;
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let take = n.min(head.len() - head_len);
        head[head_len..head_len + take].copy_from_slice(&buf[..take]);
        head_len += take;
        total += n;
    }
    let head = String::from_utf8_lossy(&head[..head_len]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let header_end = head.find("\r\n\r\n").unwrap() + 4;
    let retry_after = head[..header_end]
        .to_ascii_lowercase()
        .contains("retry-after: ");
    (status, total - header_end, retry_after)
}

/// One test: it measures the whole process's allocations.
#[test]
fn hundred_concurrent_heap_requests_share_builds_and_do_not_spike() {
    heapprof::set_sample_rate(4096);
    let mut kept = Vec::new();
    for path in 0..1u32 << DEPTH {
        branch(DEPTH, path, &mut kept);
    }
    let server = Config::new().announce(false).spawn("127.0.0.1:0").unwrap();
    let addr = server.addr();
    // Warm up: the symbol cache and lazily initialised machinery persist
    // and belong to the baseline, not to a request.
    let (status, warm_size, _) = fetch_counting(addr, "/debug/pprof/heap");
    assert_eq!(status, 200);

    let ((status, size, _), single) =
        peak_growth_during(|| fetch_counting(addr, "/debug/pprof/heap"));
    assert_eq!(status, 200);
    let sites = heapprof::stats().sites;
    // 16 KiB objects at a 4 KiB rate: ~98% of the leaves are sampled.
    assert!(
        sites >= (1 << DEPTH) * 9 / 10,
        "a real profile: {sites} sites"
    );
    assert!(
        size > 10_000,
        "a real profile ({size} bytes, warm-up {warm_size})"
    );

    let (answers, burst) = peak_growth_during(|| {
        let start = Arc::new(Barrier::new(REQUESTS));
        let clients: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    fetch_counting(addr, "/debug/pprof/heap")
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let busy = answers.iter().filter(|a| a.0 == 429).count();
    eprintln!(
        "encoded profile {size} B; peak growth: one request {single} B, \
         {REQUESTS} concurrent {burst} B; {ok} x 200, {busy} x 429"
    );
    assert_eq!(ok + busy, REQUESTS, "only 200 and 429: {answers:?}");
    assert!(ok > 0, "some requests were served");
    for (status, body, retry_after) in &answers {
        if *status == 200 {
            assert!(*body > 10_000, "a full profile each");
        } else {
            assert!(*retry_after, "429 carries Retry-After");
        }
    }
    assert!(
        burst <= single + (4 << 20),
        "{REQUESTS} concurrent requests grew allocated memory by {burst} B, \
         more than one request's {single} B plus 4 MiB"
    );
    drop(kept);
}
