//! Dump before the kill: a watcher that writes the current and the peak heap
//! profile when memory crosses thresholds of the limit, before the kernel's
//! OOM killer (or the kubelet's eviction) ends the process. The JVM's
//! `HeapDumpOnOutOfMemoryError`, but while there is still time.
//!
//! What is measured: the cgroup's working set (usage minus inactive file
//! pages, as the kubelet computes it), against the cgroup's limit, v1 or v2.
//! Without a cgroup limit, [`OomGuardConfig::limit_bytes`] sets one and the
//! process's RSS is measured instead (or the cgroup's working set if the
//! process has a memory cgroup).
//!
//! Each threshold fires once per rise: it re-arms when memory falls 5% of
//! the limit below it. Files are `heapprof-<pid>-<unix ms>-<pct>pct-
//! {current,peak}.pb.gz`; the oldest are removed beyond
//! [`OomGuardConfig::keep`].
//!
//! Near the limit, building a profile must not be what tips the process
//! over, nor be too slow to finish before the kill. Starting the guard
//! costs nothing but its thread; the watcher reads memory every interval
//! and dumps: first both profiles unsymbolized (milliseconds: no debug
//! info is read), then each again with names, replacing the first file,
//! so that a kill that comes while names are being resolved still leaves
//! a whole profile (`heapprof pprof-heap` names it later). Each build is
//! admitted like any ([`crate::admit`]): the symbolized pass runs only
//! when the memory left allows it (the symbolizer's memory is bounded and
//! proportional to the profile), and a dump is skipped (with a line on
//! stderr) when not even the unsymbolized form fits. The guard also reserves
//! [`OomGuardConfig::reserve_bytes`] of touched memory and frees that
//! reserve right before dumping, so the dump's allocations reuse pages
//! already charged to the cgroup, and takes it back once memory is below
//! the lowest threshold again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::alloc::reentrancy::untracked;
use crate::sys::files::{self, FileError};
use crate::sys::fs::Fs;
use crate::sys::{cgroup, procfs};

/// Errors starting the guard.
#[derive(Debug, thiserror::Error)]
pub enum OomGuardError {
    /// No cgroup limit and no `limit_bytes`: nothing to measure against.
    #[error(
        "heapprof oom_guard: the process has no memory limit (no limited memory cgroup); set OomGuardConfig::limit_bytes"
    )]
    NoLimit,
    /// The dump directory cannot be created, or is not private to this
    /// user (see [`OomGuardConfig::new`]).
    #[error("heapprof oom_guard: cannot use dump directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: FileError,
    },
    /// `HEAPPROF_DUMP_DIR` is not set (for [`OomGuardConfig::from_env`]).
    #[error("heapprof oom_guard: HEAPPROF_DUMP_DIR is not set")]
    NoDir,
    /// The watcher thread could not be started.
    #[error("heapprof oom_guard: cannot spawn the watcher thread")]
    Spawn(#[source] std::io::Error),
}

/// What the guard watches and where it writes.
#[derive(Clone, Debug)]
pub struct OomGuardConfig {
    dir: PathBuf,
    thresholds: Vec<f64>,
    limit_bytes: Option<u64>,
    keep: usize,
    interval: Duration,
    reserve_bytes: usize,
}

