//! How much of the live heap is resident, measured, and the whole RSS of
//! this process partitioned around it (`sys::partition`): what the
//! resident view of the heap profile (`PprofOptions::resident`) and
//! `heapprof verify` build on.
//!
//! # Measuring the live heap's resident bytes
//!
//! Allocated is not resident: a block nobody wrote to (a `vec![0; n]` is
//! `calloc`ed and may never be touched) costs address space, not RSS. So
//! each live sampled block is asked, page by page (`sys::residency`,
//! `mincore`), how many of its bytes are resident, and that count is
//! scaled like the profile scales the block's size: a sample of weight
//! `w` with `r` resident bytes adds `w · r` to the estimate, and its
//! sampling error the way `estimate` says. Large sampled blocks are
//! page-aligned with pages of their own, so their residency is their own,
//! not their neighbours'; a small one shares its one or two pages with its
//! padding (`alloc::block`), which the program never touches, so its
//! residency is its own too, except where its block's neighbours keep
//! those pages resident.
//!
//! The mappings that hold sampled blocks, live or among the last few
//! thousand freed (`live_table::for_each_freed`), are the allocator's:
//! it handed out memory there. With the profiler's own tables
//! (`alloc::pages`, the live-sample table) and their resident bytes they
//! are what the process knows that `/proc` alone does not
//! ([`ResidentHeap`]). A mapping of the allocator where no sampled block
//! ever landed (its metadata, a region only unsampled objects used) is
//! not known; `sys::partition` counts it as other anonymous memory.
//!
//! # Cost
//!
//! One `mincore` per live sample (at most the live table's capacity), a
//! read of `/proc/self/maps`; the result holds one entry per mapping with
//! samples and per site with samples. No lock is taken that the allocator
//! takes.

use std::collections::HashMap;

use crate::alloc::reentrancy::untracked;
use crate::alloc::{live_table, pages};
use crate::sys::fs::Fs;
use crate::sys::maps::{self, Mapping};
use crate::sys::partition::{self, Detail, Known, Partition};
use crate::sys::procfs::{self, ProcError};
use crate::sys::residency;

use super::estimate::Estimate;
use super::live::{LiveSample, for_each_live_sample};

/// The live heap's resident bytes, and what the process knows about its
/// mappings.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ResidentHeap {
    /// Resident bytes of the live heap, estimated from the samples.
    pub estimate: Estimate,
    /// The start of each mapping where the allocator handed out a sampled
    /// block (live, or among the last freed).
    pub allocator: Vec<u64>,
    /// The profiler's own tables: (address, resident bytes) of each.
    pub profiler: Vec<(u64, u64)>,
    /// Resident bytes per site, estimated: (site id, bytes), by site id.
    pub by_site: Vec<(u32, f64)>,
}

impl ResidentHeap {
    /// What the partition needs from the process.
    pub fn known(&self) -> Known<'_> {
        Known {
            heap: Some(self.estimate.bytes.max(0.0).round() as u64),
            allocator: &self.allocator,
            profiler: &self.profiler,
        }
    }
}

/// Measures the live heap's resident bytes now (see the module docs).
pub fn resident_heap() -> ResidentHeap {
    untracked(|| {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let maps = maps::parse_maps(&text);
        let mut holds = vec![false; maps.len()];
        let mut by_site: HashMap<u32, f64> = HashMap::new();
        let mut estimate = Estimate::default();
        for_each_live_sample(|s: &LiveSample| {
            // A block freed (and unmapped) since it was read: gone.
            let Ok(resident) = residency::resident_bytes(s.address, s.size as usize) else {
                return;
            };
            estimate.add(resident, s.weight);
            *by_site.entry(s.site).or_default() += s.weight * resident as f64;
            if let Some(i) = mapping_of(&maps, s.address as u64) {
                holds[i] = true;
            }
        });
        live_table::for_each_freed(|addr| {
            if let Some(i) = mapping_of(&maps, addr as u64) {
                holds[i] = true;
            }
        });
        let allocator = maps
            .iter()
            .zip(&holds)
            .filter(|(_, held)| **held)
            .map(|(m, _)| m.start)
            .collect();
        let mut profiler = Vec::new();
        let mut own = |start: usize, len: usize| {
            let resident = residency::resident_bytes(start, len).unwrap_or(0);
            profiler.push((start as u64, resident));
        };
        pages::ranges(&mut own);
        for (start, len) in live_table::ranges() {
            own(start, len);
        }
        let mut by_site: Vec<(u32, f64)> = by_site.into_iter().collect();
        by_site.sort_unstable_by_key(|(site, _)| *site);
        ResidentHeap {
            estimate,
            allocator,
            profiler,
            by_site,
        }
    })
}

/// The index of the mapping holding `addr` (`maps` sorted by address).
fn mapping_of(maps: &[Mapping], addr: u64) -> Option<usize> {
    let i = maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
    maps[i].contains(addr).then_some(i)
}

/// This process's RSS, partitioned (`sys::partition`), with the live
/// heap measured as [`resident_heap`] does.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ResidentSet {
    /// Resident set size from `/proc/self/status`, in bytes.
    pub rss: u64,
    /// The parts.
    pub parts: Partition,
    /// How they were made.
    pub detail: Detail,
    /// The live heap's measurement.
    pub heap: ResidentHeap,
}

/// Measures and partitions this process's RSS now.
pub fn resident_set() -> Result<ResidentSet, ProcError> {
    let heap = resident_heap();
    untracked(|| {
        let p = procfs::read_process(&Fs::real(), std::process::id())?;
        let (parts, detail) = partition::partition(&p.mappings, &p.stack_mappings, &heap.known());
        Ok(ResidentSet {
            rss: p.status.vm_rss,
            parts,
            detail,
            heap,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_partitions_to_its_rss() {
        let set = resident_set().expect("own /proc");
        assert_eq!(set.parts.total(), set.detail.smaps_rss);
        let rss = set.rss as f64;
        assert!(
            (set.parts.total() as f64 - rss).abs() <= 0.02 * rss,
            "{set:?}"
        );
        assert!(set.parts.thread_stacks > 0, "{set:?}");
        assert!(!set.heap.profiler.is_empty(), "the live table at least");
    }
}
