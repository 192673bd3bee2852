//! Exact allocator accounting over a bounded window, with uprobes and
//! uretprobes on the target's allocator entry points (bcc memleak's method).
//!
//! Probed families, found in the ELF symbol tables of what the target maps:
//! - libc (cookie 0): `malloc calloc realloc free posix_memalign
//!   aligned_alloc memalign` in the mapped `libc.so*` (or in the executable
//!   if it defines `malloc` itself);
//! - jemalloc (cookie 1): tikv-jemallocator's prefixed `_rjem_*` functions
//!   in the executable. Rust's deallocations go to `_rjem_sdallocx(ptr,
//!   size, flags)`; the recorded size is used, not its argument.
//!
//! heapprof pads the block of a small sampled allocation (it asks the
//! allocator for 4 KiB more, `heapprof::sampling::SAMPLED_BLOCK_SYMBOL`
//! says so with the sizes): a probe there sets the recorded size back to
//! what the program asked for, so the counts stay exact while the target
//! samples (`padded`, `padding_bytes`).
//!
//! The window is two instants: the probes are attached first, then
//! [`Session::open`] starts the counting (one map write), [`Session::close`]
//! stops it, and only then are the probes detached (attaching and
//! detaching take hundreds of milliseconds, probe by probe, during which a
//! window would be half open). Only allocations made while the window is
//! open are seen: older ones, and frees of them (counted as
//! `free_unknown`), are invisible.
//!
//! Stacks are the kernel's frame-pointer walk from the allocator's return
//! (the allocator's caller first). They are trimmed the way heapprof's
//! profiles are (`heapprof::sampling::first_kept_frame`): the profiler's
//! frames and the allocation plumbing go from the top, so the first frame
//! is the function that asked for memory. Allocations the profiler makes
//! for its own work (answering the endpoint, symbolizing) run under one
//! marker function (`heapprof::sampling::PROFILER_WORK_FRAME`); those are
//! counted apart per family (`own_*`), because the profiler, by design,
//! does not sample them.
//! Each probe hit traps into the kernel: several microseconds per hit, so a
//! malloc-heavy target slows down by orders of magnitude while attached.
//! glibc's `free` starts with `test %rdi,%rdi`, which the kernel cannot
//! emulate and single-steps (~18 us); when those bytes are found the probe
//! goes 3 bytes later, which keeps the argument register intact.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, StackTraceMap};
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::{UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeAttachPoint};
use aya::{Ebpf, EbpfLoader};

use super::error::BpfError;
use crate::symbols::{ElfSymbols, PROLOGUE_BYTES, Symbolizer};
use heapprof::sampling::{SAMPLED_BLOCK_SYMBOL, first_kept_frame, is_profiler_work};
use heapprof::sys::maps::{Mapping, parse_maps};
use heapprof::sys::procfs::parse_stat_cpu_ticks;

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uprobes.bpf.o"));

/// Errors of the uprobe check.
#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    /// The kernel refused for lack of privilege.
    #[error("uprobes need root or CAP_BPF+CAP_PERFMON")]
    Permission(#[source] Box<BpfError>),
    /// The target process is gone.
    #[error("process {0} not found (exited?)")]
    NoProcess(u32),
    /// No allocator symbol found in the target.
    #[error("no allocator entry points (malloc, _rjem_malloc) found in process {0}")]
    NoSymbols(u32),
    /// Loading, attaching or reading failed for another reason.
    #[error(transparent)]
    Bpf(Box<BpfError>),
}

impl From<BpfError> for UprobeError {
    fn from(e: BpfError) -> Self {
        if e.is_permission() {
            UprobeError::Permission(Box::new(e))
        } else {
            UprobeError::Bpf(Box::new(e))
        }
    }
}

const OBJECT: &str = "uprobes.bpf.o";

fn missing(kind: &'static str, name: &str) -> BpfError {
    BpfError::Missing {
        object: OBJECT,
        kind,
        name: name.to_string(),
    }
}

