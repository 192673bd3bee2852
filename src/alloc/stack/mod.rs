//! Capturing the call stack of a sampled allocation, and choosing how.
//!
//! Two unwinders:
//! - frame pointers (`frame_pointer`): about 0.1 us a stack, right only if
//!   the code on the stack keeps frame pointers;
//! - DWARF: the `backtrace` crate's unsynchronized tracer (libgcc's
//!   `_Unwind_Backtrace` over `.eh_frame`), right for any code with unwind
//!   tables, about 2.5 us a stack. The synchronized `backtrace::trace`
//!   takes a global lock, which an allocator must not.
//!
//! `HEAPPROF_UNWIND` picks one: `dwarf`, `fp` (trusted without checks), or
//! `auto` (the default), which checks before it trusts: the first
//! [`AUTO_CHECKS`] samples are captured both ways and compared, frame
//! pointers are used from then on if every comparison agreed, and one
//! sample in [`SPOT_CHECK_EVERY`] is compared again; a disagreement
//! switches to DWARF for the rest of the process. A binary built without
//! frame pointers therefore costs [`AUTO_CHECKS`] extra walks and then runs
//! on DWARF; one built with them runs on frame pointers, and a code path
//! that breaks the chain (a C library built without them, say) is caught
//! by a spot check.
//!
//! The capture functions are never inlined, so the profiler's own frames at
//! the top of every stack are the same each time and symbolization trims
//! them by name (`symbolize::is_plumbing`). Unwinding allocates nothing in
//! the common case; if libgcc ever does, the reentrancy guard the caller
//! holds sends that allocation to the inner allocator unsampled.

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

mod dwarf;
mod frame_pointer;

use super::site_table::MAX_DEPTH;
use dwarf::capture_dwarf;

/// Samples captured both ways before `auto` trusts frame pointers.
pub const AUTO_CHECKS: u32 = 16;
/// Under `auto` with frame pointers trusted, one sample in this many is
/// captured both ways again.
pub const SPOT_CHECK_EVERY: u32 = 1024;
/// Outermost frames the frame-pointer chain may lose or garble and still
/// agree with DWARF: the C library's thread and process entry points
/// (`start_thread`/`clone3`, `__libc_start_call_main`/`__libc_start_main`/
/// `_start`), built without frame pointers.
const OUTER_SLACK: usize = 3;

/// How sampled stacks are being captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unwinder {
    /// `auto` is still comparing the two unwinders (or nothing has been
    /// sampled yet).
    #[default]
    Checking,
    /// Frame-pointer walking (`HEAPPROF_UNWIND=fp`, or `auto` after the
    /// comparisons agreed).
    FramePointers,
    /// DWARF unwinding (`HEAPPROF_UNWIND=dwarf`, or `auto` after a
    /// comparison disagreed).
    Dwarf,
}

impl Unwinder {
    /// `checking`, `frame-pointers` or `dwarf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unwinder::Checking => "checking",
            Unwinder::FramePointers => "frame-pointers",
            Unwinder::Dwarf => "dwarf",
        }
    }
}

const UNSET: u8 = 0;
const CHECKING: u8 = 1;
const FP_CHECKED: u8 = 2;
const FP_FORCED: u8 = 3;
const DWARF: u8 = 4;

static MODE: AtomicU8 = AtomicU8::new(UNSET);
/// Samples captured under `auto`: agreements while checking, then a
/// counter for spot checks.
static AUTO_SAMPLES: AtomicU32 = AtomicU32::new(0);

/// The unwinder in use.
pub fn unwinder() -> Unwinder {
    match MODE.load(Ordering::Relaxed) {
        UNSET | CHECKING => Unwinder::Checking,
        FP_CHECKED | FP_FORCED => Unwinder::FramePointers,
        _ => Unwinder::Dwarf,
    }
}

fn mode() -> u8 {
    let mode = MODE.load(Ordering::Relaxed);
    if mode != UNSET {
        return mode;
    }
    let chosen = match super::env::env_bytes(c"HEAPPROF_UNWIND") {
        None | Some(b"auto") => CHECKING,
        Some(b"fp") => FP_FORCED,
        Some(b"dwarf") => DWARF,
        Some(_) => {
            super::env::warn(b"heapprof: HEAPPROF_UNWIND is auto, fp or dwarf; using auto\n");
            CHECKING
        }
    };
    match MODE.compare_exchange(UNSET, chosen, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen,
        Err(current) => current,
    }
}

/// Writes the return addresses of the current stack, innermost first, into
/// `buf` and returns how many were written (at most `MAX_DEPTH`).
#[inline(never)]
pub(crate) fn capture(buf: &mut [usize; MAX_DEPTH]) -> usize {
    match mode() {
        FP_FORCED => frame_pointer::walk(buf).unwrap_or_else(|| capture_dwarf(buf)),
        FP_CHECKED => {
            let n = AUTO_SAMPLES.fetch_add(1, Ordering::Relaxed);
            if !n.is_multiple_of(SPOT_CHECK_EVERY) {
                if let Some(depth) = frame_pointer::walk(buf) {
                    return depth;
                }
                return capture_dwarf(buf);
            }
            capture_checked(buf)
        }
        CHECKING => capture_checked(buf),
        _ => capture_dwarf(buf),
    }
}

