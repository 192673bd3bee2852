//! The call-site table: one entry per unique sampled call stack and label
//! set, with the sampled and estimated (unbiased) allocation and free totals
//! of that site, and the process-wide estimated in-use bytes that drive the
//! peak profile (`peak`).
//!
//! Data lives outside the Rust heap, in anonymous `mmap`ed chunks that are
//! never freed, so the table works from inside the global allocator and its
//! memory is exact to report ([`Usage`]). Lookups are lock-free over an
//! insert-only open-addressing index; creating a site takes a spin lock
//! (never held across a call out), and counters are atomics.
//!
//! # The bound
//!
//! At most `HEAPPROF_MAX_SITES` stacks (default 32768) get their own entry.
//! Samples from new stacks after that are charged to site 0, the overflow
//! site, which has no stack and appears in profiles as the function
//! `[heapprof: site table full]`; they are counted in
//! `Usage::overflowed_samples`. Totals stay right; only attribution is lost.
//!
//! # fork
//!
//! The creation lock is taken before `fork` and released in both processes
//! (`fork`), so a child never inherits it locked.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::config;
use super::pages::map_zeroed;
use super::shared_line::SHARED;
use super::spin::SpinLock;

/// Deepest stack kept per sample, in frames (profiler frames included; they
/// are trimmed at symbolization).
pub(crate) const MAX_DEPTH: usize = 64;

/// Site index of the overflow site.
pub(crate) const OVERFLOW_SITE: u32 = 0;

const CHUNK_SITES: usize = 1024;
const MAX_CHUNKS: usize = config::MAX_SITES_LIMIT / CHUNK_SITES;
const ARENA_BLOCK_BYTES: usize = 256 * 1024;

/// One direction (allocations or frees) of a site's counters. `objects_fx`
/// is the object estimate times `WEIGHT_ONE`.
#[derive(Default)]
struct Tally {
    samples: AtomicU64,
    sampled_bytes: AtomicU64,
    objects_fx: AtomicU64,
    bytes: AtomicU64,
}

