//! The report of `verify` as text tables.

use std::fmt::Write;

use heapprof::sys::cgroup::CgroupMemory;

use heapprof::sampling::Estimate;
use heapprof::wire::AllocatorDocument;

use super::{bytes, rows, signed};
use crate::bpf::tracepoints::{self, KernelReport};
use crate::bpf::uprobes::UprobeReport;
use crate::verify::check::{MAX_JUDGED_RSE, SAMPLING_Z, Status};
use crate::verify::{ProfilerWindow, VerifyReport};

/// An estimate with its error: `12.3 MiB ± 1.1 MiB (40 samples)`.
fn estimate(e: &Estimate) -> String {
    format!(
        "{} ± {} ({} samples)",
        bytes(e.bytes),
        bytes(e.standard_error()),
        e.samples
    )
}

/// How to read the verdicts, printed once under the checks.
fn verdict_legend(tolerance: Option<f64>) -> String {
    format!(
        "verdicts: checks of the profiler allow {SAMPLING_Z} standard errors of its estimate \
         (from the samples behind it, widened for an estimate below the truth, at least one \
         sample rate) plus --tolerance{}; \
         \"not enough samples to judge\" means the standard error is above {:.0}% of what is \
         measured (a short window or a small heap for the rate), not that anything is wrong; \
         only \"disagrees\" and a false claim fail verify (exit status 1)",
        tolerance.map_or(String::new(), |t| format!(" ({t}%)")),
        MAX_JUDGED_RSE * 100.0
    )
}

fn render_allocator(out: &mut String, a: &AllocatorDocument) {
    let _ = writeln!(out, "allocator ({}), as the profile counts", a.name);
    rows(
        out,
        2,
        &[
            ("handed out", bytes(a.allocated as f64)),
            ("  in thread caches", bytes(a.cached as f64)),
            ("  the allocator's own", bytes(a.internal as f64)),
            (
                "  sampled blocks' page alignment",
                bytes(a.sampled_block_extra as f64),
            ),
            ("  heapprof's own heap", bytes(a.profiler_own as f64)),
            ("program's live heap", bytes(a.comparable as f64)),
            ("profiler's estimate", estimate(&a.estimate)),
        ],
    );
}

