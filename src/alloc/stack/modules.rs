//! The loaded modules (the executable, shared libraries, the vDSO) and
//! their unwind sections, found with `dl_iterate_phdr`: no debug info
//! needed, only what the loader maps.
//!
//! For each module with a `PT_GNU_EH_FRAME` segment (`.eh_frame_hdr`), a
//! scan records the executable `PT_LOAD` span and secures `.eh_frame_hdr`
//! and `.eh_frame` for a table build that runs later (milliseconds), when
//! the loader's lock no longer keeps the module mapped, so a `dlclose`
//! could unmap it:
//! - the main program is never unloaded: its sections are read where they
//!   are mapped. In a service that is one large executable, they are most
//!   of the unwind sections (megabytes);
//! - a library is mapped again from its file, read-only, if the file still
//!   holds exactly the loaded bytes (`file_view`): page-cache pages, which
//!   the loader's mapping shares, rather than anonymous memory;
//! - anything else (the vDSO, a file since replaced) is copied, inside the
//!   callback, where the loader's lock keeps it mapped.
//!
//! A module already known by its [`Identity`] is not read again.
//!
//! `dl_iterate_phdr` takes the loader's lock and allocates nothing, but a
//! scan allocates, opens files and maps them: it runs on the table
//! builder's thread (`builder`), never inside an allocation.

use core::ffi::{CStr, c_int, c_void};
use core::ops::Range;

use gimli::{BaseAddresses, EhFrameHdr, LittleEndian, Pointer};

use super::file_view::FileView;
use crate::alloc::scratch::ScratchVec;

/// What makes two scans' modules the same for unwinding: a module with an
/// unchanged identity keeps its table. The hash covers `.eh_frame_hdr`,
/// which lists every function's unwind entry, so a different library
/// loaded at the same address after a `dlclose` gets a new identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    /// Address of `.eh_frame_hdr` in this process.
    pub eh_frame_hdr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// FNV-1a of its bytes.
    pub hash: u64,
}

/// A module's unwind section, as a table build reads it.
pub(super) struct Section {
    /// Where the section is mapped in this process (its AVMA): pointers
    /// inside it are relative to this address.
    pub address: u64,
    pub bytes: SectionBytes,
}

/// A section's bytes: the main program's where they are mapped; a
/// library's mapped again from its file (`file_view`), or if that fails
/// copied into a mapping of its own (`alloc::scratch`); either is unmapped
/// once the table is built.
pub(super) enum SectionBytes {
    Mapped(&'static [u8]),
    File(FileView),
    Copied(ScratchVec<u8>),
}

impl core::ops::Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SectionBytes::Mapped(bytes) => bytes,
            SectionBytes::File(view) => view,
            SectionBytes::Copied(copy) => copy,
        }
    }
}

impl Module {
    /// Bytes of its sections that were copied (0 for the main program's,
    /// read in place).
    pub(super) fn copied_bytes(&self) -> usize {
        [&self.eh_frame_hdr, &self.eh_frame]
            .iter()
            .map(|s| match &s.bytes {
                SectionBytes::Mapped(_) | SectionBytes::File(_) => 0,
                SectionBytes::Copied(copy) => copy.len(),
            })
            .sum()
    }
}

impl Section {
    /// `bytes`, mapped at `address`: read where they are if `source` says
    /// they stay mapped, else mapped again from the module's file if it
    /// has them, else copied; `None` without memory for the copy.
    ///
    /// # Safety
    /// With [`Source::StaysMapped`], `bytes` must stay mapped and unchanged
    /// for the rest of the process.
    unsafe fn new(address: u64, bytes: &[u8], source: Source) -> Option<Section> {
        let bytes = match source {
            // SAFETY: the caller's contract: the bytes outlive every use.
            Source::StaysMapped => SectionBytes::Mapped(unsafe {
                core::slice::from_raw_parts(bytes.as_ptr(), bytes.len())
            }),
            Source::File(path, offset) if let Some(view) = FileView::of(path, offset, bytes) => {
                SectionBytes::File(view)
            }
            _ => {
                let mut copy = ScratchVec::new();
                copy.extend_from_slice(bytes)?;
                SectionBytes::Copied(copy)
            }
        };
        Some(Section { address, bytes })
    }
}

