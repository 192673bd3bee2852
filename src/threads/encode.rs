//! A thread dump in Go's three goroutine-profile formats.
//!
//! - profile.proto, as `runtime/pprof` writes the goroutine profile:
//!   sample and period type `goroutine`/`count`, period 1, one sample of
//!   value 1 per thread, labelled with `thread_name` (string) and
//!   `thread_id` (number: pprof filters on it with `-tagfocus`, and
//!   Pyroscope, which turns string labels into series, does not multiply
//!   series by thread); locations symbolized in process, one Line per
//!   inlining level; the mapping table from `/proc/self/maps`.
//! - `debug=1`: `goroutine profile: total N`, then one record per distinct
//!   stack, `COUNT @ ADDR...` and a `#\tADDR\tfunction+0xOFF\tfile:line`
//!   line per frame, which pprof's legacy parser reads (the header's first
//!   word names the sample type; `#` lines are comments to it).
//! - `debug=2`: Go's goroutine dump, one block per thread.
//!
//! A thread without a stack gets a synthetic frame naming the reason in
//! the profile and in the `debug=2` dump; the `debug=1` text lists them in
//! a comment block, since its records must carry addresses.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use super::{ThreadDump, ThreadStack};
use crate::profile::mappings;
use crate::profile::symbolize::{Frame, Kept};
use crate::sys::maps::Mapping;

/// Gzipped profile.proto.
pub(super) fn pprof(dump: &ThreadDump) -> Vec<u8> {
    let raw = build(dump).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 2), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}

fn build(dump: &ThreadDump) -> protos::Profile {
    let mut b = Builder::default();
    b.intern("");
    let goroutine = b.value_type("goroutine", "count");
    let maps = mappings::current();
    let mut by_start: Vec<usize> = (0..maps.len()).collect();
    by_start.sort_by_key(|&i| maps[i].0.start);
    let mut mapping_info = vec![MappingInfo::default(); maps.len()];
    let name_key = b.intern("thread_name");
    let id_key = b.intern("thread_id");

    let mut samples = Vec::with_capacity(dump.threads.len());
    for thread in &dump.threads {
        let location_id = match synthetic_frame(dump, thread) {
            Some(name) => vec![b.synthetic_location(&name)],
            None => thread
                .kept
                .iter()
                .map(|&k| {
                    let m = find_mapping(&maps, &by_start, k.ip);
                    b.location(k, dump.frames_of(k), m, &mut mapping_info)
                })
                .collect(),
        };
        let label = vec![
            protos::Label {
                key: name_key,
                str: b.intern(&thread.name),
                ..Default::default()
            },
            protos::Label {
                key: id_key,
                num: i64::from(thread.tid),
                ..Default::default()
            },
        ];
        samples.push(protos::Sample {
            location_id,
            value: vec![1],
            label,
        });
    }
    let mapping = maps
        .iter()
        .zip(&mapping_info)
        .enumerate()
        .map(|(i, ((m, build_id), info))| b.mapping(i as u64 + 1, m, build_id, info))
        .collect();
    let mut comment = vec![b.intern(
        "heapprof: one sample per OS thread (Rust has no goroutines): its stack when the \
         dump signal interrupted it, labelled thread_name and thread_id",
    )];
    if let Some(e) = &dump.error {
        comment.push(b.intern(&format!("heapprof: no stacks captured: {e}")));
    }
    let time_nanos = dump
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    protos::Profile {
        sample_type: vec![goroutine.clone()],
        sample: samples,
        mapping,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos,
        period_type: Some(goroutine),
        period: 1,
        comment,
        ..Default::default()
    }
}

/// The frame shown for a thread without a stack.
fn synthetic_frame(dump: &ThreadDump, thread: &ThreadStack) -> Option<String> {
    match thread.missing {
        Some(missing) => Some(missing.frame_name(dump.signal)),
        None if thread.kept.is_empty() => Some("[heapprof: empty stack]".to_owned()),
        None => None,
    }
}

/// Go's `debug=1` text.
pub(super) fn grouped(dump: &ThreadDump) -> String {
    // Kept is not Hash; its two fields are.
    let key = |t: &ThreadStack| -> Vec<(usize, usize)> {
        t.kept.iter().map(|k| (k.ip, k.skip_inlined)).collect()
    };
    let mut groups: HashMap<Vec<(usize, usize)>, Vec<&ThreadStack>> = HashMap::new();
    let mut without: Vec<&ThreadStack> = Vec::new();
    for thread in &dump.threads {
        if synthetic_frame(dump, thread).is_some() {
            without.push(thread);
        } else {
            groups.entry(key(thread)).or_default().push(thread);
        }
    }
    let mut groups: Vec<(&[Kept], Vec<&ThreadStack>)> = groups
        .into_values()
        .map(|threads| (threads[0].kept.as_slice(), threads))
        .collect();
    groups.sort_by_key(|(_, threads)| (std::cmp::Reverse(threads.len()), threads[0].tid));

    let mut out = String::new();
    let _ = writeln!(out, "goroutine profile: total {}", dump.threads.len());
    for (kept, threads) in &groups {
        let _ = write!(out, "{} @", threads.len());
        for k in *kept {
            let _ = write!(out, " {:#x}", k.ip);
        }
        out.push('\n');
        let _ = writeln!(out, "# threads: {}", names(threads));
        for &k in *kept {
            let call = k.ip.saturating_sub(1);
            let frames = dump.frames_of(k);
            if frames.is_empty() {
                let _ = writeln!(out, "#\t{call:#x}");
            }
            for f in frames {
                let _ = writeln!(
                    out,
                    "#\t{call:#x}\t{}+{:#x}\t{}:{}",
                    f.function,
                    offset(call, f),
                    f.file.as_deref().unwrap_or("?"),
                    f.line
                );
            }
        }
        out.push('\n');
    }
    if !without.is_empty() {
        let _ = writeln!(out, "# {} threads without a stack:", without.len());
        for thread in &without {
            let _ = writeln!(
                out,
                "# thread {} {:?}: {}",
                thread.tid,
                thread.name,
                synthetic_frame(dump, thread).unwrap_or_default()
            );
        }
    }
    if let Some(e) = &dump.error {
        let _ = writeln!(out, "# heapprof: no stacks captured: {e}");
    }
    out
}