/// Mirrors `struct alloc_info` in uprobes.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AllocInfo {
    size: u64,
    stack_id: i64,
    family: u64,
}

// SAFETY: repr(C), only integer fields, no padding; any bit pattern is valid.
unsafe impl aya::Pod for AllocInfo {}

/// Mirrors `struct totals` in uprobes.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    alloc_count: u64,
    alloc_bytes: u64,
    free_count: u64,
    free_bytes: u64,
    free_unknown: u64,
    dropped: u64,
    probe_hits: u64,
    stack_errors: u64,
    padded: u64,
    padding_bytes: u64,
}

// SAFETY: repr(C), only u64 fields, no padding; any bit pattern is valid.
unsafe impl aya::Pod for Totals {}

/// Mirrors `struct stack_key` in uprobes.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StackKey {
    stack_id: i64,
    family: u64,
}

// SAFETY: repr(C), two 8-byte integers, no padding; any bit pattern is valid.
unsafe impl aya::Pod for StackKey {}

/// Mirrors `struct stack_totals` in uprobes.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct StackTotals {
    count: u64,
    bytes: u64,
}

// SAFETY: repr(C), only u64 fields, no padding; any bit pattern is valid.
unsafe impl aya::Pod for StackTotals {}

/// An allocator family: cookie, name, `(symbol, kind)` pairs.
struct Family {
    cookie: u64,
    name: &'static str,
    symbols: &'static [(&'static str, Kind)],
}

/// Which programs an entry point gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Malloc,
    Calloc,
    Aligned,
    Memalign,
    Realloc,
    Free,
}

impl Kind {
    /// Entry program and, except for frees, return program.
    fn programs(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Malloc => ("malloc_enter", Some("malloc_exit")),
            Kind::Calloc => ("calloc_enter", Some("malloc_exit")),
            Kind::Aligned => ("aligned_enter", Some("malloc_exit")),
            Kind::Memalign => ("memalign_enter", Some("memalign_exit")),
            Kind::Realloc => ("realloc_enter", Some("realloc_exit")),
            Kind::Free => ("free_enter", None),
        }
    }
}

const FAMILIES: [Family; 2] = [
    Family {
        cookie: 0,
        name: "libc",
        symbols: &[
            ("malloc", Kind::Malloc),
            ("calloc", Kind::Calloc),
            ("realloc", Kind::Realloc),
            ("free", Kind::Free),
            ("posix_memalign", Kind::Memalign),
            ("aligned_alloc", Kind::Aligned),
            ("memalign", Kind::Aligned),
        ],
    },
    Family {
        cookie: 1,
        name: "jemalloc",
        symbols: &[
            ("_rjem_malloc", Kind::Malloc),
            ("_rjem_mallocx", Kind::Malloc),
            ("_rjem_calloc", Kind::Calloc),
            ("_rjem_realloc", Kind::Realloc),
            ("_rjem_rallocx", Kind::Realloc),
            ("_rjem_free", Kind::Free),
            ("_rjem_sdallocx", Kind::Free),
            ("_rjem_dallocx", Kind::Free),
            ("_rjem_posix_memalign", Kind::Memalign),
            ("_rjem_aligned_alloc", Kind::Aligned),
            ("_rjem_memalign", Kind::Aligned),
        ],
    },
];

