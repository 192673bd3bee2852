//! Admission: whether the process has room for a profile build, before
//! it starts.
//!
//! Profiles are taken when memory is already high, in a container near its
//! limit; a build that pushed the working set over the limit would get the
//! process OOM-killed, taking the evidence with it. So every build (the
//! endpoint's, the OOM guard's, the gops agent's) first asks [`admit`]
//! with its kind. The answer compares the build's cost, an upper bound of
//! the anonymous memory it adds, with the headroom of the process's memory
//! cgroup (limit minus working set, as the kubelet and the OOM killer
//! count, v1 or v2), minus what builds already admitted have reserved and
//! a margin for everything else the process does meanwhile:
//!
//! - it fits symbolized: a full profile;
//! - only without symbolization: an unsymbolized profile (addresses and
//!   build IDs, named later outside the process);
//! - not at all: [`NoRoom`], which the endpoint answers with 503 and
//!   `Retry-After`.
//!
//! Without a memory limit every build is admitted symbolized. Costs come
//! from `cargo bench --bench profile_memory` (BENCHMARKS.md, "Memory of a
//! profile"), rounded up. Symbolized builds also need the resolver's
//! working set, which grows with the executable's debug info; builds take
//! turns in the resolver, so that share is reserved once however many run.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::cgroup;
use crate::sys::fs::Fs;

/// What kind of profile is about to be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildKind {
    /// A heap profile of the current sites (also `allocs`, peak, deltas).
    Heap,
    /// A CPU profile over a window.
    Cpu,
    /// A profile of every thread's stack.
    Threads,
}

/// How an admitted build may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildMode {
    /// Names resolved in process.
    Symbolized,
    /// Addresses and mappings only.
    Unsymbolized,
}

/// A build's place in memory: the mode it may run in, and its reservation,
/// released on drop.
#[derive(Debug)]
#[must_use = "the reservation is released when the admission is dropped"]
pub struct Admission {
    mode: BuildMode,
    reserved: u64,
    /// The resolver's share this build holds a count on (symbolized
    /// builds), bytes.
    resolver: u64,
}

impl Admission {
    /// The mode the build may run in.
    pub fn mode(&self) -> BuildMode {
        self.mode
    }

    /// Whether the build may symbolize in process.
    pub fn symbolize(&self) -> bool {
        self.mode == BuildMode::Symbolized
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        RESERVED.fetch_sub(self.reserved, Ordering::Relaxed);
        if self.mode == BuildMode::Symbolized {
            leave_resolver(self.resolver);
        }
    }
}

/// A build refused for lack of memory.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "not enough memory for a {kind} profile: it needs about {} KiB, and the memory cgroup \
     has {} KiB left before its limit (after a {} KiB margin and {} KiB reserved by builds \
     in progress); retry when memory is lower",
    needed >> 10, headroom >> 10, margin >> 10, reserved >> 10
)]
pub struct NoRoom {
    /// The profile kind, e.g. `heap`.
    pub kind: &'static str,
    /// Bytes the cheapest form of the build needs.
    pub needed: u64,
    /// Bytes between the working set and the limit.
    pub headroom: u64,
    /// Bytes kept free for everything else.
    pub margin: u64,
    /// Bytes reserved by admitted builds still running.
    pub reserved: u64,
}

