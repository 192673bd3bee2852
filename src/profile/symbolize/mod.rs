//! Turning return addresses into functions, files and lines, in process,
//! with bounded memory, and trimming the allocation plumbing off the top of
//! each stack.
//!
//! # Resolution
//!
//! Each batch of new addresses is grouped by the file mapped there
//! (`/proc/self/maps`); each file is mapped read-only for the batch
//! (`elf`), its DWARF read by a streaming resolver (`dwarf`) that keeps
//! nothing parsed between batches and one compilation unit at a time
//! within one, and addresses DWARF does not name get the function symbol
//! around them (`.symtab`, else `.dynsym`). Names are demangled; inlined
//! calls come back as several frames of one address, innermost first.
//! Anonymous memory is proportional to the batch, not to the binary's
//! debug info; the file's pages are reclaimable and unmapped afterwards.
//!
//! Results are cached per address ([`cache_stats`]) up to
//! [`CACHE_MAX_BYTES`]; past it the cache starts over, so later profiles
//! mostly reuse earlier names and the cache never grows without bound.
//!
//! # Trimming
//!
//! A sampled stack starts inside heapprof, then runs through the allocation
//! shims (`__rust_alloc`), then usually through `alloc` (`RawVec`, `Vec`,
//! `String`, `Box`), `core` and `hashbrown` before it reaches the code that
//! asked for memory. Like Go's profiles, which start at the caller of
//! `runtime.mallocgc`, heapprof's start at the first frame outside that
//! plumbing, so `go tool pprof -top` charges the user's function. Frames
//! whose names match [`is_plumbing`] are removed from the top only; the same
//! functions deeper in a stack stay.

mod dwarf;
mod elf;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::sys::maps::{self, Mapping};

/// One function in a symbolized stack (one inlining level of one address).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Frame {
    /// Demangled name without the hash suffix, e.g. `quickstart::retain_buffers`.
    pub function: String,
    /// The symbol as the linker knows it (mangled), if different.
    pub system_name: Option<String>,
    /// Source file, when the binary has line tables.
    pub file: Option<String>,
    /// Source line (1-based), 0 when unknown.
    pub line: u32,
    /// Entry address of the enclosing (physical, not inlined) function,
    /// 0 when unknown.
    pub symbol_address: usize,
}

/// The frames of one return address, innermost (most inlined) first; empty
/// when the address could not be resolved.
pub(crate) type Resolved = Arc<[Frame]>;

/// Bound on the per-address cache, bytes (approximate heap).
pub(crate) const CACHE_MAX_BYTES: u64 = 4 << 20;

static CACHE: Mutex<Option<HashMap<usize, Resolved>>> = Mutex::new(None);
static RESOLVE_NS: AtomicU64 = AtomicU64::new(0);

/// Approximate heap bytes held by the cache (entries, frames, strings).
static CACHE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Entries in the cache, kept beside it so reading the stats never waits
/// for the cache lock (held for the whole of a symbolization).
static CACHE_ENTRIES: AtomicUsize = AtomicUsize::new(0);

/// Heap bytes one cache entry holds, approximately: the map slot, the
/// frames and their strings.
fn entry_bytes(frames: &[Frame]) -> u64 {
    let strings: usize = frames
        .iter()
        .map(|f| {
            f.function.capacity()
                + f.system_name.as_ref().map_or(0, String::capacity)
                + f.file.as_ref().map_or(0, String::capacity)
        })
        .sum();
    (48 + std::mem::size_of_val(frames) + strings) as u64
}

