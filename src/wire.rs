//! What the endpoint serves and the `heapprof` command reads, defined once:
//! the leak-suspects document and the names of the metrics the command
//! looks up. Not part of heapprof's API: heapprof-http and heapprof-cli
//! use it at the same version.

use serde::{Deserialize, Serialize};

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
