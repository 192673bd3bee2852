//! Building profiles, outside the allocator.
//!
//! A [`snapshot`] copies the allocator's tables (`site_table`,
//! `live_table`, `peak`) into [`Site`]s with unbiased estimates;
//! `symbolize` names their return addresses and trims the allocation
//! plumbing; the encoders write Go's formats: `proto` the gzipped
//! profile.proto, `text` the `debug=1` text. Everything here runs under the
//! reentrancy guard, so the profiler's own allocations never appear in the
//! profiles it writes.

pub(crate) mod admission;
pub(crate) mod estimate;
pub(crate) mod live;
mod mappings;
mod proto;
pub(crate) mod resident;
mod site;
mod snapshot;
mod stats;
pub(crate) mod symbolize;
mod text;
pub(crate) mod writer;

pub(crate) use admission::admit_within;
pub use admission::{Admission, BuildKind, BuildMode, NoRoom, admit, headroom};
pub use proto::{RESIDENT_SPACE, SITE_TABLE_FULL};
pub use site::{SampleType, SampledCounts, Site, Totals, UnknownSampleType};
pub use snapshot::{PprofOptions, Snapshot, peak_snapshot, snapshot, snapshot_older_than};
pub use stats::{Stats, stats};
pub use symbolize::{Frame, function_names, is_plumbing};