impl NoRoom {
    /// When retrying makes sense.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// Bytes reserved by admitted builds that are still running.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// Symbolized builds running. The resolver's working set
/// ([`resolver_cost`]) is reserved once while there is any: builds take
/// turns in the resolver (`symbolize::resolve_all` runs one batch at a
/// time), so two of them never hold it at once.
static SYMBOLIZING: AtomicU64 = AtomicU64::new(0);

/// Counts a symbolized build in, reserving `resolver` bytes if it is the
/// only one.
fn enter_resolver(resolver: u64) {
    if SYMBOLIZING.fetch_add(1, Ordering::AcqRel) == 0 {
        RESERVED.fetch_add(resolver, Ordering::Relaxed);
    }
}

/// Counts a symbolized build out, releasing the resolver's share with the
/// last one.
fn leave_resolver(resolver: u64) {
    if SYMBOLIZING.fetch_sub(1, Ordering::AcqRel) == 1 {
        RESERVED.fetch_sub(resolver, Ordering::Relaxed);
    }
}

/// Fixed cost of a symbolized build: the resolver's working set for one
/// compilation unit, the gzip state, the output buffer's growth.
const SYMBOLIZED_BASE: u64 = 3 << 20;
/// The resolver's working set grows with the debug info it reads: beyond
/// [`SYMBOLIZED_BASE`] it is reckoned as the executable's size divided by
/// this. Measured first profiles: 0.9-1.0 MiB for a 37 MB release build,
/// 5.8 to 10.6 MiB for a 203 MB unoptimised full-debug build, against
/// 4.2 and 6.8 MiB reckoned (base, 300 sites and size / 64), with the margin
/// for the rest.
const EXECUTABLE_BYTES_PER_RESOLVER_BYTE: u64 = 64;
/// Fixed cost without symbolization.
const UNSYMBOLIZED_BASE: u64 = 1 << 20;
/// Per call site, symbolized: the snapshot, names of its addresses, the
/// encoder's maps and output.
const SYMBOLIZED_PER_SITE: u64 = 2048;
/// Per call site, unsymbolized.
const UNSYMBOLIZED_PER_SITE: u64 = 512;
/// Kept free beyond the build, for the rest of the process.
const MARGIN_MIN: u64 = 2 << 20;

/// Costs of a build of `kind` now, `(symbolized, unsymbolized)`, bytes.
pub(crate) fn costs(kind: BuildKind) -> (u64, u64) {
    let units = match kind {
        BuildKind::Heap => crate::stats().sites as u64 + 1,
        // Distinct stacks of a CPU profile and threads of a thread
        // profile, bounded by their own tables.
        BuildKind::Cpu => 4096,
        BuildKind::Threads => crate::sys::procfs::self_status().threads.max(1),
    };
    (
        SYMBOLIZED_BASE + units * SYMBOLIZED_PER_SITE,
        UNSYMBOLIZED_BASE + units * UNSYMBOLIZED_PER_SITE,
    )
}

/// The resolver's working set, bytes: reserved once for all symbolized
/// builds running at the same time.
pub(crate) fn resolver_cost() -> u64 {
    executable_bytes() / EXECUTABLE_BYTES_PER_RESOLVER_BYTE
}

/// Size of this process's executable file, bytes (0 if unreadable), read
/// once.
fn executable_bytes() -> u64 {
    static BYTES: OnceLock<u64> = OnceLock::new();
    *BYTES.get_or_init(|| std::fs::metadata("/proc/self/exe").map_or(0, |m| m.len()))
}

/// The memory cgroup of this process, looked up once.
fn own_cgroup() -> Option<&'static str> {
    static DIR: OnceLock<Option<String>> = OnceLock::new();
    DIR.get_or_init(|| cgroup::dir_of_self(&Fs::real()))
        .as_deref()
}

/// `(headroom, limit)` of this process's memory cgroup, bytes; `None`
/// without a limit.
pub fn headroom() -> Option<(u64, u64)> {
    let memory = cgroup::read(&Fs::real(), own_cgroup()?, 0).ok()?;
    Some((memory.headroom()?, memory.limit?))
}

/// Bytes an unwind-table build may map now (`alloc::stack::builder`, whose
/// scratch is limited to it): the cgroup's headroom less the margin and
/// what admitted profile builds reserved, 0 if that leaves nothing; `None`
/// without a memory limit. A table build takes milliseconds and holds no
/// reservation: a profile admitted meanwhile reads the cgroup's usage,
/// which already counts the build's pages.
pub(crate) fn room_for_tables() -> Option<u64> {
    headroom().map(|(headroom, limit)| room(headroom, limit, RESERVED.load(Ordering::Relaxed)))
}

/// `headroom` less the margin for `limit` and `reserved`.
fn room(headroom: u64, limit: u64, reserved: u64) -> u64 {
    headroom
        .saturating_sub(margin(limit))
        .saturating_sub(reserved)
}

/// Bytes kept free beyond any build under `limit`.
fn margin(limit: u64) -> u64 {
    MARGIN_MIN.max(limit / 64)
}

/// Admits a build of `kind`, symbolized if it fits, else unsymbolized if
/// that fits, else refuses.
pub fn admit(kind: BuildKind) -> Result<Admission, NoRoom> {
    admit_within(kind, 0)
}

/// [`admit`], counting `freed` more bytes of headroom: memory the caller
/// just freed that is still resident in the allocator, which the build's
/// own allocations will reuse (the OOM guard's reserve).
pub(crate) fn admit_within(kind: BuildKind, freed: u64) -> Result<Admission, NoRoom> {
    let (symbolized, unsymbolized) = costs(kind);
    let room = headroom().map(|(headroom, limit)| (headroom.saturating_add(freed), limit));
    admit_with(kind, (symbolized, resolver_cost()), unsymbolized, room)
}

