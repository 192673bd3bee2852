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
//!
//! # Memory
//!
//! The profile is streamed: every sample, location, function and string is
//! encoded into the gzip stream as soon as it exists (protobuf lets the
//! repeated fields of a message arrive interleaved, and pprof resolves
//! string indices after reading the whole message), so what the encoder
//! holds is the deduplication maps (one entry per distinct string,
//! function and location) and the compressed output, never the whole
//! message.
//!
//! # Unsymbolized profiles
//!
//! When a build must not pay for symbolization (`PprofOptions::symbolize`),
//! locations carry addresses only, the mappings carry the build IDs that
//! `heapprof pprof-heap` or `go tool pprof <binary>` symbolize with, and
//! `drop_frames` names the plumbing that pprof removes from the top of
//! each stack once it has names.

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use crate::alloc::site_table::OVERFLOW_SITE;
use crate::sys::maps::Mapping;

use super::mappings;
use super::symbolize::{self, Kept, Resolved};
use super::{PprofOptions, SampleType, Snapshot};

/// Function name of the overflow site's synthetic frame.
pub const SITE_TABLE_FULL: &str = "[heapprof: site table full]";
const UNKNOWN_STACK: &str = "[heapprof: unknown stack]";
/// The comment of an unsymbolized profile: why, and how to get names.
const UNSYMBOLIZED_NOTE: &str = "heapprof: unsymbolized (the process had too little memory \
     left to name addresses in process); name it with `heapprof pprof-heap --symbolize \
     FILE --binary PATH` or `go tool pprof PATH FILE`";

