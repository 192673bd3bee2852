//! An ELF file mapped read-only for one batch of symbolization: its
//! sections as slices of the mapping, its load segments, and its symbol
//! tables. The pages are file-backed (the kernel can drop them under
//! pressure), and they go with the [`Image`]: it unmaps the file and asks
//! the kernel to drop the file's cached pages that nothing else maps
//! (`POSIX_FADV_DONTNEED`), so the debug info read for a profile does not
//! stay in the memory cgroup's working set. The executable's code, mapped
//! by the process itself, stays.

use std::fs::File;
use std::os::fd::AsRawFd;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionFlags, SymbolKind};

use crate::sys::mapped_file::MappedRange;

/// A read-only private mapping of a whole file.
struct Mapping {
    /// `None` only while dropping.
    range: Option<MappedRange>,
    file: File,
}

impl Mapping {
    fn of(file: File) -> Option<Mapping> {
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        let range = MappedRange::new(file.as_raw_fd(), 0, len)?;
        Some(Mapping {
            range: Some(range),
            file,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.range.as_ref().map_or(&[], MappedRange::bytes)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unmapped first, so that the advice below can drop its pages.
        drop(self.range.take());
        // SAFETY: advises the kernel about an open file (a hint; clean
        // pages still mapped elsewhere are kept).
        unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// One mapped ELF file.
pub(crate) struct Image {
    map: Mapping,
}

/// A function symbol: entry address (link-time) and demangled name.
#[derive(Clone, Debug)]
pub(crate) struct Symbol {
    pub start: u64,
    pub name: String,
}

impl Image {
    /// Maps the file at `path`; `None` if it cannot be read or parsed.
    pub fn open(path: &str) -> Option<Image> {
        let file = File::open(path).ok()?;
        let map = Mapping::of(file)?;
        object::File::parse(map.bytes()).ok()?;
        Some(Image { map })
    }

    /// The separate debug file of `obj` in the system's debug directory
    /// (`/usr/lib/debug/.build-id/xx/yyyy.debug`, matched by GNU build ID),
    /// if installed.
    pub fn debug_file(obj: &object::File<'_>) -> Option<Image> {
        let id = obj.build_id().ok().flatten().filter(|id| id.len() >= 2)?;
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Image::open(&format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        ))
    }

    /// The parsed ELF (cheap: headers only).
    pub fn object(&self) -> object::File<'_> {
        object::File::parse(self.map.bytes()).expect("parsed when opened")
    }

    /// The contents of section `name`, empty if absent. A compressed
    /// section (which would have to be inflated into anonymous memory) is
    /// reported as absent.
    pub fn section<'a>(obj: &object::File<'a>, name: &str) -> &'a [u8] {
        obj.section_by_name(name)
            .filter(|s| !is_compressed(s.flags()))
            .and_then(|s| s.data().ok())
            .unwrap_or(&[])
    }

    /// The link-time address of file offset `offset`, through the load
    /// segment that maps it.
    pub fn vaddr_of_offset(obj: &object::File<'_>, offset: u64) -> Option<u64> {
        obj.segments().find_map(|s| {
            let (start, size) = s.file_range();
            (start <= offset && offset < start + size).then(|| offset - start + s.address())
        })
    }

    /// The file offset of link-time address `vaddr`, through the load
    /// segment that holds it.
    pub fn offset_of_vaddr(obj: &object::File<'_>, vaddr: u64) -> Option<u64> {
        obj.segments().find_map(|s| {
            let (start, size) = s.file_range();
            (s.address() <= vaddr && vaddr < s.address() + size)
                .then(|| vaddr - s.address() + start)
        })
    }

    /// For each of `vaddrs` (sorted), the function symbol containing it,
    /// from `.symtab`, else `.dynsym`; one pass over the tables.
    pub fn symbols_at(obj: &object::File<'_>, vaddrs: &[u64]) -> Vec<Option<Symbol>> {
        // (rank, name): the tightest enclosing symbol wins; among aliases
        // at one address, a global one, then one without a leading `_`
        // (glibc's `clone3` over its internal `__GI___clone3`).
        let mut best: Vec<Option<(Rank, &str)>> = vec![None; vaddrs.len()];
        let symbols = obj.symbols().chain(obj.dynamic_symbols());
        for sym in symbols.filter(|s| s.kind() == SymbolKind::Text && s.is_definition()) {
            let (start, size) = (sym.address(), sym.size().max(1));
            let Ok(name) = sym.name() else { continue };
            if start == 0 || name.is_empty() {
                continue;
            }
            let rank = (start, sym.is_global(), !name.starts_with('_'));
            let first = vaddrs.partition_point(|&v| v < start);
            for (i, &v) in vaddrs.iter().enumerate().skip(first) {
                if v >= start.saturating_add(size) {
                    break;
                }
                if best[i].is_none_or(|(r, _)| rank > r) {
                    best[i] = Some((rank, name));
                }
            }
        }
        best.into_iter()
            .map(|b| {
                b.map(|((start, ..), name)| Symbol {
                    start,
                    // `.dynsym` names may carry a version: `memcpy@@GLIBC_2.14`.
                    name: super::demangle(name.split('@').next().unwrap_or(name)),
                })
            })
            .collect()
    }
}

/// How well a symbol names an address: `(start, global, no leading _)`,
/// larger is better.
type Rank = (u64, bool, bool);

fn is_compressed(flags: SectionFlags) -> bool {
    match flags {
        SectionFlags::Elf { sh_flags, .. } => sh_flags.0 & object::elf::SHF_COMPRESSED.0 != 0,
        _ => false,
    }
}
