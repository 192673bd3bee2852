//! Read-only private mappings of a range of an open file.
//!
//! The pages are the file's page-cache pages, not anonymous memory: the
//! kernel can drop them under pressure, and a process that maps the same
//! file (the loader, for a library) shares them.

use std::os::fd::RawFd;
use std::ptr::NonNull;

/// `len` bytes of a file from some offset, mapped read-only; unmapped when
/// dropped.
pub(crate) struct MappedRange {
    /// The mapping: page-aligned, `mapped` bytes.
    base: NonNull<u8>,
    mapped: usize,
    /// Where the range starts in the mapping.
    start: usize,
    len: usize,
}

impl MappedRange {
    /// Bytes `offset..offset + len` of the open file `fd`; `None` if `len`
    /// is 0 or the kernel refuses. The caller checks that the file is a
    /// regular file that holds them: reading a mapped page past its end
    /// faults.
    pub(crate) fn new(fd: RawFd, offset: u64, len: usize) -> Option<MappedRange> {
        if len == 0 {
            return None;
        }
        let page_start = offset & !4095;
        let start = (offset - page_start) as usize;
        let mapped = start.checked_add(len)?;
        // SAFETY: a new private read-only mapping of an open file, with no
        // address hint; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                mapped,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                fd,
                libc::off_t::try_from(page_start).ok()?,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(MappedRange {
            base: NonNull::new(p.cast())?,
            mapped,
            start,
            len,
        })
    }

    /// The range's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `start + len` bytes are mapped readable from `base` until
        // drop, and the mapping is private and read-only, so nothing in
        // this process writes them (a file truncated under it would make
        // reads fault; callers map files that are not truncated while they
        // run: binaries and libraries in use).
        unsafe { core::slice::from_raw_parts(self.base.as_ptr().add(self.start), self.len) }
    }
}

impl Drop for MappedRange {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no borrow of it
        // outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}
