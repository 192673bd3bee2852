//! A cheap kernel-side view of one process over a window, from tracepoints:
//! its RSS counters as the kernel updates them (`kmem:rss_stat`), its
//! `mmap`/`munmap`/`brk` calls, its user page faults (one in
//! `FAULT_SAMPLE_EVERY` with a user stack) and OOM kills.
//!
//! Tracepoints fire in the kernel without trapping the target's code, so
//! the cost is a few hundred nanoseconds per event, unlike uprobes.
//!
//! aya finds a tracepoint's id in tracefs. When tracefs is not mounted
//! (as on this project's machines), the command mounts it in a private
//! mount namespace of its own: nothing changes for the rest of the system
//! and the mount goes away with the process.

use std::collections::HashMap;
use std::num::NonZeroU32;

use aya::maps::{Array, HashMap as BpfHashMap, StackTraceMap};
use aya::programs::TracePoint;
use aya::programs::trace_point::TracePointLinkId;
use aya::{Ebpf, EbpfLoader};

use super::error::BpfError;
use crate::symbols::Symbolizer;
use heapprof::sys::maps::{Mapping, parse_maps};

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracepoints.bpf.o"));

/// One page fault in this many gets its user stack recorded.
pub const FAULT_SAMPLE_EVERY: u32 = 16;

/// `(program, category, tracepoint)`.
const TRACEPOINTS: [(&str, &str, &str); 6] = [
    ("rss_stat", "kmem", "rss_stat"),
    ("enter_mmap", "syscalls", "sys_enter_mmap"),
    ("enter_munmap", "syscalls", "sys_enter_munmap"),
    ("enter_brk", "syscalls", "sys_enter_brk"),
    ("page_fault_user", "exceptions", "page_fault_user"),
    ("oom_victim", "oom", "mark_victim"),
];

/// Errors of the tracepoint check.
#[derive(Debug, thiserror::Error)]
pub enum TracepointError {
    /// The kernel refused for lack of privilege.
    #[error("tracepoints need root or CAP_BPF+CAP_PERFMON")]
    Permission(#[source] Box<BpfError>),
    /// Mounting tracefs privately needs `CAP_SYS_ADMIN`.
    #[error("tracefs is not mounted, and mounting it privately needs CAP_SYS_ADMIN: {call}")]
    TracefsPermission {
        /// The refused call.
        call: &'static str,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
    /// tracefs is not mounted and could not be mounted privately.
    #[error("tracefs is not mounted and mounting it privately failed: {call}")]
    Tracefs {
        /// The failing call.
        call: &'static str,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
    /// Not a process id.
    #[error("process {0} not found")]
    NoProcess(u32),
    /// Loading, attaching or reading failed for another reason.
    #[error(transparent)]
    Bpf(Box<BpfError>),
}

impl From<BpfError> for TracepointError {
    fn from(e: BpfError) -> Self {
        if e.is_permission() {
            TracepointError::Permission(Box::new(e))
        } else {
            TracepointError::Bpf(Box::new(e))
        }
    }
}

const OBJECT: &str = "tracepoints.bpf.o";

fn missing(kind: &'static str, name: &str) -> BpfError {
    BpfError::Missing {
        object: OBJECT,
        kind,
        name: name.to_string(),
    }
}

const TRACEFS: &std::ffi::CStr = c"/sys/kernel/tracing";

/// Makes tracefs visible at /sys/kernel/tracing, mounting it in a private
/// mount namespace of this (single-threaded) process if needed.
fn ensure_tracefs() -> Result<(), TracepointError> {
    if std::path::Path::new("/sys/kernel/tracing/events").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    let check = |call: &'static str, rc: libc::c_int| {
        let source = std::io::Error::last_os_error();
        match rc {
            0 => Ok(()),
            _ if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(TracepointError::TracefsPermission { call, source })
            }
            _ => Err(TracepointError::Tracefs { call, source }),
        }
    };
    // SAFETY: unshare takes no pointers; CLONE_NEWNS only changes this
    // process's mount namespace (it fails harmlessly if threads share it).
    check("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    })?;
    // SAFETY: all pointers are null or NUL-terminated literals; making "/"
    // recursively private stops our mount from propagating to the host.
    check("mount(/, MS_PRIVATE)", unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: NUL-terminated literals and a null data pointer, as mount(2)
    // allows for tracefs.
    check("mount(tracefs)", unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            TRACEFS.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
}

/// Mirrors `struct rss` in tracepoints.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RssCounter {
    /// Last value seen, bytes.
    pub last: u64,
    /// Smallest value seen.
    pub min: u64,
    /// Largest value seen.
    pub max: u64,
    /// Updates seen.
    pub updates: u64,
}

// SAFETY: repr(C), only u64 fields, no padding; any bit pattern is valid.
unsafe impl aya::Pod for RssCounter {}

/// A sampled page-fault stack.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultStack {
    /// Sampled faults with this stack.
    pub samples: u64,
    /// Function names, innermost first.
    pub frames: Vec<String>,
}

/// What the tracepoints saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelReport {
    /// RSS file pages over the window (kmem:rss_stat MM_FILEPAGES).
    pub rss_file: RssCounter,
    /// RSS anonymous pages (MM_ANONPAGES).
    pub rss_anon: RssCounter,
    /// Swap entries (MM_SWAPENTS).
    pub swap: RssCounter,
    /// RSS shared memory (MM_SHMEMPAGES).
    pub rss_shmem: RssCounter,
    /// `mmap` calls.
    pub mmap_count: u64,
    /// Bytes asked of `mmap`.
    pub mmap_bytes: u64,
    /// `munmap` calls.
    pub munmap_count: u64,
    /// Bytes unmapped.
    pub munmap_bytes: u64,
    /// `brk` calls.
    pub brk_count: u64,
    /// User page faults.
    pub page_faults: u64,
    /// Of those, sampled with a stack.
    pub page_faults_sampled: u64,
    /// Times the target was chosen by the OOM killer.
    pub oom_victim: u64,
    /// OOM kills on the machine during the window.
    pub oom_kills_any: u64,
    /// Top page-fault stacks.
    pub fault_stacks: Vec<FaultStack>,
}

/// Tracepoints attached for one process.
pub struct Session {
    ebpf: Ebpf,
    pid: u32,
    links: Vec<(&'static str, TracePointLinkId)>,
    maps: Vec<Mapping>,
}

impl Session {
    /// Loads and attaches the programs, filtered to `pid`.
    pub fn attach(pid: u32) -> Result<Self, TracepointError> {
        NonZeroU32::new(pid).ok_or(TracepointError::NoProcess(pid))?;
        ensure_tracefs()?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|t| parse_maps(&t))
            .unwrap_or_default();
        let mut ebpf = EbpfLoader::new()
            .override_global("target_tgid", &pid, true)
            .override_global("fault_sample_every", &FAULT_SAMPLE_EVERY, true)
            .load(PROGRAM)
            .map_err(|source| BpfError::Load {
                object: OBJECT,
                source,
            })?;
        let mut links = Vec::new();
        for (name, category, event) in TRACEPOINTS {
            let p: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| missing("program", name))?
                .try_into()
                .map_err(BpfError::program(name))?;
            p.load()
                .map_err(BpfError::program(format!("loading {name}")))?;
            let link = p
                .attach(category, event)
                .map_err(BpfError::program(format!("attaching {category}:{event}")))?;
            links.push((name, link));
        }
        Ok(Self {
            ebpf,
            pid,
            links,
            maps,
        })
    }

