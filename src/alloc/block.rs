//! Where a sampled allocation lives inside the block the inner allocator
//! hands out, and how `dealloc` recognises it.
//!
//! # The tag
//!
//! Every `dealloc` must learn whether its pointer was sampled, and almost
//! none were; the live table (`live_table`) knows, but probing it costs a
//! cache miss. So every sampled pointer carries a *tag*, its offset within
//! a 4 KiB page ([`PAGE`]), and `dealloc` probes the table only for
//! pointers at the offset a sampled block of their layout would have
//! ([`is_tagged`]): on the unsampled path an AND and a compare.
//!
//! The tag is chosen to be rare among unsampled pointers. A sampled
//! allocation of up to [`PAD_UP_TO`] bytes at an alignment of up to 16
//! (almost all of them) is at offset [`TAG`], 4080, the last 16 bytes of a
//! page. A page-aligned tag would be the obvious choice and a bad one: jemalloc
//! puts the first object of every slab, and every object of its 4, 8 and
//! 12 KiB classes, at offset 0, which in a service-like size mix is one
//! free in five, each probing a table line that is rarely cached. At 4080
//! only one in 256 objects of 16-byte-odd-multiple size classes lands, no
//! power-of-two class and no large jemalloc block (those are at multiples
//! of 64) does, and glibc's chunks land there one time in 256.
//!
//! # The block
//!
//! A sampled allocation of up to [`PAD_UP_TO`] bytes is *padded*: the
//! inner allocator is asked for `size + PAD` bytes at the caller's
//! alignment, an ordinary request on its fastest path, and the program
//! gets the first address at the tag inside, `offset` bytes in
//! (`offset < PAD`, so the `size` bytes fit). Asking instead for the
//! alignment that puts a pointer at a page offset is expensive: jemalloc
//! serves page-aligned small sizes from one-object slabs (a new extent per
//! block, its arena's locks, no thread cache) and page-aligned sizes up to
//! 32 KiB without the thread cache; glibc splits a chunk per `memalign`.
//!
//! Larger allocations are asked for page-aligned (offset 0): they are on
//! the inner allocator's slow path anyway, and padding would waste up to a
//! size class (a quarter of a large block). So are the rare small ones
//! with an alignment over 16 (a cache-line-aligned struct), which cannot
//! sit at [`TAG`]. Frees of layouts like these are the only page-aligned
//! ones that probe.
//!
//! # What outside observers see
//!
//! The padded block's extra bytes are real allocator memory, so heapprof
//! says where they are. Each live sample's record keeps `offset` and
//! `pad` (`sampling::LiveSample::inner_size`), and every padded sample
//! calls [`heapprof_sampled_block`] with the inner block and the size the
//! program asked for: `heapprof verify --uprobes`, which counts the inner
//! allocator's calls, attaches there and corrects the size it recorded
//! for that inner block, so its counts stay exact at every rate.

use core::alloc::Layout;

/// The period of the tag: sampled pointers are recognised by their
/// offset within a block of this many bytes.
pub(crate) const PAGE: usize = 4096;

/// Largest alignment a padded allocation may ask for, bytes (the usual
/// `malloc` alignment).
const PAD_ALIGN: usize = 16;

/// The offset within a [`PAGE`] of every padded sampled pointer: a
/// multiple of [`PAD_ALIGN`].
pub(crate) const TAG: usize = PAGE - PAD_ALIGN;

/// Padding added to a sampled allocation of up to [`PAD_UP_TO`] bytes,
/// bytes: enough to find the tag's address for `size` bytes inside a
/// block of any alignment.
pub(crate) const PAD: usize = PAGE;

/// Largest sampled allocation that is padded rather than asked for with
/// page alignment, bytes: jemalloc's default thread-cache limit
/// (`opt.tcache_max`), above which every allocation takes its arena's
/// path, aligned or not.
pub(crate) const PAD_UP_TO: usize = 32 * 1024;

/// Whether a sampled allocation of `layout` is padded (at [`TAG`]) rather
/// than page-aligned.
#[inline(always)]
fn pads(layout: Layout) -> bool {
    layout.size() <= PAD_UP_TO && layout.align() <= PAD_ALIGN
}

/// Whether `ptr`, freed with `layout`, is where a sampled pointer of that
/// layout would be: the test every `dealloc` inlines before it looks in
/// the live table. With the layout known at the call site (a `Box` of a
/// sized type) it folds to an AND and one compare; otherwise the layout
/// picks the offset to compare with.
#[inline(always)]
pub(crate) fn is_tagged(ptr: *mut u8, layout: Layout) -> bool {
    let offset = (ptr as usize) & (PAGE - 1);
    offset == if pads(layout) { TAG } else { 0 }
}

/// How a sampled allocation of a given layout is asked of the inner
/// allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    /// The inner allocator's layout.
    pub inner: Layout,
    /// Whether `inner` is padded (`size + PAD` bytes at the caller's
    /// alignment) rather than page-aligned.
    pub padded: bool,
}

