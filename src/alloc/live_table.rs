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
//! it. A key packs the pointer (its page number and whether it is at the
//! tag or the page's start, the only two places a sampled pointer can be)
//! with the index of its record's slot. Insertion claims an empty key with
//! a CAS, takes a slot, writes the record, then publishes the key; only
//! the owner of a pointer removes it. A full bucket (or, at rate 1, no free
//! slot) means the allocation is not sampled after all; those are counted
//! in [`dropped`].
//!
//! The arrays are zero-initialised statics, so untouched pages cost no
//! memory; what decides the cost is how many pages a run touches. The
//! buckets are spread by the hash (1 MiB at most). Slots are handed out
//! densely, most recently freed first, so the records of a service with a
//! few thousand live samples fit in a few pages, already resident and
//! mostly cached, instead of a fresh page fault (about 3 µs on the
//! benchmarks' VM) for a sample landing on a record page nothing touched
//! before; the bucket array is made resident in one go by the first
//! insert ([`touch_buckets`]).
//!
//! Every field a reader and a writer can touch at once is an atomic, and
//! the module forbids `unsafe` code, so that stays true: a racing
//! [`for_each`] reads stale or mixed records, never undefined behaviour.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use super::block::{PAGE, TAG};
use super::shared_line::SHARED;

const BUCKET_BITS: u32 = 14;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// Keys per bucket: one 64-byte cache line.
pub(crate) const WAYS: usize = 8;
/// Most live sampled allocations the table can hold.
pub(crate) const CAPACITY: usize = BUCKETS * WAYS;

const EMPTY: usize = 0;
/// A claimed key whose record is being written; never a published key
/// (those have a page number of at least 1 above [`PAGE_SHIFT`]).
const CLAIMED: usize = 1;

/// Bits of a key that hold the record's slot index.
const SLOT_BITS: u32 = CAPACITY.trailing_zeros();
const SLOT_MASK: usize = CAPACITY - 1;
/// The key bit that says the pointer is at [`TAG`] in its page (else at 0).
const AT_TAG: usize = 1 << SLOT_BITS;
/// Where the page number starts in a key. User addresses have at most 57
/// bits (five-level paging), so a page number fits in the 64 - 18 bits left.
const PAGE_SHIFT: u32 = SLOT_BITS + 1;

/// The key bits that name `addr`, or `None` if `addr` is neither at a
/// page's start nor at [`TAG`] (never a sampled pointer).
#[inline(always)]
fn address_bits(addr: usize) -> Option<usize> {
    let at_tag = match addr % PAGE {
        0 => 0,
        TAG => AT_TAG,
        _ => return None,
    };
    Some((addr / PAGE) << PAGE_SHIFT | at_tag)
}

/// The pointer a published key names.
fn address_of(key: usize) -> usize {
    (key >> PAGE_SHIFT) * PAGE + if key & AT_TAG != 0 { TAG } else { 0 }
}

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

const _: () = assert!(CAPACITY.is_power_of_two() && PAGE_SHIFT + 45 <= usize::BITS);
const _: () = assert!(core::mem::size_of::<Slot>() == 32);

#[repr(C, align(64))]
struct Bucket {
    keys: [AtomicUsize; WAYS],
}

