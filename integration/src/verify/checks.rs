//! The checks of `verify`: the profiler against the allocator and the
//! kernel, and the service's own claim against all of them.

use heapprof::sys::procfs::ProcessMemory;

use super::MIN_WINDOW_BYTES;
use super::check::Check;
use super::claims::ClaimReport;
use super::report::VerifyReport;
use crate::format::bytes;

pub(super) fn add_checks(r: &mut VerifyReport, p: &ProcessMemory, tol: f64) {
    if p.rollup_rss > 0 {
        r.checks.push(Check::new(
            "rss_status_vs_smaps",
            "RSS: the sum over mappings (smaps rollup) vs the status line",
            p.rollup_rss as f64,
            p.status.vm_rss as f64,
            tol,
        ));
    }
    let rate = r
        .profiler_window
        .as_ref()
        .map(|w| w.sample_rate)
        .or(r.sample_rate)
        .unwrap_or(0);
    if let Some(a) = &r.allocator {
        r.checks.push(Check::sampled(
            &format!("profiler_vs_{}", a.name),
            &format!(
                "live heap at usable size: {} minus thread caches, the allocator's own \
                 structures, sampled blocks' alignment and heapprof's own heap, vs the \
                 profiler's estimate",
                if a.name == "jemalloc" {
                    "jemalloc stats.allocated"
                } else {
                    "glibc mallinfo2 uordblks + hblkhd"
                }
            ),
            a.comparable as f64,
            &a.estimate,
            rate,
            tol,
        ));
    }
    if let Some(k) = &r.kernel
        && k.rss_anon.updates > 0
    {
        r.checks.push(Check::new(
            "rss_anon_kernel_vs_proc",
            "anonymous RSS: /proc/PID/status RssAnon vs last kmem:rss_stat",
            p.status.rss_anon as f64,
            k.rss_anon.last as f64,
            tol,
        ));
    }
    let (Some(u), Some(w)) = (&r.uprobes, &r.profiler_window) else {
        return;
    };
    let fam = if u.families.iter().any(|f| f.family == "jemalloc") {
        "jemalloc"
    } else {
        "libc"
    };
    let Some(f) = u.families.iter().find(|f| f.family == fam) else {
        return;
    };
    if f.own_alloc_count > 0 {
        r.notes.push(format!(
            "uprobes saw {} allocations ({}) of heapprof's own work in the window ({} still \
             live: snapshots, symbolization, its history): left out of window_alloc and \
             window_inuse, as the profiler leaves its own work out by design",
            f.own_alloc_count,
            bytes(f.own_alloc_bytes as f64),
            bytes(f.own_live_bytes as f64)
        ));
    }
    if f.stack_errors > 0 {
        r.notes.push(format!(
            "{} allocations in the window had no stack (the kernel could not walk it); \
             they count as the program's",
            f.stack_errors
        ));
    }
    r.checks.push(Check::sampled(
        "window_alloc",
        &format!(
            "bytes allocated in the window: uprobes ({fam}, the profiler's own work left out) \
             vs the profiler's alloc_space change between its readings"
        ),
        f.alloc_bytes.saturating_sub(f.own_alloc_bytes) as f64,
        &w.allocated,
        rate,
        tol,
    ));
    r.checks.push(Check::sampled(
        "window_inuse",
        &format!(
            "bytes allocated in the window and live at its end: uprobes ({fam}, the \
             profiler's own work left out) vs the profiler's live samples born in the window"
        ),
        f.live_bytes.saturating_sub(f.own_live_bytes) as f64,
        &w.born_in_window,
        rate,
        tol,
    ));
}

/// Holds the service's claim against RSS, the live heap, and the live
/// bytes the uprobes saw growing; fills `c.consistent` and `c.verdict`.
pub(super) fn check_claim(r: &mut VerifyReport, c: &mut ClaimReport, p: &ProcessMemory, tol: f64) {
    let claim = c.at_end;
    let slack = claim.abs() * tol / 100.0;
    let mut checks = vec![Check::claim(
        "claim_vs_rss",
        &format!("{} claims at least RSS (/proc/PID/status)", c.key),
        claim,
        p.status.vm_rss as f64,
        slack,
    )];
    let heap = r.profiler.as_ref().and_then(|v| {
        v.jemalloc_allocated
            .map(|j| (j as f64, "jemalloc stats.allocated"))
            .or(Some((v.inuse_bytes as f64, "profiler inuse_space")))
    });
    if let Some((heap, source)) = heap {
        checks.push(Check::claim(
            "claim_vs_heap",
            &format!("{} claims at least the live heap ({source})", c.key),
            claim,
            heap,
            slack,
        ));
    }
    if let (Some(g), Some(start)) = (&r.live_growth, c.at_start) {
        // A claim that stays flat while the allocator's live bytes grow is
        // false however large it is.
        let claimed_growth = claim - start;
        checks.push(Check::claim(
            "claim_vs_live_growth",
            &format!(
                "{} change over the window covers the live bytes uprobes saw growing",
                c.key
            ),
            claimed_growth,
            g.bytes as f64,
            slack.max(MIN_WINDOW_BYTES as f64),
        ));
    }
    c.consistent = checks.iter().all(|k| k.ok);
    let g = r.live_growth.as_ref();
    let reasons: Vec<String> = checks
        .iter()
        .filter(|k| !k.ok)
        .map(|k| match k.name.as_str() {
            "claim_vs_live_growth" => format!(
                "live allocator bytes grew {} in {:.1}s ({}/min) while the claim went from {} to {}",
                bytes(k.expected),
                g.map_or(0.0, |g| g.window_secs),
                bytes(g.map_or(0.0, |g| g.bytes_per_min)),
                bytes(c.at_start.unwrap_or(claim)),
                bytes(claim)
            ),
            "claim_vs_rss" => format!("RSS is {}", bytes(k.expected)),
            _ => format!("the live heap is {}", bytes(k.expected)),
        })
        .collect();
    c.consistent = reasons.is_empty();
    c.verdict = if reasons.is_empty() {
        format!(
            "claim {} = {} is consistent with what the kernel and the allocator show",
            c.key,
            bytes(claim)
        )
    } else {
        format!(
            "claim {} = {} is FALSE: {}",
            c.key,
            bytes(claim),
            reasons.join("; ")
        )
    };
    r.checks.extend(checks);
}
