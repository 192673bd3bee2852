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

use crate::frame_pointer;
use crate::site_table::MAX_DEPTH;

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
    let chosen = match crate::config::env_bytes(c"HEAPPROF_UNWIND") {
        None | Some(b"auto") => CHECKING,
        Some(b"fp") => FP_FORCED,
        Some(b"dwarf") => DWARF,
        Some(_) => {
            crate::config::warn(b"heapprof: HEAPPROF_UNWIND is auto, fp or dwarf; using auto\n");
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
    match fp {
        Some(n) if agree(&walked[..n], &buf[..depth]) => {
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
/// same caller (`capture_checked`), name the same frames.
///
/// The two start in different functions, so they are lined up at the
/// return address into `capture_checked`'s caller: `fp[1]` (`fp[0]` returns
/// into `capture_checked` itself), found among DWARF's first frames. From
/// there the frame-pointer stack must repeat DWARF frame for frame, except
/// for the outermost [`OUTER_SLACK`] frames, and must not stop early.
fn agree(fp: &[usize], dwarf: &[usize]) -> bool {
    let Some(&anchor) = fp.get(1) else {
        return false;
    };
    let Some(start) = dwarf.iter().take(8).position(|&ip| ip == anchor) else {
        return false;
    };
    let (fp, dwarf) = (&fp[1..], &dwarf[start..]);
    let same = fp.iter().zip(dwarf).take_while(|(a, b)| a == b).count();
    same + OUTER_SLACK >= dwarf.len()
}

/// DWARF unwinding with `backtrace`'s unsynchronized tracer.
#[inline(never)]
fn capture_dwarf(buf: &mut [usize; MAX_DEPTH]) -> usize {
    let mut n = 0;
    // SAFETY: trace_unsynchronized is unsafe only because it does not
    // serialise with other unsynchronized backtrace calls; on Linux it walks
    // with libgcc's thread-safe unwinder, and the closure only stores into a
    // local buffer and cannot panic.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            if ip == 0 || n == buf.len() {
                return false;
            }
            buf[n] = ip;
            n += 1;
            true
        });
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_lines_the_stacks_up_at_the_common_caller() {
        let dwarf = [0x10, 0x11, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0];
        assert!(agree(&[0x20, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0], &dwarf));
        // Losing the outermost frames (libc entry points) is allowed...
        assert!(agree(&[0x20, 0xa0, 0xb0, 0xc0, 0xd0], &dwarf));
        assert!(agree(&[0x20, 0xa0, 0xb0, 0xc0, 0x99, 0x98], &dwarf));
        // ...skipping a frame in the middle is not, nor stopping early.
        assert!(!agree(&[0x20, 0xa0, 0xc0, 0xd0, 0xe0], &dwarf));
        assert!(!agree(&[0x20, 0xa0], &dwarf));
        // No common caller: the walk started somewhere else.
        assert!(!agree(&[0x20, 0x30, 0xb0], &dwarf));
    }

    #[test]
    fn dwarf_and_frame_pointers_agree_in_this_build() {
        // This repository builds with frame pointers (.cargo/config.toml),
        // so the two unwinders must name the same frames here.
        let mut walked = [0usize; MAX_DEPTH];
        let mut buf = [0usize; MAX_DEPTH];
        let n = frame_pointer::walk(&mut walked).expect("walkable stack");
        let depth = capture_dwarf(&mut buf);
        assert!(
            agree(&walked[..n], &buf[..depth]),
            "frame pointers {:x?}\nDWARF {:x?}",
            &walked[..n],
            &buf[..depth]
        );
    }
}
