//! `Stats`: the profiler's own health (bounds, drops, memory), read
//! without locks.

use crate::alloc::{live_table, site_table};

use super::symbolize;

/// The profiler's own health: bounds, drops and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sample rate in bytes (0 = off).
    pub sample_rate: u64,
    /// Distinct call sites recorded.
    pub sites: usize,
    /// Bound on call sites (`HEAPPROF_MAX_SITES`).
    pub max_sites: usize,
    /// Samples charged to the overflow site because the site table was full.
    pub overflowed_samples: u64,
    /// Sampled allocations currently live.
    pub live_samples: usize,
    /// Most live sampled allocations the profiler can track.
    pub live_capacity: usize,
    /// Samples not taken because the live table had no room (biases
    /// estimates low when non-zero).
    pub dropped_samples: u64,
    /// Memory the profiler holds, in bytes: site table and stacks (mapped),
    /// unwind tables (mapped), the live-sample table (reserved; resident as
    /// it fills) and the symbol cache (heap, not sampled).
    pub own_memory_bytes: u64,
    /// Addresses in the symbol cache.
    pub symbol_cache_entries: usize,
    /// Approximate heap bytes of the symbol cache (part of
    /// `own_memory_bytes`).
    pub symbol_cache_bytes: u64,
    /// Heap bytes the profiler's own work holds, which it does not sample
    /// (so they are in the allocator's figures and not in the profile):
    /// the symbol cache, the growth history and the OOM guard's reserve.
    /// Approximate for the first two.
    pub own_heap_bytes: u64,
    /// Total time spent symbolizing, in nanoseconds.
    pub symbolization_ns: u64,
    /// Estimated in-use heap bytes of the process, from the samples.
    pub estimated_inuse_bytes: i64,
    /// Estimated in-use heap bytes at the peak (see [`crate::peak_snapshot`]).
    pub peak_inuse_bytes: i64,
    /// How sampled stacks are captured (`HEAPPROF_UNWIND`, see
    /// [`unwinder`](crate::unwinder)).
    pub unwinder: crate::alloc::stack::Unwinder,
    /// Bytes mapped for the unwind tables of the table unwinder (part of
    /// `own_memory_bytes`; 0 unless it was used).
    pub unwind_table_bytes: u64,
    /// Samples the table unwinder handed to libgcc: taken before its
    /// tables were built, in code loaded since, on a signal alternate
    /// stack, or through one of the rare rows it cannot express.
    pub unwind_table_fallbacks: u64,
    /// Loaded modules left without an unwind table because building it
    /// did not fit the memory cgroup's headroom; their frames go to
    /// libgcc, and the build is tried again every 10 s.
    pub unwind_tables_deferred: usize,
}

/// The profiler's current [`Stats`].
pub fn stats() -> Stats {
    let usage = site_table::usage();
    let (symbol_cache_entries, symbol_cache_bytes, symbolization_ns) = symbolize::cache_stats();
    Stats {
        sample_rate: crate::alloc::config::sample_rate(),
        sites: usage.sites,
        max_sites: usage.max_sites,
        overflowed_samples: usage.overflowed_samples,
        live_samples: live_table::live(),
        live_capacity: live_table::CAPACITY,
        dropped_samples: live_table::dropped(),
        own_memory_bytes: (usage.mapped_bytes + live_table::reserved_bytes()) as u64
            + symbol_cache_bytes,
        symbol_cache_entries,
        symbol_cache_bytes,
        own_heap_bytes: symbol_cache_bytes
            + crate::history::heap_bytes()
            + crate::oom_guard::reserved_bytes(),
        symbolization_ns,
        estimated_inuse_bytes: site_table::inuse_bytes(),
        peak_inuse_bytes: crate::alloc::peak::peak_inuse_bytes(),
        unwinder: crate::alloc::stack::unwinder(),
        unwind_table_bytes: crate::alloc::stack::table_bytes() as u64,
        unwind_table_fallbacks: crate::alloc::stack::table_fallbacks(),
        unwind_tables_deferred: crate::alloc::stack::tables_deferred(),
    }
}
