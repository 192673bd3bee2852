//! Explaining a process's RSS: file pages + shared memory + thread stacks +
//! live heap + allocator-retained memory + other anonymous memory, with the
//! remainder no source accounts for.
//!
//! The kernel's `RssAnon`, `RssFile` and `RssShmem` (from `status`) add up
//! to the resident set size. Anonymous memory is split with `smaps`: the stack mappings
//! (see `procfs`), then the live heap as the best available source measures
//! it (the profiler's in-use estimate, else jemalloc's `allocated`), then
//! allocator-retained pages (jemalloc `resident - allocated`, when
//! published). What is left is "other anonymous": allocator caches when no
//! allocator stats are published, non-heap mmaps, runtime metadata. A
//! growing "other" with a flat heap is incident 4's signature.
//!
//! [`Reconciliation::explanation`] says in one line what RSS is made of;
//! [`growth`] compares two readings (`verify PID --duration S`) and says
//! which part grew, so "heap flat, threads growing" reads at a glance.

use heapprof::sys::procfs::ProcessMemory;

use crate::format::{mib, signed_mib};

/// Allocator figures published by the process, if any.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HeapSources {
    /// The profiler's in-use estimate (`inuse_space` total).
    pub profiler_inuse: Option<u64>,
    /// jemalloc `stats.allocated`.
    pub jemalloc_allocated: Option<u64>,
    /// jemalloc `stats.resident`.
    pub jemalloc_resident: Option<u64>,
}

/// RSS, explained.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciliation {
    /// Resident set size.
    pub rss: u64,
    /// `RssFile`: file pages mapped.
    pub file: u64,
    /// `RssShmem`.
    pub shmem: u64,
    /// `RssAnon`.
    pub anon: u64,
    /// Resident thread stacks.
    pub thread_stacks: u64,
    /// Live heap per `heap_source`.
    pub live_heap: u64,
    /// Where `live_heap` comes from.
    pub heap_source: String,
    /// Allocator-retained (resident, not live) memory, when published.
    pub allocator_retained: u64,
    /// Anonymous memory no source accounts for (may be negative when the
    /// estimates overshoot, e.g. heap not yet touched).
    pub other_anon: i64,
    /// Threads of the process.
    pub threads: u64,
    /// What RSS is made of, largest part first, in one line.
    pub explanation: String,
}

/// Splits `p`'s RSS using the heap figures in `h`.
pub fn reconcile(p: &ProcessMemory, h: &HeapSources) -> Reconciliation {
    let (live_heap, heap_source) = match (h.profiler_inuse, h.jemalloc_allocated) {
        (Some(v), _) => (v, "profiler inuse_space"),
        (None, Some(v)) => (v, "jemalloc stats.allocated"),
        (None, None) => (0, "none published (heap is inside other_anon)"),
    };
    let allocator_retained = match (h.jemalloc_resident, h.jemalloc_allocated) {
        (Some(r), Some(a)) => r.saturating_sub(a),
        _ => 0,
    };
    let s = &p.status;
    let anon = s.rss_anon;
    let other = anon as i64 - p.stacks.rss as i64 - live_heap as i64 - allocator_retained as i64;
    let mut r = Reconciliation {
        rss: s.vm_rss,
        file: s.rss_file,
        shmem: s.rss_shmem,
        anon,
        thread_stacks: p.stacks.rss,
        live_heap,
        heap_source: heap_source.into(),
        allocator_retained,
        other_anon: other,
        threads: s.threads,
        explanation: String::new(),
    };
    r.explanation = explain(&r);
    r
}

/// The parts of RSS, named for people: (name, bytes).
fn parts(r: &Reconciliation) -> [(&'static str, i64); 6] {
    [
        ("heap", r.live_heap as i64),
        ("thread stacks", r.thread_stacks as i64),
        ("other anonymous memory", r.other_anon),
        ("file pages", r.file as i64),
        ("allocator retained", r.allocator_retained as i64),
        ("shared memory", r.shmem as i64),
    ]
}

fn explain(r: &Reconciliation) -> String {
    let mut parts = parts(r);
    parts.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    let total = r.rss.max(1) as f64;
    let listed: Vec<String> = parts
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(name, b)| {
            let extra = if *name == "thread stacks" {
                format!(", {} threads", r.threads)
            } else {
                String::new()
            };
            format!(
                "{name} {} ({:.0}%{extra})",
                mib(*b),
                *b as f64 * 100.0 / total
            )
        })
        .collect();
    format!("RSS {} = {}", mib(r.rss as i64), listed.join(" + "))
}

