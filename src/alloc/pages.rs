//! Memory for the profiler's own tables: anonymous mappings outside the
//! heap, so the tables work from inside the global allocator, and so the
//! profiler's own memory is exact to report. The first [`MAX_RANGES`]
//! mappings are remembered ([`ranges`]) so that their resident pages can
//! be told apart from the rest of the process's (`sys::partition`).

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes mapped by [`map_zeroed`] or handed over with [`adopt`] so far
/// (never unmapped).
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Mappings remembered. The site table maps one index, at most 32
/// chunks and its stacks in 256 KiB blocks (64 of them at the largest
/// bound): all fit.
const MAX_RANGES: usize = 256;

/// (address, bytes) of each mapping, in the order made; `RANGES_CLAIMED`
/// counts the slots taken (an address of 0 is not published yet).
static RANGES: [(AtomicUsize, AtomicUsize); MAX_RANGES] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_RANGES];
static RANGES_CLAIMED: AtomicUsize = AtomicUsize::new(0);

/// An anonymous zero-filled read-write mapping of `bytes`, not counted
/// anywhere (the caller owns it); `None` if the kernel refuses.
pub(crate) fn map_anonymous(bytes: usize) -> Option<*mut u8> {
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
    (p != libc::MAP_FAILED).then_some(p.cast())
}

/// An anonymous zero-filled mapping of `bytes`, counted in the profiler's
/// own memory; `None` if the kernel refuses.
pub(crate) fn map_zeroed(bytes: usize) -> Option<*mut u8> {
    let p = map_anonymous(bytes)?;
    adopt(p, bytes);
    Some(p)
}

/// Counts the mapping of `bytes` at `p`, which the caller made and keeps
/// for the rest of the process, in the profiler's own memory, and
/// remembers it among [`ranges`].
pub(crate) fn adopt(p: *mut u8, bytes: usize) {
    MAPPED.fetch_add(bytes, Ordering::Relaxed);
    let slot = RANGES_CLAIMED.fetch_add(1, Ordering::Relaxed);
    if let Some((start, len)) = RANGES.get(slot) {
        len.store(bytes, Ordering::Relaxed);
        // Published last: a reader that sees the address sees the length.
        start.store(p as usize, Ordering::Release);
    }
}

/// Calls `f(address, bytes)` for each remembered mapping.
pub(crate) fn ranges(mut f: impl FnMut(usize, usize)) {
    for (start, len) in &RANGES {
        let start = start.load(Ordering::Acquire);
        if start != 0 {
            f(start, len.load(Ordering::Relaxed));
        }
    }
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
