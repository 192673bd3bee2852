//! glibc's malloc, as the process itself sees it: `mallinfo2(3)` and the
//! size of the chunk that holds a request.
//!
//! `mallinfo2` walks every arena (taking each arena's lock in turn, never
//! from inside an allocation) and answers, among others, `uordblks`, the
//! bytes of chunks in use in the arenas, and `hblkhd`, the bytes of
//! chunks served by their own `mmap`. Their sum is what glibc has handed
//! out, counted in chunks: each request rounded up to a chunk (see
//! [`chunk_size`]). Chunks parked in glibc's per-thread caches (tcache, at
//! most 7 per size up to 1032 bytes per thread) are not in any free list
//! and count as in use: no glibc interface tells them apart.

/// What `mallinfo2` says, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MallocInfo {
    /// `arena`: bytes obtained with `brk`/arena `mmap`s.
    pub arena: u64,
    /// `uordblks`: bytes of chunks in use in the arenas.
    pub in_use: u64,
    /// `fordblks`: bytes of free chunks in the arenas.
    pub free: u64,
    /// `hblkhd`: bytes of chunks served by their own `mmap`.
    pub mmapped: u64,
}

impl MallocInfo {
    /// Bytes glibc has handed out, in chunks: `uordblks + hblkhd`.
    pub fn allocated(&self) -> u64 {
        self.in_use + self.mmapped
    }
}

/// This process's glibc malloc statistics.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn mallinfo2() -> Option<MallocInfo> {
    // SAFETY: mallinfo2 takes no arguments and returns a struct by value;
    // glibc 2.33 and later have it.
    let m = unsafe { libc::mallinfo2() };
    Some(MallocInfo {
        arena: m.arena as u64,
        in_use: m.uordblks as u64,
        free: m.fordblks as u64,
        mmapped: m.hblkhd as u64,
    })
}

/// This process's glibc malloc statistics (not a glibc target: none).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn mallinfo2() -> Option<MallocInfo> {
    None
}

/// Requests from this size up are served by their own `mmap` (glibc's
/// default `M_MMAP_THRESHOLD`; glibc raises it, up to 32 MiB, after such a
/// chunk is freed, which changes a chunk's size by less than a page).
const MMAP_THRESHOLD: u64 = 128 * 1024;

/// The chunk glibc (64-bit) uses for a request of `size` bytes: the size
/// plus an 8-byte header, rounded up to 16, at least 32; page-rounded for
/// requests served by `mmap`. `posix_memalign` trims its alignment slack
/// back into free chunks, so aligned requests use the same size.
pub fn chunk_size(size: u64, page: u64) -> u64 {
    if size >= MMAP_THRESHOLD {
        return (size + 8).div_ceil(page) * page;
    }
    ((size + 8 + 15) & !15).max(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_like_glibc() {
        assert_eq!(chunk_size(1, 4096), 32);
        assert_eq!(chunk_size(24, 4096), 32);
        assert_eq!(chunk_size(25, 4096), 48);
        assert_eq!(chunk_size(1000, 4096), 1008);
        assert_eq!(chunk_size(1 << 20, 4096), (1 << 20) + 4096);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn mallinfo2_sees_a_glibc_allocation() {
        // The counters are process-wide and other tests free memory
        // meanwhile: one of a few tries must see the block.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = mallinfo2().unwrap();
            // SAFETY: plain malloc/free of this test's own block.
            let p = unsafe { libc::malloc(300_000) };
            assert!(!p.is_null());
            let during = mallinfo2().unwrap();
            // SAFETY: the block allocated above.
            unsafe { libc::free(p) };
            if during.allocated() >= before.allocated() + 300_000 {
                return;
            }
            seen.push((before, during));
        }
        panic!("mallinfo2 never counted the block: {seen:?}");
    }
}
