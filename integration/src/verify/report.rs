//! What `verify` found: the profiler's view, the kernel's, the uprobes',
//! and the checks between them. Serialized as-is by `--json`.

use heapprof::sampling::Estimate;
use heapprof::sys::cgroup::CgroupMemory;
use heapprof::sys::procfs::ProcessMemory;
use heapprof::wire::AllocatorDocument;

use super::check::Check;
use super::claims::ClaimReport;
use super::reconcile::{Growth, Reconciliation};
use crate::bpf::tracepoints::KernelReport;
use crate::bpf::uprobes::UprobeReport;

/// The profiler's claims, as served by its endpoint.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProfilerView {
    /// Endpoint address.
    pub addr: String,
    /// `inuse_space` total.
    pub inuse_bytes: i64,
    /// `inuse_objects` total.
    pub inuse_objects: i64,
    /// `alloc_space` total.
    pub alloc_bytes: i64,
    /// `heapprof_jemalloc_allocated_bytes` from `/metrics`.
    pub jemalloc_allocated: Option<u64>,
    /// `heapprof_jemalloc_resident_bytes` from `/metrics`.
    pub jemalloc_resident: Option<u64>,
}

/// The window of `--uprobes` / `--kernel`, on `CLOCK_MONOTONIC` (one clock
/// for every process of the machine), nanoseconds. The probes are all
/// attached before it opens and detached after it closes; uprobes count
/// exactly from `opened_ns` to `closed_ns`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Window {
    /// The window opened (every probe attached, counting started).
    pub opened_ns: u64,
    /// The window closed (counting stopped, probes about to be detached).
    pub closed_ns: u64,
    /// The profiler's first reading, taken right after the window opened.
    pub profiler_first_ns: Option<u64>,
    /// Its last reading, taken right before the window closed.
    pub profiler_last_ns: Option<u64>,
    /// The window in one line.
    pub statement: String,
}

impl Window {
    /// Seconds the window was open.
    pub fn seconds(&self) -> f64 {
        self.closed_ns.saturating_sub(self.opened_ns) as f64 / 1e9
    }

    pub(super) fn describe(&mut self) {
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
        self.statement = match (self.profiler_first_ns, self.profiler_last_ns) {
            (Some(first), Some(last)) => format!(
                "open {:.3}s (probes attached before, detached after); the profiler's readings \
                 {:.1} ms after it opened and {:.1} ms before it closed span {:.3}s of it",
                self.seconds(),
                ms(self.opened_ns, first),
                ms(last, self.closed_ns),
                ms(first, last) / 1e3
            ),
            _ => format!(
                "open {:.3}s (probes attached before, detached after); no profiler readings",
                self.seconds()
            ),
        };
    }
}

/// What the profiler saw over the window, from its readings right after
/// attaching and right before detaching.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProfilerWindow {
    /// Change of `inuse_space`.
    pub inuse_change: i64,
    /// Change of `alloc_space`.
    pub alloc_change: i64,
    /// Bytes allocated between the readings, with the samples behind it.
    pub allocated: Estimate,
    /// Live bytes, at the last reading, of allocations made since the
    /// first (what uprobes see live), with the samples behind it.
    pub born_in_window: Estimate,
    /// The sample rate, bytes.
    pub sample_rate: u64,
    /// The site whose `inuse_space` grew most, in the target's own
    /// profiles taken just before attaching and just after detaching: its
    /// stack (innermost first) and growth. The profiler unwinds
    /// in-process, so this names the caller even when uprobe stacks (frame
    /// pointers) stop inside the allocator.
    pub top_growth: Option<(Vec<String>, i64)>,
}

/// Growth of the live allocator bytes the uprobes saw (all families).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LiveGrowth {
    /// Bytes allocated in the window and still live at its end.
    pub bytes: u64,
    /// The window, seconds.
    pub window_secs: f64,
    /// `bytes / window_secs`.
    pub bytes_per_sec: f64,
    /// The same per minute.
    pub bytes_per_min: f64,
}

impl LiveGrowth {
    /// The program's live bytes (the profiler's own work left out).
    pub(super) fn of(u: &UprobeReport) -> Self {
        let bytes: u64 = u
            .families
            .iter()
            .map(|f| f.live_bytes.saturating_sub(f.own_live_bytes))
            .sum();
        let per_sec = if u.window_secs > 0.0 {
            bytes as f64 / u.window_secs
        } else {
            0.0
        };
        Self {
            bytes,
            window_secs: u.window_secs,
            bytes_per_sec: per_sec,
            bytes_per_min: per_sec * 60.0,
        }
    }
}