    /// Detaches and reports, with the `top` page-fault stacks.
    pub fn finish(mut self, top: usize) -> Result<KernelReport, TracepointError> {
        for (name, link) in std::mem::take(&mut self.links) {
            if let Some(p) = self.ebpf.program_mut(name) {
                let p: Result<&mut TracePoint, _> = p.try_into();
                if let Ok(p) = p {
                    let _ = p.detach(link);
                }
            }
        }
        let map = |name: &str| self.ebpf.map(name).ok_or_else(|| missing("map", name));
        let rss: Array<_, RssCounter> =
            Array::try_from(map("rss")?).map_err(BpfError::map("rss"))?;
        let counters: Array<_, u64> =
            Array::try_from(map("counters")?).map_err(BpfError::map("counters"))?;
        let counts: BpfHashMap<_, u32, u64> =
            BpfHashMap::try_from(map("fault_counts")?).map_err(BpfError::map("fault_counts"))?;
        let stacks: StackTraceMap<_> =
            StackTraceMap::try_from(map("fault_stacks")?).map_err(BpfError::map("fault_stacks"))?;
        let c = |i: u32| counters.get(&i, 0).unwrap_or(0);
        let r = |i: u32| rss.get(&i, 0).unwrap_or_default();

        let mut by_stack: HashMap<u32, u64> = HashMap::new();
        for (id, n) in counts.iter().flatten() {
            by_stack.insert(id, n);
        }
        let mut rows: Vec<(u32, u64)> = by_stack.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map(|t| parse_maps(&t))
            .ok()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| std::mem::take(&mut self.maps));
        let mut sym = Symbolizer::new(self.pid, maps);
        let fault_stacks = rows
            .into_iter()
            .take(top)
            .map(|(id, samples)| FaultStack {
                samples,
                frames: stacks
                    .get(&id, 0)
                    .map(|s| s.frames().iter().map(|f| sym.name(f.ip)).collect())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(KernelReport {
            rss_file: r(0),
            rss_anon: r(1),
            swap: r(2),
            rss_shmem: r(3),
            mmap_count: c(0),
            mmap_bytes: c(1),
            munmap_count: c(2),
            munmap_bytes: c(3),
            brk_count: c(4),
            page_faults: c(5),
            page_faults_sampled: c(6),
            oom_victim: c(7),
            oom_kills_any: c(8),
            fault_stacks,
        })
    }
}
