//! Growable scratch arrays in anonymous mappings of their own, unmapped
//! when dropped, within a budget.
//!
//! Building a module's unwind table (`stack::table`) takes memory in
//! proportion to its CFI rows: the arrays that become its table, and
//! copies of the unwind sections of a module that cannot be read from its
//! file (BENCHMARKS.md, "Cost of one sample"). On the heap, the
//! allocator keeps those pages once they are freed. jemalloc gives them
//! back only after its decay time, and only when the same arena is busy
//! again, so an idle service carried them for good. [`ScratchVec`] gives
//! its pages back to the kernel when it is dropped, grows with `mremap`,
//! so growing never holds two copies, and can be kept as a table
//! ([`ScratchVec::keep`]) without a copy.
//!
//! # The budget
//!
//! A table is built when a module is loaded, which can be at any time,
//! in a process close to its memory limit. So the scratch a thread maps
//! is counted against a budget ([`within`]), and a growth past it fails
//! like a refused `mmap`: the build gives up and its scratch is unmapped,
//! instead of the build taking the process over its limit. Growth under a
//! budget never asks for more than the budget has left, so a refusal
//! means the array really needed more. The count and the budget are the
//! thread's own: a `ScratchVec` is not `Send`, so it is grown and dropped
//! on the thread that counted it.

use core::cell::Cell;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

thread_local! {
    /// Bytes this thread's scratch arrays have mapped.
    static MAPPED: Cell<usize> = const { Cell::new(0) };
    /// Most bytes they may map at once; `usize::MAX` outside [`within`].
    static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Whether a growth was refused for the budget since [`watch`] began.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's scratch arrays allowed to map at most
/// `budget` bytes more than they have mapped now, `None` for no limit.
/// Returns `f`'s result and whether any growth was refused for the
/// budget meanwhile.
pub(crate) fn within<R>(budget: Option<usize>, f: impl FnOnce() -> R) -> (R, bool) {
    let outer = BUDGET.get();
    BUDGET.set(budget.map_or(usize::MAX, |b| MAPPED.get().saturating_add(b)));
    let watched = watch(f);
    BUDGET.set(outer);
    watched
}

/// Runs `f` under the budget in force, and says whether a growth was
/// refused for it meanwhile.
pub(crate) fn watch<R>(f: impl FnOnce() -> R) -> (R, bool) {
    let outer = REFUSED.replace(false);
    let result = f();
    let refused = REFUSED.get();
    REFUSED.set(outer || refused);
    (result, refused)
}

/// Bytes the budget in force has left.
pub(crate) fn left() -> usize {
    BUDGET.get().saturating_sub(MAPPED.get())
}

/// A `Vec<T>` for plain data whose buffer is an anonymous mapping.
/// Pushing returns `None` when the kernel or the budget refuses more
/// memory.
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

    /// Maps room for at least `at_least` elements: double the capacity,
    /// or less if the budget has less left, but never less than asked.
    fn grow(&mut self, at_least: usize) -> Option<()> {
        let size = size_of::<T>();
        let old = self.cap * size;
        let most = (old + left()) / size;
        if at_least > most {
            REFUSED.set(true);
            return None;
        }
        let cap = at_least
            .max(self.cap.saturating_mul(2))
            .max(4096 / size)
            .min(most);
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
        MAPPED.set(MAPPED.get() - old + bytes);
        self.cap = cap;
        Some(())
    }
}

