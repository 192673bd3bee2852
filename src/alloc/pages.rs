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

/// Copies `items` into a mapping of their own that is never freed, for
/// data read without locks for the rest of the process (unwind tables).
/// Returns the copy and the bytes mapped; `None` if the kernel refuses.
pub(crate) fn leak_copy<T: Copy>(items: &[T]) -> Option<(&'static [T], usize)> {
    if items.is_empty() {
        return Some((&[], 0));
    }
    const { assert!(core::mem::align_of::<T>() <= 4096) };
    let bytes = core::mem::size_of_val(items);
    let p = map_zeroed(bytes)?.cast::<T>();
    // SAFETY: the mapping is fresh, page-aligned (so aligned for T), at
    // least `bytes` long and never unmapped; T is Copy, so a bitwise copy
    // is a valid value and nothing needs dropping.
    unsafe {
        ptr::copy_nonoverlapping(items.as_ptr(), p, items.len());
        Some((core::slice::from_raw_parts(p, items.len()), bytes))
    }
}