impl OomGuardConfig {
    /// Dumps go to `dir` (created if missing). Defaults: thresholds 80%,
    /// 90%, 95%; the cgroup's limit; keep 20 files; check every 100 ms;
    /// reserve 16 MiB.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            thresholds: vec![0.80, 0.90, 0.95],
            limit_bytes: None,
            keep: 20,
            interval: Duration::from_millis(100),
            reserve_bytes: 16 << 20,
        }
    }

    /// Fractions of the limit (0 < t <= 1) that trigger a dump.
    pub fn thresholds(mut self, thresholds: &[f64]) -> Self {
        let mut t: Vec<f64> = thresholds
            .iter()
            .copied()
            .filter(|t| *t > 0.0 && *t <= 1.0)
            .collect();
        t.sort_by(f64::total_cmp);
        self.thresholds = t;
        self
    }

    /// An absolute limit in bytes, used instead of the cgroup's.
    pub fn limit_bytes(mut self, bytes: u64) -> Self {
        self.limit_bytes = Some(bytes);
        self
    }

    /// Most dump files kept in the directory (oldest removed first).
    pub fn keep(mut self, files: usize) -> Self {
        self.keep = files.max(2);
        self
    }

    /// How often memory is read.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Touched memory held in reserve and freed right before a dump.
    pub fn reserve_bytes(mut self, bytes: usize) -> Self {
        self.reserve_bytes = bytes;
        self
    }

    /// Defaults with the directory from `HEAPPROF_DUMP_DIR` (required) and
    /// an absolute limit from `HEAPPROF_DUMP_LIMIT_BYTES` (optional).
    pub fn from_env() -> Result<Self, OomGuardError> {
        let dir = std::env::var_os("HEAPPROF_DUMP_DIR").ok_or(OomGuardError::NoDir)?;
        let mut config = OomGuardConfig::new(dir);
        if let Some(limit) = std::env::var("HEAPPROF_DUMP_LIMIT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config = config.limit_bytes(limit);
        }
        Ok(config)
    }

    /// Starts watching on a background thread named `heapprof-oom-guard`;
    /// dropping the returned guard stops it.
    pub fn start(self) -> Result<OomGuard, OomGuardError> {
        start(self)
    }
}

/// Stops the watcher when dropped.
pub struct OomGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    limit: u64,
}

