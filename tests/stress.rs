//! Many threads at rate 1: the live totals heapprof reports are exact, and
//! threads that exit while allocating leave no corrupt state.
//!
//! One test per file: the global allocator is process-wide.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// The one function whose allocations are counted.
#[inline(never)]
fn alloc_object(size: usize, fill: u8) -> Vec<u8> {
    vec![fill; size]
}

/// Allocates and frees in a loop; returns the objects still held.
#[inline(never)]
fn stress_worker(seed: u64, iterations: usize, keep: usize) -> Vec<Vec<u8>> {
    let mut rng = seed | 1;
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(keep);
    for i in 0..iterations {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = 1 + (rng % 3000) as usize;
        let obj = alloc_object(size, i as u8);
        if held.len() < keep {
            held.push(obj);
        } else {
            // Replace a random held object: frees cross sizes and ages.
            let slot = (rng >> 32) as usize % keep;
            held[slot] = obj;
        }
        if i % 64 == 0 {
            // Some reallocations of a tracked object too.
            let mut grown = alloc_object(8, 0);
            grown.reserve(size);
            black_box(&grown);
        }
    }
    held
}

fn counted_inuse(snap: &heapprof::Snapshot) -> (i64, i64) {
    let mut bytes = 0;
    let mut objects = 0;
    for site in snap.sites() {
        let frames = site.frames();
        if frames
            .first()
            .is_some_and(|f| f.function.ends_with("alloc_object"))
        {
            bytes += site.inuse_bytes;
            objects += site.inuse_objects;
        }
    }
    (bytes, objects)
}

#[test]
fn eight_threads_at_rate_one_give_exact_live_totals() {
    heapprof::set_sample_rate(1);

    let stop = Arc::new(AtomicBool::new(false));
    // 8 long workers, plus waves of short-lived threads that exit while
    // others allocate.
    let workers: Vec<_> = (0..8)
        .map(|t| std::thread::spawn(move || stress_worker(t * 7919 + 1, 20_000, 300)))
        .collect();
    let churners: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let h = std::thread::spawn(move || stress_worker(w * 1000 + n, 200, 5));
                    kept.extend(h.join().unwrap());
                    n += 1;
                }
                kept
            })
        })
        .collect();

    let mut held: Vec<Vec<u8>> = Vec::new();
    for w in workers {
        held.extend(w.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        held.extend(c.join().unwrap());
    }

    let snap = heapprof::snapshot();
    let (bytes, objects) = counted_inuse(&snap);
    let want_bytes: usize = held.iter().map(Vec::capacity).sum();
    assert_eq!(objects, held.len() as i64, "live objects from alloc_object");
    assert_eq!(bytes, want_bytes as i64, "live bytes from alloc_object");
    assert_eq!(snap.stats().dropped_samples, 0);

    // Freeing everything brings the site back to zero, exactly.
    drop(held);
    let (bytes, objects) = counted_inuse(&heapprof::snapshot());
    assert_eq!((bytes, objects), (0, 0));

    // Thread exit left the tables usable: a profile still encodes.
    assert!(!heapprof::snapshot().to_pprof().is_empty());

    over_aligned_and_reallocated_blocks_keep_their_contract();
}

/// Sampled blocks with alignments below, at and above the page size, grown
/// and shrunk through realloc, keep their alignment and contents, and are
/// freed with the layout they were made with (jemalloc checks sizes).
fn over_aligned_and_reallocated_blocks_keep_their_contract() {
    use std::alloc::{Layout, alloc, alloc_zeroed, dealloc, realloc};
    for align in [1usize, 16, 64, 4096, 16384, 1 << 21] {
        for size in [1usize, 24, 4096, 70_000] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; every block is written within its size,
            // reallocated with its current layout and freed with it.
            unsafe {
                let p = if size % 2 == 0 {
                    alloc_zeroed(layout)
                } else {
                    alloc(layout)
                };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "align {align} size {size}");
                p.write_bytes(0xab, size);
                let grown = realloc(p, layout, size * 3);
                assert!(!grown.is_null());
                assert_eq!(grown as usize % align, 0, "realloc keeps align {align}");
                assert!((0..size).all(|i| *grown.add(i) == 0xab), "contents kept");
                let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                let shrunk = realloc(grown, grown_layout, size);
                assert!((0..size).all(|i| *shrunk.add(i) == 0xab), "contents kept");
                dealloc(shrunk, layout);
            }
        }
    }
}
