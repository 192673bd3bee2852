//! Capturing the call stack of a sampled allocation, and choosing how.
//!
//! Three unwinders (warm p50 for a 32-frame stack, BENCHMARKS.md, "Cost
//! of one sample"):
//! - frame pointers (`frame_pointer`), about 70 ns: two loads a frame,
//!   right only if the code on the stack keeps frame pointers;
//! - the unwind table (`table`, `table_walk`), about 220 ns: `.eh_frame`
//!   compiled ahead of time into one rule per code range, looked up per
//!   frame (through a shared `rule_cache`), right for any code with unwind
//!   tables. Tables
//!   are built on a thread of heapprof's own (`builder`) from the loaded
//!   modules (`modules`); a stack it cannot walk (no table yet, a library
//!   loaded since, a signal alternate stack, a rare inexpressible row) is
//!   captured by libgcc instead;
//! - libgcc (`dwarf`), about 5 us: the `backtrace` crate's unsynchronized
//!   tracer over libgcc's `_Unwind_Backtrace`, which interprets `.eh_frame`
//!   at every frame: the reference the other two are checked against. The synchronized `backtrace::trace` takes a global lock,
//!   which an allocator must not.
//!
//! `HEAPPROF_UNWIND` picks the policy: `fp`, `table` or `dwarf` use that
//! unwinder without checks; `auto` (the default) trusts a faster one only
//! after it matched libgcc. The state machine, on one atomic:
//!
//! | state | capture with | after [`AUTO_CHECKS`] agreements | at a disagreement |
//! | --- | --- | --- | --- |
//! | `FP_CHECKING` (start of `auto`) | both frame pointers and libgcc | `FP_CHECKED` | `TABLE_CHECKING` |
//! | `FP_CHECKED` | frame pointers; both, one in [`SPOT_CHECK_EVERY`] | | `TABLE_CHECKING` |
//! | `TABLE_CHECKING` | both table and libgcc | `TABLE_CHECKED` | `DWARF` |
//! | `TABLE_CHECKED` | table; both, one in [`SPOT_CHECK_EVERY`] | | `DWARF` |
//! | `FP_FORCED`, `TABLE_FORCED`, `DWARF` | that unwinder | | |
//!
//! While checking, the sample keeps libgcc's stack. A walk that cannot
//! answer (frame pointers off the thread's stack, a table fallback)
//! decides nothing. A binary built with frame pointers thus runs on them
//! after [`AUTO_CHECKS`] double captures; one built without them fails the
//! first check and moves to the table, checked the same way; where the
//! table has no stack-walking support (not x86_64), to libgcc.
//!
//! The capture functions are never inlined, so the profiler's own frames at
//! the top of every stack are the same each time and symbolization trims
//! them by name (`symbolize::is_plumbing`). Unwinding allocates nothing in
//! the common case; if libgcc ever does, or a thread's first capture looks
//! its stack bounds up, the reentrancy guard the caller holds sends that
//! allocation to the inner allocator unsampled.

use core::cell::Cell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

mod bounds;
mod builder;
mod dwarf;
mod file_view;
mod frame_pointer;
#[doc(hidden)]
pub mod hooks;
mod modules;
mod rule_cache;
mod table;
mod table_walk;

use super::site_table::MAX_DEPTH;
pub(crate) use builder::after_fork_in_child;
use dwarf::capture_dwarf;

/// Samples captured both ways before `auto` trusts a faster unwinder.
pub const AUTO_CHECKS: u32 = 16;
/// Under `auto` with a faster unwinder trusted, one sample in this many
/// (counted per thread) is captured both ways again.
pub const SPOT_CHECK_EVERY: u32 = 1024;
/// Outermost frames the frame-pointer chain may lose or garble and still
/// agree with libgcc: the C library's thread and process entry points
/// (`start_thread`/`clone3`, `__libc_start_call_main`/`__libc_start_main`/
/// `_start`), built without frame pointers. The table has no such slack.
const OUTER_SLACK: usize = 3;