/// [`admit`] with the costs given: `(symbolized, resolver)` for a
/// symbolized build (its own part, and the resolver's shared one), and
/// `unsymbolized`.
fn admit_with(
    kind: BuildKind,
    (symbolized, resolver): (u64, u64),
    unsymbolized: u64,
    room: Option<(u64, u64)>,
) -> Result<Admission, NoRoom> {
    let Some((headroom, limit)) = room else {
        enter_resolver(resolver);
        RESERVED.fetch_add(symbolized, Ordering::Relaxed);
        return Ok(Admission {
            mode: BuildMode::Symbolized,
            reserved: symbolized,
            resolver,
        });
    };
    let margin = margin(limit);
    for (mode, cost) in [
        (BuildMode::Symbolized, symbolized),
        (BuildMode::Unsymbolized, unsymbolized),
    ] {
        if mode == BuildMode::Symbolized {
            enter_resolver(resolver);
        }
        // Reserve first, then check, so two builds racing cannot both
        // count the same headroom.
        let before = RESERVED.fetch_add(cost, Ordering::Relaxed);
        if before + cost + margin <= headroom {
            return Ok(Admission {
                mode,
                reserved: cost,
                resolver,
            });
        }
        RESERVED.fetch_sub(cost, Ordering::Relaxed);
        if mode == BuildMode::Symbolized {
            leave_resolver(resolver);
        }
    }
    Err(NoRoom {
        kind: match kind {
            BuildKind::Heap => "heap",
            BuildKind::Cpu => "CPU",
            BuildKind::Threads => "threads",
        },
        needed: unsymbolized,
        headroom,
        margin,
        reserved: RESERVED.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn tables_get_the_headroom_less_the_margin_and_reservations() {
        assert_eq!(room(20 * M, 256 * M, 0), 16 * M, "margin 4 MiB");
        assert_eq!(room(20 * M, 64 * M, 3 * M), 15 * M, "margin 2 MiB");
        assert_eq!(room(M, 64 * M, 0), 0, "inside the margin: nothing");
        assert_eq!(room(3 * M, 64 * M, 2 * M), 0);
    }

    #[test]
    fn degrades_then_refuses_as_headroom_shrinks() {
        let limit = 256 * M; // margin 4 MiB
        let a = admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((20 * M, limit))).unwrap();
        assert_eq!(a.mode(), BuildMode::Symbolized);
        drop(a);
        let a = admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((8 * M, limit))).unwrap();
        assert_eq!(a.mode(), BuildMode::Unsymbolized);
        drop(a);
        let e = admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((5 * M, limit))).unwrap_err();
        assert_eq!((e.needed, e.headroom, e.margin), (2 * M, 5 * M, 4 * M));
        assert!(e.to_string().contains("heap profile"), "{e}");
        let free = admit_with(BuildKind::Cpu, (600 * M, 0), 600 * M, None).unwrap();
        assert!(free.symbolize(), "no limit: always room");
        drop(free);

        // Builds in progress hold their reservation (one test: the
        // reservations are process-wide).
        let limit = 128 * M; // margin 2 MiB
        let first = admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((10 * M, limit))).unwrap();
        assert!(first.symbolize());
        // The same headroom, read before the first build allocated.
        let second = admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((10 * M, limit))).unwrap();
        assert_eq!(second.mode(), BuildMode::Unsymbolized);
        assert!(admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((10 * M, limit))).is_err());
        drop((first, second));
        assert!(
            admit_with(BuildKind::Heap, (6 * M, 0), 2 * M, Some((10 * M, limit)))
                .unwrap()
                .symbolize()
        );

        // The resolver's share is reserved once for the symbolized builds
        // running together: 2 + 4 for the first, 2 more for the second.
        let costs = (2 * M, 4 * M);
        let first = admit_with(BuildKind::Heap, costs, M, Some((11 * M, limit))).unwrap();
        let second = admit_with(BuildKind::Heap, costs, M, Some((11 * M, limit))).unwrap();
        assert!(first.symbolize() && second.symbolize());
        let third = admit_with(BuildKind::Heap, costs, M, Some((11 * M, limit))).unwrap();
        assert_eq!(
            third.mode(),
            BuildMode::Unsymbolized,
            "8 of 11 MiB reserved, 2 kept free"
        );
        drop((first, third));
        // The second still holds the share: a new build adds only its own.
        let again = admit_with(BuildKind::Heap, costs, M, Some((11 * M, limit))).unwrap();
        assert!(again.symbolize());
        drop((second, again));
        assert_eq!(RESERVED.load(Ordering::Relaxed), 0);
        assert_eq!(SYMBOLIZING.load(Ordering::Relaxed), 0);
    }
}