/// Counts of one allocator family over the window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FamilyCounts {
    /// `libc` or `jemalloc`.
    pub family: String,
    /// The probed file.
    pub file: String,
    /// The symbols probed.
    pub symbols: Vec<String>,
    /// Allocations seen.
    pub alloc_count: u64,
    /// Bytes allocated.
    pub alloc_bytes: u64,
    /// Frees of allocations made in the window.
    pub free_count: u64,
    /// Bytes of those.
    pub free_bytes: u64,
    /// Frees of addresses allocated before the window (invisible sizes).
    pub free_unknown: u64,
    /// Allocations not tracked because the live map was full.
    pub dropped: u64,
    /// Allocations made in the window and still live at its end.
    pub live_count: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Probe invocations (entries).
    pub probe_hits: u64,
    /// Allocations whose stack the kernel could not capture (not
    /// attributed to anyone).
    pub stack_errors: u64,
    /// Of `alloc_count`, allocations of the profiler's own work.
    pub own_alloc_count: u64,
    /// Their bytes.
    pub own_alloc_bytes: u64,
    /// Of `live_count`, the profiler's own still live.
    pub own_live_count: u64,
    /// Their bytes.
    pub own_live_bytes: u64,
    /// Of `alloc_count`, blocks heapprof padded for a sampled allocation;
    /// their recorded size is the program's.
    pub padded: u64,
    /// The padding taken off `alloc_bytes` for those.
    pub padding_bytes: u64,
}

/// One stack with outstanding allocations.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LiveStack {
    /// The allocator family.
    pub family: String,
    /// Live bytes.
    pub bytes: u64,
    /// Live allocations.
    pub count: u64,
    /// Function names, innermost first, from the function that asked
    /// for memory (the profiler's frames and the allocation plumbing
    /// trimmed, as in profiles).
    pub frames: Vec<String>,
}

/// What the probes saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UprobeReport {
    /// Length of the window, seconds.
    pub window_secs: f64,
    /// Load + attach time, milliseconds.
    pub attach_ms: f64,
    /// Per family.
    pub families: Vec<FamilyCounts>,
    /// Top stacks by outstanding bytes.
    pub top_stacks: Vec<LiveStack>,
    /// Probe hits, all families.
    pub probe_hits: u64,
    /// Where heapprof's padded-block probe is attached (the target's
    /// executable), if the target runs heapprof.
    pub sampled_block_probe: Option<String>,
    /// CPU seconds the target used during the window.
    pub target_cpu_secs: f64,
    /// What this does not see.
    pub note: String,
}

/// Probes attached to one process: [`Session::open`] and
/// [`Session::close`] bound the window, [`Session::finish`] detaches and
/// reports.
pub struct Session {
    ebpf: Ebpf,
    pid: u32,
    links: Vec<(&'static str, UProbeLinkId)>,
    families: Vec<FamilyCounts>,
    sampled_block_probe: Option<String>,
    /// When the window opened, while it is open.
    opened: Option<Instant>,
    attach_ms: f64,
    /// CPU ticks of the target when the window opened, then used in it.
    cpu_ticks: u64,
    window: Duration,
    /// The target's mappings at attach time, for symbolizing if it exits.
    maps: Vec<Mapping>,
}

fn read_maps(pid: u32) -> Result<Vec<Mapping>, UprobeError> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|t| parse_maps(&t))
        .map_err(|_| UprobeError::NoProcess(pid))
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat_cpu_ticks(&t))
        .unwrap_or(0)
}

/// Which file provides each family in process `pid`: `(family index, path)`.
fn targets(pid: u32, maps: &[Mapping]) -> Vec<(usize, String, ElfSymbols)> {
    // Probe placement needs the first bytes of every entry point probed.
    let probed: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.symbols.iter().map(|&(name, _)| name))
        .collect();
    let read = |path: &str| ElfSymbols::read_with_prologues(path, &probed).ok();
    let exe = format!("/proc/{pid}/exe");
    let exe_syms = read(&exe);
    let libc = maps
        .iter()
        .find(|m| {
            let base = m.path.rsplit('/').next().unwrap_or("");
            base.starts_with("libc.so") || base.starts_with("libc-")
        })
        .map(|m| format!("/proc/{pid}/root{}", m.path));
    let mut out = Vec::new();
    if let Some(syms) = &exe_syms
        && (syms.has("_rjem_malloc") || syms.has("_rjem_mallocx"))
    {
        out.push((1, exe.clone(), syms.clone()));
    }
    match (libc, exe_syms) {
        (Some(path), _) => {
            if let Some(syms) = read(&path) {
                out.push((0, path, syms));
            }
        }
        (None, Some(syms)) if syms.has("malloc") => out.push((0, exe, syms)),
        _ => {}
    }
    out
}

