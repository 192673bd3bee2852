//! Explaining a process's RSS: an exact partition of its resident pages
//! (`heapprof::sys::partition`, mapping by mapping from `/proc/PID/smaps`)
//! into file pages, shared memory, thread stacks, the live heap, the
//! allocator's retained memory, the profiler's tables and other anonymous
//! memory.
//!
//! What only the process knows comes from its endpoint
//! (`/debug/heapprof/sampling?resident=1`): which mappings hold its live
//! heap, how many of the live heap's bytes are resident (measured with
//! `mincore` over the sampled blocks, scaled like the profile), and where
//! the profiler's own tables are. Without an endpoint the allocator's
//! mappings are not told apart and their pages are in other anonymous
//! memory. Every part is a page count, so none is negative and they add
//! up to the RSS of the mappings; "other anonymous memory" is what is left
//! of the anonymous pages, measured, not a difference of estimates. A
//! growing "other" or "thread stacks" with a flat heap is incident 4's
//! signature.
//!
//! [`ReconciliationDetail::explanation`] says in one line what RSS is made
//! of; [`growth`] compares two readings (`verify PID --duration S`) and
//! says which part grew, so "heap flat, threads growing" reads at a
//! glance.

use heapprof::sampling::Estimate;
use heapprof::sys::partition::{self, Known, Partition};
use heapprof::sys::procfs::ProcessMemory;
use heapprof::wire::ResidentDocument;

use crate::format::{mib, signed_mib};

/// RSS, partitioned. The numeric fields other than `rss`, `anon` and
/// `threads` are the parts, in bytes; they add up to the RSS of the
/// mappings (`detail.smaps_rss`), which the status file's RSS matches within its
/// counters' lag.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Reconciliation {
    /// Resident set size from `/proc/PID/status`, in bytes.
    pub rss: u64,
    /// `RssAnon`.
    pub anon: u64,
    /// Threads of the process.
    pub threads: u64,
    /// File pages (page cache mapped, not copied on write).
    pub file: u64,
    /// Shared-memory (tmpfs) pages.
    pub shmem: u64,
    /// Anonymous pages of thread stacks.
    pub thread_stacks: u64,
    /// The live heap's resident pages.
    pub live_heap: u64,
    /// The rest of the allocator's mappings (freed, cached, fragmented).
    pub allocator_retained: u64,
    /// The profiler's own tables.
    pub profiler: u64,
    /// Anonymous pages nothing above accounts for.
    pub other_anon: u64,
    /// How the parts were made.
    pub detail: ReconciliationDetail,
}

/// What is not a part of RSS.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReconciliationDetail {
    /// Sum of `Rss` over the mappings (what the parts add up to).
    pub smaps_rss: u64,
    /// Sum of `Anonymous` over the mappings.
    pub smaps_anon: u64,
    /// Where `live_heap` comes from.
    pub heap_source: String,
    /// The live heap's resident bytes as estimated in the process, with
    /// the samples behind the estimate.
    pub heap_estimate: Option<Estimate>,
    /// Whether that estimate was more than the allocator's mappings hold
    /// (then `live_heap` is what they hold).
    pub heap_capped: bool,
    /// Mappings counted as the allocator's.
    pub allocator_mappings: u64,
    /// What RSS is made of, largest part first, in one line.
    pub explanation: String,
}

impl Reconciliation {
    /// The sum of the parts.
    pub fn parts_sum(&self) -> u64 {
        self.parts().iter().map(|(_, b)| *b).sum()
    }

    /// The parts, named for people: (name, bytes), in a fixed order.
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        [
            ("heap", self.live_heap),
            ("thread stacks", self.thread_stacks),
            ("other anonymous memory", self.other_anon),
            ("file pages", self.file),
            ("allocator retained", self.allocator_retained),
            ("shared memory", self.shmem),
            ("heapprof tables", self.profiler),
        ]
    }
}

/// Partitions `p`'s RSS with what the process knows (`resident`).
pub fn reconcile(p: &ProcessMemory, resident: Option<&ResidentDocument>) -> Reconciliation {
    let known = resident.map_or(Known::default(), |r| Known {
        heap: Some(r.heap.bytes.max(0.0).round() as u64),
        allocator: &r.allocator_mappings,
        profiler: &r.profiler,
    });
    let (parts, d) = partition::partition(&p.mappings, &p.stack_mappings, &known);
    let Partition {
        file,
        shmem,
        thread_stacks,
        heap,
        allocator_retained,
        profiler,
        other_anon,
    } = parts;
    let heap_source = match resident {
        Some(r) => format!(
            "resident bytes of the live heap, measured over {} live samples (mincore) and \
             scaled like the profile",
            r.heap.samples
        ),
        None => "no endpoint: the allocator's mappings are inside other_anon".into(),
    };
    let mut r = Reconciliation {
        rss: p.status.vm_rss,
        anon: p.status.rss_anon,
        threads: p.status.threads,
        file,
        shmem,
        thread_stacks,
        live_heap: heap,
        allocator_retained,
        profiler,
        other_anon,
        detail: ReconciliationDetail {
            smaps_rss: d.smaps_rss,
            smaps_anon: d.smaps_anon,
            heap_source,
            heap_estimate: resident.map(|r| r.heap),
            heap_capped: d.heap_capped,
            allocator_mappings: d.allocator_mappings,
            explanation: String::new(),
        },
    };
    r.detail.explanation = explain(&r);
    r
}

fn explain(r: &Reconciliation) -> String {
    let mut parts = r.parts();
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
                mib(*b as i64),
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
    /// Whether the heap stayed flat: within 10% or 1 MiB, or within three
    /// standard errors of the two estimates.
    pub heap_flat: bool,
    /// The same in one line.
    pub explanation: String,
}