/// How sampled stacks are being captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unwinder {
    /// `auto` is still comparing a faster unwinder with libgcc (or nothing
    /// has been sampled yet).
    #[default]
    Checking,
    /// Frame-pointer walking (`HEAPPROF_UNWIND=fp`, or `auto` after the
    /// comparisons agreed).
    FramePointers,
    /// heapprof's unwind table, built from `.eh_frame`
    /// (`HEAPPROF_UNWIND=table`, or `auto` without frame pointers after
    /// the comparisons agreed). Stacks it cannot walk are captured by
    /// libgcc; [`Stats::unwind_table_fallbacks`](crate::Stats) counts them.
    Table,
    /// libgcc's DWARF unwinder (`HEAPPROF_UNWIND=dwarf`, or `auto` after a
    /// comparison disagreed).
    Dwarf,
}

impl Unwinder {
    /// `checking`, `frame-pointers`, `table` or `dwarf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unwinder::Checking => "checking",
            Unwinder::FramePointers => "frame-pointers",
            Unwinder::Table => "table",
            Unwinder::Dwarf => "dwarf",
        }
    }
}

const UNSET: u8 = 0;
const FP_CHECKING: u8 = 1;
const FP_CHECKED: u8 = 2;
const FP_FORCED: u8 = 3;
const TABLE_CHECKING: u8 = 4;
const TABLE_CHECKED: u8 = 5;
const TABLE_FORCED: u8 = 6;
const DWARF: u8 = 7;

static MODE: AtomicU8 = AtomicU8::new(UNSET);
/// Agreements with libgcc under `auto` while checking.
static AUTO_SAMPLES: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's samples since its last spot check. Per thread, not a
    /// shared counter: an atomic add on every sample would move one cache
    /// line between the cores of every sampling thread.
    static SINCE_SPOT_CHECK: Cell<u32> = const { Cell::new(0) };
}

/// The unwinder in use.
pub fn unwinder() -> Unwinder {
    match MODE.load(Ordering::Relaxed) {
        UNSET | FP_CHECKING | TABLE_CHECKING => Unwinder::Checking,
        FP_CHECKED | FP_FORCED => Unwinder::FramePointers,
        TABLE_CHECKED | TABLE_FORCED => Unwinder::Table,
        _ => Unwinder::Dwarf,
    }
}

/// Bytes mapped for unwind tables (part of the profiler's own memory).
pub(crate) fn table_bytes() -> usize {
    builder::table_bytes()
}

/// Samples the table unwinder handed to libgcc.
pub(crate) fn table_fallbacks() -> u64 {
    builder::fallbacks()
}

/// Modules whose unwind table waits for memory.
pub(crate) fn tables_deferred() -> usize {
    builder::deferred()
}

fn mode() -> u8 {
    let mode = MODE.load(Ordering::Relaxed);
    if mode != UNSET {
        return mode;
    }
    let chosen = match super::env::env_bytes(c"HEAPPROF_UNWIND") {
        None | Some(b"auto") => FP_CHECKING,
        Some(b"fp") => FP_FORCED,
        Some(b"table") if table_walk::SUPPORTED => TABLE_FORCED,
        Some(b"table") => {
            super::env::warn(b"heapprof: HEAPPROF_UNWIND=table is x86_64 only; using dwarf\n");
            DWARF
        }
        Some(b"dwarf") => DWARF,
        Some(_) => {
            super::env::warn(
                b"heapprof: HEAPPROF_UNWIND is auto, fp, table or dwarf; using auto\n",
            );
            FP_CHECKING
        }
    };
    match MODE.compare_exchange(UNSET, chosen, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen,
        Err(current) => current,
    }
}

/// A buffer for one captured stack, left uninitialised: every unwinder
/// writes the frames it returns before it returns their count, so the
/// sampled path does not clear [`MAX_DEPTH`] words first (512 bytes, a
/// libc `memset` call: 20 ns of the 180 ns a warm frame-pointer sample
/// took, BENCHMARKS.md).
pub(crate) type Frames = [MaybeUninit<usize>; MAX_DEPTH];

/// An empty [`Frames`].
#[inline(always)]
pub(crate) const fn frames() -> Frames {
    [MaybeUninit::uninit(); MAX_DEPTH]
}