/// `name (xN), other` for a group, most common name first.
fn names(threads: &[&ThreadStack]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in threads {
        match counts.iter_mut().find(|(n, _)| *n == t.name) {
            Some((_, c)) => *c += 1,
            None => counts.push((&t.name, 1)),
        }
    }
    counts.sort_by_key(|&(n, c)| (std::cmp::Reverse(c), n));
    counts
        .iter()
        .map(|(n, c)| {
            if *c > 1 {
                format!("{n:?} (x{c})")
            } else {
                format!("{n:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `debug=2` dump.
pub(super) fn per_thread(dump: &ThreadDump) -> String {
    let mut out = String::new();
    for thread in &dump.threads {
        let _ = writeln!(
            out,
            "thread {} {:?} [{}]:",
            thread.tid, thread.name, thread.state
        );
        if let Some(name) = synthetic_frame(dump, thread) {
            let _ = writeln!(out, "{name}");
        }
        for &k in &thread.kept {
            let call = k.ip.saturating_sub(1);
            let frames = dump.frames_of(k);
            if frames.is_empty() {
                let _ = writeln!(out, "{call:#x}\n\t?");
            }
            for f in frames {
                let _ = writeln!(
                    out,
                    "{}\n\t{}:{} +{:#x}",
                    f.function,
                    f.file.as_deref().unwrap_or("?"),
                    f.line,
                    offset(call, f)
                );
            }
        }
        out.push('\n');
    }
    if let Some(e) = &dump.error {
        let _ = writeln!(out, "heapprof: no stacks captured: {e}");
    }
    out
}

fn offset(call: usize, f: &Frame) -> usize {
    if f.symbol_address == 0 {
        return 0;
    }
    call.saturating_sub(f.symbol_address)
}

fn find_mapping(maps: &[(Mapping, String)], by_start: &[usize], ip: usize) -> Option<usize> {
    let ip = ip as u64;
    let pos = by_start.partition_point(|&i| maps[i].0.start <= ip);
    let i = *by_start.get(pos.checked_sub(1)?)?;
    (ip < maps[i].0.end).then_some(i)
}

/// Whether every location of a mapping was symbolized with names, files
/// and lines.
#[derive(Clone, Copy, Debug)]
struct MappingInfo {
    used: bool,
    functions: bool,
    files: bool,
    lines: bool,
}

impl Default for MappingInfo {
    fn default() -> Self {
        Self {
            used: false,
            functions: true,
            files: true,
            lines: true,
        }
    }
}

/// The string, function and location tables of one profile.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<protos::Function>,
    function_ids: HashMap<(i64, i64, i64), u64>,
    locations: Vec<protos::Location>,
    location_ids: HashMap<(usize, usize), u64>,
    synthetic_ids: HashMap<String, u64>,
}

impl Builder {
    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> protos::ValueType {
        protos::ValueType {
            ty: self.intern(ty),
            unit: self.intern(unit),
        }
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (
            self.intern(name),
            self.intern(system_name),
            self.intern(file),
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
        frames: &[Frame],
        mapping: Option<usize>,
        info: &mut [MappingInfo],
    ) -> u64 {
        if let Some(&id) = self.location_ids.get(&(kept.ip, kept.skip_inlined)) {
            return id;
        }
        let mut line = Vec::with_capacity(frames.len());
        for f in frames {
            let system = f.system_name.as_deref().unwrap_or(&f.function);
            let file = f.file.as_deref().unwrap_or("");
            line.push(protos::Line {
                function_id: self.function(&f.function, system, file),
                line: i64::from(f.line),
            });
        }
        if let Some(i) = mapping.and_then(|m| info.get_mut(m)) {
            i.used = true;
            i.functions &= !frames.is_empty();
            i.files &= !frames.is_empty() && frames.iter().all(|f| f.file.is_some());
            i.lines &= !frames.is_empty() && frames.iter().all(|f| f.line > 0);
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(protos::Location {
            id,
            mapping_id: mapping.map_or(0, |m| m as u64 + 1),
            address: kept.ip.saturating_sub(1) as u64,
            line,
            is_folded: false,
        });
        self.location_ids.insert((kept.ip, kept.skip_inlined), id);
        id
    }

    fn synthetic_location(&mut self, name: &str) -> u64 {
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
        self.synthetic_ids.insert(name.to_owned(), id);
        id
    }

    fn mapping(
        &mut self,
        id: u64,
        m: &Mapping,
        build_id: &str,
        info: &MappingInfo,
    ) -> protos::Mapping {
        protos::Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename: self.intern(&m.path),
            build_id: self.intern(build_id),
            has_functions: info.used && info.functions,
            has_filenames: info.used && info.files,
            has_line_numbers: info.used && info.lines,
            has_inline_frames: info.used && info.functions && info.lines,
        }
    }
}
