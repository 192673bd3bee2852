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

use super::symbolize::{self, Resolved};
use super::writer::Writer;
use super::{PprofOptions, SampleType, Snapshot};

/// Function name of the overflow site's synthetic frame.
pub const SITE_TABLE_FULL: &str = "[heapprof: site table full]";
const UNKNOWN_STACK: &str = "[heapprof: unknown stack]";
/// The comment of an unsymbolized profile: why, and how to get names.
const UNSYMBOLIZED_NOTE: &str = "heapprof: unsymbolized (the process had too little memory \
     left to name addresses in process); name it with `heapprof pprof-heap FILE -o NAMED`, \
     which finds the binary by build ID (or `--binary PATH`)";

/// Gzipped, encoded profile. `resolved` names the snapshot's addresses;
/// empty, the profile is unsymbolized.
pub(crate) fn encode(
    snap: &Snapshot,
    options: &PprofOptions,
    resolved: &HashMap<usize, Resolved>,
) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, snap, options, resolved.is_empty());
    let bytes_key = w.string("bytes");
    let ms = w.string("ms");

    for site in &snap.sites {
        let kept = if resolved.is_empty() {
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
        w.emit(protos::Profile {
            sample: vec![protos::Sample {
                location_id,
                value: SampleType::ALL.iter().map(|t| t.of(site)).collect(),
                label,
            }],
            ..Default::default()
        });
    }
    w.finish()
}

/// The sample and period types, times, and for unsymbolized profiles
/// the frames pprof must drop.
fn header(w: &mut Writer, snap: &Snapshot, options: &PprofOptions, unsymbolized: bool) {
    let sample_type = SampleType::ALL
        .iter()
        .map(|t| w.value_type(t.name(), t.unit()))
        .collect();
    let period_type = Some(w.value_type("space", "bytes"));
    let default_sample_type = options
        .default_sample_type
        .map_or(0, |t| w.string(t.name()));
    let (drop_frames, comment) = if unsymbolized {
        let note = w.string(UNSYMBOLIZED_NOTE);
        (w.string(symbolize::PLUMBING_REGEX), vec![note])
    } else {
        (0, Vec::new())
    };
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