/// How one child cgroup changed over the window.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChildGrowth {
    /// The child's directory name (the container).
    pub name: String,
    /// Its directory.
    pub dir: String,
    /// Change of the working set, bytes.
    pub working_set_change: i64,
    /// Change of usage, bytes.
    pub usage_change: i64,
    /// Change of rss, bytes.
    pub rss_change: i64,
}

/// Each child's change from `start` to `end` (children matched by
/// directory), largest working-set growth first.
pub fn children_growth(start: &CgroupMemory, end: &CgroupMemory) -> Vec<ChildGrowth> {
    let d = |a: u64, b: u64| b as i64 - a as i64;
    let mut rows: Vec<ChildGrowth> = end
        .children
        .iter()
        .filter_map(|e| {
            let s = start.children.iter().find(|s| s.dir == e.dir)?;
            Some(ChildGrowth {
                name: e.dir.rsplit('/').next().unwrap_or(&e.dir).to_string(),
                dir: e.dir.clone(),
                working_set_change: d(s.working_set, e.working_set),
                usage_change: d(s.usage, e.usage),
                rss_change: d(s.rss, e.rss),
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        b.working_set_change
            .cmp(&a.working_set_change)
            .then(b.usage_change.cmp(&a.usage_change))
    });
    rows
}

/// Everything `verify` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The process, if one was named.
    pub pid: Option<u32>,
    /// The window of `--uprobes` / `--kernel`.
    pub window: Option<Window>,
    /// The profiler's claims (at the end of the window).
    pub profiler: Option<ProfilerView>,
    /// The allocator's figures next to the profiler's estimate of the same
    /// (`/debug/heapprof/sampling`), read at the end.
    pub allocator: Option<AllocatorDocument>,
    /// The profiler's sample rate, bytes.
    pub sample_rate: Option<u64>,
    /// `/proc` view.
    pub process: Option<ProcessMemory>,
    /// Memory cgroup view.
    pub cgroup: Option<CgroupMemory>,
    /// RSS explained.
    pub reconciliation: Option<Reconciliation>,
    /// Exact counts from uprobes.
    pub uprobes: Option<UprobeReport>,
    /// Kernel events over the window.
    pub kernel: Option<KernelReport>,
    /// The profiler's change over the uprobe window.
    pub profiler_window: Option<ProfilerWindow>,
    /// How fast live allocator bytes grew over the uprobe window.
    pub live_growth: Option<LiveGrowth>,
    /// The service's own claim and whether it holds.
    pub claims: Option<ClaimReport>,
    /// With `--cgroup` and a window: each child's change over it.
    pub children_growth: Vec<ChildGrowth>,
    /// The child whose working set grew most (if any grew).
    pub growing_child: Option<ChildGrowth>,
    /// With `verify PID --duration S`: how each part of RSS changed.
    pub rss_growth: Option<Growth>,
    /// Comparisons.
    pub checks: Vec<Check>,
    /// Things that could not be read, and caveats.
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether no check found a disagreement or a false claim (checks
    /// with too few samples to judge do not fail).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

#[cfg(test)]
mod tests {
    use heapprof::sys::cgroup;

    use super::*;

    #[test]
    fn growing_child_is_the_largest_working_set_growth() {
        let cg = |dir: &str, ws: u64, children: Vec<CgroupMemory>| CgroupMemory {
            dir: dir.into(),
            version: cgroup::Version::V1,
            usage: ws + 100,
            working_set: ws,
            rss: ws,
            cache: 0,
            file_inactive: 100,
            limit: None,
            failcnt: 0,
            oom: 0,
            oom_kill: 0,
            children,
        };
        let start = cg(
            "/p",
            30,
            vec![cg("/p/a", 10, vec![]), cg("/p/b", 20, vec![])],
        );
        let end = cg(
            "/p",
            90,
            vec![
                cg("/p/a", 10, vec![]),
                cg("/p/b", 80, vec![]),
                cg("/p/new", 5, vec![]),
            ],
        );
        let rows = children_growth(&start, &end);
        assert_eq!(rows.len(), 2, "a child born in the window has no start");
        assert_eq!(rows[0].name, "b");
        assert_eq!(rows[0].working_set_change, 60);
        assert_eq!(rows[1].name, "a");
        assert_eq!(rows[1].usage_change, 0);
    }
}
