//! The allocator's figures, taken apart so that one part means what the
//! profile means (`heapprof::wire::AllocatorDocument`), next to the
//! profiler's estimate of that part.
//!
//! The profile estimates the bytes the program asked for. An allocator
//! counts something else, and the difference is not sampling error:
//!
//! - **usable sizes**: each allocation counts at its size class (jemalloc)
//!   or chunk (glibc). The profiler's estimate here weighs each live sample
//!   at the usable size an allocation of its size gets, so the two count
//!   the same bytes;
//! - **thread caches**: jemalloc counts objects freed into a thread cache
//!   as allocated (see `jemalloc`); `tcache_bytes` says how many and is
//!   subtracted. glibc's tcache cannot be read: at most 7 chunks per size
//!   up to 1032 bytes, per thread;
//! - **the allocator's own allocations**: jemalloc counts the thread
//!   caches' structures, which it allocates from its arenas, as allocated
//!   too; `internal` says how many bytes and is subtracted;
//! - **sampled blocks**: each is padded by a page (small ones) or
//!   allocated page-aligned (large ones), so it takes more than its size
//!   class. The exact difference, summed over the live samples, is
//!   subtracted;
//! - **the profiler's own work**: heap it holds without sampling it
//!   (`heapprof::Stats::own_heap_bytes`), subtracted.
//!
//! Which allocator holds the heap: of jemalloc (feature `jemalloc`) and
//! glibc, the one that has handed out more. A jemalloc process still has
//! glibc allocations (the C library's own), and a glibc process that links
//! jemalloc leaves it idle.

use heapprof::sampling::{self, Estimate};
use heapprof::sys::glibc;
use heapprof::wire::AllocatorDocument;

/// The figures of the allocator that holds the heap, now; `None` when
/// neither can be read.
pub(crate) fn document() -> Option<AllocatorDocument> {
    let own = heapprof::stats().own_heap_bytes;
    let glibc_info = glibc::mallinfo2();
    #[cfg(feature = "jemalloc")]
    if let (Some(j), Some(classes)) = (
        crate::jemalloc::stats(),
        crate::jemalloc::SizeClasses::get(),
    ) && glibc_info.is_none_or(|g| j.allocated > g.allocated())
    {
        let (estimate, extra) = estimate_at_usable_sizes(|size, align| classes.usable(size, align));
        return Some(document_of(
            "jemalloc",
            [j.allocated, j.tcache, j.internal, extra, own],
            estimate,
        ));
    }
    let g = glibc_info?;
    let page = heapprof::sys::residency::page_size() as u64;
    let (estimate, extra) = estimate_at_usable_sizes(|size, _| glibc::chunk_size(size, page));
    Some(document_of(
        "glibc",
        [g.allocated(), 0, 0, extra, own],
        estimate,
    ))
}

/// The document from `[allocated, cached, internal, sampled_block_extra,
/// profiler_own]`.
fn document_of(name: &str, figures: [u64; 5], estimate: Estimate) -> AllocatorDocument {
    let [
        allocated,
        cached,
        internal,
        sampled_block_extra,
        profiler_own,
    ] = figures;
    AllocatorDocument {
        name: name.into(),
        allocated,
        cached,
        internal,
        sampled_block_extra,
        profiler_own,
        comparable: allocated
            .saturating_sub(cached)
            .saturating_sub(internal)
            .saturating_sub(sampled_block_extra)
            .saturating_sub(profiler_own),
        estimate,
    }
}

/// The profiler's estimate of the live allocations at usable size
/// (`usable(size, align)`), and what the sampled blocks' padding or
/// alignment adds over the live samples.
fn estimate_at_usable_sizes(usable: impl Fn(u64, u64) -> u64) -> (Estimate, u64) {
    let mut estimate = Estimate::default();
    let mut extra = 0u64;
    sampling::for_each_live_sample(|s| {
        let plain = usable(s.size, 1);
        estimate.add(plain, s.weight);
        extra += usable(s.inner_size, s.inner_align).saturating_sub(plain);
    });
    (estimate, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparable_is_what_is_left_never_below_zero() {
        let d = document_of("jemalloc", [1000, 100, 30, 50, 20], Estimate::default());
        assert_eq!(d.comparable, 800);
        let d = document_of("jemalloc", [100, 100, 0, 50, 20], Estimate::default());
        assert_eq!(d.comparable, 0);
    }

    #[test]
    fn reads_the_allocator_of_this_process() {
        let d = document().expect("glibc at least");
        assert!(d.allocated > 0, "{d:?}");
    }
}
