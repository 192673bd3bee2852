//! Go's `debug=1` heap profile text format.
//!
//! ```text
//! heap profile: 3: 196608 [15: 983040] @ heap/1048576
//! 2: 131072 [2: 131072] @ 0x55d0c0a3f1a2 0x55d0c0a3f0e1
//! #<TAB>0x55d0c0a3f1a1<TAB>quickstart::retain_buffers+0x41<TAB>examples/quickstart.rs:31
//! ```
//!
//! As in Go, record values are the raw sample counts and bytes (in-use
//! objects: in-use bytes [allocated objects: allocated bytes]); the header's
//! `heap/<2 * rate>` tells pprof's legacy parser how to scale them. Records
//! are sorted by in-use bytes, largest first. Frame lines show the call
//! address, function+offset and file:line, one line per inlined function.
//! A record with live samples gets a `# age: oldest 12.5s, median 3.1s`
//! line (pprof's legacy parser skips it as a comment). A `# heapprof`
//! trailer gives the unbiased totals and the profiler's stats.

use std::fmt::Write;

use std::collections::HashMap;

use super::Snapshot;
use super::symbolize::{self, Resolved};

pub(crate) fn encode(snap: &Snapshot, resolved: &HashMap<usize, Resolved>) -> String {
    let mut out = String::new();
    let raw = snap.sites.iter().fold([0i64; 4], |t, s| {
        [
            t[0] + s.sampled.inuse_objects,
            t[1] + s.sampled.inuse_bytes,
            t[2] + s.sampled.alloc_objects,
            t[3] + s.sampled.alloc_bytes,
        ]
    });
    let _ = writeln!(
        out,
        "heap profile: {}: {} [{}: {}] @ heap/{}",
        raw[0],
        raw[1],
        raw[2],
        raw[3],
        2 * snap.sample_rate
    );
    let mut order: Vec<usize> = (0..snap.sites.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(snap.sites[i].sampled.inuse_bytes));
    for i in order {
        let site = &snap.sites[i];
        let kept = if resolved.is_empty() {
            symbolize::untrimmed(site.stack)
        } else {
            symbolize::trim(site.stack, resolved)
        };
        let s = site.sampled;
        let _ = write!(
            out,
            "{}: {} [{}: {}] @",
            s.inuse_objects, s.inuse_bytes, s.alloc_objects, s.alloc_bytes
        );
        for k in &kept {
            let _ = write!(out, " {:#x}", k.ip);
        }
        out.push('\n');
        if let (Some(oldest), Some(median)) = (site.oldest_age, site.median_age) {
            let _ = writeln!(
                out,
                "# age: oldest {:.1}s, median {:.1}s (live samples)",
                oldest.as_secs_f64(),
                median.as_secs_f64()
            );
        }
        for k in &kept {
            let call = k.ip.saturating_sub(1);
            let frames = symbolize::frames_of(resolved, *k);
            if frames.is_empty() {
                let _ = writeln!(out, "#\t{call:#x}");
            }
            for f in frames {
                let offset = symbolize::offset_in(call, f);
                let _ = writeln!(
                    out,
                    "#\t{call:#x}\t{}+{offset:#x}\t{}:{}",
                    f.function,
                    f.file.as_deref().unwrap_or("?"),
                    f.line
                );
            }
        }
        out.push('\n');
    }
    let totals = snap.totals();
    let stats = snap.stats();
    let _ = write!(
        out,
        "# heapprof\n\
         # The records above are raw sample counts; pprof scales them.\n\
         # SampleRate = {}\n\
         # EstimatedInuseBytes = {}\n\
         # EstimatedInuseObjects = {}\n\
         # EstimatedAllocBytes = {}\n\
         # EstimatedAllocObjects = {}\n\
         # Sites = {} (max {})\n\
         # LiveSamples = {} (capacity {})\n\
         # DroppedSamples = {}\n\
         # OverflowedSamples = {}\n\
         # OwnMemoryBytes = {}\n",
        snap.sample_rate,
        totals.inuse_bytes,
        totals.inuse_objects,
        totals.alloc_bytes,
        totals.alloc_objects,
        stats.sites,
        stats.max_sites,
        stats.live_samples,
        stats.live_capacity,
        stats.dropped_samples,
        stats.overflowed_samples,
        stats.own_memory_bytes,
    );
    out
}
