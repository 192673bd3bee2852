//! `Snapshot`: a copy of the profiler's state at one moment, and the values
//! derived from it (unbiased per-site estimates, totals, deltas).
//!
//! Taking a snapshot reads each site's counters (lock-free); sites are read
//! one after another, so a snapshot is consistent per site, not across
//! sites, exactly like Go's `runtime.MemProfile`. Building it does not sample
//! its own allocations.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::labels::{self, LabelSet};
use crate::reentrancy::untracked;
use crate::sampler::WEIGHT_ONE;
use crate::site_table::{self, CounterValues};
use crate::symbolize::{self, Frame};
use crate::{clock, config, live_table};

/// The state of the heap profile at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) sites: Vec<Site>,
    pub(crate) sample_rate: u64,
    pub(crate) time: SystemTime,
    pub(crate) monotonic_ns: u64,
    pub(crate) duration: Option<Duration>,
    pub(crate) stats: Stats,
}

/// One call site: a unique allocating stack and its unbiased estimates.
///
/// `inuse_*` can be negative only in a delta ([`Snapshot::delta_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub(crate) id: u32,
    pub(crate) stack: Box<[usize]>,
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

/// The profiler's own health: bounds, drops and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sample rate in bytes (0 = off).
    pub sample_rate: u64,
    /// Distinct call sites recorded.
    pub sites: usize,
    /// Bound on call sites (`HEAPPROF_MAX_SITES`).
    pub max_sites: usize,
    /// Samples charged to the overflow site because the site table was full.
    pub overflowed_samples: u64,
    /// Sampled allocations currently live.
    pub live_samples: usize,
    /// Most live sampled allocations the profiler can track.
    pub live_capacity: usize,
    /// Samples not taken because the live table had no room (biases
    /// estimates low when non-zero).
    pub dropped_samples: u64,
    /// Memory the profiler holds, in bytes: site table and stacks (mapped),
    /// the live-sample table (reserved; resident as it fills) and the
    /// symbol cache (heap, not sampled).
    pub own_memory_bytes: u64,
    /// Addresses in the symbol cache.
    pub symbol_cache_entries: usize,
    /// Approximate heap bytes of the symbol cache (part of
    /// `own_memory_bytes`).
    pub symbol_cache_bytes: u64,
    /// Total time spent symbolizing, in nanoseconds.
    pub symbolization_ns: u64,
    /// Estimated in-use heap bytes of the process, from the samples.
    pub estimated_inuse_bytes: i64,
    /// Estimated in-use heap bytes at the peak (see [`peak_snapshot`]).
    pub peak_inuse_bytes: i64,
    /// How sampled stacks are captured (`HEAPPROF_UNWIND`, see
    /// [`unwinder`](crate::unwinder)).
    pub unwinder: crate::Unwinder,
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

/// Takes a snapshot of the current state. Cheap: no symbolization (that
/// happens in [`Snapshot::to_pprof`] and [`Snapshot::to_text`]).
pub fn snapshot() -> Snapshot {
    untracked(|| {
        let mut sites = Vec::with_capacity(site_table::usage().sites + 1);
        site_table::for_each(|id, stack, labels, values| {
            sites.push(Site::from_counters(id, stack, labels, values))
        });
        let now = clock::monotonic_ns();
        set_ages(&mut sites, now);
        Snapshot {
            sites,
            sample_rate: config::sample_rate(),
            time: SystemTime::now(),
            monotonic_ns: now,
            duration: None,
            stats: stats(),
        }
    })
}