impl OomGuard {
    /// The limit the thresholds are fractions of, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl Drop for OomGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// What memory reading the guard uses.
enum Source {
    /// The memory cgroup's directory: its working set.
    Cgroup(String),
    /// The process's resident set size.
    Rss,
}

impl Source {
    fn used(&self) -> Option<u64> {
        match self {
            Source::Cgroup(dir) => cgroup::read(&Fs::real(), dir, 0)
                .ok()
                .map(|c| c.working_set),
            Source::Rss => Some(procfs::self_status().vm_rss).filter(|&rss| rss > 0),
        }
    }
}

/// Starts watching; see the module docs.
fn start(config: OomGuardConfig) -> Result<OomGuard, OomGuardError> {
    files::create_private_dir(&config.dir).map_err(|source| OomGuardError::Dir {
        path: config.dir.clone(),
        source,
    })?;
    let fs = Fs::real();
    let cg = cgroup::dir_of_self(&fs);
    let cg_limit = cg
        .as_deref()
        .and_then(|dir| cgroup::read(&fs, dir, 0).ok())
        .and_then(|c| c.limit);
    let (source, limit) = match (config.limit_bytes, cg, cg_limit) {
        (Some(limit), Some(cg), Some(_)) => (Source::Cgroup(cg), limit),
        (Some(limit), _, _) => (Source::Rss, limit),
        (None, Some(cg), Some(limit)) => (Source::Cgroup(cg), limit),
        (None, _, _) => return Err(OomGuardError::NoLimit),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("heapprof-oom-guard".into())
        .spawn(move || watch(config, source, limit, &flag))
        .map_err(OomGuardError::Spawn)?;
    Ok(OomGuard {
        stop,
        thread: Some(thread),
        limit,
    })
}

/// Bytes of the guards' reserves currently held (heap, not sampled).
static RESERVED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Heap bytes the OOM guards hold in reserve.
pub(crate) fn reserved_bytes() -> u64 {
    RESERVED_BYTES.load(Ordering::Relaxed)
}

/// A reserve of `bytes`, counted in [`reserved_bytes`] until [`release`]d.
fn reserve(bytes: usize) -> Vec<u8> {
    RESERVED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    // Touch every page so it is resident (charged) now.
    vec![1u8; bytes]
}

/// Frees a reserve made by [`reserve`].
fn release(reserve: &mut Vec<u8>) {
    RESERVED_BYTES.fetch_sub(reserve.len() as u64, Ordering::Relaxed);
    drop(std::mem::take(reserve));
}

fn watch(config: OomGuardConfig, source: Source, limit: u64, stop: &AtomicBool) {
    let mut reserved = untracked(|| reserve(config.reserve_bytes));
    let mut armed = vec![true; config.thresholds.len()];
    let rearm_gap = 0.05;
    while !stop.load(Ordering::Relaxed) {
        if let Some(used) = source.used() {
            let fraction = used as f64 / limit as f64;
            for (i, &t) in config.thresholds.iter().enumerate() {
                if armed[i] && fraction >= t {
                    armed[i] = false;
                    untracked(|| {
                        let freed = reserved.len() as u64;
                        release(&mut reserved);
                        dump(&config, t, freed);
                    });
                } else if !armed[i] && fraction < t - rearm_gap {
                    armed[i] = true;
                }
            }
            let lowest = config.thresholds.first().copied().unwrap_or(1.0);
            if reserved.is_empty() && config.reserve_bytes > 0 && fraction < lowest - rearm_gap {
                reserved = untracked(|| reserve(config.reserve_bytes));
            }
        }
        std::thread::park_timeout(config.interval);
    }
    untracked(|| release(&mut reserved));
}

/// Writes the current and peak profiles for threshold `t`, then prunes.
///
/// In two passes, because memory may still be rising and the kill can come
/// at any moment: first both profiles unsymbolized (addresses and
/// mappings, no debug info read: milliseconds), then, where memory allows
/// a symbolized build, each is built again with names and replaces its
/// unsymbolized file (written atomically, so a kill during the second pass
/// leaves the first pass's file whole; `heapprof pprof-heap` names it
/// later). Each build is admitted like any (`admit`), counting the `freed`
/// bytes of the reserve the dump reuses; one that does not fit is not
/// written, with a line on stderr.
fn dump(config: &OomGuardConfig, t: f64, freed: u64) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let pct = (t * 100.0).round() as u32;
    let pid = std::process::id();
    let name = |kind: &str| format!("heapprof-{pid}-{ms:015}-{pct:03}pct-{kind}.pb.gz");
    let snapshots = [
        ("current", Some(crate::snapshot())),
        ("peak", crate::peak_snapshot()),
    ];
    let snapshots = snapshots
        .iter()
        .filter_map(|(kind, snapshot)| Some((*kind, snapshot.as_ref()?)));
    let mut written = Vec::new();
    for (kind, snapshot) in snapshots {
        match crate::profile::admit_within(crate::BuildKind::Heap, freed) {
            Ok(_admission) => {
                let options = crate::PprofOptions::new().symbolize(false);
                if write(config, &name(kind), &snapshot.to_pprof_with(&options)) {
                    written.push((kind, snapshot));
                }
            }
            Err(e) => eprintln!("heapprof oom_guard: no {kind} dump at {pct}%: {e}"),
        }
    }
    for (kind, snapshot) in written {
        let Ok(admission) = crate::profile::admit_within(crate::BuildKind::Heap, freed) else {
            continue;
        };
        if admission.symbolize() {
            let options = crate::PprofOptions::new().symbolize(true);
            write(config, &name(kind), &snapshot.to_pprof_with(&options));
        }
    }
    prune(&config.dir, config.keep);
}

/// Writes a dump privately and atomically (`sys::files`); whether it was
/// written. Errors go to stderr, the guard's only place to report them.
fn write(config: &OomGuardConfig, name: &str, bytes: &[u8]) -> bool {
    match files::write_atomically(&config.dir, name, bytes) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("heapprof oom_guard: cannot write a dump: {e}");
            false
        }
    }
}

fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dumps: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("heapprof-") && n.ends_with(".pb.gz"))
        })
        .collect();
    // Names sort by pid, then time; order by the time field.
    dumps.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').nth(2).map(str::to_owned))
            .unwrap_or_default()
    });
    let excess = dumps.len().saturating_sub(keep);
    for p in &dumps[..excess] {
        let _ = std::fs::remove_file(p);
    }
}
