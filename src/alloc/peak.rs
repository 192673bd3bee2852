//! The peak profile: the per-site breakdown at the high-water mark of the
//! estimated in-use heap (tcmalloc's peak heap, dhat's t-gmax).
//!
//! Every sampled allocation updates the process's estimated in-use bytes
//! (`site_table::record_alloc`). When that rises above the next capture
//! threshold, the sampled path copies every site's counters into a buffer
//! mapped outside the heap, and raises the threshold to 1/16 above the new
//! peak (at least 256 KiB). Captures are therefore rare (logarithmic in the
//! heap's growth) and the peak profile shows the heap within 1/16 of its
//! true high-water mark. A capture never waits: if another thread is
//! capturing, this one skips. Reading the buffer takes the same flag.

use core::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::clock;
use super::site_table::{self, CounterValues};
use super::spin::SpinLock;

const MIN_STEP: i64 = 256 * 1024;

static NEXT_CAPTURE: AtomicI64 = AtomicI64::new(0);
static PEAK_BYTES: AtomicI64 = AtomicI64::new(0);
static PEAK_NS: AtomicU64 = AtomicU64::new(0);
static CAPTURE: SpinLock = SpinLock::new();
static BUFFER: AtomicPtr<CounterValues> = AtomicPtr::new(core::ptr::null_mut());
static BUFFER_CAP: AtomicUsize = AtomicUsize::new(0);
static BUFFER_LEN: AtomicUsize = AtomicUsize::new(0);

/// Called with the new estimated in-use bytes after each sampled allocation.
#[inline]
pub(crate) fn on_inuse(inuse: i64) {
    if inuse >= NEXT_CAPTURE.load(Ordering::Relaxed) {
        capture(inuse);
    }
}

#[cold]
#[inline(never)]
fn capture(inuse: i64) {
    if !CAPTURE.try_acquire() {
        return;
    }
    if inuse >= NEXT_CAPTURE.load(Ordering::Relaxed) && ensure_buffer() {
        let cap = BUFFER_CAP.load(Ordering::Relaxed);
        // SAFETY: the buffer holds `cap` entries and CAPTURE is held, so no
        // one else reads or writes it.
        let out = unsafe { core::slice::from_raw_parts_mut(BUFFER.load(Ordering::Relaxed), cap) };
        let n = site_table::copy_counters(out);
        BUFFER_LEN.store(n, Ordering::Relaxed);
        PEAK_BYTES.store(inuse, Ordering::Relaxed);
        PEAK_NS.store(clock::monotonic_ns(), Ordering::Relaxed);
        NEXT_CAPTURE.store(inuse + (inuse / 16).max(MIN_STEP), Ordering::Relaxed);
    }
    CAPTURE.release();
}

fn ensure_buffer() -> bool {
    if !BUFFER.load(Ordering::Relaxed).is_null() {
        return true;
    }
    // Site ids stay below the table's bound (fixed once it exists, which it
    // does: captures follow a sampled allocation's site creation).
    let cap = site_table::usage().max_sites + 1;
    match super::pages::map_zeroed(cap * core::mem::size_of::<CounterValues>()) {
        Some(p) => {
            BUFFER.store(p.cast(), Ordering::Relaxed);
            BUFFER_CAP.store(cap, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// The peak so far: estimated in-use bytes, when (`clock::monotonic_ns`),
/// and each site's counters then, by site id. `None` before any sample.
pub(crate) fn read() -> Option<(i64, u64, Vec<CounterValues>)> {
    CAPTURE.acquire();
    let n = BUFFER_LEN.load(Ordering::Relaxed);
    let p = BUFFER.load(Ordering::Relaxed);
    let copy = if p.is_null() || n == 0 {
        None
    } else {
        // SAFETY: `n` entries were written by the last capture, and CAPTURE
        // is held, so none is being written now.
        let values = unsafe { core::slice::from_raw_parts(p, n) }.to_vec();
        Some((
            PEAK_BYTES.load(Ordering::Relaxed),
            PEAK_NS.load(Ordering::Relaxed),
            values,
        ))
    };
    CAPTURE.release();
    copy
}

/// Forgets the peak: the next sampled allocation starts a new one from the
/// current in-use heap.
pub fn reset_peak() {
    CAPTURE.acquire();
    BUFFER_LEN.store(0, Ordering::Relaxed);
    PEAK_BYTES.store(0, Ordering::Relaxed);
    NEXT_CAPTURE.store(0, Ordering::Relaxed);
    CAPTURE.release();
}

/// Estimated in-use bytes at the peak so far (0 before any sample).
pub fn peak_inuse_bytes() -> i64 {
    PEAK_BYTES.load(Ordering::Relaxed)
}

pub(crate) fn fork_prepare() {
    CAPTURE.acquire();
}

pub(crate) fn fork_release() {
    CAPTURE.release();
}