/// Where a section's bytes can be read from once the loader's lock is
/// released.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The loaded image itself: the main program, never unloaded.
    StaysMapped,
    /// The module's file (its path, and the section's offset in it).
    File(&'a CStr, u64),
    /// Nowhere: copy it.
    Copy,
}

/// Where `range` (addresses of a module loaded at `bias`) is in the
/// module's file: the offset of its first byte, if one `PT_LOAD` segment
/// holds all of it from the file (not zero-filled memory).
fn file_offset(phdrs: &[libc::Elf64_Phdr], bias: u64, range: &Range<u64>) -> Option<u64> {
    let (start, end) = (range.start.checked_sub(bias)?, range.end.checked_sub(bias)?);
    phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD)
        .find(|p| p.p_vaddr <= start && p.p_vaddr.checked_add(p.p_filesz).is_some_and(|e| end <= e))
        .and_then(|p| p.p_offset.checked_add(start - p.p_vaddr))
}

/// A new module, its unwind sections secured for a table build.
pub(super) struct Module {
    /// The loader's name for it: empty for the executable.
    pub name: String,
    pub identity: Identity,
    /// Addresses of its executable `PT_LOAD` segments, first to last byte.
    pub text: Range<u64>,
    pub eh_frame_hdr: Section,
    pub eh_frame: Section,
}

/// One module of a scan.
pub(super) enum Scanned {
    /// Already known (the caller's `known` said so): nothing copied.
    Known(Identity),
    New(Module),
    /// New, but there was no memory for its copies (`alloc::scratch`'s
    /// budget or the kernel refused them), which take this many bytes.
    Uncopied(Identity, usize),
}

/// The modules loaded at the time of a scan, in the loader's order.
pub(super) struct Scan {
    pub modules: Vec<Scanned>,
    /// The loader's load and unload counters at the time (see
    /// [`loader_generation`]).
    pub generation: u64,
}

/// Every loaded module with unwind tables; `known` decides which need no
/// copy.
pub(super) fn scan(known: &dyn Fn(&Identity) -> bool) -> Scan {
    let mut state = ScanState {
        known,
        scan: Scan {
            modules: Vec::new(),
            generation: 0,
        },
        visited: 0,
    };
    // SAFETY: the callback has dl_iterate_phdr's signature and casts `data`
    // back to the ScanState passed here, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(on_module), (&raw mut state).cast()) };
    state.scan
}

/// The loader's count of loads plus unloads (`dlpi_adds + dlpi_subs`):
/// equal values mean no module was added or removed in between. `None` if
/// the C library does not report them.
pub(super) fn loader_generation() -> Option<u64> {
    let mut generation: Option<u64> = None;
    // SAFETY: the callback has dl_iterate_phdr's signature and only writes
    // the Option passed as `data`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(on_first_module), (&raw mut generation).cast()) };
    generation
}

struct ScanState<'a> {
    known: &'a dyn Fn(&Identity) -> bool,
    scan: Scan,
    /// Modules the loader has reported so far; the first is the main
    /// program.
    visited: usize,
}

/// Whether `dl_phdr_info` of `size` bytes includes `dlpi_adds`/`dlpi_subs`.
fn has_counters(size: usize) -> bool {
    size >= core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8
}

unsafe extern "C" fn on_first_module(
    info: *mut libc::dl_phdr_info,
    size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes and our
    // `data`, an Option<u64>.
    unsafe {
        let info = &*info;
        if has_counters(size) {
            *data.cast::<Option<u64>>() = Some(info.dlpi_adds.wrapping_add(info.dlpi_subs));
        }
    }
    1 // stop after the first module: the counters are global
}