/// Resolves every address in `ips` (return addresses), using and filling
/// the cache.
pub(crate) fn resolve_all(ips: impl IntoIterator<Item = usize>) -> HashMap<usize, Resolved> {
    register_fork_reset();
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(HashMap::new);
    let started = std::time::Instant::now();
    let mut out = HashMap::new();
    let mut misses = Vec::new();
    for ip in ips {
        if out.contains_key(&ip) {
            continue;
        }
        match cache.get(&ip) {
            Some(r) => {
                out.insert(ip, r.clone());
            }
            None => {
                out.insert(ip, Resolved::from(Vec::new()));
                misses.push(ip);
            }
        }
    }
    if !misses.is_empty() {
        let resolved = resolve_batch(&misses);
        let added: u64 = resolved.iter().map(|r| entry_bytes(r)).sum();
        if CACHE_BYTES.load(Ordering::Relaxed) + added > CACHE_MAX_BYTES {
            cache.clear();
            cache.shrink_to_fit();
            CACHE_BYTES.store(0, Ordering::Relaxed);
        }
        for (ip, r) in misses.into_iter().zip(resolved) {
            CACHE_BYTES.fetch_add(entry_bytes(&r), Ordering::Relaxed);
            cache.insert(ip, r.clone());
            out.insert(ip, r);
        }
        CACHE_ENTRIES.store(cache.len(), Ordering::Relaxed);
    }
    RESOLVE_NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

/// Resolves `ips` (return addresses) without the cache: grouped by the file
/// mapped at them, one streaming pass per file.
fn resolve_batch(ips: &[usize]) -> Vec<Resolved> {
    let maps_text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let maps: Vec<Mapping> = maps::parse_maps(&maps_text)
        .into_iter()
        .filter(Mapping::is_executable_file)
        .collect();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut out: Vec<Resolved> = vec![Resolved::from(Vec::new()); ips.len()];
    let mut by_map: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &ip) in ips.iter().enumerate() {
        // A return address points after the call; the call is at ip - 1.
        let call = ip.saturating_sub(1) as u64;
        if let Some(m) = maps.iter().position(|m| m.contains(call)) {
            by_map.entry(m).or_default().push(i);
        }
    }
    for (m, idx) in by_map {
        let map = &maps[m];
        // The running executable, even if its file was replaced since.
        let path = if map.path == exe {
            "/proc/self/exe"
        } else {
            &map.path
        };
        let Some(image) = elf::Image::open(path) else {
            continue;
        };
        let obj = image.object();
        // Runtime address -> file offset (through the mapping) -> link-time
        // address (through the load segment holding that offset).
        let mut order: Vec<(u64, usize)> = idx
            .iter()
            .filter_map(|&i| {
                let call = ips[i].saturating_sub(1) as u64;
                let offset = call - map.start + map.offset;
                Some((elf::Image::vaddr_of_offset(&obj, offset)?, i))
            })
            .collect();
        order.sort_unstable();
        let runtime_of = |vaddr: u64| {
            elf::Image::offset_of_vaddr(&obj, vaddr)
                .and_then(|off| off.checked_sub(map.offset))
                .map_or(0, |rel| (map.start + rel) as usize)
        };
        let vaddrs: Vec<u64> = order.iter().map(|o| o.0).collect();
        let levels = named_levels(&obj, &vaddrs);
        for ((_, i), levels) in order.into_iter().zip(levels) {
            let frames: Vec<Frame> = levels
                .into_iter()
                .map(|l| Frame {
                    function: l
                        .function
                        .unwrap_or_else(|| format!("{:#x}", ips[i].saturating_sub(1))),
                    system_name: l.system_name,
                    file: l.file,
                    line: l.line,
                    symbol_address: if l.entry == 0 { 0 } else { runtime_of(l.entry) },
                })
                .collect();
            out[i] = frames.into();
        }
    }
    out
}

/// The innermost function at each code address of this process, demangled
/// (Go's `runtime.FuncForPC`, what `/debug/pprof/symbol` answers); `None`
/// where nothing names it. Uses the symbol cache like profiles do.
pub fn function_names(addresses: &[usize]) -> Vec<Option<String>> {
    crate::alloc::reentrancy::untracked(|| {
        // The resolver takes return addresses (the call is at ip - 1).
        let ips: Vec<usize> = addresses.iter().map(|a| a.saturating_add(1)).collect();
        let resolved = resolve_all(ips.iter().copied());
        ips.iter()
            .map(|ip| {
                let frames = resolved.get(ip)?;
                let f = frames.first()?;
                (!f.function.starts_with("0x")).then(|| f.function.clone())
            })
            .collect()
    })
}