/// Where to put a function's probes, in bytes from its start: past a
/// first instruction that only compares an argument register (`test
/// %rdi,%rdi` in glibc's `free`, `cmp $0x1000,%rdi` in jemalloc's
/// `malloc` and `sdallocx`) when a conditional jump follows, else 0.
///
/// The kernel emulates a probed jump (and `push`), but executes a probed
/// compare out of line with a second trap; on this VM that single step
/// cost ~15 us per call (BENCHMARKS.md, "Verifier cost"). Past the compare
/// the argument registers and the return address are untouched, so the
/// entry programs and the return probes read the same values there.
fn probe_offset(code: [u8; PROLOGUE_BYTES]) -> u64 {
    // REX.W, then TEST r/m64,r64 (0x85) or CMP r/m64,imm (0x81 imm32, 0x83
    // imm8) with a register operand (ModRM mod = 11; CMP's reg field = 7).
    let len = match code {
        [0x48, 0x85, modrm, ..] if modrm >> 6 == 0b11 => 3,
        [0x48, 0x81, modrm, ..] if modrm >> 3 == 0b11_111 => 7,
        [0x48, 0x83, modrm, ..] if modrm >> 3 == 0b11_111 => 4,
        _ => return 0,
    };
    // A short (0x70-0x7f) or near (0x0f 0x80-0x8f) conditional jump next.
    match code[len..] {
        [0x70..=0x7f, ..] | [0x0f, 0x80..=0x8f, ..] => len as u64,
        _ => 0,
    }
}

/// The uprobe program `name`, loaded into the kernel (once).
fn loaded<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, BpfError> {
    let p: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or_else(|| missing("program", name))?
        .try_into()
        .map_err(BpfError::program(name))?;
    if p.fd().is_err() {
        p.load()
            .map_err(BpfError::program(format!("loading {name}")))?;
    }
    Ok(p)
}

/// Attaches the padded-block probe to `pid`'s executable if it runs
/// heapprof (has [`SAMPLED_BLOCK_SYMBOL`]); returns where.
fn attach_sampled_block(
    ebpf: &mut Ebpf,
    pid: u32,
    scope: UProbeScope,
    links: &mut Vec<(&'static str, UProbeLinkId)>,
) -> Result<Option<String>, UprobeError> {
    let exe = format!("/proc/{pid}/exe");
    let has =
        ElfSymbols::read_with_prologues(&exe, &[]).is_ok_and(|syms| syms.has(SAMPLED_BLOCK_SYMBOL));
    if !has {
        return Ok(None);
    }
    let name = "sampled_block_enter";
    let p = loaded(ebpf, name)?;
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::Symbol(SAMPLED_BLOCK_SYMBOL),
        cookie: None,
    };
    let link = p
        .attach(point, &exe, scope)
        .map_err(BpfError::program(format!(
            "attaching {name} to {SAMPLED_BLOCK_SYMBOL} in {exe}"
        )))?;
    links.push((name, link));
    Ok(Some(exe))
}