unsafe extern "C" fn on_module(
    info: *mut libc::dl_phdr_info,
    size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info of `size` bytes and our
    // `data`, a ScanState; the program headers it points to are valid for
    // the callback's duration.
    let (info, state, phdrs) = unsafe {
        let info = &*info;
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum))
        };
        (info, &mut *data.cast::<ScanState>(), phdrs)
    };
    if has_counters(size) {
        state.scan.generation = info.dlpi_adds.wrapping_add(info.dlpi_subs);
    }
    // dl_iterate_phdr reports the main program first (glibc documents it),
    // and the main program is never unmapped.
    let main_program = state.visited == 0;
    state.visited += 1;
    let bias = info.dlpi_addr;
    let Some(hdr) = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME) else {
        return 0;
    };
    let Some(hdr_range) = span(bias, hdr) else {
        return 0;
    };
    // SAFETY: PT_GNU_EH_FRAME lies in a loaded segment of this module,
    // mapped readable while the loader lock is held (during this callback).
    let hdr_bytes = unsafe { mapped(&hdr_range) };
    let identity = Identity {
        eh_frame_hdr: hdr_range.start,
        len: hdr_range.end - hdr_range.start,
        hash: fnv1a(hdr_bytes),
    };
    if (state.known)(&identity) {
        state.scan.modules.push(Scanned::Known(identity));
        return 0;
    }
    let text = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
        .filter_map(|p| span(bias, p))
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end));
    let Some(text) = text else {
        return 0;
    };
    // `.eh_frame` has no program header of its own: the header points to
    // its start, the segment holding that address bounds it, and the
    // records themselves end it.
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_range.start);
    let Ok(parsed) = EhFrameHdr::new(hdr_bytes, LittleEndian).parse(&bases, 8) else {
        return 0;
    };
    let Pointer::Direct(eh_frame) = parsed.eh_frame_ptr() else {
        return 0;
    };
    let Some(segment) = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD)
        .filter_map(|p| span(bias, p))
        .find(|s| s.contains(&eh_frame))
    else {
        return 0;
    };
    // SAFETY: [eh_frame, segment end) lies in a loaded segment of this
    // module, mapped readable during this callback.
    let rest = unsafe { mapped(&(eh_frame..segment.end)) };
    let eh_frame_bytes = &rest[..records_len(rest)];
    // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the
    // loader, valid during the callback.
    let path = (!info.dlpi_name.is_null()).then(|| unsafe { CStr::from_ptr(info.dlpi_name) });
    let name = path.map_or_else(String::new, |p| p.to_string_lossy().into_owned());
    // A library loaded from a file (the loader names it by its path) is
    // read again from the file; others (the vDSO) are copied.
    let eh_frame_range = eh_frame..eh_frame + eh_frame_bytes.len() as u64;
    let source = |range: &Range<u64>| match path {
        _ if main_program => Source::StaysMapped,
        Some(path) if path.to_bytes().starts_with(b"/") => file_offset(phdrs, bias, range)
            .map_or(Source::Copy, |offset| Source::File(path, offset)),
        _ => Source::Copy,
    };
    // SAFETY: both lie in this module's loaded segments, which stay mapped
    // (read-only, never written) for the rest of the process if it is the
    // main program.
    let sections = unsafe {
        (
            Section::new(hdr_range.start, hdr_bytes, source(&hdr_range)),
            Section::new(eh_frame, eh_frame_bytes, source(&eh_frame_range)),
        )
    };
    let (Some(eh_frame_hdr), Some(eh_frame)) = sections else {
        // No memory for the copies: no table for this module for now (its
        // frames go to libgcc).
        let bytes = hdr_bytes.len() + eh_frame_bytes.len();
        state.scan.modules.push(Scanned::Uncopied(identity, bytes));
        return 0;
    };
    state.scan.modules.push(Scanned::New(Module {
        name,
        identity,
        text,
        eh_frame_hdr,
        eh_frame,
    }));
    0
}

