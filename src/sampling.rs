//! The samples themselves, for the endpoint and `heapprof verify`: the
//! live sampled blocks, estimates with their sampling error, the live
//! heap's resident bytes and the RSS partition built on them, and how an
//! outside observer tells the profiler's frames and work apart. Not part
//! of heapprof's API: heapprof-http and heapprof-cli use it at the same
//! version.

/// Alignment of every sampled block: the allocator hands out a block of
/// the requested size at this alignment, so its usable size may differ
/// from what an unsampled allocation of the same size gets.
pub const SAMPLED_BLOCK_ALIGN: usize = crate::alloc::live_table::TAG_ALIGN;

pub use crate::profile::estimate::Estimate;
pub use crate::profile::live::{LiveSample, alloc_estimate, for_each_live_sample, live_estimate};
pub use crate::profile::resident::{ResidentHeap, ResidentSet, resident_heap, resident_set};
pub use crate::profile::symbolize::{PROFILER_WORK_FRAME, first_kept_frame, is_profiler_work};
