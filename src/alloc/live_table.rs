//! The set of live sampled allocations, and how `dealloc` recognises them.
//!
//! # The free-path design
//!
//! Every `dealloc` must learn whether its pointer was sampled, and almost
//! none were. Peers pay for that differently: pprof-alloc looks every freed
//! pointer up in a global locked map (a lock and a probe per free); re_memory
//! hashes every address; tcmalloc and jemalloc already hold per-page metadata
//! and tag the sampled object's page.
//!
//! heapprof tags the pointer: every sampled pointer sits at a fixed offset
//! within its 4 KiB page, chosen to be rare among ordinary pointers
//! (`block`, which also says how the inner allocator's block is padded to
//! get there). `dealloc` tests that offset first, one AND and a compare;
//! only tagged pointers look further, and only while something sampled is
//! live (one load of a counter), at one cache line of this table, with no
//! lock.
//!
//! The cost is memory: a sampled allocation occupies about a page more
//! than its size. At the default rate that is at most 4 KiB per 512 KiB
//! allocated (under 1%); at rate 1 it multiplies small-object memory,
//! which is why rate 1 is for tests.
//!
//! # The table
//!
//! A fixed array of buckets, each one cache line of [`WAYS`] keys; a pointer
//! lives in the bucket its page number hashes to. Entries never move (no
//! probing chains, no rehash), so a lock-free lookup can never miss a live
//! entry: that is what makes it safe to decide the layout of a `dealloc` from
//! it. Insertion claims an empty key with a CAS, writes the record, then
//! publishes the pointer; only the owner of a pointer removes it. A full
//! bucket means the allocation is not sampled after all; those are counted
//! in [`dropped`]. The arrays are zero-initialised statics (untouched pages
//! cost no memory).
//!
//! Every field a reader and a writer can touch at once is an atomic, and
//! the module forbids `unsafe` code, so that stays true: a racing
//! [`for_each`] reads stale or mixed records, never undefined behaviour.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use super::block::PAGE;

const BUCKET_BITS: u32 = 14;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// Keys per bucket: one 64-byte cache line.
pub(crate) const WAYS: usize = 8;
/// Most live sampled allocations the table can hold.
pub(crate) const CAPACITY: usize = BUCKETS * WAYS;

const EMPTY: usize = 0;
/// A claimed slot whose record is being written; never a sampled address.
const CLAIMED: usize = 1;

/// What the profiler remembers about one live sampled allocation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Record {
    /// Site-table index of the allocating call stack.
    pub site: u32,
    /// `sampler::weight_fx` of the allocation.
    pub weight_fx: u64,
    /// `clock::monotonic_ns()` when it was allocated.
    pub born_ns: u64,
    /// Requested size in bytes.
    pub size: u64,
    /// Bytes from the inner allocator's block to the sampled pointer
    /// (`block`; 0 unless padded).
    pub offset: u16,
    /// Bytes the inner block has beyond `size` (`block::PAD`, or 0).
    pub pad: u16,
}

#[repr(C, align(64))]
struct Bucket {
    keys: [AtomicUsize; WAYS],
}

/// A [`Record`] in atomics: written by the thread that claimed its key
/// (CAS `EMPTY -> CLAIMED`) before it publishes the key with Release, read
/// after an Acquire load of the published key. Readers that do not own the
/// pointer ([`for_each`]) may race with a reuse of the slot; atomics make
/// that a stale or mixed read, never undefined behaviour, and [`for_each`]
/// re-checks the key to skip records that changed under it.
struct Slot {
    site: AtomicU32,
    /// `offset | pad << 16`.
    placement: AtomicU32,
    weight_fx: AtomicU64,
    born_ns: AtomicU64,
    size: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            site: AtomicU32::new(0),
            placement: AtomicU32::new(0),
            weight_fx: AtomicU64::new(0),
            born_ns: AtomicU64::new(0),
            size: AtomicU64::new(0),
        }
    }

    fn write(&self, r: Record) {
        self.site.store(r.site, Ordering::Relaxed);
        self.placement.store(
            u32::from(r.offset) | u32::from(r.pad) << 16,
            Ordering::Relaxed,
        );
        self.weight_fx.store(r.weight_fx, Ordering::Relaxed);
        self.born_ns.store(r.born_ns, Ordering::Relaxed);
        self.size.store(r.size, Ordering::Relaxed);
    }

    fn read(&self) -> Record {
        let placement = self.placement.load(Ordering::Relaxed);
        Record {
            offset: placement as u16,
            pad: (placement >> 16) as u16,
            site: self.site.load(Ordering::Relaxed),
            weight_fx: self.weight_fx.load(Ordering::Relaxed),
            born_ns: self.born_ns.load(Ordering::Relaxed),
            size: self.size.load(Ordering::Relaxed),
        }
    }
}