/// The report as text.
pub fn render(r: &VerifyReport) -> String {
    let mut out = String::new();
    if let Some(p) = &r.profiler {
        let _ = writeln!(out, "profiler (http://{})", p.addr);
        let mut v = vec![
            ("in-use (estimate)", bytes(p.inuse_bytes as f64)),
            ("in-use objects", p.inuse_objects.to_string()),
            ("allocated since start", bytes(p.alloc_bytes as f64)),
        ];
        if let Some(j) = p.jemalloc_allocated {
            v.push(("jemalloc allocated", bytes(j as f64)));
        }
        if let Some(j) = p.jemalloc_resident {
            v.push(("jemalloc resident", bytes(j as f64)));
        }
        if let Some(rate) = r.sample_rate {
            v.push(("sample rate", bytes(rate as f64)));
        }
        rows(&mut out, 2, &v);
    }
    if let Some(a) = &r.allocator {
        render_allocator(&mut out, a);
    }
    if let Some(p) = &r.process {
        let _ = writeln!(out, "process {} ({})", p.pid, p.cmdline);
        rows(
            &mut out,
            2,
            &[
                ("RSS", bytes(p.status.vm_rss as f64)),
                (
                    "  anon / file / shmem",
                    format!(
                        "{} / {} / {}",
                        bytes(p.status.rss_anon as f64),
                        bytes(p.status.rss_file as f64),
                        bytes(p.status.rss_shmem as f64)
                    ),
                ),
                ("peak RSS", bytes(p.status.vm_hwm as f64)),
                ("threads", p.stacks.threads.to_string()),
                (
                    "thread stacks",
                    format!(
                        "{} mappings ({} by stack pointer), {} resident of {}",
                        p.stacks.stacks,
                        p.stacks.matched_by_sp,
                        bytes(p.stacks.rss as f64),
                        bytes(p.stacks.size as f64)
                    ),
                ),
            ],
        );
    }
    if let Some(c) = &r.cgroup {
        render_cgroup(&mut out, c, 0);
    }
    if !r.children_growth.is_empty() {
        let _ = writeln!(out, "children over the window (working set / usage / rss)");
        for g in &r.children_growth {
            let _ = writeln!(
                out,
                "  {:<24} {:>10} / {:>10} / {:>10}",
                g.name,
                signed(g.working_set_change),
                signed(g.usage_change),
                signed(g.rss_change)
            );
        }
        match &r.growing_child {
            Some(g) => {
                let _ = writeln!(out, "growing: {} {}", g.name, signed(g.working_set_change));
            }
            None => {
                let _ = writeln!(out, "growing: none of the children grew");
            }
        }
    }
    if let Some(x) = &r.reconciliation {
        let d = &x.detail;
        let _ = writeln!(
            out,
            "RSS explained ({}, {} threads), page by page from smaps",
            bytes(x.rss as f64),
            x.threads
        );
        let heap = match &d.heap_estimate {
            Some(e) => format!(
                "{} (measured resident: {}{})",
                bytes(x.live_heap as f64),
                estimate(e),
                if d.heap_capped {
                    "; more than the allocator's mappings hold"
                } else {
                    ""
                }
            ),
            None => format!("{} ({})", bytes(x.live_heap as f64), d.heap_source),
        };
        rows(
            &mut out,
            2,
            &[
                ("file pages", bytes(x.file as f64)),
                ("shared memory", bytes(x.shmem as f64)),
                ("thread stacks", bytes(x.thread_stacks as f64)),
                ("live heap", heap),
                (
                    "allocator retained",
                    format!(
                        "{} ({} mappings known to be the allocator's)",
                        bytes(x.allocator_retained as f64),
                        d.allocator_mappings
                    ),
                ),
                ("heapprof tables", bytes(x.profiler as f64)),
                (
                    "other anonymous (the rest, measured)",
                    bytes(x.other_anon as f64),
                ),
                (
                    "sum of the parts",
                    format!(
                        "{} (smaps; status RSS {}, {:+.2}%)",
                        bytes(x.parts_sum() as f64),
                        bytes(x.rss as f64),
                        (x.parts_sum() as f64 - x.rss as f64) * 100.0 / x.rss.max(1) as f64
                    ),
                ),
            ],
        );
        let _ = writeln!(out, "  {}", d.explanation);
    }
    if let Some(g) = &r.rss_growth {
        let _ = writeln!(out, "over the window: {}", g.explanation);
    }
    if let Some(k) = &r.kernel {
        render_kernel(&mut out, k);
    }
    if let Some(w) = &r.window {
        let _ = writeln!(out, "window: {}", w.statement);
    }
    if let Some(u) = &r.uprobes {
        render_uprobes(&mut out, u, r.profiler_window.as_ref());
    }
    if let Some(g) = &r.live_growth {
        let _ = writeln!(
            out,
            "live allocator bytes grew {} in {:.1}s: {}/s, {}/min",
            bytes(g.bytes as f64),
            g.window_secs,
            bytes(g.bytes_per_sec),
            bytes(g.bytes_per_min)
        );
    }
    if let Some(c) = &r.claims {
        let start = c
            .at_start
            .map_or(String::new(), |s| format!("{} at start, ", bytes(s)));
        let _ = writeln!(
            out,
            "claim {} at {}: {start}{} at end",
            c.key,
            c.url,
            bytes(c.at_end)
        );
        let _ = writeln!(out, "  {}", c.verdict);
    }
    for c in &r.checks {
        let _ = writeln!(
            out,
            "check {}: {}: expected {} observed {}: {}",
            c.name,
            c.what,
            bytes(c.expected),
            bytes(c.observed),
            c.verdict
        );
    }
    if r.checks.iter().any(|c| c.sampling.is_some()) {
        let tolerance = r.checks.iter().find_map(|c| {
            c.sampling
                .as_ref()
                .map(|s| c.tolerance_pct - s.tolerance_pct)
        });
        let _ = writeln!(out, "{}", verdict_legend(tolerance));
    }
    let undecided = r
        .checks
        .iter()
        .filter(|c| c.status == Status::NotEnoughSamples)
        .count();
    if undecided > 0 {
        let _ = writeln!(
            out,
            "{undecided} check(s) without a verdict: lengthen --duration, or run the target \
             with a smaller HEAPPROF_SAMPLE_RATE"
        );
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

fn render_cgroup(out: &mut String, c: &CgroupMemory, depth: usize) {
    let _ = writeln!(out, "{:depth$}cgroup {:?} {}", "", c.version, c.dir);
    let limit = c.limit.map_or("none".to_string(), |l| bytes(l as f64));
    let pct = |v: u64| {
        c.limit.map_or(String::new(), |l| {
            format!(" ({:.1}% of limit)", v as f64 * 100.0 / l as f64)
        })
    };
    rows(
        out,
        depth + 2,
        &[
            (
                "usage",
                format!("{}{}", bytes(c.usage as f64), pct(c.usage)),
            ),
            (
                "working set",
                format!("{}{}", bytes(c.working_set as f64), pct(c.working_set)),
            ),
            ("rss", bytes(c.rss as f64)),
            (
                "cache",
                format!(
                    "{} (inactive file {})",
                    bytes(c.cache as f64),
                    bytes(c.file_inactive as f64)
                ),
            ),
            ("limit", limit),
            (
                "failcnt / oom / oom_kill",
                format!("{} / {} / {}", c.failcnt, c.oom, c.oom_kill),
            ),
        ],
    );
    for child in &c.children {
        render_cgroup(out, child, depth + 2);
    }
}

fn render_kernel(out: &mut String, k: &KernelReport) {
    let _ = writeln!(out, "kernel (tracepoints) over the window");
    let range = |c: &tracepoints::RssCounter| {
        if c.updates == 0 {
            "no change".to_string()
        } else {
            format!(
                "{} .. {} (last {}, {} updates)",
                bytes(c.min as f64),
                bytes(c.max as f64),
                bytes(c.last as f64),
                c.updates
            )
        }
    };
    rows(
        out,
        2,
        &[
            ("rss anon", range(&k.rss_anon)),
            ("rss file", range(&k.rss_file)),
            ("rss shmem", range(&k.rss_shmem)),
            (
                "mmap",
                format!("{} calls, {}", k.mmap_count, bytes(k.mmap_bytes as f64)),
            ),
            (
                "munmap",
                format!("{} calls, {}", k.munmap_count, bytes(k.munmap_bytes as f64)),
            ),
            ("brk", format!("{} calls", k.brk_count)),
            (
                "user page faults",
                format!("{} ({} with stacks)", k.page_faults, k.page_faults_sampled),
            ),
            (
                "OOM victim / OOM kills",
                format!("{} / {}", k.oom_victim, k.oom_kills_any),
            ),
        ],
    );
    for s in &k.fault_stacks {
        let _ = writeln!(out, "  {} sampled faults:", s.samples);
        for f in s.frames.iter().take(8) {
            let _ = writeln!(out, "      {f}");
        }
    }
}

fn render_uprobes(out: &mut String, u: &UprobeReport, w: Option<&ProfilerWindow>) {
    let _ = writeln!(
        out,
        "uprobes: {:.1}s window, attached in {:.0} ms ({})",
        u.window_secs, u.attach_ms, u.note
    );
    for f in &u.families {
        let _ = writeln!(
            out,
            "  {} in {} [{}]",
            f.family,
            f.file,
            f.symbols.join(" ")
        );
        rows(
            out,
            4,
            &[
                (
                    "allocated in window",
                    format!(
                        "{} in {} allocations",
                        bytes(f.alloc_bytes as f64),
                        f.alloc_count
                    ),
                ),
                (
                    "freed (of those)",
                    format!("{} in {} frees", bytes(f.free_bytes as f64), f.free_count),
                ),
                (
                    "still live",
                    format!(
                        "{} in {} allocations",
                        bytes(f.live_bytes as f64),
                        f.live_count
                    ),
                ),
                ("frees of older allocations", f.free_unknown.to_string()),
                ("untracked (map full)", f.dropped.to_string()),
                (
                    "heapprof's own work",
                    format!(
                        "{} in {} allocations, {} still live (left out of the checks)",
                        bytes(f.own_alloc_bytes as f64),
                        f.own_alloc_count,
                        bytes(f.own_live_bytes as f64)
                    ),
                ),
            ],
        );
    }
    if let Some(w) = w {
        let _ = writeln!(
            out,
            "  profiler over the window (rate {}): allocated {}; born in the window and \
             live {}; in-use {:+}",
            bytes(w.sample_rate as f64),
            estimate(&w.allocated),
            estimate(&w.born_in_window),
            w.inuse_change
        );
        if let Some((stack, delta)) = &w.top_growth {
            let _ = writeln!(
                out,
                "  the profiler's top grower over the window (+{}):",
                bytes(*delta as f64)
            );
            for f in stack.iter().take(12) {
                let _ = writeln!(out, "      {f}");
            }
        }
    }
    let per_hit_us = if u.probe_hits > 0 {
        u.target_cpu_secs * 1e6 / u.probe_hits as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "  cost: {} probe hits; target used {:.2}s CPU in the window ({:.1} us per hit, \
         allocator calls are 200-3000x slower while attached)",
        u.probe_hits, u.target_cpu_secs, per_hit_us
    );
    for s in &u.top_stacks {
        let _ = writeln!(
            out,
            "  {} live in {} allocations ({}):",
            bytes(s.bytes as f64),
            s.count,
            s.family
        );
        for f in s.frames.iter().take(12) {
            let _ = writeln!(out, "      {f}");
        }
    }
}
