//! What `verify` found: the profiler's view, the kernel's, the uprobes',
//! and the checks between them. Serialized as-is by `--json`.

use heapprof::sys::cgroup::CgroupMemory;
use heapprof::sys::procfs::ProcessMemory;

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

/// Changes the profiler reports over the uprobe window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProfilerWindow {
    /// Change of `inuse_space`.
    pub inuse_change: i64,
    /// Change of `alloc_space`.
    pub alloc_change: i64,
    /// The site whose `inuse_space` grew most over the window, in the
    /// target's own profile: its stack (innermost first) and growth. The
    /// profiler unwinds in-process, so this names the caller even when
    /// uprobe stacks (frame pointers) stop inside the allocator.
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
    pub(super) fn of(u: &UprobeReport) -> Self {
        let bytes: u64 = u.families.iter().map(|f| f.live_bytes).sum();
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
    /// The profiler's claims (at the end of the window).
    pub profiler: Option<ProfilerView>,
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
    /// Whether every check is within tolerance.
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