/// How RSS changed between two readings, part by part.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Growth {
    /// Seconds between the readings.
    pub seconds: f64,
    /// RSS change, bytes.
    pub rss: i64,
    /// Live heap change, bytes.
    pub heap: i64,
    /// Allocator-retained change (resident, not live), bytes.
    pub allocator_retained: i64,
    /// Thread-stack RSS change, bytes.
    pub thread_stacks: i64,
    /// Thread count before and after.
    pub threads: (u64, u64),
    /// Other anonymous RSS change, bytes.
    pub other_anon: i64,
    /// File-page RSS change, bytes.
    pub file: i64,
    /// The part that grew most (`heap`, `thread stacks`, ...), if any grew.
    pub mostly: Option<String>,
    /// Whether the heap stayed flat (within 10% or 1 MiB).
    pub heap_flat: bool,
    /// The same in one line.
    pub explanation: String,
}

/// Compares two readings `seconds` apart.
pub fn growth(before: &Reconciliation, after: &Reconciliation, seconds: f64) -> Growth {
    let (b, a) = (parts(before), parts(after));
    let change = |i: usize| a[i].1 - b[i].1;
    let mostly = (0..5)
        .map(|i| (a[i].0, change(i)))
        .filter(|(_, c)| *c > 0)
        .max_by_key(|(_, c)| *c)
        .map(|(name, _)| name.to_owned());
    let heap_before = b[0].1;
    let heap_flat = change(0).abs() <= (heap_before / 10).max(1 << 20);
    let rss = after.rss as i64 - before.rss as i64;
    let explanation = format!(
        "RSS {}{} in {seconds:.0}s{}: heap {}{}, thread stacks {} ({} -> {} threads), other anonymous {}, file pages {}, allocator retained {}",
        if rss >= 0 { "+" } else { "" },
        mib(rss),
        mostly
            .as_ref()
            .map_or(String::new(), |m| format!(", mostly {m}")),
        signed_mib(change(0)),
        if heap_flat { " (flat)" } else { "" },
        signed_mib(change(1)),
        before.threads,
        after.threads,
        signed_mib(change(2)),
        signed_mib(change(3)),
        signed_mib(change(4)),
    );
    Growth {
        seconds,
        rss,
        heap: change(0),
        allocator_retained: change(4),
        thread_stacks: change(1),
        threads: (before.threads, after.threads),
        other_anon: change(2),
        file: change(3),
        mostly,
        heap_flat,
        explanation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heapprof::sys::procfs::{Stacks, Status};

    #[test]
    fn splits_anon() {
        let p = ProcessMemory {
            status: Status {
                vm_rss: 1000,
                rss_anon: 700,
                rss_file: 250,
                rss_shmem: 50,
                ..Status::default()
            },
            stacks: Stacks {
                rss: 40,
                ..Stacks::default()
            },
            ..ProcessMemory::default()
        };
        let h = HeapSources {
            profiler_inuse: Some(400),
            jemalloc_allocated: Some(410),
            jemalloc_resident: Some(500),
        };
        let r = reconcile(&p, &h);
        assert_eq!(r.live_heap, 400);
        assert_eq!(r.allocator_retained, 90);
        assert_eq!(r.other_anon, 700 - 40 - 400 - 90);
        assert_eq!(r.file + r.shmem + r.anon, r.rss);
        let none = reconcile(&p, &HeapSources::default());
        assert_eq!(none.other_anon, 660);
    }

    fn reading(heap: u64, stacks: u64, threads: u64, other: i64, file: u64) -> Reconciliation {
        let anon = heap + stacks + other.max(0) as u64;
        let mut r = Reconciliation {
            rss: anon + file,
            file,
            anon,
            thread_stacks: stacks,
            live_heap: heap,
            other_anon: other,
            threads,
            ..Reconciliation::default()
        };
        r.explanation = explain(&r);
        r
    }

    #[test]
    fn growth_names_thread_stacks_when_the_heap_is_flat() {
        const M: u64 = 1 << 20;
        let before = reading(20 * M, M, 3, 5 * M as i64, 10 * M);
        let after = reading(20 * M + M / 2, 41 * M, 163, 6 * M as i64, 12 * M);
        let g = growth(&before, &after, 10.0);
        assert_eq!(g.mostly.as_deref(), Some("thread stacks"));
        assert!(g.heap_flat);
        assert_eq!(g.threads, (3, 163));
        assert_eq!(g.thread_stacks, 40 * M as i64);
        assert!(
            g.explanation.contains("mostly thread stacks"),
            "{}",
            g.explanation
        );
        assert!(
            after.explanation.starts_with(
                "RSS 79.5 MiB = thread stacks 41.0 MiB (52%, 163 threads) + heap 20.5 MiB"
            ),
            "{}",
            after.explanation
        );
        let heap_grew = reading(60 * M, 41 * M, 163, 6 * M as i64, 12 * M);
        let g = growth(&after, &heap_grew, 10.0);
        assert_eq!(g.mostly.as_deref(), Some("heap"));
        assert!(!g.heap_flat);
    }
}
