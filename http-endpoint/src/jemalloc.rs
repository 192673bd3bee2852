//! jemalloc's own statistics and purging, through tikv-jemalloc-ctl's safe
//! API (this crate forbids `unsafe`).
//!
//! These read the jemalloc linked into the process. They describe the
//! heap only when the global allocator is (or wraps)
//! `tikv_jemallocator::Jemalloc`; otherwise jemalloc is idle and they are
//! near zero.

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
    })
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