static BUCKETS_TABLE: [Bucket; BUCKETS] = [const {
    Bucket {
        keys: [const { AtomicUsize::new(EMPTY) }; WAYS],
    }
}; BUCKETS];

static RECORDS: [Slot; CAPACITY] = [const { Slot::new() }; CAPACITY];

/// Live entries and the next slot of [`FREED`], on a cache line of their
/// own: every tagged free reads `live`, sampled allocations and frees
/// write them.
#[repr(align(64))]
struct LiveCount {
    live: AtomicUsize,
    freed_next: AtomicUsize,
}

static LIVE: LiveCount = LiveCount {
    live: AtomicUsize::new(0),
    freed_next: AtomicUsize::new(0),
};
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Addresses of the last [`FREED_KEPT`] sampled blocks freed, a ring: they
/// say where the inner allocator keeps its memory beyond the live samples
/// (`profile::resident`). One relaxed write per sampled free.
const FREED_KEPT: usize = 4096;
static FREED: [AtomicUsize; FREED_KEPT] = [const { AtomicUsize::new(0) }; FREED_KEPT];

#[inline(always)]
fn bucket_of(ptr: usize) -> usize {
    let page = (ptr / PAGE) as u64;
    (page.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BUCKET_BITS)) as usize
}

fn record_slot(bucket: usize, way: usize) -> &'static Slot {
    &RECORDS[bucket * WAYS + way]
}

