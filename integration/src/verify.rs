//! `heapprof verify`: what the profiler claims, held against what the
//! kernel shows (procfs, the memory cgroup) and, with `--uprobes`, against
//! exact allocator counts over a bounded window.

use std::time::{Duration, Instant};

use crate::bpf::tracepoints::{self, KernelReport};
use crate::bpf::uprobes::{self, UprobeReport};
use crate::cgroup::{self, CgroupMemory};
use crate::claims::{self, ClaimReport};
use crate::discovery;
use crate::fetch;
use crate::fs::Fs;
use crate::procfs::{self, ProcessMemory};
use crate::profile;
use crate::reconcile::{Growth, HeapSources, Reconciliation, growth, reconcile};
use crate::report::{Check, bytes};

/// Below this many bytes in the window, sampled and exact counts are not
/// compared (the sampling error of a few samples dominates).
pub const MIN_WINDOW_BYTES: u64 = 1 << 20;

/// Errors that stop `verify` (the others become notes in the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The target process cannot be read.
    #[error(transparent)]
    Proc(#[from] procfs::ProcError),
    /// The cgroup cannot be read.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The uprobes could not be attached.
    #[error(transparent)]
    Uprobes(#[from] uprobes::UprobeError),
    /// The tracepoints could not be attached.
    #[error(transparent)]
    Tracepoints(#[from] tracepoints::TracepointError),
    /// The service's own claim could not be read.
    #[error(transparent)]
    Claim(#[from] claims::ClaimError),
}

/// What to verify.
#[derive(Clone, Debug)]
pub enum Target {
    /// A process (and its cgroup).
    Pid(u32),
    /// A cgroup alone, with its children.
    Cgroup(String),
}

/// Options of `verify`.
#[derive(Clone, Debug)]
pub struct Options {
    /// What to verify.
    pub target: Target,
    /// Window for `--uprobes`.
    pub duration: Duration,
    /// `--duration` was given: read the cgroup (cgroup target) or the
    /// process's RSS breakdown (pid target) at both ends of `duration`.
    pub cgroup_window: bool,
    /// Attach uprobes.
    pub uprobes: bool,
    /// Attach tracepoints.
    pub kernel: bool,
    /// Tolerance of the checks, percent.
    pub tolerance: f64,
    /// Stacks to show.
    pub top: usize,
    /// The service's own memory claim: `(URL, KEY)`.
    pub claims: Option<(String, String)>,
}

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
    fn of(u: &UprobeReport) -> Self {
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

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}

fn profiler_view(addr: &str) -> Result<(ProfilerView, profile::HeapProfile), String> {
    let body = fetch::get(addr, "/debug/pprof/heap").map_err(|e| e.to_string())?;
    let p = profile::decode(&body).map_err(|e| e.to_string())?;
    let total = |t: &str| p.total(t).map_err(|e| e.to_string());
    let metrics = fetch::get(addr, "/metrics")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let view = ProfilerView {
        addr: addr.to_string(),
        inuse_bytes: total("inuse_space")?,
        inuse_objects: total("inuse_objects")?,
        alloc_bytes: total("alloc_space")?,
        jemalloc_allocated: metric(&metrics, "heapprof_jemalloc_allocated_bytes"),
        jemalloc_resident: metric(&metrics, "heapprof_jemalloc_resident_bytes"),
    };
    Ok((view, p))
}

/// Finds the memory cgroup directory named by a user: a directory, or a
/// path inside the v1 memory or v2 hierarchy.
pub fn cgroup_dir(fs: &Fs, path: &str) -> Result<String, cgroup::CgroupError> {
    let path = path.trim_end_matches('/');
    [
        path.to_string(),
        format!("/sys/fs/cgroup/memory{path}"),
        format!("/sys/fs/cgroup{path}"),
        format!("/sys/fs/cgroup/unified{path}"),
    ]
    .into_iter()
    .find(|d| cgroup::version_of(fs, d).is_some())
    .ok_or_else(|| cgroup::CgroupError::NotFound {
        what: path.to_string(),
    })
}

/// Runs `verify`. `attached` is called once the uprobes are in place
/// (before the window starts), with a line describing them.
pub fn run(opts: &Options, attached: impl FnOnce(&str)) -> Result<VerifyReport, VerifyError> {
    let fs = Fs::real();
    let mut r = VerifyReport::default();
    let pid = match &opts.target {
        Target::Cgroup(path) => {
            let dir = cgroup_dir(&fs, path)?;
            let start = cgroup::read(&fs, &dir, 1)?;
            if !opts.cgroup_window {
                r.cgroup = Some(start);
                return Ok(r);
            }
            std::thread::sleep(opts.duration);
            let end = cgroup::read(&fs, &dir, 1)?;
            r.children_growth = children_growth(&start, &end);
            r.growing_child = r
                .children_growth
                .first()
                .filter(|g| g.working_set_change > 0 || g.usage_change > 0)
                .cloned();
            r.cgroup = Some(end);
            return Ok(r);
        }
        Target::Pid(pid) => *pid,
    };
    r.pid = Some(pid);
    procfs::read_process(&fs, pid)?; // fail early if the target is gone
    let addr = match discovery::find(&discovery::dir(), pid) {
        Ok(e) => Some(e.addr),
        Err(e) => {
            r.notes.push(e.to_string());
            None
        }
    };

    let claim_now = || {
        opts.claims
            .as_ref()
            .map(|(url, key)| claims::read(url, key))
            .transpose()
    };
    // With an explicit window, the RSS breakdown is read at both ends.
    let start_reading = if opts.cgroup_window {
        let view = addr
            .as_deref()
            .and_then(|a| profiler_view(a).ok())
            .map(|(v, _)| v);
        Some((
            Instant::now(),
            reconcile(
                &procfs::read_process(&fs, pid)?,
                &heap_sources(view.as_ref()),
            ),
        ))
    } else {
        None
    };
    let mut claim_start = None;
    let claim_end;
    if opts.uprobes || opts.kernel {
        claim_start = claim_now()?;
        // The profiles are fetched outside the window, so that what the
        // target allocates to answer them (symbolization) is not counted
        // by the probes while the profiler, by design, does not count it.
        let before = addr.as_deref().map(profiler_view);
        let kernel = opts
            .kernel
            .then(|| tracepoints::Session::attach(pid))
            .transpose()?;
        let mut session = opts
            .uprobes
            .then(|| uprobes::Session::attach(pid))
            .transpose()?;
        let what = match (opts.uprobes, opts.kernel) {
            (true, true) => "uprobes and tracepoints",
            (true, false) => "uprobes",
            _ => "tracepoints",
        };
        attached(&format!(
            "{what} attached to {pid}; window {:?}",
            opts.duration
        ));
        let end = Instant::now() + opts.duration;
        while Instant::now() < end && fs.exists(format!("/proc/{pid}")) {
            std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
        }
        if let Some(s) = &mut session {
            s.detach();
        }
        r.kernel = kernel.map(|k| k.finish(opts.top)).transpose()?;
        let after = addr.as_deref().map(profiler_view);
        // Read /proc while the target is known to be alive.
        r.process = procfs::read_process(&fs, pid).ok();
        r.uprobes = session.map(|s| s.finish(opts.top)).transpose()?;
        r.live_growth = r.uprobes.as_ref().map(LiveGrowth::of);
        claim_end = claim_now()?;
        if let (Some(Ok((b, bp))), Some(Ok((a, ap)))) = (&before, &after) {
            let top_growth = profile::diff(bp, ap, "inuse_space")
                .ok()
                .and_then(|rows| rows.into_iter().next())
                .filter(|row| row.delta > 0)
                .map(|row| (row.stack, row.delta));
            r.profiler_window = Some(ProfilerWindow {
                inuse_change: a.inuse_bytes - b.inuse_bytes,
                alloc_change: a.alloc_bytes - b.alloc_bytes,
                top_growth,
            });
        }
        r.profiler = after.and_then(|a| a.map(|(v, _)| v).map_err(|e| r.notes.push(e)).ok());
    } else {
        if start_reading.is_some() {
            std::thread::sleep(opts.duration);
        }
        if let Some(addr) = &addr {
            r.profiler = profiler_view(addr)
                .map(|(v, _)| v)
                .map_err(|e| r.notes.push(e))
                .ok();
        }
        claim_end = claim_now()?;
    }

    let process = match r.process.take() {
        Some(p) => p,
        None => procfs::read_process(&fs, pid)?,
    };
    match cgroup::dir_of_pid(&fs, pid).and_then(|d| cgroup::read(&fs, &d, 0)) {
        Ok(c) => r.cgroup = Some(c),
        Err(e) => r.notes.push(e.to_string()),
    }
    let end = reconcile(&process, &heap_sources(r.profiler.as_ref()));
    if let Some((started, start)) = &start_reading {
        r.rss_growth = Some(growth(start, &end, started.elapsed().as_secs_f64()));
    }
    r.reconciliation = Some(end);
    add_checks(&mut r, &process, opts.tolerance);
    if let (Some((url, key)), Some(end)) = (&opts.claims, claim_end) {
        let mut c = ClaimReport {
            url: url.clone(),
            key: key.clone(),
            at_start: claim_start,
            at_end: end,
            ..ClaimReport::default()
        };
        check_claim(&mut r, &mut c, &process, opts.tolerance);
        r.claims = Some(c);
    }
    r.process = Some(process);
    Ok(r)
}

/// The heap figures a profiler view publishes.
fn heap_sources(view: Option<&ProfilerView>) -> HeapSources {
    HeapSources {
        profiler_inuse: view.map(|p| p.inuse_bytes.max(0) as u64),
        jemalloc_allocated: view.and_then(|p| p.jemalloc_allocated),
        jemalloc_resident: view.and_then(|p| p.jemalloc_resident),
    }
}

fn add_checks(r: &mut VerifyReport, p: &ProcessMemory, tol: f64) {
    if p.rollup_rss > 0 {
        r.checks.push(Check::new(
            "rss_status_vs_smaps",
            "RSS: /proc/PID/smaps_rollup vs status VmRSS",
            p.rollup_rss as f64,
            p.status.vm_rss as f64,
            tol,
        ));
    }
    if let Some(v) = &r.profiler
        && let Some(j) = v.jemalloc_allocated
    {
        r.checks.push(Check::new(
            "profiler_vs_jemalloc",
            "live heap: jemalloc stats.allocated vs profiler inuse_space",
            j as f64,
            v.inuse_bytes as f64,
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
    if f.alloc_bytes < MIN_WINDOW_BYTES {
        r.notes.push(format!(
            "only {} allocated in the window: too little to compare sampled and exact counts",
            bytes(f.alloc_bytes as f64)
        ));
        return;
    }
    r.checks.push(Check::new(
        "window_alloc",
        &format!("bytes allocated in window: uprobes ({fam}) vs profiler alloc_space change"),
        f.alloc_bytes as f64,
        w.alloc_change as f64,
        tol,
    ));
    r.checks.push(Check::new(
        "window_inuse",
        &format!("in-use change over window: uprobes ({fam}) live vs profiler inuse_space change"),
        f.live_bytes as f64,
        w.inuse_change as f64,
        tol,
    ));
    if f.free_unknown > 0 {
        r.notes.push(format!(
            "{} frees of allocations older than the window: the profiler's in-use change \
             includes them, uprobes cannot size them",
            f.free_unknown
        ));
    }
}

/// Holds the service's claim against RSS, the live heap, and the live
/// bytes the uprobes saw growing; fills `c.consistent` and `c.verdict`.
fn check_claim(r: &mut VerifyReport, c: &mut ClaimReport, p: &ProcessMemory, tol: f64) {
    let claim = c.at_end;
    let slack = claim.abs() * tol / 100.0;
    let mut checks = vec![Check::claim(
        "claim_vs_rss",
        &format!("{} claims at least RSS (/proc/PID/status VmRSS)", c.key),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines() {
        let text = "# HELP x\nheapprof_jemalloc_allocated_bytes 1234\nheapprof_jemalloc_resident_bytes 5e3\n";
        assert_eq!(
            metric(text, "heapprof_jemalloc_allocated_bytes"),
            Some(1234)
        );
        assert_eq!(metric(text, "heapprof_jemalloc_resident_bytes"), Some(5000));
        assert_eq!(metric(text, "nope"), None);
    }

    #[test]
    fn growing_child_is_the_largest_working_set_growth() {
        let cg = |dir: &str, ws: u64, children: Vec<CgroupMemory>| CgroupMemory {
            dir: dir.into(),
            version: cgroup::Version::V1,
            usage: ws + 100,
            working_set: ws,
            rss: ws,
            cache: 0,
            inactive_file: 100,
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

    #[test]
    fn cgroup_dir_from_fixture_paths() {
        let fs = Fs::at(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cgroup"
        ));
        assert_eq!(
            cgroup_dir(&fs, "/kubepods.slice/pod1").unwrap(),
            "/sys/fs/cgroup/kubepods.slice/pod1"
        );
        assert!(cgroup_dir(&fs, "/nope").is_err());
    }
}
