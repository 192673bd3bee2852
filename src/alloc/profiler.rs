//! `Profiler<A>`: the `GlobalAlloc` wrapper.
//!
//! The unsampled path of every method is inlined and does, beyond the inner
//! allocator's call, one thread-local subtract (`sampler::crossed`) and,
//! on free, one test of the pointer's offset in its page (`block::is_tagged`).
//! Everything the
//! sampled path does (stack capture, site lookup, bookkeeping) runs under the
//! reentrancy guard, in `#[cold]` functions, and never panics: a failure
//! anywhere there turns the allocation back into an unsampled one.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

use super::block::{self, Block, heapprof_sampled_block};
use super::live_table::{self, Record};
use super::reentrancy::Reentrancy;
use super::site_table;
use super::{clock, sampler, stack};
use crate::labels;

/// Starts fetching the cache line at `addr` (a hint: no fault, no effect
/// on what the program computes).
#[inline(always)]
fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching has no architectural effect and never faults,
    // whatever the address; SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

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

impl<A: GlobalAlloc> Profiler<A> {
    /// Allocates `layout` as a sampled allocation at `rate`, or, if anything
    /// on the way fails, as an ordinary one.
    #[cold]
    #[inline(never)]
    fn alloc_sampled(&self, layout: Layout, zeroed: bool, rate: u64) -> *mut u8 {
        let Some(_guard) = Reentrancy::enter() else {
            return self.alloc_plain(layout, zeroed);
        };
        let Some(block) = Block::for_layout(layout) else {
            return self.alloc_plain(layout, zeroed);
        };
        // SAFETY: block.inner has a non-zero size (at least the caller's)
        // and a valid alignment (Block::for_layout).
        let inner = unsafe {
            if zeroed && !block.padded {
                self.inner.alloc_zeroed(block.inner)
            } else {
                self.inner.alloc(block.inner)
            }
        };
        if inner.is_null() {
            return inner;
        }
        let offset = block.offset_of(inner);
        // SAFETY: offset + size <= block.inner.size() (Block::offset_of).
        let p = unsafe { inner.add(offset) };
        // The live table's line for p is rarely cached: fetch it while the
        // stack is walked.
        prefetch(live_table::bucket_address(p));
        let mut frames = stack::frames();
        let site = site_table::intern(stack::capture(&mut frames), labels::current_id());
        if zeroed && block.padded {
            // SAFETY: p is valid for the caller's size bytes (above).
            unsafe { p.write_bytes(0, layout.size()) };
        }
        let weight_fx = sampler::weight_fx(layout.size(), rate);
        let record = Record {
            site,
            weight_fx,
            born_ns: clock::birth_ns(),
            size: layout.size() as u64,
            offset: offset as u16,
            pad: block.pad() as u16,
        };
        if !live_table::insert(p, record) {
            // No room to remember it: give the block back, allocate plainly.
            // SAFETY: inner was just allocated with block.inner.
            unsafe { self.inner.dealloc(inner, block.inner) };
            return self.alloc_plain(layout, zeroed);
        }
        site_table::record_alloc(site, layout.size(), weight_fx);
        if block.padded {
            heapprof_sampled_block(inner, block.inner.size(), p, layout.size());
        }
        p
    }

    /// Frees a pointer where a sampled one of its layout would be
    /// (`block::is_tagged`): out of line, so that every `dealloc` inlines
    /// one test.
    #[inline(never)]
    fn dealloc_tagged(&self, ptr: *mut u8, layout: Layout) {
        if live_table::is_live(ptr) {
            return self.dealloc_sampled(ptr, layout);
        }
        // SAFETY: not in the live table, so never sampled (or no longer,
        // which only its owner, the caller, could cause): inner allocated
        // it with this layout.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// Frees a pointer found in the live table: a sampled allocation.
    #[cold]
    #[inline(never)]
    fn dealloc_sampled(&self, ptr: *mut u8, layout: Layout) {
        let block = Block::for_layout(layout);
        match (live_table::remove(ptr), block) {
            (Some(record), Some(block)) => {
                site_table::record_free(record.site, layout.size(), record.weight_fx);
                // SAFETY: alloc_sampled made ptr `offset` bytes into a block
                // it allocated with Block::for_layout(layout), the same
                // layout the caller frees it with.
                unsafe {
                    let inner = ptr.sub(usize::from(record.offset));
                    self.inner.dealloc(inner, block.inner)
                }
            }
            // SAFETY: not sampled (only its owner could have removed it),
            // so allocated by inner with `layout`. (A sampled block always
            // has a Block: alloc_sampled made it from the same layout.)
            _ => unsafe { self.inner.dealloc(ptr, layout) },
        }
    }

    /// An allocation that reached the thread's sample point
    /// (`sampler::crossed`): sampled, or allocated plainly if the sampler
    /// says no. Out of line, like everything past the point, so that the
    /// unsampled path makes no call but the inner allocator's (and its
    /// callers save no registers).
    #[cold]
    #[inline(never)]
    fn alloc_crossed(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let rate = sampler::on_crossing(layout.size());
        if rate != 0 {
            return self.alloc_sampled(layout, zeroed, rate);
        }
        self.alloc_plain(layout, zeroed)
    }

    /// `layout` from the inner allocator, unsampled (zeroed if asked).
    #[inline]
    fn alloc_plain(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: the caller's layout has non-zero size (GlobalAlloc
        // contract), forwarded unchanged.
        unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        }
    }

    /// `realloc` of a pointer where a sampled one of its layout would be,
    /// or one whose new size reached the sample point: out of line, so
    /// that neither the sampler's decision nor the live-table probe costs
    /// the unsampled `realloc` a register save (BENCHMARKS.md, "Overhead
    /// per program").
    #[inline(never)]
    fn realloc_other(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        crossed: bool,
    ) -> *mut u8 {
        let rate = if crossed {
            sampler::on_crossing(new_size)
        } else {
            0
        };
        if rate == 0 && !(block::is_tagged(ptr, layout) && live_table::is_live(ptr)) {
            // SAFETY: not in the live table, so never sampled (or no
            // longer, which only its owner, the caller, could cause):
            // inner allocated it with layout.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        self.realloc_slow(ptr, layout, new_size, rate)
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
// or (sampled allocations) asks inner for `Block::for_layout(layout)` (a
// padded block at the caller's alignment, or the caller's size at page
// alignment) and records the pointer it hands out (at the layout's tag),
// with its offset into the block, in live_table, whose lookup on free/realloc
// restores that exact block. Pointers handed out satisfy the caller's
// layout: the tag (or page alignment) is a multiple of the requested
// alignment, and the caller's size fits after the offset.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Profiler<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if sampler::crossed(layout.size()) {
            return self.alloc_crossed(layout, false);
        }
        // SAFETY: forwarded unchanged under the caller's contract.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if sampler::crossed(layout.size()) {
            return self.alloc_crossed(layout, true);
        }
        // SAFETY: forwarded unchanged under the caller's contract.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if block::is_tagged(ptr, layout) {
            return self.dealloc_tagged(ptr, layout);
        }
        // SAFETY: not where a sampled pointer is, so never sampled: inner
        // allocated it with this layout.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let crossed = sampler::crossed(new_size);
        if !crossed && !block::is_tagged(ptr, layout) {
            // SAFETY: not where a sampled pointer is, so never sampled:
            // inner allocated it with layout.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        self.realloc_other(ptr, layout, new_size, crossed)
    }
}