/// The first `n` entries of `buf`.
///
/// # Safety
/// An unwinder wrote them: each writes `buf[..n]` for the `n` it returns.
#[inline(always)]
unsafe fn written(buf: &[MaybeUninit<usize>], n: usize) -> &[usize] {
    debug_assert!(n <= buf.len());
    // SAFETY: MaybeUninit<usize> has the layout of usize, and the first n
    // entries are initialised (the caller's contract).
    unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<usize>(), n) }
}

/// `buf` as an unwinder's output, for callers that keep stacks in
/// initialised buffers (`hooks`, tests).
///
/// # Safety
/// Only initialised values may be stored through the result (the
/// unwinders store return addresses), so that `buf` stays initialised.
#[inline(always)]
unsafe fn as_out(buf: &mut [usize]) -> &mut [MaybeUninit<usize>] {
    // SAFETY: MaybeUninit<usize> has the layout of usize; the caller keeps
    // every entry initialised.
    unsafe { &mut *(core::ptr::from_mut(buf) as *mut [MaybeUninit<usize>]) }
}

/// Captures the return addresses of the current stack, innermost first,
/// into `buf`; returns them (at most `MAX_DEPTH`).
#[inline(always)]
pub(crate) fn capture(buf: &mut Frames) -> &[usize] {
    let n = capture_into(buf);
    // SAFETY: capture_into returns how many entries its unwinder wrote.
    unsafe { written(buf, n) }
}

/// Writes the return addresses of the current stack, innermost first, into
/// `buf` and returns how many were written (at most `MAX_DEPTH`).
#[inline(never)]
fn capture_into(buf: &mut Frames) -> usize {
    match mode() {
        FP_FORCED => frame_pointer::walk(buf).unwrap_or_else(|| capture_dwarf(buf)),
        FP_CHECKED if !spot_check_due() => {
            frame_pointer::walk(buf).unwrap_or_else(|| capture_dwarf(buf))
        }
        FP_CHECKED | FP_CHECKING => capture_checked(buf, FP_CHECKING),
        TABLE_FORCED => table_or_libgcc(buf),
        TABLE_CHECKED if !spot_check_due() => table_or_libgcc(buf),
        TABLE_CHECKED | TABLE_CHECKING => capture_checked(buf, TABLE_CHECKING),
        _ => capture_dwarf(buf),
    }
}

/// Whether this trusted sample is one to compare with libgcc again: every
/// [`SPOT_CHECK_EVERY`]th of the thread's.
#[inline]
fn spot_check_due() -> bool {
    SINCE_SPOT_CHECK
        .try_with(|n| {
            let due = n.get() + 1 >= SPOT_CHECK_EVERY;
            n.set(if due { 0 } else { n.get() + 1 });
            due
        })
        .unwrap_or(false)
}

/// The table walk, or libgcc where it cannot answer. Inlined, so the
/// table's first frame returns into the caller, as libgcc's stack passes
/// through it.
#[inline(always)]
fn table_or_libgcc(buf: &mut Frames) -> usize {
    match table_walk::walk(buf) {
        Ok(depth) => depth,
        Err(why) => {
            builder::note_fallback(why);
            capture_dwarf(buf)
        }
    }
}

/// Captures with libgcc into `buf` and with the unwinder `checking` is
/// about (`FP_CHECKING` or `TABLE_CHECKING`) alongside, and moves `auto`
/// on (the state table above).
#[inline(never)]
fn capture_checked(buf: &mut Frames, checking: u8) -> usize {
    let mut fast = frames();
    let walked = if checking == FP_CHECKING {
        frame_pointer::walk(&mut fast)
    } else {
        table_walk::walk(&mut fast)
            .map_err(builder::note_fallback)
            .ok()
    };
    let depth = capture_dwarf(buf);
    let this = capture_checked as fn(&mut Frames, u8) -> usize as usize;
    let returns_here = |ip: usize| enclosing_function(ip) == Some(this);
    let Some(n) = walked else {
        if checking == TABLE_CHECKING && builder::failed() {
            let _ = MODE.compare_exchange(checking, DWARF, Ordering::Relaxed, Ordering::Relaxed);
        }
        return depth;
    };
    // SAFETY: each unwinder wrote the entries it counted.
    let (fast, dwarf) = unsafe { (written(&fast, n), written(buf, depth)) };
    let agreed = if checking == FP_CHECKING {
        agree(fast, dwarf, returns_here)
    } else {
        agree_exactly(fast, dwarf, returns_here, MAX_DEPTH)
    };
    let (trusted, distrusted) = match checking {
        FP_CHECKING => (FP_CHECKED, [FP_CHECKING, FP_CHECKED]),
        _ => (TABLE_CHECKED, [TABLE_CHECKING, TABLE_CHECKED]),
    };
    if agreed {
        let agreements = AUTO_SAMPLES.fetch_add(1, Ordering::Relaxed) + 1;
        if agreements >= AUTO_CHECKS {
            let _ = MODE.compare_exchange(checking, trusted, Ordering::Relaxed, Ordering::Relaxed);
        }
        return depth;
    }
    let next = if checking == FP_CHECKING && table_walk::SUPPORTED {
        TABLE_CHECKING
    } else {
        DWARF
    };
    for from in distrusted {
        if MODE
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            AUTO_SAMPLES.store(0, Ordering::Relaxed);
        }
    }
    depth
}

