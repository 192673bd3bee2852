//! ELF symbols of a target process: which allocator entry points it has,
//! and names for the return addresses of its user stacks.
//!
//! An address is symbolized through `/proc/PID/maps`: the mapping holding
//! it gives the file and the file offset; the `PT_LOAD` segment holding that
//! offset turns it into the ELF virtual address, which is looked up in the
//! file's `.symtab` (or `.dynsym`) and demangled.

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use heapprof::sys::maps::Mapping;

/// Errors reading an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF object we can read.
    #[error("{path} is not a readable ELF file: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Defined function symbols of one ELF file, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct ElfSymbols {
    /// `(address, size, name)`, sorted by address.
    funcs: Vec<(u64, u64, String)>,
    /// `(file offset, virtual address, file size)` of `PT_LOAD` segments.
    segments: Vec<(u64, u64, u64)>,
    /// The first bytes of the functions asked for in
    /// [`ElfSymbols::read_with_prologues`], by name (for probe placement).
    prologues: HashMap<String, [u8; PROLOGUE_BYTES]>,
}

/// How many first bytes of a function [`ElfSymbols::prologue`] keeps.
pub const PROLOGUE_BYTES: usize = 16;

impl ElfSymbols {
    /// Reads the symbols of the ELF file at `path`.
    pub fn read(path: &str) -> Result<Self, SymbolError> {
        Self::read_with_prologues(path, &[])
    }

    /// Reads the symbols of the ELF file at `path`, keeping the first
    /// [`PROLOGUE_BYTES`] of each function named in `prologues_of`.
    pub fn read_with_prologues(path: &str, prologues_of: &[&str]) -> Result<Self, SymbolError> {
        let data = std::fs::read(path).map_err(|source| SymbolError::Read {
            path: path.to_string(),
            source,
        })?;
        let file = object::File::parse(data.as_slice()).map_err(|e| SymbolError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let mut funcs: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .collect();
        funcs.sort();
        funcs.dedup_by(|a, b| a.0 == b.0 && a.2 == b.2);
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), size)
            })
            .collect();
        let mut prologues = HashMap::new();
        for (addr, _, name) in funcs
            .iter()
            .filter(|f| prologues_of.contains(&f.2.as_str()))
        {
            let bytes = file
                .sections()
                .find_map(|sec| sec.data_range(*addr, PROLOGUE_BYTES as u64).ok().flatten());
            if let Some(b) = bytes.and_then(|b| <[u8; PROLOGUE_BYTES]>::try_from(b).ok()) {
                prologues.insert(name.clone(), b);
            }
        }
        Ok(Self {
            funcs,
            segments,
            prologues,
        })
    }

    /// Whether a function named `name` is defined here.
    pub fn has(&self, name: &str) -> bool {
        self.funcs.iter().any(|f| f.2 == name)
    }

    /// The address of function `name`, if defined.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.funcs.iter().find(|f| f.2 == name).map(|f| f.0)
    }

    /// The first bytes of function `name`, for the names in `PROLOGUES_OF`.
    pub fn prologue(&self, name: &str) -> Option<[u8; PROLOGUE_BYTES]> {
        self.prologues.get(name).copied()
    }

    /// The virtual address of file offset `off`.
    fn vaddr_of_offset(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(o, _, size)| *o <= off && off < o + size)
            .map(|(o, vaddr, _)| off - o + vaddr)
    }

    /// The demangled function containing virtual address `vaddr`, `+offset`.
    fn lookup(&self, vaddr: u64) -> Option<String> {
        let i = self
            .funcs
            .partition_point(|f| f.0 <= vaddr)
            .checked_sub(1)?;
        let (start, size, name) = &self.funcs[i];
        if *size != 0 && vaddr >= start + size {
            return None;
        }
        Some(format!("{:#}", rustc_demangle::demangle(name)))
    }
}

/// Symbolizes addresses of one process, caching the ELF files it reads.
pub struct Symbolizer {
    maps: Vec<Mapping>,
    root: String,
    files: HashMap<String, Option<ElfSymbols>>,
}

impl Symbolizer {
    /// A symbolizer over the mappings of process `pid` (`maps` as read
    /// from `/proc/PID/maps`); files are opened through `/proc/PID/root`.
    pub fn new(pid: u32, maps: Vec<Mapping>) -> Self {
        Self {
            maps,
            root: format!("/proc/{pid}/root"),
            files: HashMap::new(),
        }
    }

    /// `function` or `file+0xoff` or the raw address.
    pub fn name(&mut self, addr: u64) -> String {
        let Some(m) = self.maps.iter().find(|m| m.start <= addr && addr < m.end) else {
            return format!("{addr:#x}");
        };
        if m.is_anonymous() {
            return format!(
                "{addr:#x} ({})",
                if m.path.is_empty() { "anon" } else { &m.path }
            );
        }
        let off = addr - m.start + m.offset;
        let path = m.path.clone();
        let root = &self.root;
        let elf = self
            .files
            .entry(path.clone())
            .or_insert_with(|| ElfSymbols::read(&format!("{root}{path}")).ok());
        let name = elf.as_ref().and_then(|e| e.lookup(e.vaddr_of_offset(off)?));
        let base = path.rsplit('/').next().unwrap_or(&path);
        name.unwrap_or_else(|| format!("{base}+{off:#x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heapprof::sys::maps::parse_maps;

    #[inline(never)]
    fn marker_function_for_symbolizer() -> u64 {
        std::hint::black_box(marker_function_for_symbolizer as *const () as u64)
    }

    #[test]
    fn symbolizes_own_function_and_finds_libc_symbols() {
        let addr = marker_function_for_symbolizer();
        let pid = std::process::id();
        let maps = parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap());
        let mut s = Symbolizer::new(pid, maps.clone());
        let name = s.name(addr + 1);
        assert!(name.contains("marker_function_for_symbolizer"), "{name}");
        let libc = maps
            .iter()
            .find(|m| m.path.contains("libc.so"))
            .expect("test binary links glibc");
        let elf = ElfSymbols::read_with_prologues(&libc.path, &["free"]).unwrap();
        assert!(elf.has("malloc") && elf.has("free"));
        assert!(!elf.has("_rjem_malloc"));
        assert!(elf.prologue("free").is_some());
        assert!(elf.prologue("malloc").is_none(), "only the names asked for");
        assert!(ElfSymbols::read("/nonexistent").is_err());
    }
}