impl Session {
    /// Loads the programs and attaches them to `pid`'s allocators.
    pub fn attach(pid: u32) -> Result<Self, UprobeError> {
        let t0 = Instant::now();
        let maps = read_maps(pid)?;
        let found = targets(pid, &maps);

        if found.is_empty() {
            return Err(UprobeError::NoSymbols(pid));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("target_tgid", &pid, true)
            .load(PROGRAM)
            .map_err(|source| BpfError::Load {
                object: OBJECT,
                source,
            })?;
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(UprobeError::NoProcess(pid))?);
        let mut links = Vec::new();
        let mut families = Vec::new();
        for (fi, path, syms) in found {
            let fam = &FAMILIES[fi];
            let mut counts = FamilyCounts {
                family: fam.name.into(),
                file: path.clone(),
                ..FamilyCounts::default()
            };
            let mut seen_addr = std::collections::HashSet::new();
            for &(sym, kind) in fam.symbols {
                let Some(addr) = syms.address(sym) else {
                    continue;
                };
                if !seen_addr.insert(addr) {
                    continue; // an alias (glibc: memalign == aligned_alloc)
                }
                let skip = syms.prologue(sym).map_or(0, probe_offset);
                let (enter, exit) = kind.programs();
                for name in [Some(enter), exit] {
                    let Some(name) = name else { continue };
                    let p = loaded(&mut ebpf, name)?;
                    let location = if skip > 0 {
                        UProbeAttachLocation::SymbolOffset(sym, skip)
                    } else {
                        UProbeAttachLocation::Symbol(sym)
                    };
                    let point = UProbeAttachPoint {
                        location,
                        cookie: Some(fam.cookie),
                    };
                    let link =
                        p.attach(point, &path, scope)
                            .map_err(BpfError::program(format!(
                                "attaching {name} to {sym} in {path}"
                            )))?;
                    links.push((name, link));
                }
                counts.symbols.push(if skip > 0 {
                    format!("{sym}+{skip}")
                } else {
                    sym.to_string()
                });
            }
            families.push(counts);
        }
        let sampled_block_probe = attach_sampled_block(&mut ebpf, pid, scope, &mut links)?;
        Ok(Self {
            ebpf,
            pid,
            links,
            families,
            sampled_block_probe,
            opened: None,
            attach_ms: t0.elapsed().as_secs_f64() * 1e3,
            cpu_ticks: 0,
            window: Duration::ZERO,
            maps,
        })
    }

    fn set_counting(&mut self, on: bool) -> Result<(), BpfError> {
        let map = self
            .ebpf
            .map_mut("control")
            .ok_or_else(|| missing("map", "control"))?;
        let mut control: Array<_, u32> = Array::try_from(map).map_err(BpfError::map("control"))?;
        control
            .set(0, u32::from(on), 0)
            .map_err(BpfError::map("control"))
    }

    /// Opens the window: from now on the probes count.
    pub fn open(&mut self) -> Result<(), UprobeError> {
        self.cpu_ticks = cpu_ticks(self.pid);
        self.set_counting(true)?;
        self.opened = Some(Instant::now());
        Ok(())
    }

    /// Closes the window: from now on the probes count nothing (the counts
    /// stay readable). Idempotent.
    pub fn close(&mut self) {
        let Some(opened) = self.opened.take() else {
            return;
        };
        // If the write failed the probes go on counting until detached,
        // and the window reported is the one measured here.
        let _ = self.set_counting(false);
        self.window = opened.elapsed();
        self.cpu_ticks = cpu_ticks(self.pid).saturating_sub(self.cpu_ticks);
    }

    /// Closes the window if open and detaches the probes.
    pub fn detach(&mut self) {
        self.close();
        for (name, link) in std::mem::take(&mut self.links) {
            if let Some(p) = self.ebpf.program_mut(name) {
                let p: Result<&mut UProbe, _> = p.try_into();
                if let Ok(p) = p {
                    let _ = p.detach(link);
                }
            }
        }
    }