impl Tally {
    /// Adds one sample of `size` bytes with weight `weight_fx`; returns the
    /// estimated bytes it stands for. `samples` is written last (Release),
    /// so a reader that sees it sees the rest.
    fn add(&self, size: usize, weight_fx: u64) -> u64 {
        let bytes = super::sampler::weighted_bytes(weight_fx, size);
        self.objects_fx.fetch_add(weight_fx, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.sampled_bytes.fetch_add(size as u64, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Release);
        bytes
    }

    /// (samples, sampled bytes, objects_fx, bytes).
    fn load(&self) -> (u64, u64, u64, u64) {
        (
            self.samples.load(Ordering::Acquire),
            self.sampled_bytes.load(Ordering::Acquire),
            self.objects_fx.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// Counters of one site: the allocation side shares the site's first
/// cache line with its key (a sample's lookup and count touch one line),
/// the free side has the second.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Counters {
    alloc: Tally,
    /// Puts `free` at the start of the site's second line.
    _line: u64,
    free: Tally,
}

/// A plain copy of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CounterValues {
    pub alloc_samples: u64,
    pub alloc_sampled_bytes: u64,
    pub alloc_objects_fx: u64,
    pub alloc_bytes: u64,
    pub free_samples: u64,
    pub free_sampled_bytes: u64,
    pub free_objects_fx: u64,
    pub free_bytes: u64,
}

impl Counters {
    /// Reads the free side first: every free is counted after its
    /// allocation, so the copy never shows more freed than allocated.
    fn values(&self) -> CounterValues {
        let (free_samples, free_sampled_bytes, free_objects_fx, free_bytes) = self.free.load();
        let (alloc_samples, alloc_sampled_bytes, alloc_objects_fx, alloc_bytes) = self.alloc.load();
        CounterValues {
            alloc_samples,
            alloc_sampled_bytes,
            alloc_objects_fx,
            alloc_bytes,
            free_samples,
            free_sampled_bytes,
            free_objects_fx,
            free_bytes,
        }
    }
}

/// One site: its key (hash, stack, labels) and counters, two cache lines.
#[repr(C, align(64))]
struct Site {
    hash: u64,
    frames: *const usize,
    depth: u32,
    labels: u32,
    counters: Counters,
}

const _: () = assert!(core::mem::size_of::<Site>() == 128);
const _: () =
    assert!(core::mem::offset_of!(Site, counters) + core::mem::offset_of!(Counters, free) == 64);

/// Memory and bound figures of the table.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub sites: usize,
    pub max_sites: usize,
    pub overflowed_samples: u64,
    pub mapped_bytes: usize,
}

static LOCK: SpinLock = SpinLock::new();
static CHUNKS: [AtomicPtr<Site>; MAX_CHUNKS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CHUNKS];
static INDEX: AtomicPtr<AtomicU32> = AtomicPtr::new(ptr::null_mut());
static INDEX_MASK: AtomicUsize = AtomicUsize::new(0);
static MAX_SITES: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static OVERFLOWED: AtomicU64 = AtomicU64::new(0);
// Bump arena for stacks; touched only under LOCK.
static ARENA_NEXT: AtomicPtr<usize> = AtomicPtr::new(ptr::null_mut());
static ARENA_LEFT: AtomicUsize = AtomicUsize::new(0);

/// Finds or creates the site of `frames` under label set `labels`; returns
/// its index. Never fails: when the table is full or out of memory, returns
/// [`OVERFLOW_SITE`].
pub(crate) fn intern(frames: &[usize], labels: u32) -> u32 {
    let frames = &frames[..frames.len().min(MAX_DEPTH)];
    let hash = hash_frames(frames) ^ u64::from(labels).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut index = INDEX.load(Ordering::Acquire);
    if !index.is_null()
        && let Probe::Found(id) = probe(index, hash, frames, labels)
    {
        return id;
    }
    let _guard = LOCK.lock();
    if index.is_null() {
        index = INDEX.load(Ordering::Acquire);
        if index.is_null() {
            match init_locked() {
                Some(i) => index = i,
                None => return OVERFLOW_SITE,
            }
        }
    }
    let slot = match probe(index, hash, frames, labels) {
        Probe::Found(id) => return id,
        Probe::Vacant(slot) => slot,
    };
    let id = COUNT.load(Ordering::Relaxed);
    if id >= MAX_SITES.load(Ordering::Relaxed) {
        OVERFLOWED.fetch_add(1, Ordering::Relaxed);
        return OVERFLOW_SITE;
    }
    let (Some(site), Some(stack)) = (site_slot_locked(id), arena_alloc_locked(frames.len())) else {
        OVERFLOWED.fetch_add(1, Ordering::Relaxed);
        return OVERFLOW_SITE;
    };
    // SAFETY: `stack` has room for frames.len() words (arena_alloc_locked)
    // and `site` points to an unused, zeroed entry; both are written under
    // LOCK before the index slot publishes them with Release.
    unsafe {
        ptr::copy_nonoverlapping(frames.as_ptr(), stack, frames.len());
        (*site).hash = hash;
        (*site).frames = stack;
        (*site).depth = frames.len() as u32; // at most MAX_DEPTH
        (*site).labels = labels;
    }
    COUNT.store(id + 1, Ordering::Release);
    // SAFETY: slot <= INDEX_MASK, inside the index mapping.
    unsafe { (*index.add(slot)).store(id as u32 + 1, Ordering::Release) };
    id as u32
}

enum Probe {
    Found(u32),
    Vacant(usize),
}

fn probe(index: *mut AtomicU32, hash: u64, frames: &[usize], labels: u32) -> Probe {
    let mask = INDEX_MASK.load(Ordering::Relaxed);
    let mut slot = (hash as usize) & mask;
    loop {
        // SAFETY: slot <= mask and the index mapping has mask + 1 entries.
        let entry = unsafe { (*index.add(slot)).load(Ordering::Acquire) };
        if entry == 0 {
            return Probe::Vacant(slot);
        }
        let id = entry - 1;
        if let Some(site) = site_ptr(id as usize) {
            // SAFETY: a published index entry refers to a fully written
            // site whose stack never changes.
            let (h, l, stack) = unsafe { ((*site).hash, (*site).labels, stack_of(site)) };
            if h == hash && l == labels && stack == frames {
                return Probe::Found(id);
            }
        }
        slot = (slot + 1) & mask;
    }
}

/// # Safety
/// `site` must be a published site.
unsafe fn stack_of<'a>(site: *const Site) -> &'a [usize] {
    // SAFETY: by the caller's contract the site is published: its stack
    // pointer and depth were written before publication and never change.
    unsafe {
        if (*site).depth == 0 {
            &[]
        } else {
            core::slice::from_raw_parts((*site).frames, (*site).depth as usize)
        }
    }
}

fn site_ptr(id: usize) -> Option<*mut Site> {
    let chunk = CHUNKS.get(id / CHUNK_SITES)?.load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: every chunk holds CHUNK_SITES entries.
    Some(unsafe { chunk.add(id % CHUNK_SITES) })
}

fn site_slot_locked(id: usize) -> Option<*mut Site> {
    let c = id / CHUNK_SITES;
    if CHUNKS.get(c)?.load(Ordering::Acquire).is_null() {
        let chunk = map_zeroed(CHUNK_SITES * core::mem::size_of::<Site>())?;
        CHUNKS[c].store(chunk.cast(), Ordering::Release);
    }
    site_ptr(id)
}

fn arena_alloc_locked(words: usize) -> Option<*mut usize> {
    if words == 0 {
        return Some(ptr::NonNull::dangling().as_ptr());
    }
    if ARENA_LEFT.load(Ordering::Relaxed) < words {
        let block = map_zeroed(ARENA_BLOCK_BYTES)?;
        ARENA_NEXT.store(block.cast(), Ordering::Relaxed);
        ARENA_LEFT.store(
            ARENA_BLOCK_BYTES / core::mem::size_of::<usize>(),
            Ordering::Relaxed,
        );
    }
    let p = ARENA_NEXT.load(Ordering::Relaxed);
    // SAFETY: at least `words` words are left in the current block.
    ARENA_NEXT.store(unsafe { p.add(words) }, Ordering::Relaxed);
    ARENA_LEFT.fetch_sub(words, Ordering::Relaxed);
    Some(p)
}

fn init_locked() -> Option<*mut AtomicU32> {
    let max = config::max_sites();
    let slots = (max * 2).next_power_of_two();
    let index = map_zeroed(slots * core::mem::size_of::<AtomicU32>())?.cast::<AtomicU32>();
    site_slot_locked(0)?; // the overflow site: no stack, never in the index
    COUNT.store(1, Ordering::Release);
    MAX_SITES.store(max, Ordering::Relaxed);
    INDEX_MASK.store(slots - 1, Ordering::Relaxed);
    INDEX.store(index, Ordering::Release);
    super::fork::register_handlers();
    Some(index)
}

/// A hash of a stack: four lanes over every fourth frame, so that the
/// multiplies of a 30-frame stack overlap instead of forming one chain of
/// 30 (a sample's lookup is on the allocation path), then folded.
fn hash_frames(frames: &[usize]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let step = |lane: u64, f: usize| (lane ^ f as u64).wrapping_mul(K).rotate_left(23);
    let mut lanes = [
        0xcbf2_9ce4_8422_2325u64,
        0x8422_2325_cbf2_9ce4,
        0x2325_cbf2_9ce4_8422,
        0x9ce4_8422_2325_cbf2,
    ];
    let quads = frames.chunks_exact(4);
    let rest = quads.remainder();
    for quad in quads {
        for (lane, &f) in lanes.iter_mut().zip(quad) {
            *lane = step(*lane, f);
        }
    }
    for (lane, &f) in lanes.iter_mut().zip(rest) {
        *lane = step(*lane, f);
    }
    let h = lanes
        .iter()
        .fold(frames.len() as u64, |h, &lane| step(h, lane as usize));
    h ^ (h >> 29)
}

fn counters(site: u32) -> Option<&'static Counters> {
    // SAFETY: sites are never freed or moved; counters are atomics.
    site_ptr(site as usize).map(|s| unsafe { &(*s).counters })
}