/// Names for call instructions at `offsets` in the ELF file at `path`
/// (file offsets, as a profile's mapping gives them: address - start +
/// file offset), innermost frame first, with the same resolver as profiles
/// taken in process; `None` if the file cannot be read. `symbol_address`
/// of each frame is a file offset too. For naming unsymbolized profiles
/// outside the process (`heapprof pprof-heap`).
pub fn name_file_offsets(path: &str, offsets: &[u64]) -> Option<Vec<Vec<Frame>>> {
    let image = elf::Image::open(path)?;
    let obj = image.object();
    let mut order: Vec<(u64, usize)> = offsets
        .iter()
        .enumerate()
        .filter_map(|(i, &off)| Some((elf::Image::vaddr_of_offset(&obj, off)?, i)))
        .collect();
    order.sort_unstable();
    let vaddrs: Vec<u64> = order.iter().map(|o| o.0).collect();
    let levels = named_levels(&obj, &vaddrs);
    let mut out = vec![Vec::new(); offsets.len()];
    for ((vaddr, i), levels) in order.into_iter().zip(levels) {
        out[i] = levels
            .into_iter()
            .map(|l| Frame {
                function: l.function.unwrap_or_else(|| format!("{vaddr:#x}")),
                system_name: l.system_name,
                file: l.file,
                line: l.line,
                symbol_address: elf::Image::offset_of_vaddr(&obj, l.entry).unwrap_or(0) as usize,
            })
            .collect();
    }
    Some(out)
}

/// The levels of each of `vaddrs` (sorted link-time addresses) of `obj`:
/// names come from the file itself, else from its separate debug file
/// (same link-time addresses), for DWARF and symbol tables.
fn named_levels(obj: &object::File<'_>, vaddrs: &[u64]) -> Vec<Vec<dwarf::Level>> {
    let debug = dwarf::Dwarf::of(obj)
        .is_none()
        .then(|| elf::Image::debug_file(obj))
        .flatten();
    let debug_obj = debug.as_ref().map(elf::Image::object);
    let names = debug_obj.as_ref().unwrap_or(obj);
    levels_of(obj, names, debug_obj.is_some(), vaddrs)
}

/// [`named_levels`] from DWARF in `names` (the file itself or its debug
/// file) and the symbol tables for what DWARF does not name.
fn levels_of(
    obj: &object::File<'_>,
    names: &object::File<'_>,
    separate_debug: bool,
    vaddrs: &[u64],
) -> Vec<Vec<dwarf::Level>> {
    let mut levels = dwarf::Dwarf::of(names)
        .map(|d| d.resolve(vaddrs))
        .unwrap_or_else(|| vec![Vec::new(); vaddrs.len()]);
    let unnamed: Vec<usize> = (0..vaddrs.len())
        .filter(|&k| levels[k].last().is_none_or(|l| l.function.is_none()))
        .collect();
    if unnamed.is_empty() {
        return levels;
    }
    let probes: Vec<u64> = unnamed.iter().map(|&k| vaddrs[k]).collect();
    let mut symbols = elf::Image::symbols_at(names, &probes);
    if separate_debug {
        let exported = elf::Image::symbols_at(obj, &probes);
        for (s, e) in symbols.iter_mut().zip(exported) {
            if s.is_none() {
                *s = e;
            }
        }
    }
    for (&k, sym) in unnamed.iter().zip(symbols) {
        let Some(sym) = sym else { continue };
        match levels[k].last_mut() {
            Some(outer) => {
                outer.function = Some(sym.name);
                outer.entry = sym.start;
            }
            None => levels[k].push(dwarf::Level {
                function: Some(sym.name),
                entry: sym.start,
                ..dwarf::Level::default()
            }),
        }
    }
    levels
}

