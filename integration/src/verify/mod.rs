//! `heapprof verify`: what the profiler claims, held against what the
//! kernel shows (procfs, the memory cgroup) and, with `--uprobes`, against
//! exact allocator counts over a bounded window.
//!
//! # One window
//!
//! With `--uprobes` or `--kernel`, the probes are attached first and the
//! window opened (uprobes start counting at one instant, however long
//! attaching took); the profiler is read right after
//! (`/debug/heapprof/sampling`, a walk of its tables, no symbolization) and
//! again, with `since_ns` set to the first reading's time, right before
//! the window closes and the probes are detached. Both sides count
//! the same stretch of time, up to the few milliseconds of a reading
//! (`Window` says how many, on `CLOCK_MONOTONIC`, the clock every process
//! shares). The readings make the target allocate: the part the profiler
//! leaves out by design (its own work) runs under a marker frame that the
//! uprobes tell apart and leave out too; serving the request is the
//! program's own allocation and both sides count it. The profiles that
//! name the top grower are fetched outside the window (before attaching,
//! after detaching): symbolizing costs the target memory the window should
//! not see.

pub(crate) mod check;
mod checks;
mod claims;
mod reconcile;
mod report;

use std::time::{Duration, Instant};

use heapprof::sys::fs::Fs;
use heapprof::sys::{cgroup, procfs};
use heapprof::wire::metric;

pub use report::{LiveGrowth, ProfilerView, ProfilerWindow, VerifyReport, Window};

use heapprof::sys::clock::monotonic_ns;
use heapprof::wire::SamplingDocument;

use crate::bpf::{tracepoints, uprobes};
use crate::{fetch, profile, scrape};
use claims::ClaimReport;
use reconcile::{growth, reconcile};
use report::children_growth;

/// The least live growth a claim must cover before it is called false
/// (below it, growth is noise: a buffer or two).
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

/// The profiler's sampling document: `since_ns` adds the live bytes born
/// since then, `resident` the resident measurement.
fn sampling(addr: &str, since_ns: Option<u64>, resident: bool) -> Result<SamplingDocument, String> {
    let mut path = String::from("/debug/heapprof/sampling?");
    if let Some(t) = since_ns {
        path.push_str(&format!("since_ns={t}&"));
    }
    if resident {
        path.push_str("resident=1");
    }
    let body = fetch::get(addr, &path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))
}

/// Runs `verify`. `attached` is called once the window is open (probes
/// attached and counting, the profiler's first reading taken), with a
/// line describing it.
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
    let note = |r: &mut VerifyReport, e: String| r.notes.push(e);

    let claim_now = || {
        opts.claims
            .as_ref()
            .map(|(url, key)| claims::read(url, key))
            .transpose()
    };
    // The RSS partition, as close in time to the process's resident
    // measurement as two reads can be.
    let partition_now = |r: &mut VerifyReport| -> Result<_, VerifyError> {
        let resident = addr
            .as_deref()
            .map(|a| sampling(a, None, true))
            .transpose()
            .map_err(|e| note(r, e))
            .ok()
            .flatten();
        let process = procfs::read_process(&fs, pid)?;
        Ok((Instant::now(), process, resident))
    };
    // With an explicit window, the RSS breakdown is read at both ends
    // (before the probes are attached: measuring residency is the
    // profiler's own work, which the window should not see).
    let start_reading = if opts.cgroup_window {
        let (at, process, resident) = partition_now(&mut r)?;
        let resident = resident.and_then(|d| d.resident);
        Some((at, reconcile(&process, resident.as_ref())))
    } else {
        None
    };
    let mut claim_start = None;
    let claim_end;
    if opts.uprobes || opts.kernel {
        claim_start = claim_now()?;
        // Profiles (symbolized: they cost the target memory) outside the
        // window; they only name the top grower.
        let before = addr.as_deref().map(profiler_view);
        let kernel = opts
            .kernel
            .then(|| tracepoints::Session::attach(pid))
            .transpose()?;
        let mut session = opts
            .uprobes
            .then(|| uprobes::Session::attach(pid))
            .transpose()?;
        if let Some(s) = &mut session {
            s.open()?;
        }
        let mut window = Window {
            opened_ns: monotonic_ns(),
            ..Window::default()
        };
        let first = addr.as_deref().map(|a| sampling(a, None, false));
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
        let last = match &first {
            Some(Ok(d)) => addr
                .as_deref()
                .map(|a| sampling(a, Some(d.monotonic_ns), false)),
            _ => None,
        };
        if let Some(s) = &mut session {
            s.close();
        }
        window.closed_ns = monotonic_ns();
        if let Some(s) = &mut session {
            s.detach();
        }
        r.kernel = kernel.map(|k| k.finish(opts.top)).transpose()?;
        r.uprobes = session.map(|s| s.finish(opts.top)).transpose()?;
        r.live_growth = r.uprobes.as_ref().map(LiveGrowth::of);
        let after = addr.as_deref().map(profiler_view);
        claim_end = claim_now()?;
        match (first, last) {
            (Some(Ok(first)), Some(Ok(last))) => {
                window.profiler_first_ns = Some(first.monotonic_ns);
                window.profiler_last_ns = Some(last.monotonic_ns);
                let top_growth = match (&before, &after) {
                    (Some(Ok((_, bp))), Some(Ok((_, ap)))) => profile::diff(bp, ap, "inuse_space")
                        .ok()
                        .and_then(|rows| rows.into_iter().next())
                        .filter(|row| row.delta > 0)
                        .map(|row| (row.stack, row.delta)),
                    _ => None,
                };
                r.profiler_window = Some(ProfilerWindow {
                    inuse_change: (last.inuse.bytes - first.inuse.bytes).round() as i64,
                    alloc_change: (last.allocated.bytes - first.allocated.bytes).round() as i64,
                    allocated: last.allocated.since(&first.allocated),
                    born_in_window: last.born_since.unwrap_or_default(),
                    sample_rate: last.sample_rate,
                    top_growth,
                });
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => note(&mut r, e),
            _ => {}
        }
        window.describe();
        r.window = Some(window);
        r.profiler = after.and_then(|a| a.map(|(v, _)| v).map_err(|e| note(&mut r, e)).ok());
    } else {
        if start_reading.is_some() {
            std::thread::sleep(opts.duration);
        }
        if let Some(addr) = &addr {
            r.profiler = profiler_view(addr)
                .map(|(v, _)| v)
                .map_err(|e| note(&mut r, e))
                .ok();
        }
        claim_end = claim_now()?;
    }

    let (at, process, end_doc) = partition_now(&mut r)?;
    match cgroup::dir_of_pid(&fs, pid).and_then(|d| cgroup::read(&fs, &d, 0)) {
        Ok(c) => r.cgroup = Some(c),
        Err(e) => r.notes.push(e.to_string()),
    }
    let end = reconcile(&process, end_doc.as_ref().and_then(|d| d.resident.as_ref()));
    if let Some((started, start)) = &start_reading {
        r.rss_growth = Some(growth(
            start,
            &end,
            at.duration_since(*started).as_secs_f64(),
        ));
    }
    r.reconciliation = Some(end);
    if let Some(d) = end_doc {
        r.sample_rate = Some(d.sample_rate);
        r.allocator = d.allocator;
    }
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
