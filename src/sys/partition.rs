//! A process's RSS partitioned exactly: every resident page counted once,
//! in one part, decided mapping by mapping from `/proc/PID/smaps`.
//!
//! Each mapping's `Rss` splits into its `Anonymous` pages and the rest,
//! which is file or shared-memory page cache by what backs the mapping
//! ([`Mapping::backing`]). The anonymous pages go, by mapping, to:
//!
//! - **thread stacks**: the mappings holding a thread's stack pointer (and
//!   `[stack]`), see [`crate::sys::procfs`];
//! - **the profiler's own tables**: resident bytes measured in the process
//!   (`mincore`) over the tables' address ranges, taken from the mapping
//!   holding them (never more than that mapping's anonymous pages);
//! - **the allocator's mappings**: those the process knows its allocator
//!   handed out memory from (a sampled block lies or lay in them) and the
//!   brk heap `[heap]`. Their pages
//!   are the live heap, up to the estimate of its resident bytes, and the
//!   allocator's retained memory for the rest (freed pages not yet given
//!   back, thread caches, fragmentation, metadata that shares them);
//! - **other anonymous memory**: everything else (mappings of the
//!   allocator that hold no sample, its metadata mappings, runtimes, other
//!   `mmap`s).
//!
//! Every part is a sum of page counts or a minimum of two of them, so none
//! is negative, and the parts add up to the sum of `Rss` over the mappings,
//! which is the RSS (the status file's RSS counts the same pages, through per-CPU
//! counters that may lag by a few pages). The one estimate is the live
//! heap's share of the allocator's mappings; [`Detail`] says what the
//! estimate was and whether the pages there were fewer (the rest of the
//! live heap then lies in mappings not known to be the allocator's and is
//! counted in other anonymous memory).

use super::maps::{Backing, Mapping};

/// What the process itself knows about its mappings (all optional).
#[derive(Clone, Copy, Debug, Default)]
pub struct Known<'a> {
    /// Resident bytes of the live heap, as estimated in the process.
    /// Without it the allocator's mappings are not told apart from other
    /// anonymous memory.
    pub heap: Option<u64>,
    /// An address inside each mapping known to belong to the allocator.
    pub allocator: &'a [u64],
    /// The profiler's own tables: an address inside each and its resident
    /// bytes.
    pub profiler: &'a [(u64, u64)],
}

/// The parts of RSS, bytes; they sum to the RSS of the mappings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    /// File pages (page cache mapped, not copied on write).
    pub file: u64,
    /// Shared-memory (tmpfs) pages.
    pub shmem: u64,
    /// Anonymous pages of thread stacks.
    pub thread_stacks: u64,
    /// The live heap's resident pages.
    pub heap: u64,
    /// The rest of the allocator's mappings' anonymous pages.
    pub allocator_retained: u64,
    /// The profiler's own tables.
    pub profiler: u64,
    /// Anonymous pages nothing above accounts for.
    pub other_anon: u64,
}

impl Partition {
    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.file
            + self.shmem
            + self.thread_stacks
            + self.heap
            + self.allocator_retained
            + self.profiler
            + self.other_anon
    }

    /// The anonymous parts' sum.
    pub fn anon(&self) -> u64 {
        self.thread_stacks + self.heap + self.allocator_retained + self.profiler + self.other_anon
    }
}

/// How the partition was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Detail {
    /// Sum of `Rss` over the mappings.
    pub smaps_rss: u64,
    /// Sum of `Anonymous` over the mappings.
    pub smaps_anon: u64,
    /// Mappings counted as the allocator's.
    pub allocator_mappings: u64,
    /// Their anonymous bytes (heap plus retained).
    pub allocator_anon: u64,
    /// The live heap's resident bytes as estimated in the process.
    pub heap_estimate: Option<u64>,
    /// Whether the estimate was more than the allocator's mappings hold
    /// (then `heap` is what they hold).
    pub heap_capped: bool,
}