/// A demangled Rust (legacy or v0) symbol without its hash; a C name
/// without the suffix the compiler gives its clones (`msort_with_tmp` for
/// `msort_with_tmp.part.0`, as the function's debug info names it).
pub(crate) fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.split('.').next().unwrap_or(name).to_owned(),
    }
}

/// Registers, once, a reset of the cache in a child after `fork`: a thread
/// of the parent may have held its lock mid-update when `fork` copied it.
fn register_fork_reset() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn reset_in_child() {
        if CACHE.is_locked() {
            CACHE_BYTES.store(0, Ordering::Relaxed);
            CACHE_ENTRIES.store(0, Ordering::Relaxed);
        }
        crate::alloc::fork::reset_mutex(&CACHE, || None);
    }
    crate::alloc::fork::on_child(&REGISTERED, reset_in_child);
}

/// (entries, approximate heap bytes, total nanoseconds spent resolving)
/// of the symbol cache. Lock-free.
pub(crate) fn cache_stats() -> (usize, u64, u64) {
    (
        CACHE_ENTRIES.load(Ordering::Relaxed),
        CACHE_BYTES.load(Ordering::Relaxed),
        RESOLVE_NS.load(Ordering::Relaxed),
    )
}

/// One physical frame of a trimmed stack: the address and how many of its
/// innermost inlined frames were trimmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    pub ip: usize,
    pub skip_inlined: usize,
}

/// The frames of `kept` (its address's, minus the inlined levels trimmed).
pub(crate) fn frames_of(resolved: &HashMap<usize, Resolved>, kept: Kept) -> &[Frame] {
    resolved
        .get(&kept.ip)
        .map_or(&[][..], |r| &r[kept.skip_inlined.min(r.len())..])
}

/// Offset of call address `call` into the function of `f`, 0 if unknown
/// (the `+0x..` of Go's text formats).
pub(crate) fn offset_in(call: usize, f: &Frame) -> usize {
    if f.symbol_address == 0 {
        return 0;
    }
    call.saturating_sub(f.symbol_address)
}

/// The stack as it is, for an unsymbolized profile (pprof trims it by
/// `drop_frames` once it has names).
pub(crate) fn untrimmed(stack: &[usize]) -> Vec<Kept> {
    stack
        .iter()
        .map(|&ip| Kept {
            ip,
            skip_inlined: 0,
        })
        .collect()
}

/// Where a stack of function names (innermost first) starts once the
/// profiler's frames and the allocation plumbing are trimmed from its top,
/// by the rule profiles follow: the first frame that is not
/// [`is_plumbing`]; if there is none, the first that is not the
/// profiler's own; else the end. For stacks captured outside the process
/// (`heapprof verify --uprobes`), which have names only.
pub fn first_kept_frame<S: AsRef<str>>(functions: &[S]) -> usize {
    let first = |keep: &dyn Fn(&str) -> bool| functions.iter().position(|f| keep(f.as_ref()));
    first(&|f| !is_plumbing(f))
        .or_else(|| first(&|f| !is_own(f)))
        .unwrap_or(functions.len())
}

/// The function every allocation the profiler makes for its own work
/// (snapshots, symbolization, encoding, its history) runs under, on every
/// stack: the reentrancy guard's `untracked`, never inlined. Those
/// allocations are not sampled, by design; an outside observer that sees
/// every allocation (uprobes) tells them apart by this frame.
pub const PROFILER_WORK_FRAME: &str = "heapprof::alloc::reentrancy::untracked";

/// Whether `function` is [`PROFILER_WORK_FRAME`].
pub fn is_profiler_work(function: &str) -> bool {
    function == PROFILER_WORK_FRAME
}