/// Compares two readings `seconds` apart.
pub fn growth(before: &Reconciliation, after: &Reconciliation, seconds: f64) -> Growth {
    let (b, a) = (before.parts(), after.parts());
    let change = |i: usize| a[i].1 as i64 - b[i].1 as i64;
    let mostly = (0..a.len())
        .map(|i| (a[i].0, change(i)))
        .filter(|(_, c)| *c > 0)
        .max_by_key(|(_, c)| *c)
        .map(|(name, _)| name.to_owned());
    let heap_before = b[0].1 as i64;
    let se = |r: &Reconciliation| {
        r.detail
            .heap_estimate
            .map_or(0.0, |e| e.standard_error().powi(2))
    };
    let noise = (3.0 * (se(before) + se(after)).sqrt()) as i64;
    let heap_flat = change(0).abs() <= (heap_before / 10).max(1 << 20).max(noise);
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
    use heapprof::sys::maps::Mapping;
    use heapprof::sys::procfs::Status;

    const MIB: u64 = 1 << 20;

    /// A process: a jemalloc-like arena of 40 MiB resident, another
    /// anonymous mapping, a thread stack, libc.
    fn process() -> ProcessMemory {
        let mapping = |start: u64, end: u64, path: &str, rss_kib: u64| Mapping {
            start,
            end,
            perms: if path.is_empty() { "rw-p" } else { "r-xp" }.into(),
            path: path.into(),
            rss: rss_kib * 1024,
            anonymous: if path.is_empty() { rss_kib * 1024 } else { 0 },
            ..Mapping::default()
        };
        let mappings = vec![
            mapping(0x7e00_0000_0000, 0x7e00_0400_0000, "", 40960),
            mapping(0x7e10_0000_0000, 0x7e10_0080_0000, "", 5120),
            mapping(0x7f00_0000_1000, 0x7f00_0080_1000, "", 256),
            mapping(
                0x7f10_0000_0000,
                0x7f10_0010_0000,
                "/usr/lib/libc.so.6",
                1024,
            ),
        ];
        ProcessMemory {
            status: Status {
                vm_rss: (40960 + 5120 + 256 + 1024) * 1024,
                rss_anon: (40960 + 5120 + 256) * 1024,
                rss_file: 1024 * 1024,
                threads: 2,
                ..Status::default()
            },
            mappings,
            stack_mappings: vec![2],
            ..ProcessMemory::default()
        }
    }

    fn resident(heap: u64) -> ResidentDocument {
        ResidentDocument {
            heap: Estimate {
                bytes: heap as f64,
                samples: 50,
                variance: 0.0,
            },
            allocator_mappings: vec![0x7e00_0000_0000],
            profiler: vec![(0x7e10_0000_1000, MIB)],
        }
    }

    #[test]
    fn parts_are_the_partition_and_add_up() {
        let p = process();
        let r = reconcile(&p, Some(&resident(30 * MIB)));
        assert_eq!(r.live_heap, 30 * MIB);
        assert_eq!(r.allocator_retained, 10 * MIB);
        assert_eq!(r.profiler, MIB);
        assert_eq!(r.other_anon, 4 * MIB);
        assert_eq!(r.thread_stacks, 256 * 1024);
        assert_eq!(r.file, MIB);
        assert_eq!(r.parts_sum(), r.rss);
        assert_eq!(r.parts_sum(), r.detail.smaps_rss);
        // An estimate above the pages never makes a negative part.
        let r = reconcile(&p, Some(&resident(60 * MIB)));
        assert_eq!((r.live_heap, r.allocator_retained), (40 * MIB, 0));
        assert!(r.detail.heap_capped);
        assert_eq!(r.parts_sum(), r.rss);
        // No endpoint: the arena is other anonymous memory.
        let r = reconcile(&p, None);
        assert_eq!(r.live_heap, 0);
        assert_eq!(r.other_anon, 45 * MIB);
        assert_eq!(r.parts_sum(), r.rss);
    }

    fn reading(heap: u64, stacks: u64, threads: u64, other: u64, file: u64) -> Reconciliation {
        let mut r = Reconciliation {
            rss: heap + stacks + other + file,
            file,
            anon: heap + stacks + other,
            thread_stacks: stacks,
            live_heap: heap,
            other_anon: other,
            threads,
            ..Reconciliation::default()
        };
        r.detail.explanation = explain(&r);
        r
    }

    #[test]
    fn growth_names_thread_stacks_when_the_heap_is_flat() {
        let before = reading(20 * MIB, MIB, 3, 5 * MIB, 10 * MIB);
        let after = reading(20 * MIB + MIB / 2, 41 * MIB, 163, 6 * MIB, 12 * MIB);
        let g = growth(&before, &after, 10.0);
        assert_eq!(g.mostly.as_deref(), Some("thread stacks"));
        assert!(g.heap_flat);
        assert_eq!(g.threads, (3, 163));
        assert_eq!(g.thread_stacks, 40 * MIB as i64);
        assert!(
            g.explanation.contains("mostly thread stacks"),
            "{}",
            g.explanation
        );
        assert!(
            after.detail.explanation.starts_with(
                "RSS 79.5 MiB = thread stacks 41.0 MiB (52%, 163 threads) + heap 20.5 MiB"
            ),
            "{}",
            after.detail.explanation
        );
        let heap_grew = reading(60 * MIB, 41 * MIB, 163, 6 * MIB, 12 * MIB);
        let g = growth(&after, &heap_grew, 10.0);
        assert_eq!(g.mostly.as_deref(), Some("heap"));
        assert!(!g.heap_flat);
    }
}
