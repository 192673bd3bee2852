//! `heapprof verify`: what the profiler claims, held against what the
//! kernel shows (procfs, the memory cgroup) and, with `--uprobes`, against
//! exact allocator counts over a bounded window.

use std::time::{Duration, Instant};

use crate::bpf::tracepoints::{self, KernelReport};
use crate::bpf::uprobes::{self, UprobeReport};
use crate::cgroup::{self, CgroupMemory};
use crate::discovery;
use crate::fetch;
use crate::fs::Fs;
use crate::procfs::{self, ProcessMemory};
use crate::profile;
use crate::reconcile::{HeapSources, Reconciliation, reconcile};
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
    /// Attach uprobes.
    pub uprobes: bool,
    /// Attach tracepoints.
    pub kernel: bool,
    /// Tolerance of the checks, percent.
    pub tolerance: f64,
    /// Stacks to show.
    pub top: usize,
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

fn profiler_view(addr: &str) -> Result<ProfilerView, String> {
    let body = fetch::get(addr, "/debug/pprof/heap").map_err(|e| e.to_string())?;
    let p = profile::decode(&body).map_err(|e| e.to_string())?;
    let total = |t: &str| p.total(t).map_err(|e| e.to_string());
    let metrics = fetch::get(addr, "/metrics")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(ProfilerView {
        addr: addr.to_string(),
        inuse_bytes: total("inuse_space")?,
        inuse_objects: total("inuse_objects")?,
        alloc_bytes: total("alloc_space")?,
        jemalloc_allocated: metric(&metrics, "heapprof_jemalloc_allocated_bytes"),
        jemalloc_resident: metric(&metrics, "heapprof_jemalloc_resident_bytes"),
    })
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
            r.cgroup = Some(cgroup::read(&fs, &cgroup_dir(&fs, path)?, 1)?);
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

    if opts.uprobes || opts.kernel {
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
        if let (Some(Ok(b)), Some(Ok(a))) = (&before, &after) {
            r.profiler_window = Some(ProfilerWindow {
                inuse_change: a.inuse_bytes - b.inuse_bytes,
                alloc_change: a.alloc_bytes - b.alloc_bytes,
            });
        }
        r.profiler = after.and_then(|a| a.map_err(|e| r.notes.push(e)).ok());
    } else if let Some(addr) = &addr {
        r.profiler = profiler_view(addr).map_err(|e| r.notes.push(e)).ok();
    }

    let process = match r.process.take() {
        Some(p) => p,
        None => procfs::read_process(&fs, pid)?,
    };
    match cgroup::dir_of_pid(&fs, pid).and_then(|d| cgroup::read(&fs, &d, 0)) {
        Ok(c) => r.cgroup = Some(c),
        Err(e) => r.notes.push(e.to_string()),
    }
    let heap = HeapSources {
        profiler_inuse: r.profiler.as_ref().map(|p| p.inuse_bytes.max(0) as u64),
        jemalloc_allocated: r.profiler.as_ref().and_then(|p| p.jemalloc_allocated),
        jemalloc_resident: r.profiler.as_ref().and_then(|p| p.jemalloc_resident),
    };
    r.reconciliation = Some(reconcile(&process, &heap));
    add_checks(&mut r, &process, opts.tolerance);
    r.process = Some(process);
    Ok(r)
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
