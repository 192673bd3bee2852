//! The live sampled allocations themselves, and estimates over them or
//! over all samples, each with its sampling error (`estimate`).
//!
//! These read the allocator's tables without locks and without allocating
//! (`live_table::for_each_at`, `site_table::for_each`), so they cost a walk
//! of the tables and nothing else.

use crate::alloc::sampler::{WEIGHT_ONE, sample_variance, weighted_bytes};
use crate::alloc::{live_table, site_table};

use super::estimate::Estimate;

/// One live sampled allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct LiveSample {
    /// Its address (at its layout's tag, an offset in its page: see the
    /// profiler's `block` module).
    pub address: usize,
    /// The size the program asked for, bytes.
    pub size: u64,
    /// The size of the block the inner allocator handed out for it, bytes:
    /// `size` plus padding for a small one, `size` for a large one (see
    /// [`inner_align`](Self::inner_align)).
    pub inner_size: u64,
    /// The alignment that block was asked for: 1 for a padded block (at
    /// the program's alignment, which the record does not keep; allocators
    /// give at least 8 or 16 anyway), [`SAMPLED_BLOCK_ALIGN`] otherwise.
    ///
    /// [`SAMPLED_BLOCK_ALIGN`]: crate::sampling::SAMPLED_BLOCK_ALIGN
    pub inner_align: u64,
    /// How many allocations it stands for (`1 / p(size)`).
    pub weight: f64,
    /// The site it was allocated at ([`crate::Site::id`]).
    pub site: u32,
    /// When, on `CLOCK_MONOTONIC` (`sys::clock`), nanoseconds, as of the
    /// last timer tick before it (`sys::clock::coarse_ns`, 1-4 ms behind).
    pub born_ns: u64,
}

/// Calls `f` with every live sampled allocation (those freed or made
/// meanwhile may or may not be seen).
pub fn for_each_live_sample(mut f: impl FnMut(&LiveSample)) {
    live_table::for_each_at(|address, r| {
        f(&LiveSample {
            address,
            size: r.size,
            inner_size: r.size + u64::from(r.pad),
            inner_align: if r.pad == 0 {
                crate::alloc::block::PAGE as u64
            } else {
                1
            },
            weight: r.weight_fx as f64 / WEIGHT_ONE as f64,
            site: r.site,
            born_ns: r.born_ns,
        })
    });
}

/// The live heap's bytes, estimated from the live samples; with
/// `born_since_ns`, only allocations made at or after that moment
/// (`CLOCK_MONOTONIC`; births are stamped as of the last timer tick, so
/// an allocation within a tick after that moment may count as before it):
/// what an observer that started counting then (uprobes attached then)
/// sees still live.
pub fn live_estimate(born_since_ns: Option<u64>) -> Estimate {
    let mut e = Estimate::default();
    live_table::for_each(|r| {
        if born_since_ns.is_none_or(|t| r.born_ns >= t) {
            // The same rounding as the profile's in-use bytes.
            e.bytes += weighted_bytes(r.weight_fx, r.size as usize) as f64;
            e.samples += 1;
            e.variance += sample_variance(r.size, r.weight_fx);
        }
    });
    e
}

/// The bytes allocated since start, as the profile's `alloc_space` total,
/// with the samples and the variance behind it. The change between two
/// readings is the estimate of what was allocated in between.
pub fn alloc_estimate() -> Estimate {
    let variance = site_table::alloc_variance();
    let mut e = Estimate {
        variance,
        ..Estimate::default()
    };
    site_table::for_each(|_, _, _, v| {
        e.bytes += v.alloc_bytes as f64;
        e.samples += v.alloc_samples;
    });
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_consistent_in_a_process_without_samples() {
        // The unit tests' process does not sample (no profiler installed):
        // the estimates read empty tables without panicking.
        let live = live_estimate(None);
        assert!(live.bytes >= 0.0 && live.variance >= 0.0);
        let later = live_estimate(Some(u64::MAX));
        assert_eq!(later.samples, 0);
        let alloc = alloc_estimate();
        assert!(alloc.bytes >= live.bytes || alloc.samples == 0);
    }
}
