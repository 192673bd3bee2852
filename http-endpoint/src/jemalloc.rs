//! jemalloc's own statistics, size classes and purging, through
//! tikv-jemalloc-ctl's safe API (this crate forbids `unsafe`).
//!
//! These read the jemalloc linked into the process. They describe the
//! heap only when the global allocator is (or wraps)
//! `tikv_jemallocator::Jemalloc`; otherwise jemalloc is idle and they are
//! near zero.
//!
//! # What `stats.allocated` counts
//!
//! The manual says "total number of bytes allocated by the application";
//! the source says which bytes. In jemalloc 5.3 (`src/ctl.c`,
//! `ctl_refresh`), `stats.allocated` is the sum over arenas of small
//! allocated bytes (each bin's `curregs` times its region size) and large
//! allocated bytes (each large size class's `nmalloc - ndalloc` times its
//! size). A bin's `curregs` is, in the words of `bin_stats.h`, the
//! "current number of regions of this size class, including regions
//! currently cached by tcache": a thread-cache fill adds every region it
//! moves to the cache (`arena_cache_bin_fill_small`), and only a flush
//! back to the arena takes them off. Large objects freed into a thread
//! cache are not counted in `ndalloc` until flushed either. So objects the
//! program has freed but that sit in a thread cache still count as
//! allocated. jemalloc reports exactly those bytes as
//! `stats.arenas.<i>.tcache_bytes` (each cache bin's item count times its
//! size class, `arena_stats_merge`), summed over all arenas at index
//! `MALLCTL_ARENAS_ALL` (4096).
//!
//! jemalloc's own per-thread structures count too: each thread's cache-bin
//! stacks are allocated from the arena like any object
//! (`tsd_tcache_data_init` in `src/tcache.c` calls `ipallocztm` with
//! `is_internal`), so they are in the bins' `curregs`, and jemalloc adds
//! them to `stats.arenas.<i>.internal` ("internal allocations ... omitted
//! from heap profiles"). A few tens of KiB per thread: 5 MiB in a process
//! of 170 threads. Subtracting `tcache_bytes` and `internal` leaves the
//! bytes the program holds, each at its usable size (its size class,
//! [`SizeClasses`]).

use std::sync::OnceLock;

use tikv_jemalloc_ctl::{Access, AsName, arenas, epoch, stats};

/// jemalloc's `stats.*` counters, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct JemallocStats {
    /// Bytes handed to the application (`stats.allocated`).
    pub allocated: u64,
    /// Bytes in active pages (`stats.active`), a multiple of the page size.
    pub active: u64,
    /// Bytes in physically resident data pages (`stats.resident`).
    pub resident: u64,
    /// Bytes in active extents mapped by the allocator (`stats.mapped`).
    pub mapped: u64,
    /// Bytes retained (virtual memory kept, not returned) (`stats.retained`).
    pub retained: u64,
    /// Bytes of allocator metadata (`stats.metadata`).
    pub metadata: u64,
    /// Bytes of freed objects cached in thread caches, all arenas
    /// (`stats.arenas.4096.tcache_bytes`), part of `allocated`.
    pub tcache: u64,
    /// Bytes of jemalloc's internal allocations (thread-cache structures),
    /// all arenas (`stats.arenas.4096.internal`), part of `allocated`.
    pub internal: u64,
}

/// Fresh statistics (advances jemalloc's epoch first, which refreshes the
/// cached values); `None` if jemalloc refuses.
pub(crate) fn stats() -> Option<JemallocStats> {
    epoch::advance().ok()?;
    Some(JemallocStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        mapped: stats::mapped::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        tcache: read_usize("stats.arenas.4096.tcache_bytes\0")? as u64,
        internal: read_usize("stats.arenas.4096.internal\0")? as u64,
    })
}

fn read_usize(name: &str) -> Option<usize> {
    Access::<usize>::read(name.as_bytes().name()).ok()
}

