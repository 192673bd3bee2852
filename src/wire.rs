//! What the endpoint serves and the `heapprof` command reads, defined once:
//! the leak-suspects document, the sampling document and the names of the
//! metrics the command looks up. Not part of heapprof's API: heapprof-http
//! and heapprof-cli use it at the same version.

use serde::{Deserialize, Serialize};

use crate::sampling::Estimate;

/// Names of the `/metrics` families that `heapprof verify` reads.
pub mod metric {
    /// jemalloc's `stats.allocated`, bytes.
    pub const JEMALLOC_ALLOCATED: &str = "heapprof_jemalloc_allocated_bytes";
    /// jemalloc's `stats.active`, bytes.
    pub const JEMALLOC_ACTIVE: &str = "heapprof_jemalloc_active_bytes";
    /// jemalloc's `stats.resident`, bytes.
    pub const JEMALLOC_RESIDENT: &str = "heapprof_jemalloc_resident_bytes";
    /// jemalloc's `stats.mapped`, bytes.
    pub const JEMALLOC_MAPPED: &str = "heapprof_jemalloc_mapped_bytes";
    /// jemalloc's `stats.retained`, bytes.
    pub const JEMALLOC_RETAINED: &str = "heapprof_jemalloc_retained_bytes";
    /// jemalloc's `stats.metadata`, bytes.
    pub const JEMALLOC_METADATA: &str = "heapprof_jemalloc_metadata_bytes";
    /// jemalloc's `stats.arenas.<all>.tcache_bytes`: freed objects parked
    /// in thread caches, which `stats.allocated` still counts, bytes.
    pub const JEMALLOC_TCACHE: &str = "heapprof_jemalloc_tcache_bytes";
    /// jemalloc's `stats.arenas.<all>.internal`: its own structures
    /// (thread caches), counted in `stats.allocated`, bytes.
    pub const JEMALLOC_INTERNAL: &str = "heapprof_jemalloc_internal_bytes";
    /// glibc's `mallinfo2`: `uordblks + hblkhd`, bytes.
    pub const GLIBC_ALLOCATED: &str = "heapprof_glibc_allocated_bytes";
    /// The standard error of `heapprof_inuse_bytes` (sampling), bytes.
    pub const INUSE_STANDARD_ERROR: &str = "heapprof_inuse_bytes_standard_error";
    /// Samples taken since start.
    pub const SAMPLED_ALLOCATIONS: &str = "heapprof_sampled_allocations_total";
    /// Heap bytes of the profiler's own work (not sampled).
    pub const OWN_HEAP: &str = "heapprof_own_heap_bytes";
}

/// The document of `GET /debug/heapprof/sampling` (JSON): the profiler's
/// estimates with the samples and the sampling variance behind them
/// (`heapprof::sampling::Estimate`), the allocator's own figures next to
/// the profiler's estimate of the same quantity, and, on request, the live
/// heap's resident bytes. `heapprof verify` reads it at both ends of its
/// window; it costs a walk of the profiler's tables, no symbolization.
///
/// Query: `since_ns=T` adds [`SamplingDocument::born_since`];
/// `resident=1` adds [`SamplingDocument::resident`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingDocument {
    /// When the estimates were read, on `CLOCK_MONOTONIC`, nanoseconds (one
    /// clock for every process on the machine).
    pub monotonic_ns: u64,
    /// The sample rate, bytes.
    pub sample_rate: u64,
    /// Bytes allocated since start: the profile's `alloc_space` total. The
    /// change between two readings estimates what was allocated between.
    pub allocated: Estimate,
    /// Live bytes: the profile's `inuse_space` total.
    pub inuse: Estimate,
    /// With `since_ns=T`: live bytes of the allocations made at or after
    /// `T` (what an observer counting from `T` sees still live).
    pub born_since: Option<Estimate>,
    /// The allocator's figures and the profiler's estimate of the same.
    pub allocator: Option<AllocatorDocument>,
    /// With `resident=1`: the live heap's resident bytes, and what the
    /// process knows about its mappings.
    pub resident: Option<ResidentDocument>,
}