impl Block {
    /// The inner block for a sampled allocation of `layout`, or `None`
    /// when no valid layout exists (the caller then allocates unsampled).
    /// The same layout always gives the same block, so `dealloc`
    /// recomputes it from the caller's layout.
    #[inline]
    pub(crate) fn for_layout(layout: Layout) -> Option<Block> {
        if pads(layout) {
            let inner = Layout::from_size_align(layout.size() + PAD, layout.align()).ok()?;
            return Some(Block {
                inner,
                padded: true,
            });
        }
        let inner = Layout::from_size_align(layout.size(), layout.align().max(PAGE)).ok()?;
        Some(Block {
            inner,
            padded: false,
        })
    }

    /// Bytes from the inner block's start to the address the program
    /// gets, at [`TAG`] in its page: less than [`PAD`], so the caller's
    /// size fits, and the address is aligned to [`PAD_ALIGN`], so to the
    /// caller's alignment; 0 for a block that is not padded.
    #[inline]
    pub(crate) fn offset_of(self, inner: *mut u8) -> usize {
        if self.padded {
            TAG.wrapping_sub(inner as usize) & (PAGE - 1)
        } else {
            0
        }
    }

    /// Bytes the inner block has beyond the program's `size`.
    #[inline]
    pub(crate) fn pad(self) -> usize {
        if self.padded { PAD } else { 0 }
    }
}

/// Called after each padded sampled allocation: `inner` is the block of
/// `inner_size` bytes the inner allocator returned, `ptr` the address the
/// program got and `size` the bytes it asked for. It does nothing; it is
/// an attach point for observers outside the process (`heapprof verify
/// --uprobes`), found by this unmangled name, which is why it is never
/// inlined and why its body cannot be merged with another function's.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn heapprof_sampled_block(
    inner: *mut u8,
    inner_size: usize,
    ptr: *mut u8,
    size: usize,
) {
    core::hint::black_box((inner, inner_size, ptr, size));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_allocations_are_padded_and_others_page_aligned() {
        let small = Block::for_layout(Layout::from_size_align(24, 8).unwrap()).unwrap();
        assert!(small.padded);
        assert_eq!((small.inner.size(), small.inner.align()), (24 + PAD, 8));
        let large = Block::for_layout(Layout::from_size_align(1 << 20, 8).unwrap()).unwrap();
        assert!(!large.padded);
        assert_eq!((large.inner.size(), large.inner.align()), (1 << 20, PAGE));
        let cache_line = Block::for_layout(Layout::from_size_align(64, 64).unwrap()).unwrap();
        assert!(!cache_line.padded);
        assert_eq!(cache_line.inner.align(), PAGE);
        let page_aligned = Block::for_layout(Layout::from_size_align(64, 8192).unwrap()).unwrap();
        assert!(!page_aligned.padded);
        assert_eq!(page_aligned.inner.align(), 8192);
    }

    #[test]
    fn the_program_gets_an_address_at_the_tag_with_room_for_its_size() {
        for align in [1usize, 8, 16] {
            let layout = Layout::from_size_align(100, align).unwrap();
            let block = Block::for_layout(layout).unwrap();
            for inner in [0x10_0000usize, 0x10_0001, 0x10_0010, 0x10_0ff0, 0x10_0fff] {
                let offset = block.offset_of(inner as *mut u8);
                let p = inner + offset;
                assert!(is_tagged(p as *mut u8, layout), "align {align}, {inner:#x}");
                assert_eq!(p % PAD_ALIGN, 0);
                assert!(offset + 100 <= block.inner.size(), "{inner:#x} {offset}");
            }
        }
    }

    #[test]
    fn each_layout_is_tagged_at_one_offset_only() {
        for (size, align, at) in [(16, 8, TAG), (4096, 8, TAG), (1 << 20, 8, 0), (64, 64, 0)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            for offset in 0..PAGE {
                let p = (0x10_0000 + offset) as *mut u8;
                assert_eq!(is_tagged(p, layout), offset == at, "{layout:?} at {offset}");
            }
        }
    }

    #[test]
    fn page_aligned_pointers_are_tagged_only_for_page_aligned_samples() {
        let small = Layout::from_size_align(4096, 8).unwrap();
        assert!(
            !is_tagged(0x10_0000 as *mut u8, small),
            "a 4 KiB slab object"
        );
        assert!(is_tagged(0x10_0ff0 as *mut u8, small));
        assert!(!is_tagged(0x10_0fe0 as *mut u8, small));
        let large = Layout::from_size_align(1 << 20, 8).unwrap();
        assert!(is_tagged(0x10_0000 as *mut u8, large));
        let cache_line = Layout::from_size_align(64, 64).unwrap();
        assert!(is_tagged(0x10_0000 as *mut u8, cache_line));
    }
}