    /// Detaches the probes if still attached and reads what they counted,
    /// with the `top` stacks of outstanding allocations symbolized.
    pub fn finish(mut self, top: usize) -> Result<UprobeReport, UprobeError> {
        self.detach();
        let (window, ticks) = (self.window, self.cpu_ticks);
        let maps = match read_maps(self.pid) {
            Ok(m) if !m.is_empty() => m,
            _ => std::mem::take(&mut self.maps),
        };
        let totals: Array<_, Totals> =
            Array::try_from(self.map("totals")?).map_err(BpfError::map("totals"))?;
        let live: BpfHashMap<_, u64, AllocInfo> =
            BpfHashMap::try_from(self.map("live")?).map_err(BpfError::map("live"))?;
        let stacks: StackTraceMap<_> =
            StackTraceMap::try_from(self.map("stacks")?).map_err(BpfError::map("stacks"))?;

        let alloc_stacks: BpfHashMap<_, StackKey, StackTotals> =
            BpfHashMap::try_from(self.map("alloc_stacks")?)
                .map_err(BpfError::map("alloc_stacks"))?;

        let mut families = self.families.clone();
        let mut by_stack: HashMap<(u64, i64), (u64, u64)> = HashMap::new();
        for entry in live.iter() {
            let Ok((_, info)) = entry else { continue };
            let e = by_stack.entry((info.family, info.stack_id)).or_default();
            e.0 += info.size;
            e.1 += 1;
        }
        let mut sym = Symbolizer::new(self.pid, maps);
        let mut frames_of = |id: i64| -> Option<Vec<String>> {
            let st = stacks.get(&u32::try_from(id).ok()?, 0).ok()?;
            Some(st.frames().iter().map(|f| sym.name(f.ip)).collect())
        };
        // Which stacks are the profiler's own work, decided once per stack.
        let mut own: HashMap<i64, bool> = HashMap::new();
        let mut is_own = |id: i64, frames_of: &mut dyn FnMut(i64) -> Option<Vec<String>>| {
            *own.entry(id).or_insert_with(|| {
                frames_of(id).is_some_and(|f| f.iter().any(|n| is_profiler_work(n)))
            })
        };
        let mut own_alloc: HashMap<u64, (u64, u64)> = HashMap::new();
        for entry in alloc_stacks.iter() {
            let Ok((key, t)) = entry else { continue };
            if key.stack_id >= 0 && is_own(key.stack_id, &mut frames_of) {
                let e = own_alloc.entry(key.family).or_default();
                e.0 += t.count;
                e.1 += t.bytes;
            }
        }
        for f in &mut families {
            let cookie = FAMILIES
                .iter()
                .find(|x| x.name == f.family)
                .map_or(0, |x| x.cookie);
            let t = totals.get(&(cookie as u32), 0).unwrap_or_default();
            f.alloc_count = t.alloc_count;
            f.alloc_bytes = t.alloc_bytes;
            f.free_count = t.free_count;
            f.free_bytes = t.free_bytes;
            f.free_unknown = t.free_unknown;
            f.dropped = t.dropped;
            f.probe_hits = t.probe_hits;
            f.stack_errors = t.stack_errors;
            f.padded = t.padded;
            f.padding_bytes = t.padding_bytes;
            (f.own_alloc_count, f.own_alloc_bytes) =
                own_alloc.get(&cookie).copied().unwrap_or_default();
            for ((fam, id), (bytes, count)) in &by_stack {
                if *fam == cookie {
                    f.live_bytes += bytes;
                    f.live_count += count;
                    if *id >= 0 && is_own(*id, &mut frames_of) {
                        f.own_live_bytes += bytes;
                        f.own_live_count += count;
                    }
                }
            }
        }
        let mut rows: Vec<((u64, i64), (u64, u64))> = by_stack.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
        let probed: Vec<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.symbols.iter().map(|&(name, _)| name))
            .collect();
        let top_stacks = rows
            .into_iter()
            .take(top)
            .map(|((fam, id), (bytes, count))| {
                let frames = frames_of(id)
                    .map(|frames| trimmed(frames, &probed))
                    .unwrap_or_else(|| vec!["[stack unavailable]".to_string()]);
                LiveStack {
                    family: FAMILIES
                        .iter()
                        .find(|x| x.cookie == fam)
                        .map_or("?", |x| x.name)
                        .into(),
                    bytes,
                    count,
                    frames,
                }
            })
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(UprobeReport {
            window_secs: window.as_secs_f64(),
            attach_ms: self.attach_ms,
            probe_hits: families.iter().map(|f| f.probe_hits).sum(),
            sampled_block_probe: self.sampled_block_probe.clone(),
            families,
            top_stacks,
            target_cpu_secs: ticks as f64 / hz,
            note: "uprobes see only allocations made during the window; older ones \
                   (and frees of them, counted as free_unknown) are invisible. Stacks are \
                   unwound by frame pointers: build the target with frame pointers \
                   (-C force-frame-pointers=yes, -fno-omit-frame-pointer) for full stacks"
                .into(),
        })
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map, BpfError> {
        self.ebpf.map(name).ok_or_else(|| missing("map", name))
    }
}