/// jemalloc's size classes, smallest first: the usable size of an
/// allocation is the smallest class that holds it (`arenas.bin.<i>.size`,
/// then `arenas.lextent.<i>.size`, read once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SizeClasses(Vec<u64>);

impl SizeClasses {
    /// The classes of the jemalloc in this process; `None` if it refuses.
    pub fn get() -> Option<&'static SizeClasses> {
        static CLASSES: OnceLock<Option<SizeClasses>> = OnceLock::new();
        CLASSES.get_or_init(Self::read).as_ref()
    }

    fn read() -> Option<SizeClasses> {
        let count = |name: &str| Access::<u32>::read(name.as_bytes().name()).ok();
        let bins = count("arenas.nbins\0")?;
        let large = count("arenas.nlextents\0")?;
        let mut classes = Vec::with_capacity((bins + large) as usize);
        for i in 0..bins {
            classes.push(read_usize(&format!("arenas.bin.{i}.size\0"))? as u64);
        }
        for i in 0..large {
            classes.push(read_usize(&format!("arenas.lextent.{i}.size\0"))? as u64);
        }
        Some(SizeClasses(classes))
    }

    /// The usable size jemalloc gives an allocation of `size` bytes
    /// aligned to `align` (a power of two): the smallest class that holds
    /// it and is a multiple of `align`. Large classes are multiples of the
    /// page, so page alignment costs nothing above the small classes; past
    /// the largest class, the size rounded up to `align`.
    pub fn usable(&self, size: u64, align: u64) -> u64 {
        let align = align.max(1);
        let from = self.0.partition_point(|&c| c < size);
        self.0[from..]
            .iter()
            .copied()
            .find(|c| c % align == 0)
            .unwrap_or_else(|| size.div_ceil(align) * align)
    }
}

/// Returns unused dirty and muzzy pages of every arena to the OS.
///
/// `arena.<i>.purge` is a void mallctl that only the unsafe raw API can
/// call, so this sets each arena's decay time to 0 (which purges at once,
/// per jemalloc's manual: "0 causes all unused dirty pages to be purged
/// immediately") and then restores it. Arenas not yet initialized refuse;
/// they are skipped. Best effort: failures are ignored.
pub(crate) fn purge() {
    let Ok(n) = arenas::narenas::read() else {
        return;
    };
    for arena in 0..n {
        for knob in ["dirty_decay_ms", "muzzy_decay_ms"] {
            let key = format!("arena.{arena}.{knob}\0");
            let name = key.as_bytes().name();
            if let Ok(old) = Access::<isize>::read(name)
                && Access::<isize>::write(name, 0).is_ok()
            {
                let _ = Access::<isize>::write(name, old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// jemalloc 5.3's classes with 4 KiB pages, in part.
    fn classes() -> SizeClasses {
        SizeClasses(vec![
            8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 3072, 3584, 4096, 5120, 6144,
            7168, 8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
        ])
    }

    #[test]
    fn usable_sizes_unaligned_and_page_aligned() {
        let c = classes();
        assert_eq!(c.usable(1, 1), 8);
        assert_eq!(c.usable(100, 16), 112);
        assert_eq!(
            c.usable(100, 4096),
            4096,
            "a sampled small object takes a page"
        );
        assert_eq!(c.usable(5000, 1), 5120);
        assert_eq!(c.usable(5000, 4096), 8192);
        assert_eq!(c.usable(13000, 4096), 16384, "14336 is not page-aligned");
        assert_eq!(c.usable(17000, 1), 20480);
        assert_eq!(c.usable(17000, 4096), 20480, "large classes are pages");
        assert_eq!(c.usable(40000, 4096), 40960, "past the last class");
    }

    #[test]
    fn reads_this_process_jemalloc() {
        let c = SizeClasses::get().expect("jemalloc's size classes");
        assert!(c.0.len() > 100, "{} classes", c.0.len());
        assert!(c.0.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.usable(1, 1), 8);
        let s = stats().expect("stats");
        assert!(s.allocated >= s.tcache + s.internal, "{s:?}");
    }
}
