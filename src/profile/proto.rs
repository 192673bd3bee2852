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
//!   first, with the `has_*` flags of each mapping true only when every
//!   location in it really has that information.

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use crate::alloc::site_table::OVERFLOW_SITE;

use super::mappings;
use super::symbolize::{self, Kept, Resolved};
use super::{PprofOptions, SampleType, Snapshot};
use crate::sys::maps::Mapping;

/// Function name of the overflow site's synthetic frame.
pub const SITE_TABLE_FULL: &str = "[heapprof: site table full]";
const UNKNOWN_STACK: &str = "[heapprof: unknown stack]";

/// Gzipped, encoded profile.
pub(crate) fn encode(snap: &Snapshot, options: &PprofOptions) -> Vec<u8> {
    let raw = build(snap, options).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}

/// The profile message of `snap`.
pub(crate) fn build(snap: &Snapshot, options: &PprofOptions) -> protos::Profile {
    let mut b = Builder::default();
    b.strings.intern("");
    let sample_type = SampleType::ALL
        .iter()
        .map(|t| b.value_type(t.name(), t.unit()))
        .collect();
    let period_type = Some(b.value_type("space", "bytes"));

    let resolved = symbolize::resolve_all(snap.sites.iter().flat_map(|s| s.stack.iter().copied()));
    let maps = mappings::current();
    let mut by_start: Vec<usize> = (0..maps.len()).collect();
    by_start.sort_by_key(|&i| maps[i].0.start);
    let mut mapping_info = vec![MappingInfo::default(); maps.len()];

    let bytes_key = b.strings.intern("bytes");
    let mut samples = Vec::with_capacity(snap.sites.len());
    for site in &snap.sites {
        let kept = symbolize::trim(&site.stack, &resolved);
        let location_id = if kept.is_empty() {
            let name = if site.id == OVERFLOW_SITE {
                SITE_TABLE_FULL
            } else {
                UNKNOWN_STACK
            };
            vec![b.synthetic_location(name)]
        } else {
            kept.iter()
                .map(|k| {
                    let m = find_mapping(&maps, &by_start, k.ip);
                    b.location(*k, resolved.get(&k.ip), m, &mut mapping_info)
                })
                .collect()
        };
        let mut label: Vec<protos::Label> = site
            .labels
            .iter()
            .map(|(k, v)| protos::Label {
                key: b.strings.intern(k),
                str: b.strings.intern(v),
                ..Default::default()
            })
            .collect();
        if options.ages
            && let (Some(oldest), Some(median)) = (site.oldest_age, site.median_age)
        {
            let ms = b.strings.intern("ms");
            for (key, age) in [("oldest_age", oldest), ("median_age", median)] {
                label.push(protos::Label {
                    key: b.strings.intern(key),
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
        samples.push(protos::Sample {
            location_id,
            value: SampleType::ALL.iter().map(|t| t.of(site)).collect(),
            label,
        });
    }

    let mapping = maps
        .iter()
        .zip(&mapping_info)
        .enumerate()
        .map(|(i, (m, info))| b.mapping(i as u64 + 1, m, info))
        .collect();
    let default_sample_type = options
        .default_sample_type
        .map_or(0, |t| b.strings.intern(t.name()));
    let time_nanos = snap
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);

    protos::Profile {
        sample_type,
        sample: samples,
        mapping,
        location: b.locations,
        function: b.functions,
        string_table: b.strings.table,
        time_nanos,
        duration_nanos: snap.duration.map_or(0, |d| d.as_nanos() as i64),
        period_type,
        period: snap.sample_rate as i64,
        default_sample_type,
        ..Default::default()
    }
}

fn find_mapping(maps: &[(Mapping, String)], by_start: &[usize], ip: usize) -> Option<usize> {
    let ip = ip as u64;
    let pos = by_start.partition_point(|&i| maps[i].0.start <= ip);
    let i = *by_start.get(pos.checked_sub(1)?)?;
    (ip < maps[i].0.end).then_some(i)
}

/// What the locations of one mapping turned out to have.
#[derive(Clone, Copy, Debug)]
struct MappingInfo {
    used: bool,
    all_functions: bool,
    all_files: bool,
    all_lines: bool,
}

impl Default for MappingInfo {
    fn default() -> Self {
        Self {
            used: false,
            all_functions: true,
            all_files: true,
            all_lines: true,
        }
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

#[derive(Default)]
struct Builder {
    strings: Strings,
    functions: Vec<protos::Function>,
    function_ids: HashMap<(i64, i64, i64), u64>,
    locations: Vec<protos::Location>,
    location_ids: HashMap<(usize, usize), u64>,
    synthetic_ids: HashMap<&'static str, u64>,
}

impl Builder {
    fn value_type(&mut self, ty: &str, unit: &str) -> protos::ValueType {
        protos::ValueType {
            ty: self.strings.intern(ty),
            unit: self.strings.intern(unit),
        }
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (
            self.strings.intern(name),
            self.strings.intern(system_name),
            self.strings.intern(file),
        );
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(protos::Function {
            id,
            name: key.0,
            system_name: key.1,
            filename: key.2,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn location(
        &mut self,
        kept: Kept,
        resolved: Option<&Resolved>,
        mapping: Option<usize>,
        info: &mut [MappingInfo],
    ) -> u64 {
        if let Some(&id) = self.location_ids.get(&(kept.ip, kept.skip_inlined)) {
            return id;
        }
        let frames = resolved.map_or(&[][..], |r| &r[kept.skip_inlined.min(r.len())..]);
        let mut line = Vec::with_capacity(frames.len());
        for f in frames {
            let system = f.system_name.as_deref().unwrap_or(&f.function);
            let file = f.file.as_deref().unwrap_or("");
            line.push(protos::Line {
                function_id: self.function(&f.function, system, file),
                line: i64::from(f.line),
            });
        }
        if let Some(m) = mapping {
            let i = &mut info[m];
            i.used = true;
            i.all_functions &= !frames.is_empty();
            i.all_files &= !frames.is_empty() && frames.iter().all(|f| f.file.is_some());
            i.all_lines &= !frames.is_empty() && frames.iter().all(|f| f.line > 0);
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(protos::Location {
            id,
            mapping_id: mapping.map_or(0, |m| m as u64 + 1),
            // The call instruction, not the return address.
            address: kept.ip.saturating_sub(1) as u64,
            line,
            is_folded: false,
        });
        self.location_ids.insert((kept.ip, kept.skip_inlined), id);
        id
    }

    fn synthetic_location(&mut self, name: &'static str) -> u64 {
        if let Some(&id) = self.synthetic_ids.get(name) {
            return id;
        }
        let function_id = self.function(name, name, "");
        let id = self.locations.len() as u64 + 1;
        self.locations.push(protos::Location {
            id,
            line: vec![protos::Line {
                function_id,
                line: 0,
            }],
            ..Default::default()
        });
        self.synthetic_ids.insert(name, id);
        id
    }

    fn mapping(
        &mut self,
        id: u64,
        (m, build_id): &(Mapping, String),
        info: &MappingInfo,
    ) -> protos::Mapping {
        protos::Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename: self.strings.intern(&m.path),
            build_id: self.strings.intern(build_id),
            has_functions: info.used && info.all_functions,
            has_filenames: info.used && info.all_files,
            has_line_numbers: info.used && info.all_lines,
            // The symbolizer expands inlined calls whenever debug info
            // describes them, so a fully symbolized mapping has them.
            has_inline_frames: info.used && info.all_functions && info.all_lines,
        }
    }
}
