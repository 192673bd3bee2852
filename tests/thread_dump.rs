//! `/debug/pprof/goroutine` on a process shaped like incident 4: many
//! parked threads, plus one thread stuck inside the global allocator. The
//! profile must count every thread once, name the function each parked
//! thread waits in, and come back although a thread never leaves `alloc`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::decode;
use common::serve::{Parked, http_get, spawn_endpoint};

/// The system allocator, except that the one thread marked with
/// [`BLOCK_ME`] stops inside `alloc` until [`RELEASE`] is set.
struct BlockingAlloc;

static STUCK: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);

thread_local! {
    static BLOCK_ME: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to System; the extra wait allocates nothing and takes
// no lock (an atomic polled between sleeps).
unsafe impl GlobalAlloc for BlockingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if BLOCK_ME.try_with(|b| b.replace(false)).unwrap_or(false) {
            STUCK.store(true, Ordering::Release);
            while !RELEASE.load(Ordering::Acquire) {
                // SAFETY: usleep has no memory arguments.
                unsafe { libc::usleep(1000) };
            }
        }
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<BlockingAlloc> = heapprof::Profiler::new(BlockingAlloc);

const PARKED: usize = 20;

#[inline(never)]
fn parked_waiting_for_release(rx: mpsc::Receiver<()>) {
    let _ = rx.recv();
    std::hint::black_box(());
}

#[inline(never)]
fn stuck_inside_the_allocator() -> Vec<u8> {
    BLOCK_ME.with(|b| b.set(true));
    let v = std::hint::black_box(vec![7u8; 4096]);
    std::hint::black_box(v)
}

fn get_text(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http_get(addr, path);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{path}: {text}");
    text
}

fn threads_now() -> u64 {
    heapprof::sys::procfs::self_status().threads
}

/// Function names of each sample's stack, by thread name and id.
fn stacks_by_thread(p: &pprof::protos::Profile) -> Vec<(String, i64, Vec<String>)> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let functions: HashMap<u64, String> = p.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, Vec<String>> = p
        .location
        .iter()
        .map(|l| {
            (
                l.id,
                l.line
                    .iter()
                    .map(|line| functions[&line.function_id].clone())
                    .collect(),
            )
        })
        .collect();
    p.sample
        .iter()
        .map(|sample| {
            let name = sample
                .label
                .iter()
                .find(|l| s(l.key) == "thread_name")
                .map(|l| s(l.str))
                .unwrap_or_default();
            let tid = sample
                .label
                .iter()
                .find(|l| s(l.key) == "thread_id")
                .map_or(0, |l| l.num);
            let frames = sample
                .location_id
                .iter()
                .flat_map(|id| locations[id].clone())
                .collect();
            (name, tid, frames)
        })
        .collect()
}

/// One test: the allocator and the thread population are process-wide.
#[test]
fn every_thread_is_counted_and_parked_threads_name_their_function() {
    let addr = spawn_endpoint();
    let parked = Parked::start(PARKED, "parked", None, parked_waiting_for_release);
    let stuck = std::thread::Builder::new()
        .name("stuck-in-alloc".into())
        .spawn(|| stuck_inside_the_allocator().len())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !STUCK.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "the thread never entered alloc");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));

    let started = Instant::now();
    let before = threads_now();
    let (status, body) = http_get(addr, "/debug/pprof/goroutine");
    let after = threads_now();
    let took = started.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let p = decode(&body);
    let types: Vec<_> = p
        .sample_type
        .iter()
        .map(|t| {
            format!(
                "{}/{}",
                p.string_table[t.ty as usize], p.string_table[t.unit as usize]
            )
        })
        .collect();
    assert_eq!(types, ["goroutine/count"]);

    let stacks = stacks_by_thread(&p);
    let samples = stacks.len() as i64;
    for threads in [before, after] {
        assert!(
            (samples - threads as i64).abs() <= 2,
            "{samples} samples, {threads} threads (before {before}, after {after})"
        );
    }
    let mut ids: Vec<i64> = stacks.iter().map(|(_, tid, _)| *tid).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), stacks.len(), "one sample per thread");

    let dump = || {
        stacks
            .iter()
            .map(|(n, t, f)| format!("{n} {t}: {f:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for i in 0..PARKED {
        let name = format!("parked-{i}");
        let (_, _, frames) = stacks
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("no sample for {name}:\n{}", dump()));
        assert!(
            frames
                .iter()
                .any(|f| f.ends_with("parked_waiting_for_release")),
            "{name} does not name its function:\n{}",
            dump()
        );
    }
    let (_, _, frames) = stacks
        .iter()
        .find(|(n, _, _)| n == "stuck-in-alloc")
        .unwrap_or_else(|| panic!("no sample for the stuck thread:\n{}", dump()));
    // The allocator sleeps two libc calls deep (usleep, clock_nanosleep;
    // no frame pointers): the unwinder recovers one of them, and the test
    // allocator, inlined into heapprof's `GlobalAlloc::alloc`, shows as
    // that.
    for expected in ["GlobalAlloc>::alloc", "stuck_inside_the_allocator"] {
        assert!(
            frames.iter().any(|f| f.contains(expected)),
            "the stuck thread's stack lacks {expected}:\n{}",
            dump()
        );
    }

    let text = get_text(addr, "/debug/pprof/goroutine?debug=2");
    assert!(text.contains("\"parked-7\" [S (sleeping)]:\n"), "{text}");
    assert!(text.contains("parked_waiting_for_release\n\t"), "{text}");
    let grouped = get_text(addr, "/debug/pprof/goroutine?debug=1");
    assert!(
        grouped.contains(&format!("{PARKED} @ 0x")),
        "the parked threads share one stack:\n{grouped}"
    );

    RELEASE.store(true, Ordering::Release);
    assert_eq!(stuck.join().unwrap(), 4096);
    parked.release();
}