/// Partitions the RSS of `maps` (from `smaps`), given the indices of the
/// thread stacks and what the process knows (see the module docs).
pub fn partition(maps: &[Mapping], stacks: &[usize], known: &Known) -> (Partition, Detail) {
    let mut p = Partition::default();
    let mut d = Detail {
        heap_estimate: known.heap,
        ..Detail::default()
    };
    let holds = |m: &Mapping, addr: u64| m.contains(addr);
    for (i, m) in maps.iter().enumerate() {
        let anon = m.anonymous.min(m.rss);
        d.smaps_rss += m.rss;
        d.smaps_anon += anon;
        match m.backing() {
            Backing::Shmem => p.shmem += m.rss - anon,
            Backing::File | Backing::Anonymous => p.file += m.rss - anon,
        }
        let own: u64 = known
            .profiler
            .iter()
            .filter(|(addr, _)| holds(m, *addr))
            .map(|(_, bytes)| bytes)
            .sum();
        let own = own.min(anon);
        p.profiler += own;
        let rest = anon - own;
        let allocator = known.heap.is_some()
            && (m.path == "[heap]" || known.allocator.iter().any(|&a| holds(m, a)));
        if stacks.contains(&i) {
            p.thread_stacks += rest;
        } else if allocator {
            d.allocator_mappings += 1;
            d.allocator_anon += rest;
        } else {
            p.other_anon += rest;
        }
    }
    if let Some(estimate) = known.heap {
        p.heap = estimate.min(d.allocator_anon);
        d.heap_capped = estimate > d.allocator_anon;
        p.allocator_retained = d.allocator_anon - p.heap;
    }
    (p, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// A mapping with `rss_kib` resident, `anon_kib` of it anonymous.
    fn mapping(range: (u64, u64), perms: &str, path: &str, rss_kib: u64, anon_kib: u64) -> Mapping {
        Mapping {
            start: range.0,
            end: range.1,
            perms: perms.into(),
            path: path.into(),
            rss: rss_kib * KIB,
            anonymous: anon_kib * KIB,
            ..Mapping::default()
        }
    }

    /// A brk heap, a jemalloc-like arena, another anonymous mapping, a
    /// thread stack, a file mapping with copied pages, shared memory.
    fn mappings() -> Vec<Mapping> {
        let libc = "/usr/lib/libc.so.6";
        vec![
            mapping(
                (0x55d0_c000_0000, 0x55d0_c010_0000),
                "rw-p",
                "[heap]",
                100,
                100,
            ),
            mapping((0x7e00_0000_0000, 0x7e00_0400_0000), "rw-p", "", 4000, 4000),
            mapping((0x7e10_0000_0000, 0x7e10_0010_0000), "rw-p", "", 300, 300),
            mapping((0x7f00_0000_1000, 0x7f00_0080_1000), "rw-p", "", 64, 64),
            mapping((0x7f10_0000_0000, 0x7f10_0010_0000), "r-xp", libc, 900, 0),
            mapping((0x7f10_0010_0000, 0x7f10_0010_4000), "rw-p", libc, 16, 12),
            mapping(
                (0x7f20_0000_0000, 0x7f20_0040_0000),
                "rw-s",
                "/dev/shm/queue",
                256,
                0,
            ),
        ]
    }

    #[test]
    fn parts_are_exact_and_sum_to_rss() {
        let maps = mappings();
        let own = [(0x7e10_0000_1000, 40 * KIB)];
        let known = Known {
            heap: Some(3000 * KIB),
            allocator: &[0x7e00_0000_8000],
            profiler: &own,
        };
        let (p, d) = partition(&maps, &[3], &known);
        assert_eq!(p.file, 900 * KIB + 4 * KIB);
        assert_eq!(p.shmem, 256 * KIB);
        assert_eq!(p.thread_stacks, 64 * KIB);
        assert_eq!(p.profiler, 40 * KIB);
        assert_eq!(d.allocator_mappings, 2, "[heap] and the arena");
        assert_eq!(p.heap, 3000 * KIB);
        assert_eq!(p.allocator_retained, 4100 * KIB - 3000 * KIB);
        assert_eq!(
            p.other_anon,
            260 * KIB + 12 * KIB,
            "other mmap, copied libc pages"
        );
        assert_eq!(p.total(), d.smaps_rss);
        assert!(!d.heap_capped);
    }

    #[test]
    fn an_estimate_above_the_pages_is_capped_never_negative() {
        let maps = mappings();
        let known = Known {
            heap: Some(10_000 * KIB),
            allocator: &[0x7e00_0000_0000],
            profiler: &[(0x7e10_0000_0000, 1_000_000 * KIB)],
        };
        let (p, d) = partition(&maps, &[3], &known);
        assert_eq!(p.heap, 4100 * KIB);
        assert_eq!(p.allocator_retained, 0);
        assert_eq!(p.profiler, 300 * KIB, "no more than the mapping holds");
        assert!(d.heap_capped);
        assert_eq!(p.total(), d.smaps_rss);
    }

    #[test]
    fn without_a_heap_estimate_the_allocator_is_other_anonymous() {
        let maps = mappings();
        let (p, d) = partition(&maps, &[3], &Known::default());
        assert_eq!(
            (p.heap, p.allocator_retained, d.allocator_mappings),
            (0, 0, 0)
        );
        assert_eq!(p.other_anon, 100 * KIB + 4000 * KIB + 300 * KIB + 12 * KIB);
        assert_eq!(p.total(), d.smaps_rss);
    }
}
