//! `heapprof verify`: what the profiler claims, held against what the
//! kernel shows (procfs, the memory cgroup) and, with `--uprobes`, against
//! exact allocator counts over a bounded window.

mod check;
mod checks;
mod claims;
mod reconcile;
mod report;

use std::time::{Duration, Instant};

use heapprof::sys::fs::Fs;
use heapprof::sys::{cgroup, procfs};
use heapprof::wire::metric;

pub use report::{LiveGrowth, ProfilerView, ProfilerWindow, VerifyReport};

use crate::bpf::{tracepoints, uprobes};
use crate::{fetch, profile, scrape};
use claims::ClaimReport;
use reconcile::{HeapSources, growth, reconcile};
use report::children_growth;

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

fn profiler_view(addr: &str) -> Result<(ProfilerView, profile::HeapProfile), String> {
    let body = fetch::get(addr, "/debug/pprof/heap").map_err(|e| e.to_string())?;
    let p =
        profile::decode_limited(&body, fetch::settings().max_bytes).map_err(|e| e.to_string())?;
    let total = |t: &str| p.total(t).map_err(|e| e.to_string());
    let metrics = fetch::get(addr, "/metrics")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let metric = |name| scrape::parse_value(&metrics, name).map(|v| v as u64);
    let view = ProfilerView {
        addr: addr.to_string(),
        inuse_bytes: total("inuse_space")?,
        inuse_objects: total("inuse_objects")?,
        alloc_bytes: total("alloc_space")?,
        jemalloc_allocated: metric(metric::JEMALLOC_ALLOCATED),
        jemalloc_resident: metric(metric::JEMALLOC_RESIDENT),
    };
    Ok((view, p))
}

/// Runs `verify`. `attached` is called once the uprobes are in place
/// (before the window starts), with a line describing them.
pub fn run(opts: &Options, attached: impl FnOnce(&str)) -> Result<VerifyReport, VerifyError> {
    let fs = Fs::real();
    let mut r = VerifyReport::default();
    let pid = match &opts.target {
        Target::Cgroup(path) => {
            let dir = cgroup::dir_of_path(&fs, path)?;
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
    let addr = match fetch::endpoint_of(pid) {
        Ok(addr) => Some(addr),
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
    checks::add_checks(&mut r, &process, opts.tolerance);
    if let (Some((url, key)), Some(end)) = (&opts.claims, claim_end) {
        let mut c = ClaimReport {
            url: url.clone(),
            key: key.clone(),
            at_start: claim_start,
            at_end: end,
            ..ClaimReport::default()
        };
        checks::check_claim(&mut r, &mut c, &process, opts.tolerance);
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
