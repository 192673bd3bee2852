//! Every block the profiler frees or reallocates goes back to the inner
//! allocator with the layout it was allocated with: the caller's for
//! unsampled blocks, the padded or alignment-raised one for sampled blocks,
//! across realloc from one to the other; and a sampled block holds what
//! the program wrote, and zeros when it asked for them. jemalloc's sized free trusts that layout,
//! so a mistake here corrupts its heap silently; this test's inner
//! allocator checks it on every call instead.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tikv_jemallocator::Jemalloc;

/// Jemalloc, remembering the layout of every live block in a fixed table
/// (no allocation, a spin lock) and counting frees with another layout.
struct Checked;

const SLOTS: usize = 1 << 18;
static LOCK: AtomicBool = AtomicBool::new(false);
static KEYS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// size << 24 | log2(align), for the block in the same slot.
static SHAPES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static MISMATCHES: AtomicU64 = AtomicU64::new(0);
static TABLE_FULL: AtomicU64 = AtomicU64::new(0);

fn shape(layout: Layout) -> u64 {
    ((layout.size() as u64) << 24) | u64::from(layout.align().trailing_zeros())
}

fn locked<T>(f: impl FnOnce() -> T) -> T {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    let out = f();
    LOCK.store(false, Ordering::Release);
    out
}

fn slot_of(ptr: usize) -> usize {
    ((ptr as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 46) as usize
}

fn remember(ptr: *mut u8, layout: Layout) {
    if ptr.is_null() {
        return;
    }
    locked(|| {
        let mut i = slot_of(ptr as usize);
        for _ in 0..SLOTS {
            if KEYS[i].load(Ordering::Relaxed) == 0 {
                KEYS[i].store(ptr as usize, Ordering::Relaxed);
                SHAPES[i].store(shape(layout), Ordering::Relaxed);
                return;
            }
            i = (i + 1) % SLOTS;
        }
        TABLE_FULL.fetch_add(1, Ordering::Relaxed);
    });
}

fn forget(ptr: *mut u8, layout: Layout) {
    locked(|| {
        let mut i = slot_of(ptr as usize);
        for _ in 0..SLOTS {
            match KEYS[i].load(Ordering::Relaxed) {
                0 => break,
                k if k == ptr as usize => {
                    if SHAPES[i].load(Ordering::Relaxed) != shape(layout) {
                        MISMATCHES.fetch_add(1, Ordering::Relaxed);
                    }
                    // Backward-shift deletion keeps the probe chains whole.
                    let mut hole = i;
                    let mut j = (i + 1) % SLOTS;
                    loop {
                        let key = KEYS[j].load(Ordering::Relaxed);
                        if key == 0 {
                            break;
                        }
                        let home = slot_of(key);
                        if (j.wrapping_sub(home) % SLOTS) >= (j.wrapping_sub(hole) % SLOTS) {
                            KEYS[hole].store(key, Ordering::Relaxed);
                            SHAPES[hole]
                                .store(SHAPES[j].load(Ordering::Relaxed), Ordering::Relaxed);
                            hole = j;
                        }
                        j = (j + 1) % SLOTS;
                    }
                    KEYS[hole].store(0, Ordering::Relaxed);
                    return;
                }
                _ => i = (i + 1) % SLOTS,
            }
        }
        // Not found: freed with a different pointer than allocated, or a
        // block from before the table filled up.
        if TABLE_FULL.load(Ordering::Relaxed) == 0 {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// SAFETY: forwards every call to Jemalloc unchanged; the bookkeeping
// around it allocates nothing.
unsafe impl GlobalAlloc for Checked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's contract.
        let p = unsafe { Jemalloc.alloc(layout) };
        remember(p, layout);
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's contract.
        let p = unsafe { Jemalloc.alloc_zeroed(layout) };
        remember(p, layout);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        forget(ptr, layout);
        // SAFETY: forwarded under the caller's contract.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded under the caller's contract.
        let p = unsafe { Jemalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            forget(ptr, layout);
            // SAFETY: realloc succeeded, so this layout is valid.
            remember(p, unsafe {
                Layout::from_size_align_unchecked(new_size, layout.align())
            });
        }
        p
    }
}

/// The tests set the process-wide sample rate: one at a time.
static RATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[global_allocator]
static ALLOC: heapprof::Profiler<Checked> = heapprof::Profiler::new(Checked);

#[inline(never)]
fn churn_sizes(round: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    for (i, size) in [24usize, 4096, 5000, 16 * 1024, 20_000, 100_000, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let mut v = vec![(round + i) as u8; size];
        v.extend_from_slice(&[1; 100]); // realloc of a sampled block
        assert!(v[..size].iter().all(|&b| b == (round + i) as u8));
        assert!(v[size..].iter().all(|&b| b == 1));
        if i % 2 == 0 {
            kept.push(v);
        } else {
            black_box(v);
        }
    }
    kept
}

#[test]
fn sampled_blocks_are_freed_with_the_layout_they_were_allocated_with() {
    let _rate = RATE.lock().unwrap_or_else(|e| e.into_inner());
    // Every allocation sampled, then (rate 4096) a mix of sampled and
    // unsampled blocks reallocated into each other.
    heapprof::set_sample_rate(1);
    let kept: Vec<_> = (0..50).map(churn_sizes).collect();
    heapprof::set_sample_rate(4096);
    let more: Vec<_> = (0..50).map(churn_sizes).collect();
    let snap = heapprof::snapshot();
    drop((kept, more));
    heapprof::set_sample_rate(0);
    assert!(
        snap.stats().live_samples > 100,
        "{:?}",
        snap.stats().live_samples
    );
    assert_eq!(TABLE_FULL.load(Ordering::Relaxed), 0, "checking table full");
    assert_eq!(
        MISMATCHES.load(Ordering::Relaxed),
        0,
        "blocks freed with another layout than they were allocated with"
    );
}

#[test]
fn zeroed_sampled_blocks_are_zero_on_reused_memory() {
    let _rate = RATE.lock().unwrap_or_else(|e| e.into_inner());
    heapprof::set_sample_rate(1);
    for round in 0..20 {
        for size in [24usize, 4000, 5000, 20_000, 40_000] {
            // Dirty a block of this size, free it, then ask for zeros:
            // the allocator hands the dirty memory back.
            black_box(vec![0xa5u8; size]);
            let zeroed = black_box(vec![0u8; size]);
            assert!(
                zeroed.iter().all(|&b| b == 0),
                "round {round}, {size} bytes"
            );
        }
    }
    heapprof::set_sample_rate(0);
}