/// Takes the creation lock before `fork` (see `fork`).
pub(crate) fn fork_prepare() {
    LOCK.acquire();
}

/// Releases the creation lock after `fork`, in parent and child.
pub(crate) fn fork_release() {
    LOCK.release();
}

// Process-wide totals every sample updates, on the line every sample
// writes (`shared_line`): `inuse_bytes`, the estimated in-use bytes of the
// whole process, and `alloc_variance`, the sum of
// `sampler::sample_variance` over every sampled allocation since start in
// [`VARIANCE_UNIT`]s: the variance of the estimate of bytes allocated,
// whose change over a window is the variance of the window's estimate.

/// Unit of the variance total, bytes². A sample at the default rate adds
/// about 2^28 units, so the counter lasts 2^36 samples.
const VARIANCE_UNIT: f64 = 1024.0;

/// Adds one sampled allocation of `size` bytes with weight `weight_fx`.
pub(crate) fn record_alloc(site: u32, size: usize, weight_fx: u64) {
    let Some(c) = counters(site) else { return };
    let variance = super::sampler::sample_variance(size as u64, weight_fx);
    // Rounded to nearest (the variance is not negative).
    SHARED
        .alloc_variance
        .fetch_add((variance / VARIANCE_UNIT + 0.5) as u64, Ordering::Relaxed);
    let bytes = c.alloc.add(size, weight_fx) as i64;
    let inuse = SHARED.inuse_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
    super::peak::on_inuse(inuse);
}