/// The addresses a program header covers once loaded, if they fit.
fn span(bias: u64, p: &libc::Elf64_Phdr) -> Option<Range<u64>> {
    let start = bias.checked_add(p.p_vaddr)?;
    let end = start.checked_add(p.p_memsz)?;
    (start < end).then_some(start..end)
}

/// # Safety
/// `range` must be mapped and readable for as long as the result is used.
unsafe fn mapped<'a>(range: &Range<u64>) -> &'a [u8] {
    // SAFETY: the caller's contract.
    unsafe {
        core::slice::from_raw_parts(range.start as *const u8, (range.end - range.start) as usize)
    }
}

/// Bytes of `.eh_frame` records at the start of `bytes`, through the
/// zero-length terminator if there is one: each record is a 4-byte length
/// (`0xffff_ffff` then an 8-byte length for 64-bit DWARF) and its body.
fn records_len(bytes: &[u8]) -> usize {
    let mut at = 0usize;
    while let Some(word) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        let (header, body) = match len {
            0 => return at + 4,
            0xffff_ffff => match bytes.get(at + 4..at + 12) {
                Some(long) => (12, u64::from_le_bytes(long.try_into().unwrap_or([0xff; 8]))),
                None => break,
            },
            _ => (4, u64::from(len)),
        };
        let Some(next) = usize::try_from(body)
            .ok()
            .and_then(|body| (at + header).checked_add(body))
            .filter(|&next| next <= bytes.len())
        else {
            break;
        };
        at = next;
    }
    at
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_executable_and_the_c_library_with_their_unwind_sections() {
        let scan = scan(&|_| false);
        let modules: Vec<&Module> = scan
            .modules
            .iter()
            .filter_map(|m| match m {
                Scanned::New(m) => Some(m),
                Scanned::Known(_) | Scanned::Uncopied(..) => None,
            })
            .collect();
        let here = finds_this_executable_and_the_c_library_with_their_unwind_sections as fn()
            as usize as u64;
        let exe = modules
            .iter()
            .find(|m| m.text.contains(&here))
            .expect("a module holding this function");
        assert!(
            exe.eh_frame.bytes.len() > 1000,
            "{}",
            exe.eh_frame.bytes.len()
        );
        let libc = modules
            .iter()
            .find(|m| m.name.contains("libc.so"))
            .expect("the C library");
        // The main program's sections are read in place, a library's from
        // its file, the vDSO's (no file) copied.
        assert!(matches!(exe.eh_frame.bytes, SectionBytes::Mapped(_)));
        assert!(matches!(exe.eh_frame_hdr.bytes, SectionBytes::Mapped(_)));
        assert!(matches!(libc.eh_frame.bytes, SectionBytes::File(_)));
        assert!(matches!(libc.eh_frame_hdr.bytes, SectionBytes::File(_)));
        let vdso = modules
            .iter()
            .find(|m| m.name.contains("vdso"))
            .expect("the vDSO");
        assert!(matches!(vdso.eh_frame.bytes, SectionBytes::Copied(_)));
        // Every module's .eh_frame ends at its terminator (or its segment).
        for m in &modules {
            assert_eq!(records_len(&m.eh_frame.bytes), m.eh_frame.bytes.len());
        }
        // A second scan that knows everything copies nothing.
        let again = super::scan(&|_| true);
        assert!(again.modules.iter().all(|m| matches!(m, Scanned::Known(_))));
        assert_eq!(again.modules.len(), scan.modules.len());
        assert_eq!(loader_generation(), Some(scan.generation));
    }

    #[test]
    fn records_end_at_the_terminator_or_at_a_length_that_does_not_fit() {
        let mut bytes = vec![];
        bytes.extend(8u32.to_le_bytes());
        bytes.extend([0u8; 8]);
        bytes.extend(0u32.to_le_bytes());
        bytes.extend([0xaa; 16]);
        assert_eq!(records_len(&bytes), 16);
        assert_eq!(records_len(&bytes[..12]), 12);
        let mut bad = 8u32.to_le_bytes().to_vec();
        bad.extend(100u32.to_le_bytes());
        assert_eq!(records_len(&bad), 0);
    }
}
