//! Turning return addresses into functions, files and lines, in process, and
//! trimming the allocation plumbing off the top of each stack.
//!
//! Resolution uses the `backtrace` crate (gimli over the binary's DWARF), so
//! names are demangled and inlined calls come back as several frames of one
//! address, innermost first. Results are cached per address for the life of
//! the process: the first profile pays for symbolization, later ones reuse
//! it ([`cache_stats`] reports the size and the time spent). The resolver's
//! own parsed DWARF (tens of MB for a binary with debug info) is dropped
//! after each batch of new addresses, so a process pays that memory only
//! while a profile with new call sites is being built (except while an OOM
//! guard runs: it keeps the resolver warm so dumps near the limit are fast).
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

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

static CACHE: Mutex<Option<HashMap<usize, Resolved>>> = Mutex::new(None);
static RESOLVE_NS: AtomicU64 = AtomicU64::new(0);
/// While set (by the OOM guard), the resolver's parsed DWARF is kept, so a
/// dump near the memory limit never has to parse it again.
static KEEP_RESOLVER_CACHE: AtomicBool = AtomicBool::new(false);

/// Keeps (or again releases after each batch) the resolver's parsed DWARF.
pub(crate) fn keep_resolver_cache(keep: bool) {
    KEEP_RESOLVER_CACHE.store(keep, Ordering::Relaxed);
}

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
    let mut cache = CACHE.lock();
    let cache = cache.get_or_insert_with(HashMap::new);
    let started = std::time::Instant::now();
    let mut out = HashMap::new();
    let mut misses = 0usize;
    for ip in ips {
        if out.contains_key(&ip) {
            continue;
        }
        let resolved = cache
            .entry(ip)
            .or_insert_with(|| {
                misses += 1;
                let resolved = resolve_one(ip);
                CACHE_BYTES.fetch_add(entry_bytes(&resolved), Ordering::Relaxed);
                CACHE_ENTRIES.fetch_add(1, Ordering::Relaxed);
                resolved
            })
            .clone();
        out.insert(ip, resolved);
    }
    if misses > 0 && !KEEP_RESOLVER_CACHE.load(Ordering::Relaxed) {
        // The parsed DWARF behind the resolver is tens of MB; our own
        // per-address cache is what later profiles need. Give it back.
        backtrace::clear_symbol_cache();
    }
    RESOLVE_NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

fn resolve_one(ip: usize) -> Resolved {
    let mut frames = Vec::new();
    let entry = crate::alloc::stack::enclosing_function(ip).unwrap_or(0);
    // A return address points after the call; the call is at ip - 1.
    backtrace::resolve(ip.saturating_sub(1) as *mut core::ffi::c_void, |symbol| {
        let (function, system_name) = match symbol.name() {
            Some(name) => {
                let pretty = format!("{name:#}");
                let raw = String::from_utf8_lossy(name.as_bytes()).into_owned();
                let system = (raw != pretty).then_some(raw);
                (pretty, system)
            }
            None => (format!("{ip:#x}"), None),
        };
        frames.push(Frame {
            function,
            system_name,
            file: symbol.filename().map(|p| p.display().to_string()),
            line: symbol.lineno().unwrap_or(0),
            symbol_address: entry,
        });
    });
    frames.into()
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

/// Removes the profiler's frames and the allocation plumbing from the top of
/// `stack` (innermost first). If nothing but plumbing is left, only the
/// profiler's own frames are removed.
pub(crate) fn trim(stack: &[usize], resolved: &HashMap<usize, Resolved>) -> Vec<Kept> {
    let start = first_frame_where(stack, resolved, |f| !is_plumbing_frame(f))
        .or_else(|| first_frame_where(stack, resolved, |f| !is_own_frame(f)))
        .unwrap_or((stack.len(), 0));
    let (first, skip) = start;
    stack[first.min(stack.len())..]
        .iter()
        .enumerate()
        .map(|(i, &ip)| Kept {
            ip,
            skip_inlined: if i == 0 { skip } else { 0 },
        })
        .collect()
}

/// Position (physical index, inlined index) of the first frame satisfying
/// `keep`; unresolved addresses count as kept.
fn first_frame_where(
    stack: &[usize],
    resolved: &HashMap<usize, Resolved>,
    keep: impl Fn(&Frame) -> bool,
) -> Option<(usize, usize)> {
    for (i, ip) in stack.iter().enumerate() {
        let frames = resolved.get(ip).map(|r| &r[..]).unwrap_or(&[]);
        if frames.is_empty() {
            return Some((i, 0));
        }
        if let Some(j) = frames.iter().position(&keep) {
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
