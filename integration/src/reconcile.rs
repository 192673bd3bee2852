//! Explaining a process's RSS: file pages + shared memory + thread stacks +
//! live heap + allocator-retained memory + other anonymous memory, with the
//! remainder no source accounts for.
//!
//! The kernel's `RssAnon`, `RssFile` and `RssShmem` (from `status`) add up
//! to `VmRSS`. Anonymous memory is split with `smaps`: the stack mappings
//! (see `procfs`), then the live heap as the best available source measures
//! it (the profiler's in-use estimate, else jemalloc's `allocated`), then
//! allocator-retained pages (jemalloc `resident - allocated`, when
//! published). What is left is "other anonymous": allocator caches when no
//! allocator stats are published, non-heap mmaps, runtime metadata. A
//! growing "other" with a flat heap is incident 4's signature.

use crate::procfs::ProcessMemory;

/// Allocator figures published by the process, if any.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HeapSources {
    /// The profiler's in-use estimate (`inuse_space` total).
    pub profiler_inuse: Option<u64>,
    /// jemalloc `stats.allocated`.
    pub jemalloc_allocated: Option<u64>,
    /// jemalloc `stats.resident`.
    pub jemalloc_resident: Option<u64>,
}

/// RSS, explained.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciliation {
    /// `VmRSS`.
    pub rss: u64,
    /// `RssFile`: file pages mapped.
    pub file: u64,
    /// `RssShmem`.
    pub shmem: u64,
    /// `RssAnon`.
    pub anon: u64,
    /// Resident thread stacks.
    pub thread_stacks: u64,
    /// Live heap per `heap_source`.
    pub live_heap: u64,
    /// Where `live_heap` comes from.
    pub heap_source: String,
    /// Allocator-retained (resident, not live) memory, when published.
    pub allocator_retained: u64,
    /// Anonymous memory no source accounts for (may be negative when the
    /// estimates overshoot, e.g. heap not yet touched).
    pub other_anon: i64,
}

/// Splits `p`'s RSS using the heap figures in `h`.
pub fn reconcile(p: &ProcessMemory, h: &HeapSources) -> Reconciliation {
    let (live_heap, heap_source) = match (h.profiler_inuse, h.jemalloc_allocated) {
        (Some(v), _) => (v, "profiler inuse_space"),
        (None, Some(v)) => (v, "jemalloc stats.allocated"),
        (None, None) => (0, "none published (heap is inside other_anon)"),
    };
    let allocator_retained = match (h.jemalloc_resident, h.jemalloc_allocated) {
        (Some(r), Some(a)) => r.saturating_sub(a),
        _ => 0,
    };
    let s = &p.status;
    let anon = s.rss_anon;
    let other = anon as i64 - p.stacks.rss as i64 - live_heap as i64 - allocator_retained as i64;
    Reconciliation {
        rss: s.vm_rss,
        file: s.rss_file,
        shmem: s.rss_shmem,
        anon,
        thread_stacks: p.stacks.rss,
        live_heap,
        heap_source: heap_source.into(),
        allocator_retained,
        other_anon: other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::{Stacks, Status};

    #[test]
    fn splits_anon() {
        let p = ProcessMemory {
            status: Status {
                vm_rss: 1000,
                rss_anon: 700,
                rss_file: 250,
                rss_shmem: 50,
                ..Status::default()
            },
            stacks: Stacks {
                rss: 40,
                ..Stacks::default()
            },
            ..ProcessMemory::default()
        };
        let h = HeapSources {
            profiler_inuse: Some(400),
            jemalloc_allocated: Some(410),
            jemalloc_resident: Some(500),
        };
        let r = reconcile(&p, &h);
        assert_eq!(r.live_heap, 400);
        assert_eq!(r.allocator_retained, 90);
        assert_eq!(r.other_anon, 700 - 40 - 400 - 90);
        assert_eq!(r.file + r.shmem + r.anon, r.rss);
        let none = reconcile(&p, &HeapSources::default());
        assert_eq!(none.other_anon, 660);
    }
}