impl<T: Copy> ScratchVec<T> {
    /// Keeps the elements for the rest of the process: the mapping is
    /// shrunk to the pages they fill and never unmapped, and counts from
    /// then on as the profiler's own memory (`pages::adopt`). Returns them
    /// and the bytes that stay mapped, which stay counted against the
    /// budget too (they are memory the build took). `None` if the kernel
    /// refused the shrink (it does not).
    pub(crate) fn keep(self) -> Option<(&'static [T], usize)> {
        let this = core::mem::ManuallyDrop::new(self);
        let size = size_of::<T>();
        let old = this.cap * size;
        let bytes = (this.len * size).next_multiple_of(4096);
        if bytes == 0 && old != 0 {
            // SAFETY: unmaps this array's own mapping, which holds no
            // element; `this` is not dropped, so it is not unmapped twice.
            unsafe { libc::munmap(this.ptr.as_ptr().cast(), old) };
            MAPPED.set(MAPPED.get() - old);
        } else if bytes < old {
            // SAFETY: shrinks this array's own mapping in place to the
            // pages holding its `len` elements; the rest is unmapped and
            // never used again (`this` is not dropped).
            let p = unsafe { libc::mremap(this.ptr.as_ptr().cast(), old, bytes, 0) };
            if p == libc::MAP_FAILED {
                return None;
            }
            MAPPED.set(MAPPED.get() - (old - bytes));
        }
        if bytes != 0 {
            super::pages::adopt(this.ptr.as_ptr().cast(), bytes);
        }
        // SAFETY: the first `len` elements are initialised and stay mapped
        // for the rest of the process; with `len` 0 the pointer is
        // dangling but aligned and non-null (nothing is mapped).
        let kept = unsafe { core::slice::from_raw_parts(this.ptr.as_ptr(), this.len) };
        Some((kept, bytes))
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
            MAPPED.set(MAPPED.get() - self.cap * size_of::<T>());
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
    fn growth_stops_at_the_budget_and_a_drop_gives_it_back() {
        const BUDGET: usize = 64 << 10;
        let ((), refused) = within(Some(BUDGET), || {
            let mut v = ScratchVec::<u64>::new();
            let mut pushed = 0u64;
            while v.push(pushed).is_some() {
                pushed += 1;
            }
            assert_eq!(pushed as usize, BUDGET / 8, "the whole budget is usable");
            drop(v);
            let mut w = ScratchVec::<u8>::new();
            assert!(w.extend_from_slice(&[7; 1000]).is_some());
            assert!(w.extend_from_slice(&vec![7; BUDGET]).is_none());
            assert_eq!(w.len(), 1000, "a refused growth keeps the elements");
        });
        assert!(refused);
        let ((), refused) = within(None, || {
            let mut v = ScratchVec::<u64>::new();
            for i in 0..(1 << 20) / 8 {
                v.push(i).unwrap();
            }
        });
        assert!(!refused, "no budget, no refusal");
        assert_eq!(MAPPED.get(), 0, "every mapping counted out");
    }

    #[test]
    fn kept_elements_stay_mapped_and_counted_and_the_rest_is_unmapped() {
        let mut v = ScratchVec::<u32>::new();
        for i in 0..3000 {
            v.push(i).unwrap();
        }
        assert_eq!(v.cap * 4, 16 << 10);
        assert_eq!(MAPPED.get(), 16 << 10);
        let own_before = super::super::pages::mapped_bytes();
        let (kept, bytes) = v.keep().unwrap();
        assert_eq!((kept.len(), kept[2999], bytes), (3000, 2999, 12 << 10));
        assert_eq!(MAPPED.get(), 12 << 10, "the kept pages stay counted");
        // And they are the profiler's own memory from then on.
        assert!(super::super::pages::mapped_bytes() - own_before >= 12 << 10);
        let mut remembered = false;
        super::super::pages::ranges(|start, len| {
            remembered |= start == kept.as_ptr() as usize && len == 12 << 10;
        });
        assert!(remembered, "among the profiler's own ranges");
        let (empty, bytes) = ScratchVec::<u32>::new().keep().unwrap();
        assert!(empty.is_empty() && bytes == 0);
        let mut unused = ScratchVec::<u32>::new();
        unused.push(1).unwrap();
        unused.len = 0;
        assert_eq!(unused.keep().unwrap().1, 0);
        assert_eq!(MAPPED.get(), 12 << 10);
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