/// Removes the profiler's frames and the allocation plumbing from the top of
/// `stack` (innermost first). If nothing but plumbing is left, only the
/// profiler's own frames are removed.
pub(crate) fn trim(stack: &[usize], resolved: &HashMap<usize, Resolved>) -> Vec<Kept> {
    let (first, skip) = trim_point(stack.len(), |i| {
        resolved.get(&stack[i]).map(|r| &r[..]).unwrap_or(&[])
    });
    stack[first.min(stack.len())..]
        .iter()
        .enumerate()
        .map(|(i, &ip)| Kept {
            ip,
            skip_inlined: if i == 0 { skip } else { 0 },
        })
        .collect()
}

/// Where a stack of `depth` physical frames starts once the profiler's
/// frames and the allocation plumbing are trimmed from its top: the index
/// of the first physical frame kept and how many of its innermost inlined
/// frames go. `frames(i)` names physical frame `i` (innermost first); an
/// unnamed frame is kept. If nothing but plumbing is left, only the
/// profiler's own frames go.
pub fn trim_point<'a>(depth: usize, frames: impl Fn(usize) -> &'a [Frame]) -> (usize, usize) {
    first_frame_where(depth, &frames, |f| !is_plumbing_frame(f))
        .or_else(|| first_frame_where(depth, &frames, |f| !is_own_frame(f)))
        .unwrap_or((depth, 0))
}

/// Position (physical index, inlined index) of the first frame satisfying
/// `keep`; unresolved addresses count as kept.
fn first_frame_where<'a>(
    depth: usize,
    frames: &impl Fn(usize) -> &'a [Frame],
    keep: impl Fn(&Frame) -> bool,
) -> Option<(usize, usize)> {
    for i in 0..depth {
        let levels = frames(i);
        if levels.is_empty() {
            return Some((i, 0));
        }
        if let Some(j) = levels.iter().position(&keep) {
            return Some((i, j));
        }
    }
    None
}

/// Source paths of the profiler's own code and its unwinder. Release builds
/// with line tables only name inlined functions without their path
/// (`trace`, `alloc`), so files are the reliable signal there.
fn is_own_file(file: &str) -> bool {
    file.starts_with(concat!(env!("CARGO_MANIFEST_DIR"), "/src/"))
        || file.contains("/heapprof-0.")
        || file.contains("/backtrace-0.")
        || file.contains("/tikv-jemallocator-")
        || file.ends_with("/library/std/src/alloc.rs")
}

/// Source paths of allocation plumbing: Rust's `alloc` and `core` libraries,
/// std's collections, hashbrown.
fn is_plumbing_file(file: &str) -> bool {
    is_own_file(file)
        || file.contains("/library/alloc/src/")
        || file.contains("/library/core/src/")
        || file.contains("/library/std/src/collections/")
        || file.contains("/hashbrown-0.")
}

fn is_own_frame(f: &Frame) -> bool {
    is_own(&f.function) || f.file.as_deref().is_some_and(is_own_file)
}

fn is_plumbing_frame(f: &Frame) -> bool {
    is_plumbing(&f.function) || f.file.as_deref().is_some_and(is_plumbing_file)
}

/// For unsymbolized profiles: the frames pprof removes from the top of each
/// stack once it has names (profile.proto's `drop_frames`, matched against
/// whole function names). Only frames that never call user code: the
/// profiler, the allocator shims, allocators and `alloc`'s raw allocation
/// paths. pprof cuts a stack at the outermost matching frame, so a pattern
/// that matched `core::` iterator frames, which sit between user frames,
/// would cut user frames too.
pub(crate) const PLUMBING_REGEX: &str = "(heapprof::|<heapprof::|__rust_|__rg_|__rdl_|__rustc::|\
     _rjem_|tikv_jemallocator::|<tikv_jemallocator::|std::alloc::|<std::alloc::|alloc::alloc::|\
     alloc::raw_vec::|<alloc::raw_vec::|backtrace::).*";