/// Gzipped, encoded profile. `resolved` names the snapshot's addresses;
/// empty, the profile is unsymbolized.
pub(crate) fn encode(
    snap: &Snapshot,
    options: &PprofOptions,
    resolved: &HashMap<usize, Resolved>,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.header(snap, options, resolved.is_empty());
    let maps = mappings::current();
    let mut by_start: Vec<usize> = (0..maps.len()).collect();
    by_start.sort_by_key(|&i| maps[i].0.start);
    let mut mapping_info = vec![MappingInfo::default(); maps.len()];
    let bytes_key = w.string("bytes");
    let ms = w.string("ms");

    for site in &snap.sites {
        let kept = if resolved.is_empty() {
            untrimmed(site.stack)
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
                .map(|k| {
                    let m = find_mapping(&maps, &by_start, k.ip);
                    w.location(*k, resolved.get(&k.ip), m, &mut mapping_info)
                })
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
    for (i, (m, info)) in maps.iter().zip(&mapping_info).enumerate() {
        let mapping = w.mapping(i as u64 + 1, m, info);
        w.emit(protos::Profile {
            mapping: vec![mapping],
            ..Default::default()
        });
    }
    w.finish()
}

/// The stack as it is, for an unsymbolized profile (pprof trims it by
/// `drop_frames` once it has names).
fn untrimmed(stack: &[usize]) -> Vec<Kept> {
    stack
        .iter()
        .map(|&ip| Kept {
            ip,
            skip_inlined: 0,
        })
        .collect()
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

/// Writes a profile as a stream of partial `Profile` messages into a gzip
/// encoder: concatenated protobuf messages of one type merge, so each
/// part adds its repeated elements in order.
struct Writer {
    gz: GzEncoder<Vec<u8>>,
    scratch: Vec<u8>,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64, i64), u64>,
    locations: HashMap<(usize, usize), u64>,
    synthetic: HashMap<&'static str, u64>,
}

impl Writer {
    fn new() -> Self {
        let mut w = Writer {
            gz: GzEncoder::new(Vec::new(), Compression::default()),
            scratch: Vec::new(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            synthetic: HashMap::new(),
        };
        w.string(""); // index 0 must be the empty string
        w
    }

    /// Appends one part to the stream.
    fn emit(&mut self, part: protos::Profile) {
        self.scratch.clear();
        // Encoding into a Vec cannot fail, nor can writing to a Vec.
        let _ = part.encode(&mut self.scratch);
        let _ = self.gz.write_all(&self.scratch);
    }

    /// The sample and period types, times, and for unsymbolized profiles
    /// the frames pprof must drop.
    fn header(&mut self, snap: &Snapshot, options: &PprofOptions, unsymbolized: bool) {
        let sample_type = SampleType::ALL
            .iter()
            .map(|t| self.value_type(t.name(), t.unit()))
            .collect();
        let period_type = Some(self.value_type("space", "bytes"));
        let default_sample_type = options
            .default_sample_type
            .map_or(0, |t| self.string(t.name()));
        let (drop_frames, comment) = if unsymbolized {
            let note = self.string(UNSYMBOLIZED_NOTE);
            (self.string(symbolize::PLUMBING_REGEX), vec![note])
        } else {
            (0, Vec::new())
        };
        let time_nanos = snap
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.emit(protos::Profile {
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

    fn finish(self) -> Vec<u8> {
        self.gz.finish().unwrap_or_default()
    }

    /// The index of `s` in the string table, adding it to the stream if new.
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.insert(s.to_owned(), i);
        self.emit(protos::Profile {
            string_table: vec![s.to_owned()],
            ..Default::default()
        });
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> protos::ValueType {
        protos::ValueType {
            ty: self.string(ty),
            unit: self.string(unit),
        }
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (
            self.string(name),
            self.string(system_name),
            self.string(file),
        );
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.insert(key, id);
        self.emit(protos::Profile {
            function: vec![protos::Function {
                id,
                name: key.0,
                system_name: key.1,
                filename: key.2,
                start_line: 0,
            }],
            ..Default::default()
        });
        id
    }

    fn location(
        &mut self,
        kept: Kept,
        resolved: Option<&Resolved>,
        mapping: Option<usize>,
        info: &mut [MappingInfo],
    ) -> u64 {
        if let Some(&id) = self.locations.get(&(kept.ip, kept.skip_inlined)) {
            return id;
        }
        let frames = resolved.map_or(&[][..], |r| &r[kept.skip_inlined.min(r.len())..]);
        let line = frames
            .iter()
            .map(|f| {
                let system = f.system_name.as_deref().unwrap_or(&f.function);
                let file = f.file.as_deref().unwrap_or("");
                protos::Line {
                    function_id: self.function(&f.function, system, file),
                    line: i64::from(f.line),
                }
            })
            .collect();
        if let Some(m) = mapping {
            let i = &mut info[m];
            i.used = true;
            i.all_functions &= !frames.is_empty();
            i.all_files &= !frames.is_empty() && frames.iter().all(|f| f.file.is_some());
            i.all_lines &= !frames.is_empty() && frames.iter().all(|f| f.line > 0);
        }
        let id = self.locations.len() as u64 + self.synthetic.len() as u64 + 1;
        self.locations.insert((kept.ip, kept.skip_inlined), id);
        self.emit(protos::Profile {
            location: vec![protos::Location {
                id,
                mapping_id: mapping.map_or(0, |m| m as u64 + 1),
                // The call instruction, not the return address.
                address: kept.ip.saturating_sub(1) as u64,
                line,
                is_folded: false,
            }],
            ..Default::default()
        });
        id
    }

    fn synthetic_location(&mut self, name: &'static str) -> u64 {
        if let Some(&id) = self.synthetic.get(name) {
            return id;
        }
        let function_id = self.function(name, name, "");
        let id = self.locations.len() as u64 + self.synthetic.len() as u64 + 1;
        self.synthetic.insert(name, id);
        self.emit(protos::Profile {
            location: vec![protos::Location {
                id,
                line: vec![protos::Line {
                    function_id,
                    line: 0,
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
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
            filename: self.string(&m.path),
            build_id: self.string(build_id),
            has_functions: info.used && info.all_functions,
            has_filenames: info.used && info.all_files,
            has_line_numbers: info.used && info.all_lines,
            // The symbolizer expands inlined calls whenever debug info
            // describes them, so a fully symbolized mapping has them.
            has_inline_frames: info.used && info.all_functions && info.all_lines,
        }
    }
}
