//! heapprof: a sampling heap profiler that a Rust service embeds to find
//! its own memory leaks in production.
//!
//! [`Profiler`] wraps any global allocator. It samples allocations by bytes
//! the way Go's runtime does (a Poisson process with a mean of
//! [`DEFAULT_SAMPLE_RATE`] bytes between samples), records the call stack of
//! each sampled allocation, and keeps unbiased estimates of allocated and
//! in-use objects and bytes per call site. A [`Snapshot`] of that state
//! encodes as a Go-compatible pprof heap profile that `go tool pprof`,
//! Parca and Pyroscope read as they are.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler<std::alloc::System> =
//!     heapprof::Profiler::new(std::alloc::System);
//!
//! fn main() -> std::io::Result<()> {
//!     // ... the service runs ...
//!     let snap = heapprof::snapshot(); // consistent per call site
//!     std::fs::write("heap.pb.gz", snap.to_pprof())?; // gzipped profile.proto
//!     print!("{}", snap.to_text()); // Go's ?debug=1 text format
//!     Ok(())
//! }
//! ```
//!
//! The `heapprof-http` crate serves these profiles at `/debug/pprof/heap`
//! like Go's `net/http/pprof`.
//!
//! Beyond the profile itself:
//! - [`peak_snapshot`]: the heap at its high-water mark, after the spike is
//!   gone;
//! - [`snapshot_older_than`]: in-use values of allocations at least that old;
//! - [`with_labels`]: allocations charged to a component, for
//!   `go tool pprof -tagfocus`;
//! - [`start_history`] and [`leak_suspects`]: call sites that grow steadily;
//! - [`OomGuardConfig`]: profiles written to disk before the memory
//!   cgroup's limit is reached;
//! - [`thread_dump`]: every OS thread's current stack, encoded like Go's
//!   goroutine profile (where are the threads parked?).
//!
//! # Costs
//! The unsampled path of every allocation is one thread-local subtract and
//! a branch (on free, a test of the pointer's offset in its page). A
//! sample costs a stack capture ([`unwinder`]) and about a page of padding
//! while it lives, and the profiler's tables live outside the heap (see
//! [`Stats::own_memory_bytes`]). Building a profile symbolizes only the
//! addresses it contains, in memory bounded by the cgroup's headroom.

#![warn(missing_docs)]

mod alloc;
mod cpu;
mod history;
mod labels;
mod oom_guard;
mod profile;
/// Naming and trimming a profile outside the process that took it
/// (`heapprof pprof-heap`). Not part of heapprof's API: heapprof-cli uses it
/// at the same version.
#[doc(hidden)]
pub mod offline {
    pub use crate::profile::symbolize::{name_file_offsets, trim_point};

    /// A frame named `function` in `file`, for [`trim_point`].
    pub fn frame(function: &str, file: Option<&str>) -> crate::Frame {
        crate::Frame {
            function: function.to_owned(),
            system_name: None,
            file: file.map(str::to_owned),
            line: 0,
            symbol_address: 0,
        }
    }
}
#[doc(hidden)]
pub mod sampling;
#[doc(hidden)]
pub mod sys;
mod threads;
#[doc(hidden)]
pub mod wire;

pub use alloc::Profiler;
pub use alloc::config::{DEFAULT_SAMPLE_RATE, sample_rate, set_sample_rate};
pub use alloc::peak::{peak_inuse_bytes, reset_peak};
#[doc(hidden)]
pub use alloc::stack::hooks as stack_hooks;
pub use alloc::stack::{Unwinder, unwinder};
pub use cpu::{CpuProfileError, cpu_profile};
pub use history::{HistoryGuard, LeakSuspect, history_interval, leak_suspects, start_history};
pub use labels::{LabelGuard, LabelsExt, WithLabels, set_labels, with_labels};
pub use oom_guard::{OomGuard, OomGuardConfig, OomGuardError};
pub use profile::{
    Admission, BuildKind, BuildMode, Frame, NoRoom, PprofOptions, RESIDENT_SPACE, SITE_TABLE_FULL,
    SampleType, SampledCounts, Site, Snapshot, Stats, Totals, UnknownSampleType, admit,
    function_names, headroom, is_plumbing, peak_snapshot, snapshot, snapshot_older_than, stats,
};
pub use threads::{
    DEFAULT_THREAD_DUMP_SIGNAL, Missing, THREAD_DUMP_TIMEOUT, ThreadDump, ThreadDumpError,
    ThreadStack, set_thread_dump_signal, thread_dump,
};

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
