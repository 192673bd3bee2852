//! The samples themselves, for the endpoint and `heapprof verify`: the
//! live sampled blocks, estimates with their sampling error, the live
//! heap's resident bytes and the RSS partition built on them, and how an
//! outside observer tells the profiler's frames and work apart. Not part
//! of heapprof's API: heapprof-http and heapprof-cli use it at the same
//! version.

/// The alignment large sampled blocks are asked for. The inner
/// allocator's block for a sampled allocation is padded (small ones) or
/// asked for at this alignment (large ones), so its usable size differs
/// from what an unsampled allocation of the same size gets:
/// [`LiveSample::inner_size`] and [`LiveSample::inner_align`] say what was
/// asked.
pub const SAMPLED_BLOCK_ALIGN: usize = crate::alloc::block::PAGE;

/// The unmangled function heapprof calls after padding a sampled
/// allocation, with `(inner block, its size, the program's pointer, the
/// program's size)`: an attach point for `heapprof verify --uprobes`.
pub const SAMPLED_BLOCK_SYMBOL: &str = "heapprof_sampled_block";

pub use crate::profile::estimate::Estimate;
pub use crate::profile::live::{LiveSample, alloc_estimate, for_each_live_sample, live_estimate};
pub use crate::profile::resident::{ResidentHeap, ResidentSet, resident_heap, resident_set};
pub use crate::profile::symbolize::{PROFILER_WORK_FRAME, first_kept_frame, is_profiler_work};

#[cfg(test)]
mod tests {
    #[test]
    fn the_symbol_is_the_function() {
        assert!(
            std::any::type_name_of_val(&crate::alloc::block::heapprof_sampled_block)
                .ends_with(super::SAMPLED_BLOCK_SYMBOL)
        );
    }
}
