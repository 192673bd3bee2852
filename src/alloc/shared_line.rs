//! The one cache line of process-wide state that every sampled allocation
//! and free writes.
//!
//! A sample and its free each update a few process-wide figures: the live
//! table's count and free slots, the estimated in-use bytes, the variance
//! of the estimate. When threads on different cores sample, each line
//! they all write moves between their caches, and a move costs about what
//! a miss to memory does. So these figures share one line: a sample moves
//! it once instead of once per figure. The modules that own the fields
//! (`live_table`, `site_table`) say what they mean; this one only decides
//! where they are.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize};

#[repr(C, align(64))]
pub(crate) struct SharedLine {
    /// Live entries of `live_table`.
    pub live: AtomicUsize,
    /// `live_table`'s free-slot stack: `generation << 32 | (slot + 1)` of
    /// its top, 0 when empty.
    pub free_top: AtomicU64,
    /// `live_table`'s first slot never handed out.
    pub fresh: AtomicU32,
    /// Whether `live_table`'s bucket array has been made resident.
    pub buckets_touched: AtomicBool,
    /// The next entry of `live_table`'s ring of freed addresses.
    pub freed_next: AtomicUsize,
    /// `site_table`'s estimated in-use bytes of the process.
    pub inuse_bytes: AtomicI64,
    /// `site_table`'s variance of the estimate of bytes allocated.
    pub alloc_variance: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<SharedLine>() == 64);

pub(crate) static SHARED: SharedLine = SharedLine {
    live: AtomicUsize::new(0),
    free_top: AtomicU64::new(0),
    fresh: AtomicU32::new(0),
    buckets_touched: AtomicBool::new(false),
    freed_next: AtomicUsize::new(0),
    inuse_bytes: AtomicI64::new(0),
    alloc_variance: AtomicU64::new(0),
};