/// What the allocator says it handed out, taken apart so that one part
/// means what the profile means, next to the profiler's estimate of that
/// part.
///
/// `comparable = allocated - cached - internal - sampled_block_extra -
/// profiler_own`:
/// the usable bytes of the program's live allocations. The profiler's
/// [`AllocatorDocument::estimate`] counts each sampled allocation at the
/// usable size the allocator gives an allocation of its size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocatorDocument {
    /// `jemalloc` or `glibc`: the allocator that holds the heap (of those
    /// the endpoint can read, the one that has handed out more).
    pub name: String,
    /// What it has handed out and not taken back, bytes (jemalloc
    /// `stats.allocated`; glibc `uordblks + hblkhd`, in chunks).
    pub allocated: u64,
    /// Of that, freed objects parked in thread caches (jemalloc
    /// `tcache_bytes`; glibc does not say: 0).
    pub cached: u64,
    /// Of that, the allocator's own structures it allocates like objects
    /// (jemalloc `internal`: thread caches' bin stacks; glibc: 0).
    pub internal: u64,
    /// Of that, what the sampled blocks' page alignment adds over what the
    /// same allocations would have used unsampled.
    pub sampled_block_extra: u64,
    /// Of that, the profiler's own heap (not sampled, approximate).
    pub profiler_own: u64,
    /// What is left: the program's live allocations at usable size.
    pub comparable: u64,
    /// The profiler's estimate of `comparable`.
    pub estimate: Estimate,
}

/// The live heap's resident bytes and the mappings the process knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResidentDocument {
    /// Resident bytes of the live heap (each sampled block measured with
    /// `mincore`, scaled like the profile).
    pub heap: Estimate,
    /// The start of each mapping where the allocator handed out a sampled
    /// block (live, or among the last few thousand freed).
    pub allocator_mappings: Vec<u64>,
    /// The profiler's own tables: `[address, resident bytes]`.
    pub profiler: Vec<(u64, u64)>,
}

impl From<&crate::sampling::ResidentHeap> for ResidentDocument {
    fn from(r: &crate::sampling::ResidentHeap) -> Self {
        ResidentDocument {
            heap: r.estimate,
            allocator_mappings: r.allocator.clone(),
            profiler: r.profiler.clone(),
        }
    }
}

/// The document of `GET /debug/heapprof/leaks` (JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaksDocument {
    /// Whether the growth recorder runs ([`crate::start_history`]).
    pub recording: bool,
    /// Its interval, seconds.
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    /// Suspects, fastest growing first.
    #[serde(default)]
    pub suspects: Vec<SuspectDocument>,
}

/// One call site whose in-use bytes grow steadily.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SuspectDocument {
    /// The target's site id.
    pub site_id: u32,
    /// Function names, innermost first, plumbing trimmed.
    pub functions: Vec<String>,
    /// `file:line` of each function (`?` for an unknown file).
    pub locations: Vec<String>,
    /// Labels of the site (`[key, value]`).
    pub labels: Vec<(String, String)>,
    /// Least-squares slope of in-use bytes, bytes per minute.
    pub slope_bytes_per_minute: f64,
    /// Fit of that line (1 = perfectly steady growth).
    pub r_squared: f64,
    /// In-use bytes now.
    pub inuse_bytes: i64,
    /// Growth over the window, bytes.
    pub growth_bytes: i64,
    /// History points fitted.
    pub points: usize,
    /// Length of the history fitted, seconds.
    pub window_seconds: f64,
}

impl LeaksDocument {
    /// This process's recorder state and suspects ([`crate::leak_suspects`]).
    pub fn current() -> Self {
        let interval = crate::history_interval();
        LeaksDocument {
            recording: interval.is_some(),
            interval_seconds: interval.map(|d| d.as_secs_f64()),
            suspects: crate::leak_suspects()
                .into_iter()
                .map(SuspectDocument::from)
                .collect(),
        }
    }
}

impl From<crate::LeakSuspect> for SuspectDocument {
    fn from(s: crate::LeakSuspect) -> Self {
        SuspectDocument {
            site_id: s.site_id,
            functions: s.frames.iter().map(|f| f.function.clone()).collect(),
            locations: s
                .frames
                .iter()
                .map(|f| format!("{}:{}", f.file.as_deref().unwrap_or("?"), f.line))
                .collect(),
            labels: s.labels,
            slope_bytes_per_minute: s.slope_bytes_per_minute,
            r_squared: s.r_squared,
            inuse_bytes: s.inuse_bytes,
            growth_bytes: s.growth_bytes,
            points: s.points,
            window_seconds: s.window.as_secs_f64(),
        }
    }
}