/// The profiler's own frames and the allocator shims and unwinder.
pub(crate) fn is_own(name: &str) -> bool {
    const OWN: &[&str] = &[
        "heapprof::",
        "<heapprof::",
        "backtrace::",
        "<backtrace::",
        "_Unwind_",
        "__rustc::",
        "__rust_alloc",
        "__rust_dealloc",
        "__rust_realloc",
        "__rdl_",
        "__rg_",
        "tikv_jemallocator::",
        "<tikv_jemallocator::",
        "std::alloc::",
        "<std::alloc::",
        "std::sys::alloc",
    ];
    OWN.iter().any(|p| name.starts_with(p))
}

/// Frames that allocate on behalf of their caller: the profiler's own, the
/// `alloc` crate (Vec, String, Box, collections), `core` (iterators,
/// `clone`, `collect`), `hashbrown` and std's collections. A trait method on
/// a generic or primitive type (`<T as alloc::...>`, `<u8 as ...>`) counts
/// when the trait is from `alloc` or `core`; one on a user's type does not.
pub fn is_plumbing(name: &str) -> bool {
    const CRATES: &[&str] = &["alloc::", "core::", "hashbrown::", "std::collections::"];
    if is_own(name) {
        return true;
    }
    let Some(rest) = name.strip_prefix('<') else {
        return CRATES.iter().any(|p| name.starts_with(p));
    };
    let self_type = rest.trim_start_matches(['&', '[', '(', '*']);
    let self_type = self_type
        .strip_prefix("mut ")
        .or_else(|| self_type.strip_prefix("const "))
        .unwrap_or(self_type);
    if CRATES.iter().any(|p| self_type.starts_with(p)) || is_own(self_type) {
        return true;
    }
    // `<X as Trait>::method`: X without a path is a primitive or generic.
    let x_end = self_type
        .find([' ', '<', ';', ']', ',', ')'])
        .unwrap_or(self_type.len());
    if self_type[..x_end].contains("::") {
        return false;
    }
    match rest.find(" as ") {
        Some(at) => CRATES.iter().any(|p| rest[at + 4..].starts_with(p)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plumbing_names() {
        for name in [
            "heapprof::stack::capture",
            "<heapprof::Profiler<A> as core::alloc::global::GlobalAlloc>::alloc",
            "__rustc::",
            "__rust_alloc",
            "__rg_alloc",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            "<T as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<[T] as alloc::slice::hack::ConvertVec>::to_vec",
            "core::iter::traits::iterator::Iterator::collect",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
            "backtrace::backtrace::libunwind::trace",
        ] {
            assert!(is_plumbing(name), "{name} should be plumbing");
        }
        for name in [
            "quickstart::retain_buffers",
            "<quickstart::Cache as core::clone::Clone>::clone",
            "route_cache::RouteCache::insert",
            "std::thread::Builder::spawn_unchecked",
            "main",
        ] {
            assert!(!is_plumbing(name), "{name} should not be plumbing");
        }
    }

    fn frame(name: &str) -> Frame {
        Frame {
            function: name.into(),
            system_name: None,
            file: None,
            line: 0,
            symbol_address: 0,
        }
    }

    #[test]
    fn short_inlined_names_are_recognised_by_their_files() {
        let mut f = frame("trace");
        f.file = Some("/root/.cargo/registry/src/x/backtrace-0.3.77/src/backtrace/mod.rs".into());
        assert!(is_own_frame(&f));
        f = frame("alloc_impl");
        f.file = Some("/rustc/59807616e/library/alloc/src/alloc.rs".into());
        assert!(is_plumbing_frame(&f) && !is_own_frame(&f));
        f = frame("retain_buffers");
        f.file = Some("/work/app/src/main.rs".into());
        assert!(!is_plumbing_frame(&f));
    }

    #[test]
    fn trims_whole_and_inlined_frames_from_the_top_only() {
        let mut resolved = HashMap::new();
        resolved.insert(1, Arc::from(vec![frame("heapprof::stack::capture")]));
        resolved.insert(2, Arc::from(vec![frame("__rust_alloc")]));
        // An inlined chain: Vec plumbing inlined into the user's function.
        resolved.insert(
            3,
            Arc::from(vec![
                frame("alloc::raw_vec::RawVec<T>::allocate_in"),
                frame("app::retain"),
            ]),
        );
        resolved.insert(4, Arc::from(vec![frame("alloc::vec::Vec<T>::push")]));
        resolved.insert(5, Arc::from(vec![frame("main")]));
        let kept = trim(&[1, 2, 3, 4, 5], &resolved);
        assert_eq!(
            kept,
            vec![
                Kept {
                    ip: 3,
                    skip_inlined: 1
                },
                Kept {
                    ip: 4,
                    skip_inlined: 0
                },
                Kept {
                    ip: 5,
                    skip_inlined: 0
                },
            ]
        );
        // The same rule over names alone.
        let names = [
            "heapprof::stack::capture",
            "__rust_alloc",
            "alloc::raw_vec::RawVec<T>::allocate_in",
            "app::retain",
            "main",
        ];
        assert_eq!(first_kept_frame(&names), 3);
        assert_eq!(
            first_kept_frame(&names[..3]),
            2,
            "all plumbing: own frames go"
        );
        assert_eq!(first_kept_frame::<&str>(&[]), 0);
        // All plumbing: only the profiler's own frames go.
        let kept = trim(&[1, 2, 4], &resolved);
        assert_eq!(
            kept,
            vec![Kept {
                ip: 4,
                skip_inlined: 0
            }]
        );
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[inline(never)]
    fn capture() -> Vec<usize> {
        let mut ips = Vec::new();
        backtrace::trace(|f| {
            ips.push(f.ip() as usize);
            true
        });
        std::hint::black_box(ips)
    }

    /// What the `backtrace` crate (gimli's addr2line) names: the reference.
    fn reference(ip: usize) -> Vec<(String, Option<String>, u32)> {
        let mut out = Vec::new();
        backtrace::resolve(ip as *mut core::ffi::c_void, |s| {
            out.push((
                s.name().map(|n| format!("{n:#}")).unwrap_or_default(),
                s.filename().map(|p| p.display().to_string()),
                s.lineno().unwrap_or(0),
            ))
        });
        out
    }

    /// Whether `ip` is in this test binary (not a shared library, whose
    /// separate debug file has compressed sections that heapprof does not
    /// inflate: it names their functions from the symbol table only).
    fn in_executable(ip: usize) -> bool {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps::parse_maps(&text)
            .iter()
            .any(|m| m.contains(ip as u64 - 1) && std::path::Path::new(&m.path) == exe)
    }

    #[test]
    fn names_files_lines_and_inlined_frames_match_the_reference() {
        let ips = capture();
        let resolved = resolve_batch(&ips);
        let (mut compared, mut inlined) = (0, 0);
        for (ip, ours) in ips.iter().zip(&resolved) {
            let theirs = reference(*ip);
            if theirs.is_empty() || theirs.iter().all(|t| t.0.is_empty()) {
                continue;
            }
            let ours: Vec<(String, Option<String>, u32)> = ours
                .iter()
                .map(|f| (f.function.clone(), f.file.clone(), f.line))
                .collect();
            if in_executable(*ip) {
                assert_eq!(ours, theirs, "at {ip:#x}");
                inlined += usize::from(ours.len() > 1);
            } else {
                let names = |v: &[(String, Option<String>, u32)]| -> Vec<String> {
                    v.iter().map(|f| f.0.clone()).collect()
                };
                assert_eq!(names(&ours).last(), names(&theirs).last(), "at {ip:#x}");
            }
            compared += 1;
        }
        assert!(compared >= 5, "only {compared} frames compared");
        assert!(inlined >= 1, "no inlined frames among {compared}");
    }
}