/// Like [`snapshot`], but the in-use values count only live allocations at
/// least `min_age` old (`/debug/pprof/heap?min_age=60s`): what was
/// allocated and never freed for that long, the shape of a leak. The
/// `alloc_*` values are the full history, as in [`snapshot`].
pub fn snapshot_older_than(min_age: Duration) -> Snapshot {
    let mut snap = snapshot();
    untracked(|| {
        let cutoff = snap.monotonic_ns.saturating_sub(min_age.as_nanos() as u64);
        let position: HashMap<u32, usize> = snap
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let mut old = vec![(0u64, 0u64, 0i64, 0i64); snap.sites.len()];
        live_table::for_each(|r| {
            if r.born_ns <= cutoff
                && let Some(&i) = position.get(&r.site)
            {
                let o = &mut old[i];
                o.0 += r.weight_fx;
                o.1 += crate::sampler::weighted_bytes(r.weight_fx, r.size as usize);
                o.2 += 1;
                o.3 += r.size as i64;
            }
        });
        for (site, (objects_fx, bytes, samples, sampled_bytes)) in snap.sites.iter_mut().zip(old) {
            site.inuse_objects = fx_to_objects(objects_fx);
            site.inuse_bytes = bytes as i64;
            site.sampled.inuse_objects = samples;
            site.sampled.inuse_bytes = sampled_bytes;
        }
    });
    snap
}

/// The state at the high-water mark of the estimated in-use heap since the
/// start (or the last [`crate::reset_peak`]), within 1/16 of it (see
/// `peak`). `None` before the first sample. Its `time()` is when the peak
/// was captured; ages are not recorded.
pub fn peak_snapshot() -> Option<Snapshot> {
    untracked(|| {
        let (_, peak_ns, values) = crate::peak::read()?;
        let sites = values
            .into_iter()
            .enumerate()
            .filter(|(_, v)| v.alloc_samples > 0)
            .filter_map(|(id, v)| {
                let (stack, labels) = site_table::site_key(id as u32)?;
                Some(Site::from_counters(id as u32, stack, labels, v))
            })
            .collect();
        let now = clock::monotonic_ns();
        let ago = Duration::from_nanos(now.saturating_sub(peak_ns));
        Some(Snapshot {
            sites,
            sample_rate: config::sample_rate(),
            time: SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            monotonic_ns: peak_ns,
            duration: None,
            stats: stats(),
        })
    })
}

/// Fills each site's oldest and median live-sample age from the live table.
fn set_ages(sites: &mut [Site], now_ns: u64) {
    let position: HashMap<u32, usize> = sites.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut births: Vec<Vec<u64>> = vec![Vec::new(); sites.len()];
    live_table::for_each(|record| {
        if let Some(&i) = position.get(&record.site) {
            births[i].push(record.born_ns);
        }
    });
    for (site, mut born) in sites.iter_mut().zip(births) {
        if born.is_empty() {
            continue;
        }
        born.sort_unstable();
        let age = |b: u64| Duration::from_nanos(now_ns.saturating_sub(b));
        site.oldest_age = Some(age(born[0]));
        site.median_age = Some(age(born[born.len() / 2]));
    }
}

/// Symbolizes every address of the current sites into the symbol cache,
/// without building a profile (the OOM guard's warm-up).
pub(crate) fn warm_symbols() {
    untracked(|| {
        let snap = snapshot();
        drop(symbolize::resolve_all(
            snap.sites.iter().flat_map(|s| s.stack.iter().copied()),
        ));
    })
}

/// The profiler's current [`Stats`].
pub fn stats() -> Stats {
    let usage = site_table::usage();
    let (symbol_cache_entries, symbol_cache_bytes, symbolization_ns) = symbolize::cache_stats();
    Stats {
        sample_rate: config::sample_rate(),
        sites: usage.sites,
        max_sites: usage.max_sites,
        overflowed_samples: usage.overflowed_samples,
        live_samples: live_table::live(),
        live_capacity: live_table::CAPACITY,
        dropped_samples: live_table::dropped(),
        own_memory_bytes: (usage.mapped_bytes + live_table::reserved_bytes()) as u64
            + symbol_cache_bytes,
        symbol_cache_entries,
        symbol_cache_bytes,
        symbolization_ns,
        estimated_inuse_bytes: site_table::inuse_bytes(),
        peak_inuse_bytes: crate::peak::peak_inuse_bytes(),
        unwinder: crate::stack::unwinder(),
    }
}

fn fx_to_objects(fx: u64) -> i64 {
    ((fx + WEIGHT_ONE / 2) / WEIGHT_ONE) as i64
}

