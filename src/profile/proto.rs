//! Encoding a snapshot as a gzipped pprof profile (profile.proto), the way
//! Go's `runtime/pprof` writes heap profiles:
//!
//! - sample types `alloc_objects`/count, `alloc_space`/bytes,
//!   `inuse_objects`/count, `inuse_space`/bytes, in that order;
//! - period type `space`/bytes, period = the sample rate;
//! - values already unbiased (see `sampler`), so viewers must not rescale;
//! - a numeric label `bytes` with the site's average sampled object size,
//!   as Go adds one per sample, string labels from `with_labels`, and on
//!   request (`PprofOptions::ages`) the oldest and median live-sample age;
//! - Mappings from `/proc/self/maps` with build IDs, main binary first;
//! - Locations symbolized in process: one Line per inlining level, innermost
//!   first.
//!
//! The profile is streamed (`writer`): the encoder holds one entry per
//! distinct string, function and location, never the whole message.
//!
//! # The resident view
//!
//! With `PprofOptions::resident`, a fifth sample type, `resident_space`
//! (bytes, as tcmalloc names it), holds the whole RSS of the process,
//! partitioned (`resident`, `sys::partition`): each site gets the resident
//! bytes of its live allocations (measured, scaled like the profile), and
//! the rest of RSS hangs under virtual root frames, `[thread stacks]`,
//! `[allocator retained]`, `[file pages]`, `[shared memory]`,
//! `[heapprof tables]` and `[other anonymous memory]`. The values of
//! `resident_space` add up to the RSS, so `go tool pprof
//! -sample_index=resident_space -top` accounts for all of it; viewers start
//! on it.
//!
//! # Unsymbolized profiles
//!
//! When a build must not pay for symbolization (`PprofOptions::symbolize`),
//! locations carry addresses only, the mappings carry the build IDs that
//! `heapprof pprof-heap` or `go tool pprof <binary>` symbolize with, and
//! `drop_frames` names the plumbing that pprof removes from the top of
//! each stack once it has names.

use std::collections::HashMap;

use pprof::protos;

use crate::alloc::site_table::OVERFLOW_SITE;

use super::resident::ResidentSet;
use super::symbolize::{self, Resolved};
use super::writer::Writer;
use super::{PprofOptions, SampleType, Snapshot};

/// Name of the resident view's sample type.
pub const RESIDENT_SPACE: &str = "resident_space";

/// Function name of the overflow site's synthetic frame.
pub const SITE_TABLE_FULL: &str = "[heapprof: site table full]";
const UNKNOWN_STACK: &str = "[heapprof: unknown stack]";
/// The comment of an unsymbolized profile: why, and how to get names.
const UNSYMBOLIZED_NOTE: &str = "heapprof: unsymbolized (addresses were not named in process: \
     too little memory was left, or, for an OOM guard's dump, the process ended before its \
     named copy was written); name it with `heapprof pprof-heap FILE -o NAMED`, which finds \
     the binary by build ID (or `--binary PATH`)";

