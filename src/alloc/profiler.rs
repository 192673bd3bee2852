//! `Profiler<A>`: the `GlobalAlloc` wrapper.
//!
//! The unsampled path of every method is inlined and does, beyond the inner
//! allocator's call, one thread-local subtract (`sampler::should_sample`) and,
//! on free, one alignment test (`live_table::is_sampled`). Everything the
//! sampled path does (stack capture, site lookup, bookkeeping) runs under the
//! reentrancy guard, in `#[cold]` functions, and never panics: a failure
//! anywhere there turns the allocation back into an unsampled one.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

use super::live_table::{self, Record, TAG_ALIGN};
use super::reentrancy::Reentrancy;
use super::site_table::{self, MAX_DEPTH};
use super::{clock, sampler, stack};
use crate::labels;

/// A global allocator that samples the allocations it passes to `A`.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: heapprof::Profiler<std::alloc::System> =
///     heapprof::Profiler::new(std::alloc::System);
/// ```
pub struct Profiler<A> {
    inner: A,
}

impl<A> Profiler<A> {
    /// Wraps `inner`. `const`, so it can initialise a `static`.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

/// The layout a sampled allocation is made with: same size, page-aligned.
#[inline]
fn tagged(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size(), layout.align().max(TAG_ALIGN)).ok()
}

impl<A: GlobalAlloc> Profiler<A> {
    /// Allocates `layout` as a sampled allocation at `rate`, or, if anything
    /// on the way fails, as an ordinary one.
    #[cold]
    #[inline(never)]
    fn alloc_sampled(&self, layout: Layout, zeroed: bool, rate: u64) -> *mut u8 {
        let plain = |inner: &A| {
            // SAFETY: the caller's layout has non-zero size (GlobalAlloc
            // contract), forwarded unchanged.
            unsafe {
                if zeroed {
                    inner.alloc_zeroed(layout)
                } else {
                    inner.alloc(layout)
                }
            }
        };
        let Some(_guard) = Reentrancy::enter() else {
            return plain(&self.inner);
        };
        let Some(tagged_layout) = tagged(layout) else {
            return plain(&self.inner);
        };
        let mut frames = [0usize; MAX_DEPTH];
        let depth = stack::capture(&mut frames);
        let site = site_table::intern(&frames[..depth], labels::current_id());
        // SAFETY: same size as the caller's non-zero layout, valid alignment.
        let p = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(tagged_layout)
            } else {
                self.inner.alloc(tagged_layout)
            }
        };
        if p.is_null() {
            return p;
        }
        let weight_fx = sampler::weight_fx(layout.size(), rate);
        let record = Record {
            site,
            weight_fx,
            born_ns: clock::monotonic_ns(),
            size: layout.size() as u64,
        };
        if !live_table::insert(p, record) {
            // No room to remember it: give the block back, allocate plainly.
            // SAFETY: p was just allocated with tagged_layout.
            unsafe { self.inner.dealloc(p, tagged_layout) };
            return plain(&self.inner);
        }
        site_table::record_alloc(site, layout.size(), weight_fx);
        p
    }

    /// Frees a pointer found in the live table: a sampled allocation.
    #[cold]
    #[inline(never)]
    fn dealloc_sampled(&self, ptr: *mut u8, layout: Layout) {
        match live_table::remove(ptr) {
            Some(record) => {
                site_table::record_free(record.site, layout.size(), record.weight_fx);
                let inner_layout = tagged(layout).unwrap_or(layout);
                // SAFETY: ptr was allocated by alloc_sampled with exactly
                // this tagged layout (same size, raised alignment).
                unsafe { self.inner.dealloc(ptr, inner_layout) }
            }
            // SAFETY: not sampled (only its owner could have removed it),
            // so allocated by inner with `layout`.
            None => unsafe { self.inner.dealloc(ptr, layout) },
        }
    }

    /// `realloc` when the old block is sampled or the new one will be:
    /// allocate, copy, free.
    #[cold]
    #[inline(never)]
    fn realloc_slow(&self, ptr: *mut u8, layout: Layout, new_size: usize, rate: u64) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let new = if rate != 0 {
            self.alloc_sampled(new_layout, false, rate)
        } else {
            // SAFETY: new_size is non-zero (realloc contract).
            unsafe { self.inner.alloc(new_layout) }
        };
        if new.is_null() {
            return new; // the old block stays valid, as realloc requires
        }
        // SAFETY: both blocks are valid for min(old, new) bytes and distinct.
        unsafe { ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        // SAFETY: ptr is the caller's live block with `layout`.
        unsafe { self.dealloc(ptr, layout) };
        new
    }
}

// SAFETY: every method either forwards to `inner` with the caller's layout,
// or (sampled allocations) uses a layout of the same size with alignment
// raised to TAG_ALIGN and records the pointer in live_table, whose lookup on
// free/realloc restores that exact layout. Pointers handed out satisfy the
// caller's layout because the raised alignment is a multiple of the
// requested one.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Profiler<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let rate = sampler::should_sample(layout.size());
        if rate != 0 {
            return self.alloc_sampled(layout, false, rate);
        }
        // SAFETY: forwarded unchanged under the caller's contract.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let rate = sampler::should_sample(layout.size());
        if rate != 0 {
            return self.alloc_sampled(layout, true, rate);
        }
        // SAFETY: forwarded unchanged under the caller's contract.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if live_table::is_sampled(ptr) {
            return self.dealloc_sampled(ptr, layout);
        }
        // SAFETY: not in the live table, so never sampled (or no longer,
        // which only its owner, the caller, could cause): inner allocated
        // it with this layout.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let rate = sampler::should_sample(new_size);
        if rate == 0 && !live_table::is_sampled(ptr) {
            // SAFETY: ptr is not sampled, so inner allocated it with layout.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        self.realloc_slow(ptr, layout, new_size, rate)
    }
}