impl Site {
    fn from_counters(id: u32, stack: &[usize], labels: u32, v: CounterValues) -> Site {
        let alloc_objects = fx_to_objects(v.alloc_objects_fx);
        Site {
            id,
            stack: stack.into(),
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
        &self.stack
    }

    /// The symbolized stack, innermost first, with the profiler's frames and
    /// the allocation plumbing trimmed (see [`crate::is_plumbing`]); inlined
    /// functions are separate frames. Uses the process-wide symbol cache.
    pub fn frames(&self) -> Vec<Frame> {
        untracked(|| {
            let resolved = symbolize::resolve_all(self.stack.iter().copied());
            symbolize::trim(&self.stack, &resolved)
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

impl Snapshot {
    /// The call sites with samples, in site order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Sum of every site's estimates.
    pub fn totals(&self) -> Totals {
        self.sites.iter().fold(Totals::default(), |t, s| Totals {
            alloc_objects: t.alloc_objects + s.alloc_objects,
            alloc_bytes: t.alloc_bytes + s.alloc_bytes,
            inuse_objects: t.inuse_objects + s.inuse_objects,
            inuse_bytes: t.inuse_bytes + s.inuse_bytes,
        })
    }

    /// Sample rate (bytes) when the snapshot was taken: the profile's period.
    pub fn sample_rate(&self) -> u64 {
        self.sample_rate
    }

    /// Wall-clock time of the snapshot.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The window a delta covers; `None` for a plain snapshot.
    pub fn duration(&self) -> Option<Duration> {
        self.duration
    }

    /// The profiler's health when the snapshot was taken.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What happened between `base` and `self`: every value of every site
    /// minus its value in `base` (Go's `?seconds=N` delta profile). Sites
    /// with no change are left out; the duration is set.
    pub fn delta_since(&self, base: &Snapshot) -> Snapshot {
        untracked(|| {
            let before: HashMap<u32, &Site> = base.sites.iter().map(|s| (s.id, s)).collect();
            let sites = self
                .sites
                .iter()
                .map(|s| match before.get(&s.id) {
                    Some(b) => s.minus(b),
                    None => s.clone(),
                })
                .filter(|s| s.alloc_objects != 0 || s.inuse_bytes != 0 || s.inuse_objects != 0)
                .collect();
            Snapshot {
                sites,
                sample_rate: self.sample_rate,
                time: self.time,
                monotonic_ns: self.monotonic_ns,
                duration: Some(Duration::from_nanos(
                    self.monotonic_ns.saturating_sub(base.monotonic_ns),
                )),
                stats: self.stats,
            }
        })
    }

    /// The gzipped pprof profile (profile.proto), as Go's
    /// `/debug/pprof/heap` writes it.
    pub fn to_pprof(&self) -> Vec<u8> {
        self.to_pprof_with(&PprofOptions::default())
    }

    /// [`Snapshot::to_pprof`] with options.
    pub fn to_pprof_with(&self, options: &PprofOptions) -> Vec<u8> {
        untracked(|| crate::pprof::encode(self, options))
    }

    /// Go's `debug=1` heap text format.
    pub fn to_text(&self) -> String {
        untracked(|| crate::text::encode(self))
    }
}

impl Site {
    fn minus(&self, b: &Site) -> Site {
        Site {
            id: self.id,
            stack: self.stack.clone(),
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

/// Options for [`Snapshot::to_pprof_with`].
#[derive(Clone, Debug, Default)]
pub struct PprofOptions {
    pub(crate) default_sample_type: Option<SampleType>,
    pub(crate) ages: bool,
}

impl PprofOptions {
    /// Default options: like Go's `/debug/pprof/heap`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sample type viewers show first (Go's `/debug/pprof/allocs` sets
    /// `alloc_space`; unset, viewers pick the last one, `inuse_space`).
    pub fn default_sample_type(mut self, sample_type: SampleType) -> Self {
        self.default_sample_type = Some(sample_type);
        self
    }

    /// Adds numeric labels `oldest_age` and `median_age` (unit `ms`)
    /// to samples with live allocations. Off by default: labels that
    /// change with every snapshot keep `go tool pprof -base` from matching
    /// samples of two profiles.
    pub fn ages(mut self, ages: bool) -> Self {
        self.ages = ages;
        self
    }
}