/// Gzipped, encoded profile. `resolved` names the snapshot's addresses,
/// unless `options` say the profile is unsymbolized. (An empty `resolved`
/// is not the sign: a delta in which nothing changed has no addresses.)
/// `resident`, when given, adds the resident view (see the module docs).
pub(crate) fn encode(
    snap: &Snapshot,
    options: &PprofOptions,
    resolved: &HashMap<usize, Resolved>,
    resident: Option<&ResidentSet>,
) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, snap, options, options.unsymbolized, resident);
    let bytes_key = w.string("bytes");
    let ms = w.string("ms");
    let resident_of = resident_by_site(resident);
    let mut assigned: i64 = 0;

    for site in &snap.sites {
        let kept = if options.unsymbolized {
            symbolize::untrimmed(site.stack)
        } else {
            symbolize::trim(site.stack, resolved)
        };
        let location_id = if kept.is_empty() {
            let name = if site.id == OVERFLOW_SITE {
                SITE_TABLE_FULL
            } else {
                UNKNOWN_STACK
            };
            vec![w.synthetic_location(name)]
        } else {
            kept.iter()
                .map(|&k| w.location(k, symbolize::frames_of(resolved, k)))
                .collect()
        };
        let mut label: Vec<protos::Label> = site
            .labels
            .iter()
            .map(|(k, v)| protos::Label {
                key: w.string(k),
                str: w.string(v),
                ..Default::default()
            })
            .collect();
        if options.ages
            && let (Some(oldest), Some(median)) = (site.oldest_age, site.median_age)
        {
            for (key, age) in [("oldest_age", oldest), ("median_age", median)] {
                label.push(protos::Label {
                    key: w.string(key),
                    num: age.as_millis() as i64,
                    num_unit: ms,
                    ..Default::default()
                });
            }
        }
        if site.sampled.alloc_objects > 0 {
            label.push(protos::Label {
                key: bytes_key,
                num: site.sampled.alloc_bytes / site.sampled.alloc_objects,
                ..Default::default()
            });
        }
        let mut value: Vec<i64> = SampleType::ALL.iter().map(|t| t.of(site)).collect();
        if resident.is_some() {
            let bytes = resident_of(site.id);
            assigned += bytes;
            value.push(bytes);
        }
        w.emit(protos::Profile {
            sample: vec![protos::Sample {
                location_id,
                value,
                label,
            }],
            ..Default::default()
        });
    }
    if let Some(set) = resident {
        let p = &set.parts;
        // Sites born after the snapshot, and rounding: the rest of the
        // heap part, so that the view still adds up to RSS.
        let unassigned = (p.heap as i64 - assigned).max(0) as u64;
        for (name, bytes) in [
            ("[heap: sites newer than the snapshot]", unassigned),
            ("[thread stacks]", p.thread_stacks),
            ("[allocator retained]", p.allocator_retained),
            ("[file pages]", p.file),
            ("[shared memory]", p.shmem),
            ("[heapprof tables]", p.profiler),
            ("[other anonymous memory]", p.other_anon),
        ] {
            if bytes == 0 {
                continue;
            }
            let location_id = vec![w.synthetic_location(name)];
            w.emit(protos::Profile {
                sample: vec![protos::Sample {
                    location_id,
                    value: vec![0, 0, 0, 0, bytes as i64],
                    label: Vec::new(),
                }],
                ..Default::default()
            });
        }
    }
    w.finish()
}

/// Each site's resident bytes in the view: its measured share, scaled so
/// that the sites add up to the partition's heap part (which is the
/// estimate, or less when the allocator's mappings hold fewer pages).
fn resident_by_site(resident: Option<&ResidentSet>) -> impl Fn(u32) -> i64 + '_ {
    let scale = resident.map_or(0.0, |set| {
        let estimate = set.heap.estimate.bytes;
        if estimate > 0.0 {
            set.parts.heap as f64 / estimate
        } else {
            0.0
        }
    });
    move |site| {
        let Some(set) = resident else { return 0 };
        let by_site = &set.heap.by_site;
        by_site
            .binary_search_by_key(&site, |(id, _)| *id)
            .map_or(0, |i| (by_site[i].1 * scale).round() as i64)
    }
}

/// The sample and period types, times, and for unsymbolized profiles
/// the frames pprof must drop.
fn header(
    w: &mut Writer,
    snap: &Snapshot,
    options: &PprofOptions,
    unsymbolized: bool,
    resident: Option<&ResidentSet>,
) {
    let mut sample_type: Vec<protos::ValueType> = SampleType::ALL
        .iter()
        .map(|t| w.value_type(t.name(), t.unit()))
        .collect();
    if resident.is_some() {
        sample_type.push(w.value_type(RESIDENT_SPACE, "bytes"));
    }
    let period_type = Some(w.value_type("space", "bytes"));
    let default_sample_type = match (options.default_sample_type, resident) {
        (Some(t), _) => w.string(t.name()),
        (None, Some(_)) => w.string(RESIDENT_SPACE),
        (None, None) => 0,
    };
    let (drop_frames, mut comment) = if unsymbolized {
        let note = w.string(UNSYMBOLIZED_NOTE);
        (w.string(symbolize::PLUMBING_REGEX), vec![note])
    } else {
        (0, Vec::new())
    };
    if let Some(set) = resident {
        let e = &set.heap.estimate;
        let note = format!(
            "heapprof: resident_space partitions RSS {} bytes (smaps {}): live heap {} \
             (estimated {:.0} ± {:.0} from {} samples{}), the rest under virtual root frames",
            set.rss,
            set.detail.smaps_rss,
            set.parts.heap,
            e.bytes,
            e.standard_error(),
            e.samples,
            if set.detail.heap_capped {
                ", more than the allocator's mappings hold"
            } else {
                ""
            }
        );
        comment.push(w.string(&note));
    }
    let time_nanos = snap
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    w.emit(protos::Profile {
        sample_type,
        period_type,
        period: snap.sample_rate as i64,
        time_nanos,
        duration_nanos: snap.duration.map_or(0, |d| d.as_nanos() as i64),
        default_sample_type,
        drop_frames,
        comment,
        ..Default::default()
    });
}
