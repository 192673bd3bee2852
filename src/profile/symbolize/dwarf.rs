//! Names, files and lines from DWARF, streamed: nothing parsed is kept
//! between batches, and within a batch only one compilation unit's
//! abbreviations and line-program header are alive at a time.
//!
//! The general-purpose readers (the `backtrace` crate, `addr2line`,
//! blazesym) parse every unit's header up front and keep each unit they
//! touch. Naming 300 functions of a 74 MB debug build took 29 MiB of
//! anonymous memory with blazesym, against 0.4 MiB here; of a 22 MB
//! release build, 22 MiB with the `backtrace` crate, 13 MiB with
//! blazesym, 0.8 MiB here (BENCHMARKS.md, "Memory of a profile"). Per
//! batch of addresses:
//!
//! 1. one pass over `.debug_aranges` gives each address its unit (the
//!    units' own ranges when a unit has no arange);
//! 2. for each unit touched: one pass over its line program, whose rows
//!    are matched against the sorted addresses and never stored, and one
//!    pass over its entries, which records for each address the chain of
//!    subprogram and inlined subroutines containing it and skips the
//!    attributes of every other entry;
//! 3. names come from the entries found (linkage name, else name, through
//!    `DW_AT_abstract_origin` and `DW_AT_specification`), demangled.
//!
//! Costs: anonymous memory proportional to the batch and the largest
//! unit's abbreviations; time proportional to the units touched.

use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};

use super::elf::Image;

type R<'a> = EndianSlice<'a, RunTimeEndian>;
type Unit<'a> = gimli::Unit<R<'a>>;

/// One level of a resolved address, link-time addresses.
#[derive(Clone, Debug, Default)]
pub(crate) struct Level {
    /// Demangled name, if DWARF names the function.
    pub function: Option<String>,
    /// The linkage (mangled) name, when there is one.
    pub system_name: Option<String>,
    pub file: Option<String>,
    pub line: u32,
    /// Entry of the enclosing (physical) function, 0 if unknown.
    pub entry: u64,
}

/// The DWARF of one mapped image.
pub(crate) struct Dwarf<'a> {
    dwarf: gimli::Dwarf<R<'a>>,
}

/// One scope (subprogram or inlined subroutine) containing an address.
#[derive(Clone)]
struct Scope {
    die: DieRef,
    call_file: u64,
    call_line: u32,
    entry: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum DieRef {
    Unit(usize),
    Info(usize),
}

impl<'a> Dwarf<'a> {
    /// The DWARF sections of `obj`; `None` without `.debug_info`.
    pub fn of(obj: &object::File<'a>) -> Option<Dwarf<'a>> {
        use object::Object;
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        if Image::section(obj, ".debug_info").is_empty() {
            return None;
        }
        let dwarf = gimli::Dwarf::load(|id| -> Result<R<'a>, gimli::Error> {
            Ok(EndianSlice::new(Image::section(obj, id.name()), endian))
        })
        .ok()?;
        Some(Dwarf { dwarf })
    }

    /// The levels of each of `vaddrs` (sorted link-time addresses of call
    /// instructions), innermost first; empty where DWARF says nothing.
    pub fn resolve(&self, vaddrs: &[u64]) -> Vec<Vec<Level>> {
        let mut out: Vec<Vec<Level>> = vec![Vec::new(); vaddrs.len()];
        let units = self.units_of(vaddrs);
        let mut by_unit: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, unit) in units.iter().enumerate() {
            if let Some(unit) = unit {
                by_unit.entry(*unit).or_default().push(i);
            }
        }
        let mut keys: Vec<usize> = by_unit.keys().copied().collect();
        keys.sort_unstable();
        for unit in keys {
            let idx = &by_unit[&unit];
            let sub: Vec<u64> = idx.iter().map(|&i| vaddrs[i]).collect();
            let mut sub_out = vec![Vec::new(); sub.len()];
            self.resolve_unit(unit, &sub, &mut sub_out);
            for (&k, levels) in idx.iter().zip(sub_out) {
                out[k] = levels;
            }
        }
        out
    }

    /// The unit (`.debug_info` offset) of each of `vaddrs` (sorted).
    fn units_of(&self, vaddrs: &[u64]) -> Vec<Option<usize>> {
        let mut out = vec![None; vaddrs.len()];
        let assign = |begin: u64, end: u64, unit: usize, out: &mut [Option<usize>]| {
            let mut i = vaddrs.partition_point(|&p| p < begin);
            while i < vaddrs.len() && vaddrs[i] < end {
                out[i].get_or_insert(unit);
                i += 1;
            }
        };
        let mut headers = self.dwarf.debug_aranges.headers();
        while let Ok(Some(h)) = headers.next() {
            let unit = h.debug_info_offset().0;
            let mut entries = h.entries();
            while let Ok(Some(e)) = entries.next() {
                let begin = e.address();
                assign(begin, begin.wrapping_add(e.length()), unit, &mut out);
            }
        }
        if out.iter().any(Option::is_none) {
            // Units without aranges: their own ranges.
            let mut units = self.dwarf.units();
            while let Ok(Some(h)) = units.next() {
                let Some(offset) = h.offset().to_debug_info_offset(&h) else {
                    continue;
                };
                let Ok(unit) = self.dwarf.unit(h) else {
                    continue;
                };
                if let Ok(mut ranges) = self.dwarf.unit_ranges(&unit) {
                    while let Ok(Some(r)) = ranges.next() {
                        assign(r.begin, r.end, offset.0, &mut out);
                    }
                }
            }
        }
        out
    }

