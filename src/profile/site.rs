//! `Site`: one call site of a snapshot, its unbiased estimates and the raw
//! sample counts behind them, and the four sample types of a heap profile.

use std::time::Duration;

use crate::alloc::reentrancy::untracked;
use crate::alloc::sampler::WEIGHT_ONE;
use crate::alloc::site_table::CounterValues;
use crate::labels::{self, LabelSet};

use super::symbolize::{self, Frame};

/// One call site: a unique allocating stack and its unbiased estimates.
///
/// `inuse_*` can be negative only in a delta ([`crate::Snapshot::delta_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Site {
    pub(crate) id: u32,
    /// The site table's copy (never freed), not a copy of it.
    pub(crate) stack: &'static [usize],
    pub(crate) labels: LabelSet,
    /// Estimated objects allocated here since start (or in the delta window).
    pub alloc_objects: i64,
    /// Estimated bytes allocated here.
    pub alloc_bytes: i64,
    /// Estimated objects allocated here and still live.
    pub inuse_objects: i64,
    /// Estimated bytes allocated here and still live.
    pub inuse_bytes: i64,
    /// The raw sample counts behind the estimates.
    pub sampled: SampledCounts,
    /// Age of the oldest live sampled allocation of this site.
    pub oldest_age: Option<Duration>,
    /// Median age of the live sampled allocations of this site.
    pub median_age: Option<Duration>,
}

/// Raw (unscaled) sample counts of a site, as Go's text format prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SampledCounts {
    /// Sampled allocations.
    pub alloc_objects: i64,
    /// Bytes of the sampled allocations.
    pub alloc_bytes: i64,
    /// Sampled allocations still live.
    pub inuse_objects: i64,
    /// Bytes of the sampled allocations still live.
    pub inuse_bytes: i64,
}

/// Sums over all sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Totals {
    /// Estimated objects allocated.
    pub alloc_objects: i64,
    /// Estimated bytes allocated.
    pub alloc_bytes: i64,
    /// Estimated live objects.
    pub inuse_objects: i64,
    /// Estimated live bytes.
    pub inuse_bytes: i64,
}

/// The four values of a heap profile, as Go names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// `alloc_objects` (count).
    AllocObjects,
    /// `alloc_space` (bytes).
    AllocSpace,
    /// `inuse_objects` (count).
    InuseObjects,
    /// `inuse_space` (bytes).
    InuseSpace,
}

impl SampleType {
    /// In the order Go writes them.
    pub const ALL: [SampleType; 4] = [
        SampleType::AllocObjects,
        SampleType::AllocSpace,
        SampleType::InuseObjects,
        SampleType::InuseSpace,
    ];

    /// The pprof name, e.g. `inuse_space`.
    pub fn name(self) -> &'static str {
        match self {
            SampleType::AllocObjects => "alloc_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::InuseSpace => "inuse_space",
        }
    }

    /// The pprof unit: `count` or `bytes`.
    pub fn unit(self) -> &'static str {
        match self {
            SampleType::AllocObjects | SampleType::InuseObjects => "count",
            SampleType::AllocSpace | SampleType::InuseSpace => "bytes",
        }
    }

    /// This value of a site.
    pub fn of(self, site: &Site) -> i64 {
        match self {
            SampleType::AllocObjects => site.alloc_objects,
            SampleType::AllocSpace => site.alloc_bytes,
            SampleType::InuseObjects => site.inuse_objects,
            SampleType::InuseSpace => site.inuse_bytes,
        }
    }
}

/// A sample type name that is not one of the four.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown sample type {0:?}: expected alloc_objects, alloc_space, inuse_objects or inuse_space"
)]
pub struct UnknownSampleType(pub String);

impl std::str::FromStr for SampleType {
    type Err = UnknownSampleType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SampleType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownSampleType(s.to_owned()))
    }
}

pub(super) fn fx_to_objects(fx: u64) -> i64 {
    ((fx + WEIGHT_ONE / 2) / WEIGHT_ONE) as i64
}

impl Site {
    pub(super) fn from_counters(
        id: u32,
        stack: &'static [usize],
        labels: u32,
        v: CounterValues,
    ) -> Site {
        let alloc_objects = fx_to_objects(v.alloc_objects_fx);
        Site {
            id,
            stack,
            labels: labels::resolve(labels),
            alloc_objects,
            alloc_bytes: v.alloc_bytes as i64,
            inuse_objects: alloc_objects - fx_to_objects(v.free_objects_fx),
            inuse_bytes: v.alloc_bytes.saturating_sub(v.free_bytes) as i64,
            sampled: SampledCounts {
                alloc_objects: v.alloc_samples as i64,
                alloc_bytes: v.alloc_sampled_bytes as i64,
                inuse_objects: v.alloc_samples.saturating_sub(v.free_samples) as i64,
                inuse_bytes: v.alloc_sampled_bytes.saturating_sub(v.free_sampled_bytes) as i64,
            },
            oldest_age: None,
            median_age: None,
        }
    }

    /// Stable identifier of this call site within the process.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The labels its allocations were made under (`heapprof::with_labels`),
    /// sorted by key.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// The raw return addresses, innermost first, profiler frames included.
    pub fn addresses(&self) -> &[usize] {
        self.stack
    }

    /// The symbolized stack, innermost first, with the profiler's frames and
    /// the allocation plumbing trimmed (see [`crate::is_plumbing`]); inlined
    /// functions are separate frames. Uses the process-wide symbol cache.
    pub fn frames(&self) -> Vec<Frame> {
        untracked(|| {
            let resolved = symbolize::resolve_all(self.stack.iter().copied());
            symbolize::trim(self.stack, &resolved)
                .into_iter()
                .flat_map(|k| {
                    let frames = resolved.get(&k.ip).cloned();
                    frames
                        .map(|f| f[k.skip_inlined.min(f.len())..].to_vec())
                        .unwrap_or_default()
                })
                .collect()
        })
    }
}

impl Site {
    pub(super) fn minus(&self, b: &Site) -> Site {
        Site {
            id: self.id,
            stack: self.stack,
            labels: self.labels.clone(),
            alloc_objects: self.alloc_objects - b.alloc_objects,
            alloc_bytes: self.alloc_bytes - b.alloc_bytes,
            inuse_objects: self.inuse_objects - b.inuse_objects,
            inuse_bytes: self.inuse_bytes - b.inuse_bytes,
            sampled: SampledCounts {
                alloc_objects: self.sampled.alloc_objects - b.sampled.alloc_objects,
                alloc_bytes: self.sampled.alloc_bytes - b.sampled.alloc_bytes,
                inuse_objects: self.sampled.inuse_objects - b.sampled.inuse_objects,
                inuse_bytes: self.sampled.inuse_bytes - b.sampled.inuse_bytes,
            },
            oldest_age: self.oldest_age,
            median_age: self.median_age,
        }
    }
}
