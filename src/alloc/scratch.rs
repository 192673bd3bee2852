//! Growable scratch arrays in anonymous mappings of their own, unmapped
//! when dropped.
//!
//! Building a module's unwind table (`stack::table`) takes scratch memory
//! in proportion to its CFI rows: about 25 MiB for a 200 MB debug build
//! (BENCHMARKS.md, "Memory of a profile"). On the heap, the allocator keeps
//! those pages once they are freed. jemalloc gives them back only after its
//! decay time, and only when the same arena is busy again, so an idle
//! service carried them for good. [`ScratchVec`] gives its pages back to
//! the kernel when it is dropped, and it grows with `mremap`, so growing
//! never holds two copies.

use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

/// A `Vec<T>` for plain data whose buffer is an anonymous mapping.
/// Pushing returns `None` when the kernel refuses more memory.
pub(crate) struct ScratchVec<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    /// Elements the mapping holds; 0 while nothing is mapped.
    cap: usize,
}

impl<T: Copy> ScratchVec<T> {
    /// An empty array; maps nothing until the first push.
    pub(crate) const fn new() -> Self {
        const { assert!(size_of::<T>() > 0 && align_of::<T>() <= 4096) };
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }

    /// Appends `item`.
    pub(crate) fn push(&mut self, item: T) -> Option<()> {
        if self.len == self.cap {
            self.grow(self.len + 1)?;
        }
        // SAFETY: len < cap, so the slot is inside the mapping, which is
        // aligned for T (page-aligned); T is Copy, nothing to drop there.
        unsafe { self.ptr.as_ptr().add(self.len).write(item) };
        self.len += 1;
        Some(())
    }

    /// Appends every element of `items`.
    pub(crate) fn extend_from_slice(&mut self, items: &[T]) -> Option<()> {
        let len = self.len.checked_add(items.len())?;
        if len > self.cap {
            self.grow(len)?;
        }
        // SAFETY: the mapping holds `len` elements after grow; `items` is
        // another allocation (a live `&[T]` cannot point into our buffer
        // while we hold `&mut self`).
        unsafe {
            ptr::copy_nonoverlapping(items.as_ptr(), self.ptr.as_ptr().add(self.len), items.len())
        };
        self.len = len;
        Some(())
    }

    /// Maps room for at least `at_least` elements, at least doubling.
    fn grow(&mut self, at_least: usize) -> Option<()> {
        let size = size_of::<T>();
        let cap = at_least.max(self.cap.saturating_mul(2)).max(4096 / size);
        let bytes = cap.checked_mul(size)?;
        let p = if self.cap == 0 {
            super::pages::map_anonymous(bytes)?
        } else {
            // SAFETY: moves the mapping this array owns (`cap * size` bytes,
            // mapped by an earlier grow) to a larger size; the result is
            // checked against MAP_FAILED, and the old range is not used
            // again.
            let p = unsafe {
                libc::mremap(
                    self.ptr.as_ptr().cast(),
                    self.cap * size,
                    bytes,
                    libc::MREMAP_MAYMOVE,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            p.cast()
        };
        self.ptr = NonNull::new(p.cast())?;
        self.cap = cap;
        Some(())
    }
}

impl<T: Copy> Deref for ScratchVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the first `len` elements are initialised (push and
        // extend write them before counting them); with nothing mapped
        // `len` is 0 and the dangling pointer is aligned and non-null.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for ScratchVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for ScratchVec<T> {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: the mapping of `cap * size` bytes is this array's own
            // and no borrow of it outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap * size_of::<T>()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_keeps_its_elements_and_sorts_in_place() {
        let mut v = ScratchVec::<(u64, u32, u32)>::new();
        assert!(v.is_empty());
        for i in 0..100_000u64 {
            v.push((100_000 - i, i as u32, 7)).unwrap();
        }
        assert_eq!(v.len(), 100_000);
        assert_eq!(v[0], (100_000, 0, 7));
        v.sort_unstable_by_key(|r| r.0);
        assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
        let mut w = ScratchVec::<u32>::new();
        w.extend_from_slice(&[1, 2, 3]).unwrap();
        w.extend_from_slice(&(0..5000).collect::<Vec<_>>()).unwrap();
        assert_eq!(&w[..4], &[1, 2, 3, 0]);
        assert_eq!(w.len(), 5003);
        assert_eq!(*w.last().unwrap(), 4999);
    }

    #[test]
    fn a_dropped_array_unmaps_its_pages() {
        let mut v = ScratchVec::<u64>::new();
        for i in 0..(8 << 20) / 8 {
            v.push(i).unwrap();
        }
        let (addr, bytes) = (v.ptr.as_ptr().cast::<libc::c_void>(), v.cap * 8);
        let mut resident = vec![0u8; bytes.div_ceil(4096)];
        // SAFETY: mincore only reads the page tables of the range and
        // writes one byte per page into `resident`, which has room.
        let mapped = unsafe { libc::mincore(addr, bytes, resident.as_mut_ptr()) };
        assert_eq!(mapped, 0);
        assert!(
            resident.iter().all(|&r| r & 1 == 1),
            "written pages resident"
        );
        drop(v);
        // SAFETY: as above; the range is no longer mapped, which mincore
        // reports as ENOMEM without touching it.
        let mapped = unsafe { libc::mincore(addr, bytes, resident.as_mut_ptr()) };
        assert_eq!(mapped, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOMEM)
        );
    }
}
