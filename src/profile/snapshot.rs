//! `Snapshot`: a copy of the profiler's state at one moment, and the values
//! derived from it (unbiased per-site estimates, totals, deltas).
//!
//! Taking a snapshot reads each site's counters (lock-free); sites are read
//! one after another, so a snapshot is consistent per site, not across
//! sites, exactly like Go's `runtime.MemProfile`. Building it does not sample
//! its own allocations.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::alloc::reentrancy::untracked;
use crate::alloc::{clock, config, live_table, site_table};

use super::site::{Site, fx_to_objects};
use super::stats::{Stats, stats};
use super::{SampleType, Totals, symbolize};

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
        let mut old = vec![(0u64, 0u64, 0i64, 0i64); snap.sites.len()];
        live_table::for_each(|r| {
            if r.born_ns <= cutoff
                && let Some(i) = index_of(&snap.sites, r.site)
            {
                let o = &mut old[i];
                o.0 += r.weight_fx;
                o.1 += crate::alloc::sampler::weighted_bytes(r.weight_fx, r.size as usize);
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
        let (_, peak_ns, values) = crate::alloc::peak::read()?;
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
    // (site index, birth) of every live sample: 16 bytes a live sample.
    let mut births: Vec<(u32, u64)> = Vec::with_capacity(live_table::live());
    live_table::for_each(|record| {
        if let Some(i) = index_of(sites, record.site) {
            births.push((i as u32, record.born_ns));
        }
    });
    births.sort_unstable();
    let age = |b: u64| Duration::from_nanos(now_ns.saturating_sub(b));
    for run in births.chunk_by(|a, b| a.0 == b.0) {
        let site = &mut sites[run[0].0 as usize];
        site.oldest_age = Some(age(run[0].1));
        site.median_age = Some(age(run[run.len() / 2].1));
    }
}

/// Position of site `id` in `sites`, which are in id order.
fn index_of(sites: &[Site], id: u32) -> Option<usize> {
    sites.binary_search_by_key(&id, |s| s.id).ok()
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
        self.since(base, |site, before| site.minus(before))
    }

    /// The heap in use now with what was allocated since `base`: the
    /// `inuse_*` values of `self` and the `alloc_*` values of
    /// [`Snapshot::delta_since`]. This is the shape a store that adds
    /// profiles up over time needs (Pyroscope; Grafana Alloy turns scraped
    /// heap profiles into it before sending, as godeltaprof does in Go):
    /// cumulative allocation totals would be counted again in every
    /// profile, in-use values are a level. Sites with nothing allocated
    /// in the window and nothing in use are left out; the duration is set.
    pub fn with_allocs_since(&self, base: &Snapshot) -> Snapshot {
        self.since(base, |site, before| {
            let mut d = site.minus(before);
            d.inuse_objects = site.inuse_objects;
            d.inuse_bytes = site.inuse_bytes;
            d.sampled.inuse_objects = site.sampled.inuse_objects;
            d.sampled.inuse_bytes = site.sampled.inuse_bytes;
            d
        })
    }

    /// Each site combined with its value in `base` by `combine` (sites new
    /// since `base` kept as they are), sites with nothing left out, and
    /// the duration set to the time between the two snapshots.
    fn since(&self, base: &Snapshot, combine: impl Fn(&Site, &Site) -> Site) -> Snapshot {
        untracked(|| {
            let before: HashMap<u32, &Site> = base.sites.iter().map(|s| (s.id, s)).collect();
            let sites = self
                .sites
                .iter()
                .map(|s| match before.get(&s.id) {
                    Some(b) => combine(s, b),
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
        // Measured before symbolizing, whose memory is not the heap's.
        let resident = options
            .resident
            .then(super::resident::resident_set)
            .and_then(Result::ok);
        untracked(|| {
            let resolved = if options.unsymbolized {
                HashMap::new()
            } else {
                symbolize::resolve_all(self.sites.iter().flat_map(|s| s.stack.iter().copied()))
            };
            super::proto::encode(self, options, &resolved, resident.as_ref())
        })
    }

    /// Go's `debug=1` heap text format.
    pub fn to_text(&self) -> String {
        self.to_text_with(&PprofOptions::default())
    }

    /// [`Snapshot::to_text`] with options (of which the text format uses
    /// [`PprofOptions::symbolize`]: without, frames are addresses only).
    pub fn to_text_with(&self, options: &PprofOptions) -> String {
        untracked(|| {
            let resolved = if options.unsymbolized {
                HashMap::new()
            } else {
                symbolize::resolve_all(self.sites.iter().flat_map(|s| s.stack.iter().copied()))
            };
            super::text::encode(self, &resolved)
        })
    }
}

/// Options for [`Snapshot::to_pprof_with`].
#[derive(Clone, Debug, Default)]
pub struct PprofOptions {
    pub(crate) default_sample_type: Option<SampleType>,
    pub(crate) ages: bool,
    pub(crate) unsymbolized: bool,
    pub(crate) resident: bool,
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

    /// Whether to name addresses in process (the default). Without, the
    /// profile holds addresses and mappings with build IDs only, costs no
    /// symbolization memory, and is named outside the process by
    /// `heapprof pprof-heap` or `go tool pprof <binary> <profile>`.
    pub fn symbolize(mut self, symbolize: bool) -> Self {
        self.unsymbolized = !symbolize;
        self
    }

    /// Adds the resident view: a `resident_space` sample type that
    /// partitions the process's whole RSS, measured when the profile is
    /// encoded: each site's resident live bytes, and virtual root frames
    /// (`[thread stacks]`, `[allocator retained]`, `[file pages]`,
    /// `[shared memory]`, `[heapprof tables]`, `[other anonymous
    /// memory]`) for the rest. Viewers start on it. Meant for a current
    /// snapshot (residency is measured now). Costs one `mincore` per live
    /// sample and a read of `/proc/self/smaps`.
    pub fn resident(mut self, resident: bool) -> Self {
        self.resident = resident;
        self
    }
}
