#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod cgroup;
mod clock;
mod config;
mod frame_pointer;
pub mod history;
mod labels;
mod live_table;
mod mappings;
pub mod oom_guard;
mod peak;
mod pprof;
mod profiler;
mod reentrancy;
mod sampler;
mod site_table;
mod snapshot;
mod spin;
mod stack;
mod symbolize;
mod text;

pub use config::{DEFAULT_SAMPLE_RATE, sample_rate, set_sample_rate};
pub use labels::{LabelGuard, LabelsExt, MAX_LABEL_SETS, WithLabels, set_labels, with_labels};
pub use peak::{peak_inuse_bytes, reset_peak};
pub use pprof::SITE_TABLE_FULL;
pub use profiler::Profiler;
pub use snapshot::{
    PprofOptions, SampleType, SampledCounts, Site, Snapshot, Stats, Totals, UnknownSampleType,
    peak_snapshot, snapshot, snapshot_older_than, stats,
};
pub use stack::{AUTO_CHECKS, SPOT_CHECK_EVERY, Unwinder, unwinder};
pub use symbolize::{Frame, is_plumbing};
