//! Writing profile.proto as a stream, for every profile heapprof serves
//! (heap, threads, CPU).
//!
//! Every sample, location, function and string is encoded into the gzip
//! stream as soon as it exists: concatenated protobuf messages of one type
//! merge, so a stream of partial `Profile` messages is one profile whose
//! repeated fields arrive interleaved, and pprof resolves string indices
//! after reading the whole message. What the writer holds is therefore the
//! deduplication maps (one entry per distinct string, function and
//! location) and the compressed output, never the whole message.
//!
//! Locations get the mapping that holds their address (from
//! `/proc/self/maps`, with build IDs, main binary first); a mapping's
//! `has_functions`, `has_filenames`, `has_line_numbers` and
//! `has_inline_frames` are true only when every location in it really has
//! that information.

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use super::mappings;
use super::symbolize::{Frame, Kept};
use crate::sys::maps::Mapping;

/// A profile being written.
pub(crate) struct Writer {
    gz: GzEncoder<Vec<u8>>,
    scratch: Vec<u8>,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64, i64), u64>,
    locations: HashMap<(usize, usize), u64>,
    synthetic: HashMap<String, u64>,
    /// Executable mappings with build IDs, and their positions by start.
    maps: Vec<(Mapping, String)>,
    by_start: Vec<usize>,
    info: Vec<MappingInfo>,
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

impl Writer {
    /// A writer for a profile of this process.
    pub fn new() -> Writer {
        let maps = mappings::current();
        let mut by_start: Vec<usize> = (0..maps.len()).collect();
        by_start.sort_by_key(|&i| maps[i].0.start);
        let mut w = Writer {
            gz: GzEncoder::new(Vec::new(), Compression::default()),
            scratch: Vec::new(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            synthetic: HashMap::new(),
            info: vec![MappingInfo::default(); maps.len()],
            maps,
            by_start,
        };
        w.string(""); // index 0 must be the empty string
        w
    }

    /// Appends one part to the stream.
    pub fn emit(&mut self, part: protos::Profile) {
        self.scratch.clear();
        // Encoding into a Vec cannot fail, nor can writing to a Vec.
        let _ = part.encode(&mut self.scratch);
        let _ = self.gz.write_all(&self.scratch);
    }

    /// Appends the mappings and returns the gzipped profile.
    pub fn finish(mut self) -> Vec<u8> {
        let maps = std::mem::take(&mut self.maps);
        for (i, (m, build_id)) in maps.iter().enumerate() {
            let info = self.info[i];
            let mapping = protos::Mapping {
                id: i as u64 + 1,
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
            };
            self.emit(protos::Profile {
                mapping: vec![mapping],
                ..Default::default()
            });
        }
        self.gz.finish().unwrap_or_default()
    }

    /// The index of `s` in the string table, adding it to the stream if new.
    pub fn string(&mut self, s: &str) -> i64 {
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

    /// A sample or period type.
    pub fn value_type(&mut self, ty: &str, unit: &str) -> protos::ValueType {
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

    fn next_location_id(&self) -> u64 {
        (self.locations.len() + self.synthetic.len()) as u64 + 1
    }

    /// The location of `kept`, one Line per frame of `frames` (its names,
    /// innermost first; empty for an address only).
    pub fn location(&mut self, kept: Kept, frames: &[Frame]) -> u64 {
        if let Some(&id) = self.locations.get(&(kept.ip, kept.skip_inlined)) {
            return id;
        }
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
        let mapping = self.mapping_of(kept.ip);
        if let Some(m) = mapping {
            let i = &mut self.info[m];
            i.used = true;
            i.all_functions &= !frames.is_empty();
            i.all_files &= !frames.is_empty() && frames.iter().all(|f| f.file.is_some());
            i.all_lines &= !frames.is_empty() && frames.iter().all(|f| f.line > 0);
        }
        let id = self.next_location_id();
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

    /// A location with no address, one function named `name` (a note such
    /// as `[heapprof: site table full]`).
    pub fn synthetic_location(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.synthetic.get(name) {
            return id;
        }
        let function_id = self.function(name, name, "");
        let id = self.next_location_id();
        self.synthetic.insert(name.to_owned(), id);
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

    /// The index of the mapping holding return address `ip`.
    fn mapping_of(&self, ip: usize) -> Option<usize> {
        let ip = ip.saturating_sub(1) as u64;
        let pos = self
            .by_start
            .partition_point(|&i| self.maps[i].0.start <= ip);
        let i = *self.by_start.get(pos.checked_sub(1)?)?;
        (ip < self.maps[i].0.end).then_some(i)
    }
}