/// Remembers a new sampled allocation. Returns false (and counts a drop)
/// when its bucket is full; the caller must then treat it as unsampled.
pub(crate) fn insert(ptr: *mut u8, record: Record) -> bool {
    let addr = ptr as usize;
    debug_assert!(addr > CLAIMED);
    let b = bucket_of(addr);
    for (way, key) in BUCKETS_TABLE[b].keys.iter().enumerate() {
        if key
            .compare_exchange(EMPTY, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // The CAS gave this thread the slot until it publishes the key.
            record_slot(b, way).write(record);
            key.store(addr, Ordering::Release);
            LIVE.live.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    DROPPED.fetch_add(1, Ordering::Relaxed);
    false
}

/// Forgets `ptr` if it is a live sampled allocation and returns its record.
///
/// Must be called only by the owner of `ptr` (the thread freeing or
/// reallocating it), which is what makes the lock-free removal safe.
pub(crate) fn remove(ptr: *mut u8) -> Option<Record> {
    let addr = ptr as usize;
    let b = bucket_of(addr);
    for (way, key) in BUCKETS_TABLE[b].keys.iter().enumerate() {
        if key.load(Ordering::Acquire) == addr {
            // The Acquire load saw the key published after the record was
            // written, and only this owner can clear it.
            let record = record_slot(b, way).read();
            key.store(EMPTY, Ordering::Release);
            LIVE.live.fetch_sub(1, Ordering::Relaxed);
            let slot = LIVE.freed_next.fetch_add(1, Ordering::Relaxed) % FREED_KEPT;
            FREED[slot].store(addr, Ordering::Relaxed);
            return Some(record);
        }
    }
    None
}

/// Whether the tagged pointer `ptr` is a live sampled allocation: the
/// free path's test after the tag (`block::is_tagged`). While nothing
/// sampled is live (sampling off, or every sample freed) one load;
/// otherwise a probe of its bucket. Only meaningful when called by the
/// owner of `ptr`.
///
/// The count cannot read 0 while the owner's own entry is live: its
/// increment happened before the owner received the pointer, and every
/// decrement in the count's history follows the increment of the same
/// entry, so each value since then includes this entry.
#[inline(always)]
pub(crate) fn is_live(ptr: *mut u8) -> bool {
    LIVE.live.load(Ordering::Relaxed) != 0 && contains(ptr)
}

/// Whether `ptr` is a live sampled allocation. Only meaningful when called
/// by the owner of `ptr`, for whom the answer cannot change concurrently.
#[inline(always)]
pub(crate) fn contains(ptr: *mut u8) -> bool {
    let addr = ptr as usize;
    let keys = &BUCKETS_TABLE[bucket_of(addr)].keys;
    // Branch-free over the cache line: eight loads, one test.
    let mut hit = false;
    for key in keys {
        hit |= key.load(Ordering::Acquire) == addr;
    }
    hit
}

/// Calls `f` with every live sampled allocation's record. Entries inserted
/// or removed meanwhile may or may not be seen; a record whose key changed
/// while it was read is skipped.
pub(crate) fn for_each(mut f: impl FnMut(&Record)) {
    for_each_at(|_, record| f(record));
}

/// [`for_each`], with each allocation's address.
pub(crate) fn for_each_at(mut f: impl FnMut(usize, &Record)) {
    for (b, bucket) in BUCKETS_TABLE.iter().enumerate() {
        for (way, key) in bucket.keys.iter().enumerate() {
            let k = key.load(Ordering::Acquire);
            if k <= CLAIMED {
                continue;
            }
            let record = record_slot(b, way).read();
            // Order the reads of the record before the second key load.
            fence(Ordering::Acquire);
            if key.load(Ordering::Relaxed) == k {
                f(k, &record);
            }
        }
    }
}

/// Calls `f` with the address of each of the last sampled blocks freed
/// (up to [`FREED_KEPT`]; the allocator may have reused or, rarely,
/// unmapped them since).
pub(crate) fn for_each_freed(mut f: impl FnMut(usize)) {
    for a in &FREED {
        let addr = a.load(Ordering::Relaxed);
        if addr != 0 {
            f(addr);
        }
    }
}

/// Live sampled allocations currently tracked.
pub(crate) fn live() -> usize {
    LIVE.live.load(Ordering::Relaxed)
}

/// Samples not taken because their bucket was full.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Bytes the table reserves (virtual; pages are touched as samples land).
pub(crate) const fn reserved_bytes() -> usize {
    core::mem::size_of::<[Bucket; BUCKETS]>() + core::mem::size_of::<[Slot; CAPACITY]>()
}

/// The table's two arrays: (address, bytes) of each.
pub(crate) fn ranges() -> [(usize, usize); 2] {
    [
        (
            BUCKETS_TABLE.as_ptr() as usize,
            core::mem::size_of::<[Bucket; BUCKETS]>(),
        ),
        (
            RECORDS.as_ptr() as usize,
            core::mem::size_of::<[Slot; CAPACITY]>(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n: usize) -> *mut u8 {
        // Fake sampled addresses far from anything real tests use.
        ((0x7e00_0000_0000usize) + n * PAGE + 4080) as *mut u8
    }

    #[test]
    fn insert_remove_round_trip() {
        let p = page(1);
        let rec = Record {
            site: 7,
            weight_fx: 300,
            born_ns: 42,
            size: 10,
            offset: 16,
            pad: 4096,
        };
        assert!(insert(p, rec));
        assert!(remove(page(2)).is_none());
        let got = remove(p).expect("present");
        assert_eq!((got.site, got.weight_fx, got.born_ns), (7, 300, 42));
        assert_eq!((got.offset, got.pad), (16, 4096));
        assert!(remove(p).is_none());
        let mut freed = Vec::new();
        for_each_freed(|a| freed.push(a));
        assert!(freed.contains(&(p as usize)), "remembered as freed");
    }

    #[test]
    fn a_full_bucket_drops_and_counts() {
        // Find WAYS + 1 pages that hash to one bucket.
        let target = bucket_of(page(100_000) as usize);
        let same: Vec<_> = (100_000..10_000_000)
            .map(page)
            .filter(|p| bucket_of(*p as usize) == target)
            .take(WAYS + 1)
            .collect();
        let before = dropped();
        for p in &same[..WAYS] {
            assert!(insert(*p, Record::default()));
        }
        assert!(!insert(same[WAYS], Record::default()));
        assert_eq!(dropped(), before + 1);
        for p in &same[..WAYS] {
            assert!(remove(*p).is_some());
        }
        assert!(insert(same[WAYS], Record::default()));
        assert!(remove(same[WAYS]).is_some());
    }
}