/// Captures with DWARF into `buf` and with frame pointers alongside, and
/// moves `auto` on: to frame pointers after [`AUTO_CHECKS`] agreements, to
/// DWARF at the first disagreement. A stack the frame-pointer walker cannot
/// walk at all (a signal stack) decides nothing.
#[inline(never)]
fn capture_checked(buf: &mut [usize; MAX_DEPTH]) -> usize {
    let mut walked = [0usize; MAX_DEPTH];
    let fp = frame_pointer::walk(&mut walked);
    let depth = capture_dwarf(buf);
    let this = capture_checked as fn(&mut [usize; MAX_DEPTH]) -> usize as usize;
    let returns_here = |ip: usize| enclosing_function(ip) == Some(this);
    match fp {
        Some(n) if agree(&walked[..n], &buf[..depth], returns_here) => {
            let agreed = AUTO_SAMPLES.fetch_add(1, Ordering::Relaxed) + 1;
            if agreed >= AUTO_CHECKS {
                let _ = MODE.compare_exchange(
                    CHECKING,
                    FP_CHECKED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        Some(_) => MODE.store(DWARF, Ordering::Relaxed),
        None => {}
    }
    depth
}

/// Whether a frame-pointer stack and a DWARF stack, both taken from the
/// same caller (`capture_checked`), name the same frames;
/// `returns_here(ip)` says whether return address `ip` is inside that
/// caller.
///
/// The two start in different functions, so they are lined up at the
/// caller: `fp[0]` must return into it (a walk that starts anywhere else
/// came from a frame pointer left by some other function: this code was
/// built without them), and `fp[1]`, the return into its caller, must
/// follow DWARF's own frame that returns into it. From there the
/// frame-pointer stack must repeat DWARF frame for frame, except for the
/// outermost [`OUTER_SLACK`] frames, and must not stop early.
fn agree(fp: &[usize], dwarf: &[usize], returns_here: impl Fn(usize) -> bool) -> bool {
    let (Some(&first), Some(&anchor)) = (fp.first(), fp.get(1)) else {
        return false;
    };
    if !returns_here(first) {
        return false;
    }
    let Some(start) = dwarf
        .windows(2)
        .take(8)
        .position(|w| returns_here(w[0]) && w[1] == anchor)
        .map(|i| i + 1)
    else {
        return false;
    };
    let (fp, dwarf) = (&fp[1..], &dwarf[start..]);
    let same = fp.iter().zip(dwarf).take_while(|(a, b)| a == b).count();
    same + OUTER_SLACK >= dwarf.len()
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
mod tests {
    use super::*;

    #[test]
    fn agreement_lines_the_stacks_up_at_the_common_caller() {
        // 0x1x return into the caller (capture_checked), 0x9x elsewhere.
        let here = |ip: usize| (0x10..0x20).contains(&ip);
        let dwarf = [0x90, 0x11, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0];
        assert!(agree(&[0x12, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0], &dwarf, here));
        // Losing the outermost frames (libc entry points) is allowed...
        assert!(agree(&[0x12, 0xa0, 0xb0, 0xc0, 0xd0], &dwarf, here));
        assert!(agree(&[0x12, 0xa0, 0xb0, 0xc0, 0x99, 0x98], &dwarf, here));
        // ...skipping a frame in the middle is not, nor stopping early.
        assert!(!agree(&[0x12, 0xa0, 0xc0, 0xd0, 0xe0], &dwarf, here));
        assert!(!agree(&[0x12, 0xa0], &dwarf, here));
        // No common caller: the walk started somewhere else.
        assert!(!agree(&[0x12, 0x30, 0xb0], &dwarf, here));
        // A walk that starts from another function's frame pointer (this
        // code has none) may line up with DWARF further out: still no.
        assert!(!agree(&[0xb0, 0xc0, 0xd0, 0xe0], &dwarf, here));
        assert!(!agree(&[0x95, 0xb0, 0xc0, 0xd0, 0xe0], &dwarf, here));
    }

    #[test]
    fn dwarf_and_frame_pointers_agree_exactly_when_frame_pointers_are_kept() {
        // This repository builds with frame pointers (.cargo/config.toml),
        // unless an explicit RUSTFLAGS replaces them: then `auto` must
        // reject the walk.
        let this = dwarf_and_frame_pointers_agree_exactly_when_frame_pointers_are_kept as fn();
        let kept = frame_pointer::keeps_frame_pointer(this as *const u8);
        let mut walked = [0usize; MAX_DEPTH];
        let mut buf = [0usize; MAX_DEPTH];
        let n = frame_pointer::walk(&mut walked).expect("walkable stack");
        let depth = capture_dwarf(&mut buf);
        let here = this as usize;
        assert_eq!(
            agree(&walked[..n], &buf[..depth], |ip| enclosing_function(ip)
                == Some(here)),
            kept,
            "frame pointers kept: {kept}\nframe pointers {:x?}\nDWARF {:x?}",
            &walked[..n],
            &buf[..depth]
        );
    }
}