/// Adds the free of a sampled allocation recorded by [`record_alloc`].
pub(crate) fn record_free(site: u32, size: usize, weight_fx: u64) {
    let Some(c) = counters(site) else { return };
    let bytes = c.free.add(size, weight_fx) as i64;
    SHARED.inuse_bytes.fetch_sub(bytes, Ordering::Relaxed);
}

/// Estimated in-use bytes of the process (sum over sites).
pub(crate) fn inuse_bytes() -> i64 {
    SHARED.inuse_bytes.load(Ordering::Relaxed)
}

/// The variance of the estimate of bytes allocated since start, bytes².
pub(crate) fn alloc_variance() -> f64 {
    SHARED.alloc_variance.load(Ordering::Relaxed) as f64 * VARIANCE_UNIT
}

/// Number of site ids in use (including the overflow site).
pub(crate) fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// Copies the counters of sites `0..out.len()` into `out`; returns how many
/// were copied. Allocation-free, for the peak capture.
pub(crate) fn copy_counters(out: &mut [CounterValues]) -> usize {
    let n = count().min(out.len());
    for (id, slot) in out[..n].iter_mut().enumerate() {
        // SAFETY: ids below COUNT are published sites.
        *slot = site_ptr(id).map_or(CounterValues::default(), |s| unsafe {
            (*s).counters.values()
        });
    }
    n
}

/// The stack and label set of site `id`, if it exists.
pub(crate) fn site_key(id: u32) -> Option<(&'static [usize], u32)> {
    if id as usize >= count() {
        return None;
    }
    // SAFETY: ids below COUNT are published sites, never freed or changed.
    site_ptr(id as usize).map(|s| unsafe { (stack_of(s), (*s).labels) })
}

/// Calls `f(id, stack, labels, counters)` for every site that has samples.
pub(crate) fn for_each(mut f: impl FnMut(u32, &'static [usize], u32, CounterValues)) {
    for id in 0..count() {
        let Some(site) = site_ptr(id) else { continue };
        // SAFETY: ids below COUNT are published sites.
        let (stack, labels, values) =
            unsafe { (stack_of(site), (*site).labels, (*site).counters.values()) };
        if values.alloc_samples > 0 {
            f(id as u32, stack, labels, values);
        }
    }
}

/// Current size, bound and memory of the table.
pub(crate) fn usage() -> Usage {
    Usage {
        sites: COUNT.load(Ordering::Relaxed).saturating_sub(1),
        max_sites: MAX_SITES.load(Ordering::Relaxed),
        overflowed_samples: OVERFLOWED.load(Ordering::Relaxed),
        mapped_bytes: super::pages::mapped_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_counts_add_up() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3001];
        let ia = intern(&a, 0);
        let ib = intern(&b, 0);
        assert_ne!(ia, OVERFLOW_SITE);
        assert_ne!(ia, ib);
        assert_eq!(intern(&a, 0), ia);
        assert_ne!(intern(&a, 1), ia, "labels are part of the key");
        record_alloc(ia, 100, 256);
        record_alloc(ia, 100, 512);
        record_free(ia, 100, 256);
        let mut seen = None;
        for_each(|id, stack, _labels, v| {
            if id == ia {
                seen = Some((stack.to_vec(), v));
            }
        });
        let (stack, v) = seen.expect("site listed");
        assert_eq!(stack, a);
        assert_eq!(v.alloc_samples, 2);
        assert_eq!(v.alloc_objects_fx, 768);
        assert_eq!(v.alloc_bytes, 300);
        assert_eq!(v.free_bytes, 100);
        assert!(usage().mapped_bytes > 0);
    }

    #[test]
    fn concurrent_interning_creates_one_site_per_stack() {
        let ids: Vec<Vec<u32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..200usize)
                            .map(|i| intern(&[0xdead_0000 + i, 7, 9], 0))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for other in &ids[1..] {
            assert_eq!(other, &ids[0]);
        }
    }
}