/// The two stacks from `capture_checked` lined up at it: `fast[0]` must
/// return into it (`returns_here`; a walk that starts anywhere else came
/// from a frame pointer left by some other function: that code was built
/// without them), and `fast[1]`, the return into its caller, must follow
/// libgcc's own frame that returns into it. Returns both from there on.
fn line_up<'a>(
    fast: &'a [usize],
    dwarf: &'a [usize],
    returns_here: impl Fn(usize) -> bool,
) -> Option<(&'a [usize], &'a [usize])> {
    let (&first, &anchor) = (fast.first()?, fast.get(1)?);
    if !returns_here(first) {
        return None;
    }
    let start = dwarf
        .windows(2)
        .take(8)
        .position(|w| returns_here(w[0]) && w[1] == anchor)?
        + 1;
    Some((&fast[1..], &dwarf[start..]))
}

/// Whether a frame-pointer stack and a libgcc stack name the same frames:
/// lined up ([`line_up`]), the frame-pointer stack must repeat libgcc's
/// frame for frame, except for the outermost [`OUTER_SLACK`] frames, and
/// must not stop early.
fn agree(fp: &[usize], dwarf: &[usize], returns_here: impl Fn(usize) -> bool) -> bool {
    let Some((fp, dwarf)) = line_up(fp, dwarf, returns_here) else {
        return false;
    };
    let same = fp.iter().zip(dwarf).take_while(|(a, b)| a == b).count();
    same + OUTER_SLACK >= dwarf.len()
}

/// Whether a table stack and a libgcc stack are the same frames: lined up
/// ([`line_up`]), equal to the end; one may be shorter only where its
/// buffer (`capacity` frames) was full.
fn agree_exactly(
    table: &[usize],
    dwarf: &[usize],
    returns_here: impl Fn(usize) -> bool,
    capacity: usize,
) -> bool {
    let (table_full, dwarf_full) = (table.len() == capacity, dwarf.len() == capacity);
    let Some((table, dwarf)) = line_up(table, dwarf, returns_here) else {
        return false;
    };
    let n = table.len().min(dwarf.len());
    table[..n] == dwarf[..n]
        && match table.len().cmp(&dwarf.len()) {
            core::cmp::Ordering::Equal => true,
            core::cmp::Ordering::Less => table_full,
            core::cmp::Ordering::Greater => dwarf_full,
        }
}

unsafe extern "C" {
    /// libgcc's unwinder: the start of the function containing `pc`, from
    /// its FDE, or NULL.
    fn _Unwind_FindEnclosingFunction(pc: *mut core::ffi::c_void) -> *mut core::ffi::c_void;
}

/// Entry address of the function that return address `ip` returns into.
pub(crate) fn enclosing_function(ip: usize) -> Option<usize> {
    // SAFETY: a pure lookup in the unwind tables (the same ones DWARF
    // unwinding reads); any address is accepted, an unknown one gives NULL.
    let entry = unsafe {
        _Unwind_FindEnclosingFunction(ip.wrapping_sub(1) as *mut core::ffi::c_void) as usize
    };
    (entry != 0).then_some(entry)
}

#[cfg(test)]
mod tests;