/// A [`Record`] in atomics, 32 bytes (two to a cache line): written by
/// the thread that took the slot (after claiming a key, CAS `EMPTY ->
/// CLAIMED`) before it publishes the key with Release, read
/// after an Acquire load of the published key. Readers that do not own the
/// pointer ([`for_each`]) may race with a reuse of the slot; atomics make
/// that a stale or mixed read, never undefined behaviour, and [`for_each`]
/// re-checks the key to skip records that changed under it.
struct Slot {
    /// The site; while the slot is free, the free-stack link (`give_back`).
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

// The count of live entries (which every tagged free reads) and the free
// slots, a lock-free stack (most recently freed on top, linked through the
// free slots' `site` field) above the slots never used, are on the line
// every sample writes (`shared_line`). The stack's top is
// `generation << 32 | (slot + 1)`, 0 when it is empty; the generation
// changes with every push and pop, so a pop whose top was popped and
// pushed back meanwhile fails its CAS.

/// Makes every page of the bucket array resident, once per process, on
/// the first insert. Samples hash to buckets at random, so a run's first
/// thousand samples would otherwise each find a page never touched and
/// take a page fault (about 3 µs on a VM) inside the allocation; this
/// takes them all at once, 256 faults for the 1 MiB, under a millisecond
/// once in the process's life. A compare-exchange of `EMPTY` for `EMPTY` writes (x86
/// always writes a locked `cmpxchg`'s line; an idempotent `fetch_or(0)`
/// is turned into a load by the compiler, which maps the shared zero
/// page and faults again later) without changing anything, so it cannot
/// race with a concurrent insert.
#[cold]
fn touch_buckets() {
    if SHARED.buckets_touched.swap(true, Ordering::Relaxed) {
        return;
    }
    for bucket in BUCKETS_TABLE
        .iter()
        .step_by(PAGE / core::mem::size_of::<Bucket>())
    {
        let _ = bucket.keys[WAYS - 1].compare_exchange(
            EMPTY,
            EMPTY,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

const LOW: u64 = u32::MAX as u64;

/// Takes a free slot: the most recently freed, else a fresh one. `None`
/// when all [`CAPACITY`] are taken.
fn take_slot() -> Option<usize> {
    let mut top = SHARED.free_top.load(Ordering::Acquire);
    while let Some(slot) = ((top & LOW) as usize).checked_sub(1) {
        // A stale link (the slot was taken meanwhile) fails the CAS below.
        let below = RECORDS[slot].site.load(Ordering::Relaxed);
        let popped = (top >> 32).wrapping_add(1) << 32 | u64::from(below);
        match SHARED.free_top.compare_exchange_weak(
            top,
            popped,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(slot),
            Err(now) => top = now,
        }
    }
    SHARED
        .fresh
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            ((n as usize) < CAPACITY).then_some(n + 1)
        })
        .ok()
        .map(|n| n as usize)
}

/// Puts `slot`, no longer named by any key, back on the free stack; its
/// `site` field links to the slot below (`slot + 1`, 0 at the bottom).
fn give_back(slot: usize) {
    let mut top = SHARED.free_top.load(Ordering::Relaxed);
    loop {
        RECORDS[slot]
            .site
            .store((top & LOW) as u32, Ordering::Relaxed);
        let pushed = (top >> 32).wrapping_add(1) << 32 | (slot as u64 + 1);
        match SHARED.free_top.compare_exchange_weak(
            top,
            pushed,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(now) => top = now,
        }
    }
}

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

/// Where the bucket `ptr` would be in is, for a prefetch.
#[inline(always)]
pub(crate) fn bucket_address(ptr: *mut u8) -> *const u8 {
    core::ptr::from_ref(&BUCKETS_TABLE[bucket_of(ptr as usize)]).cast()
}

/// Remembers a new sampled allocation. Returns false (and counts a drop)
/// when its bucket is full; the caller must then treat it as unsampled.
pub(crate) fn insert(ptr: *mut u8, record: Record) -> bool {
    let addr = ptr as usize;
    let Some(bits) = address_bits(addr) else {
        debug_assert!(false, "{addr:#x} is not where a sampled pointer is");
        return false;
    };
    if !SHARED.buckets_touched.load(Ordering::Relaxed) {
        touch_buckets();
    }
    for key in &BUCKETS_TABLE[bucket_of(addr)].keys {
        if key
            .compare_exchange(EMPTY, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // The CAS gave this thread the key until it publishes it.
            let Some(slot) = take_slot() else {
                key.store(EMPTY, Ordering::Release);
                break;
            };
            RECORDS[slot].write(record);
            key.store(bits | slot, Ordering::Release);
            SHARED.live.fetch_add(1, Ordering::Relaxed);
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
    let bits = address_bits(addr)?;
    for key in &BUCKETS_TABLE[bucket_of(addr)].keys {
        let k = key.load(Ordering::Acquire);
        if k & !SLOT_MASK == bits {
            // The Acquire load saw the key published after the record was
            // written, and only this owner can clear it.
            let slot = k & SLOT_MASK;
            let record = RECORDS[slot].read();
            key.store(EMPTY, Ordering::Release);
            give_back(slot);
            SHARED.live.fetch_sub(1, Ordering::Relaxed);
            let slot = SHARED.freed_next.fetch_add(1, Ordering::Relaxed) % FREED_KEPT;
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
    SHARED.live.load(Ordering::Relaxed) != 0 && contains(ptr)
}

/// Whether `ptr` is a live sampled allocation. Only meaningful when called
/// by the owner of `ptr`, for whom the answer cannot change concurrently.
#[inline(always)]
pub(crate) fn contains(ptr: *mut u8) -> bool {
    let addr = ptr as usize;
    let Some(bits) = address_bits(addr) else {
        return false;
    };
    let keys = &BUCKETS_TABLE[bucket_of(addr)].keys;
    // Branch-free over the cache line: eight loads, one test.
    let mut hit = false;
    for key in keys {
        hit |= key.load(Ordering::Acquire) & !SLOT_MASK == bits;
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
    for key in BUCKETS_TABLE.iter().flat_map(|bucket| &bucket.keys) {
        let k = key.load(Ordering::Acquire);
        if k <= CLAIMED {
            continue;
        }
        let record = RECORDS[k & SLOT_MASK].read();
        // Order the reads of the record before the second key load.
        fence(Ordering::Acquire);
        if key.load(Ordering::Relaxed) == k {
            f(address_of(k), &record);
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
    SHARED.live.load(Ordering::Relaxed)
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

    /// The table is process-wide: its tests take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn page(n: usize) -> *mut u8 {
        // Fake sampled addresses far from anything real tests use.
        ((0x7e00_0000_0000usize) + n * PAGE + 4080) as *mut u8
    }

    #[test]
    fn insert_remove_round_trip() {
        let _serial = serial();
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
    fn keys_name_tagged_and_page_aligned_pointers() {
        let _serial = serial();
        let tagged = page(7) as usize;
        let aligned = tagged - TAG;
        for addr in [tagged, aligned] {
            let bits = address_bits(addr).expect("a sampled place");
            assert_eq!(address_of(bits | 5), addr);
            assert!(bits > CLAIMED);
        }
        assert_eq!(address_bits(aligned + 16), None);
        assert!(!contains((aligned + 16) as *mut u8));
    }

    #[test]
    fn slots_are_reused_most_recently_freed_first() {
        let _serial = serial();
        let a = take_slot().expect("a slot");
        let b = take_slot().expect("a slot");
        assert_ne!(a, b);
        give_back(a);
        give_back(b);
        assert_eq!(take_slot(), Some(b));
        assert_eq!(take_slot(), Some(a));
        give_back(a);
        give_back(b);
    }

    #[test]
    fn a_record_is_found_at_the_address_it_was_inserted_with() {
        let _serial = serial();
        for p in [page(3), (page(4) as usize - TAG) as *mut u8] {
            let rec = Record {
                site: 11,
                size: 99,
                ..Record::default()
            };
            assert!(insert(p, rec));
            let mut seen = None;
            for_each_at(|addr, r| {
                if addr == p as usize {
                    seen = Some((r.site, r.size));
                }
            });
            assert_eq!(seen, Some((11, 99)));
            assert!(contains(p));
            assert!(remove(p).is_some());
            assert!(!contains(p));
        }
    }

    /// Whether every page of `[start, start + len)` is mapped to memory of
    /// this process's own (`/proc/self/pagemap` bit 56, "exclusively
    /// mapped"): written, not merely read (a read maps the shared zero
    /// page).
    fn all_pages_written(start: usize, len: usize) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        let mut entry = [0u8; 8];
        (start / PAGE..(start + len).div_ceil(PAGE)).all(|page| {
            pagemap
                .seek(SeekFrom::Start(page as u64 * 8))
                .expect("seek");
            pagemap.read_exact(&mut entry).expect("read");
            u64::from_le_bytes(entry) & 1 << 56 != 0
        })
    }

    #[test]
    fn the_first_insert_makes_every_bucket_page_resident() {
        let _serial = serial();
        assert!(insert(page(5), Record::default()));
        assert!(remove(page(5)).is_some());
        let [(start, len), _] = ranges();
        assert!(
            all_pages_written(start, len),
            "a bucket page is unwritten: a sample landing there would fault"
        );
    }

    #[test]
    fn threads_racing_for_slots_never_share_one() {
        let _serial = serial();
        // Each thread inserts and removes its own addresses with records
        // naming it; a slot handed to two threads at once would show as a
        // record read back with another thread's values.
        let threads: usize = 4;
        let rounds: usize = 20_000;
        std::thread::scope(|scope| {
            for t in 0..threads {
                scope.spawn(move || {
                    for i in 0..rounds {
                        let p = page(1_000_000 + t * 1_000_000 + i % 64);
                        let rec = Record {
                            site: t as u32,
                            size: i as u64,
                            ..Record::default()
                        };
                        if !insert(p, rec) {
                            continue; // a full bucket: a drop, not an error
                        }
                        std::hint::spin_loop();
                        let got = remove(p).expect("inserted by this thread");
                        assert_eq!((got.site, got.size), (t as u32, i as u64));
                    }
                });
            }
        });
        for t in 0..threads {
            for i in 0..64 {
                assert!(!contains(page(1_000_000 + t * 1_000_000 + i)));
            }
        }
    }

    #[test]
    fn a_full_bucket_drops_and_counts() {
        let _serial = serial();
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
