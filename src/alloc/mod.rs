//! What runs inside the global allocator.
//!
//! [`Profiler`] wraps the inner allocator. Each allocation asks `sampler`
//! whether a sample point falls inside it (one thread-local subtract); a
//! sampled one has its call stack captured (`stack`), interned as a call
//! site in `site_table`, remembered in `live_table` so that its free is
//! recognised, and counted toward the high-water mark (`peak`). The
//! process-wide figures every sample writes share one cache line
//! (`shared_line`), so that threads sampling on different cores move one
//! line between them, not one per figure.
//!
//! The rules every module here keeps: no allocation, no lock and no
//! syscall on the unsampled path; the sampled path runs under the
//! reentrancy guard (`reentrancy`), allocates nothing of its own (tables
//! live in mappings outside the heap, `pages`), takes only spin locks that
//! never call out (`spin`), and releases them across `fork` (`fork`);
//! thread-locals are const-initialised without destructors.

pub(crate) mod block;
pub(crate) mod clock;
pub(crate) mod config;
mod env;
pub(crate) mod fork;
pub(crate) mod live_table;
pub(crate) mod pages;
pub(crate) mod peak;
mod profiler;
pub(crate) mod reentrancy;
pub(crate) mod sampler;
mod scratch;
mod shared_line;
pub(crate) mod site_table;
mod spin;
pub(crate) mod stack;

pub use profiler::Profiler;
