//! Memory for the profiler's own tables: anonymous mappings outside the
//! heap, so the tables work from inside the global allocator, and so the
//! profiler's own memory is exact to report.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes mapped by [`map_zeroed`] so far (never unmapped).
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// An anonymous zero-filled mapping of `bytes`, counted in the profiler's
/// own memory; `None` if the kernel refuses.
pub(crate) fn map_zeroed(bytes: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping with no address hint; the result
    // is checked against MAP_FAILED. Pages come zero-filled.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    MAPPED.fetch_add(bytes, Ordering::Relaxed);
    Some(p.cast())
}

/// Bytes the profiler has mapped for its tables (virtual; pages become
/// resident as they are written).
pub(crate) fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}