    fn unit_at(&self, offset: usize) -> Option<Unit<'a>> {
        let h = self
            .dwarf
            .debug_info
            .header_from_offset(gimli::DebugInfoOffset(offset))
            .ok()?;
        self.dwarf.unit(h).ok()
    }

    fn string(&self, unit: &Unit<'a>, v: AttributeValue<R<'a>>) -> Option<String> {
        let r = self.dwarf.attr_string(unit, v).ok()?;
        Some(r.to_string_lossy().into_owned())
    }

    fn file_path(&self, unit: &Unit<'a>, index: u64) -> Option<String> {
        let header = unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let mut path = unit
            .comp_dir
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.directory_index() != 0
            && let Some(dir) = file.directory(header)
        {
            join(&mut path, &self.string(unit, dir)?);
        }
        join(&mut path, &self.string(unit, file.path_name())?);
        Some(path)
    }

    /// The name of an entry, demangled, and its linkage name: the linkage
    /// name if there is one, else the plain name, following abstract
    /// origins and specifications (also into other units).
    fn name(&self, unit: &Unit<'a>, die: DieRef, depth: u32) -> Option<(String, Option<String>)> {
        if depth > 16 {
            return None;
        }
        let (other, offset) = match die {
            DieRef::Unit(o) => (None, gimli::UnitOffset(o)),
            DieRef::Info(o) => {
                let mut units = self.dwarf.units();
                let mut found = None;
                while let Ok(Some(h)) = units.next() {
                    let start = h.offset().to_debug_info_offset(&h)?.0;
                    if (start..start + h.length_including_self()).contains(&o) {
                        found = Some((self.dwarf.unit(h).ok()?, gimli::UnitOffset(o - start)));
                        break;
                    }
                }
                let (u, offset) = found?;
                (Some(u), offset)
            }
        };
        let unit = other.as_ref().unwrap_or(unit);
        let entry = unit.entry(offset).ok()?;
        let mut name = None;
        let mut next = None;
        for attr in entry.attrs() {
            match attr.name() {
                gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                    if let Some(s) = self.string(unit, attr.value()) {
                        return Some((super::demangle(&s), Some(s)));
                    }
                }
                gimli::DW_AT_name => name = self.string(unit, attr.value()),
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                    next = die_ref(attr.value())
                }
                _ => {}
            }
        }
        if let Some(name) = name {
            return Some((name, None));
        }
        self.name(unit, next?, depth + 1)
    }

    /// Resolves the sorted `vaddrs` that fall in the unit at `offset`.
    fn resolve_unit(&self, offset: usize, vaddrs: &[u64], out: &mut [Vec<Level>]) {
        let Some(unit) = self.unit_at(offset) else {
            return;
        };
        let lines = self.lines(&unit, vaddrs);
        let chains = self.scopes(&unit, vaddrs);
        let mut files: HashMap<u64, Option<String>> = HashMap::new();
        let mut names: HashMap<DieRef, Option<(String, Option<String>)>> = HashMap::new();
        for (i, chain) in chains.iter().enumerate() {
            let mut file_of = |f: u64| {
                files
                    .entry(f)
                    .or_insert_with(|| self.file_path(&unit, f))
                    .clone()
            };
            let (file, line) = lines[i].map_or((None, 0), |(f, l)| (file_of(f), l));
            if chain.is_empty() {
                if lines[i].is_some() {
                    out[i].push(Level {
                        file,
                        line,
                        ..Level::default()
                    });
                }
                continue;
            }
            let entry = chain[0].entry;
            // Innermost first: the innermost scope has the line of the
            // address; each outer one the call site of the scope inside.
            for k in (0..chain.len()).rev() {
                let (function, system_name) = names
                    .entry(chain[k].die)
                    .or_insert_with(|| self.name(&unit, chain[k].die, 0))
                    .clone()
                    .map_or((None, None), |(n, s)| (Some(n), s));
                let (file, line) = if k == chain.len() - 1 {
                    (file.clone(), line)
                } else {
                    (file_of(chain[k + 1].call_file), chain[k + 1].call_line)
                };
                out[i].push(Level {
                    function,
                    system_name,
                    file,
                    line,
                    entry,
                });
            }
        }
    }

    /// (file index, line) of each address, from one pass over the unit's
    /// line program.
    fn lines(&self, unit: &Unit<'a>, vaddrs: &[u64]) -> Vec<Option<(u64, u32)>> {
        let mut out = vec![None; vaddrs.len()];
        let Some(program) = unit.line_program.clone() else {
            return out;
        };
        let mut rows = program.rows();
        let mut previous: Option<(u64, u64, u32)> = None;
        while let Ok(Some((_, row))) = rows.next_row() {
            let address = row.address();
            if let Some((start, file, line)) = previous
                && address > start
            {
                let mut i = vaddrs.partition_point(|&p| p < start);
                while i < vaddrs.len() && vaddrs[i] < address {
                    out[i] = Some((file, line));
                    i += 1;
                }
            }
            previous = (!row.end_sequence()).then(|| {
                (
                    address,
                    row.file_index(),
                    row.line().map_or(0, |l| l.get() as u32),
                )
            });
        }
        out
    }

    /// For each address, the subprogram and inlined subroutines containing
    /// it, outermost first, from one pass over the unit's entries.
    fn scopes(&self, unit: &Unit<'a>, vaddrs: &[u64]) -> Vec<Vec<Scope>> {
        let mut chains: Vec<Vec<Scope>> = vec![Vec::new(); vaddrs.len()];
        // Open scopes: (depth, the addresses inside).
        let mut open: Vec<(isize, Vec<usize>)> = Vec::new();
        let Ok(mut entries) = unit.entries_raw(None) else {
            return chains;
        };
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        while !entries.is_empty() {
            let depth = entries.next_depth();
            let die = entries.next_offset().0;
            let Ok(abbrev) = entries.read_abbreviation() else {
                break;
            };
            let Some(abbrev) = abbrev else {
                continue;
            };
            while open.last().is_some_and(|o| o.0 >= depth) {
                open.pop();
            }
            let subprogram = abbrev.tag() == gimli::DW_TAG_subprogram;
            let inlined = abbrev.tag() == gimli::DW_TAG_inlined_subroutine;
            if !(subprogram || (inlined && !open.is_empty())) {
                if entries.skip_attributes(abbrev.attributes()).is_err() {
                    break;
                }
                continue;
            }
            let (mut low, mut high, mut size, mut range_list) = (None, None, None, None);
            let (mut call_file, mut call_line) = (0u64, 0u32);
            for spec in abbrev.attributes() {
                let Ok(attr) = entries.read_attribute(*spec) else {
                    break;
                };
                match attr.name() {
                    gimli::DW_AT_low_pc => {
                        low = self.dwarf.attr_address(unit, attr.value()).ok().flatten()
                    }
                    gimli::DW_AT_high_pc => match attr.value() {
                        AttributeValue::Udata(s) => size = Some(s),
                        v => high = self.dwarf.attr_address(unit, v).ok().flatten(),
                    },
                    gimli::DW_AT_ranges => {
                        range_list = self
                            .dwarf
                            .attr_ranges_offset(unit, attr.value())
                            .ok()
                            .flatten()
                    }
                    gimli::DW_AT_call_file => call_file = attr.udata_value().unwrap_or(0),
                    gimli::DW_AT_call_line => call_line = attr.udata_value().unwrap_or(0) as u32,
                    _ => {}
                }
            }
            ranges.clear();
            if let Some(list) = range_list {
                if let Ok(mut it) = self.dwarf.ranges(unit, list) {
                    while let Ok(Some(r)) = it.next() {
                        ranges.push((r.begin, r.end));
                    }
                }
            } else if let Some(l) = low
                && let Some(h) = high.or(size.map(|s| l.wrapping_add(s)))
            {
                ranges.push((l, h));
            }
            if ranges.is_empty() {
                continue;
            }
            let contains = |p: u64| ranges.iter().any(|&(b, e)| b <= p && p < e);
            let inside: Vec<usize> = match (inlined, open.last()) {
                (true, Some((_, parent))) => parent
                    .iter()
                    .copied()
                    .filter(|&i| contains(vaddrs[i]))
                    .collect(),
                _ => {
                    let mut v = Vec::new();
                    for &(b, e) in &ranges {
                        let mut i = vaddrs.partition_point(|&p| p < b);
                        while i < vaddrs.len() && vaddrs[i] < e {
                            v.push(i);
                            i += 1;
                        }
                    }
                    v
                }
            };
            if inside.is_empty() {
                continue;
            }
            let scope = Scope {
                die: DieRef::Unit(die),
                call_file,
                call_line,
                entry: low.unwrap_or(ranges[0].0),
            };
            for &i in &inside {
                if subprogram {
                    chains[i].clear();
                }
                chains[i].push(scope.clone());
            }
            if abbrev.has_children() {
                open.push((depth, inside));
            }
        }
        chains
    }
}

fn die_ref(v: AttributeValue<R<'_>>) -> Option<DieRef> {
    match v {
        AttributeValue::UnitRef(o) => Some(DieRef::Unit(o.0)),
        AttributeValue::DebugInfoRef(o) => Some(DieRef::Info(o.0)),
        _ => None,
    }
}

/// Appends path component `p` to `path` (an absolute `p` replaces it).
fn join(path: &mut String, p: &str) {
    if p.starts_with('/') {
        *path = p.to_owned();
    } else {
        if !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        path.push_str(p);
    }
}