/// A uprobe stack (innermost first) from the function that asked for
/// memory: the probed entry points, then what profiles trim
/// (`first_kept_frame`), removed from the top.
fn trimmed(mut frames: Vec<String>, probed: &[&str]) -> Vec<String> {
    let entry = frames
        .iter()
        .take_while(|f| probed.contains(&f.as_str()))
        .count();
    frames.drain(..entry);
    let first = first_kept_frame(&frames);
    frames.drain(..first);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> [u8; PROLOGUE_BYTES] {
        let mut c = [0x90; PROLOGUE_BYTES];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn probes_go_past_a_compare_that_guards_a_jump() {
        // glibc 2.36 free: test %rdi,%rdi; je
        assert_eq!(probe_offset(code(&[0x48, 0x85, 0xff, 0x74, 0x2f])), 3);
        // jemalloc malloc: cmp $0x1000,%rdi; ja (short and near)
        let cmp_rdi = [0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00];
        assert_eq!(
            probe_offset(code(&[&cmp_rdi[..], &[0x77, 0x10]].concat())),
            7
        );
        assert_eq!(
            probe_offset(code(&[&cmp_rdi[..], &[0x0f, 0x87, 0, 1, 0, 0]].concat())),
            7
        );
        // jemalloc sdallocx: cmp $0x1000,%rsi; ja
        assert_eq!(
            probe_offset(code(&[
                0x48, 0x81, 0xfe, 0x00, 0x10, 0x00, 0x00, 0x77, 0x7f
            ])),
            7
        );
        // cmp $0x10,%rdi; jbe
        assert_eq!(probe_offset(code(&[0x48, 0x83, 0xff, 0x10, 0x76, 0x05])), 4);
    }

    #[test]
    fn stacks_start_where_profiles_start() {
        let stack = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let probed = ["_rjem_malloc", "malloc"];
        // A sampled allocation: the profiler's frames, then the plumbing.
        let sampled = stack(&[
            "heapprof::alloc::profiler::Profiler<A>::alloc_sampled",
            "__rust_alloc",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "stealth_leak::background_leak",
            "std::sys::backtrace::__rust_begin_short_backtrace",
        ]);
        assert_eq!(
            trimmed(sampled, &probed),
            stack(&[
                "stealth_leak::background_leak",
                "std::sys::backtrace::__rust_begin_short_backtrace"
            ])
        );
        // A C caller of malloc keeps its frames; a probed entry goes.
        assert_eq!(
            trimmed(stack(&["malloc", "leak_here", "main"]), &probed),
            stack(&["leak_here", "main"])
        );
    }

    #[test]
    fn other_first_instructions_are_probed_where_they_are() {
        // push %r12 (glibc malloc), push %rbp; mov %rsp,%rbp
        assert_eq!(probe_offset(code(&[0x41, 0x54, 0x55])), 0);
        assert_eq!(probe_offset(code(&[0x55, 0x48, 0x89, 0xe5])), 0);
        // a compare not followed by a jump
        assert_eq!(probe_offset(code(&[0x48, 0x85, 0xff, 0x48, 0x89])), 0);
        // cmp with a memory operand (ModRM mod != 11)
        assert_eq!(
            probe_offset(code(&[0x48, 0x81, 0x3f, 0, 0x10, 0, 0, 0x77])),
            0
        );
    }
}
