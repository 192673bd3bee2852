//! Capturing the call stack of a sampled allocation.
//!
//! This is the one place stacks are captured, and it is never inlined, so the
//! profiler's own frames at the top of every stack are the same each time and
//! symbolization trims them by name (`symbolize::is_plumbing`).
//!
//! Unwinding uses the `backtrace` crate's unsynchronized tracer (libgcc's
//! `_Unwind_Backtrace` over `.eh_frame`). The synchronized `backtrace::trace`
//! takes a global lock, which an allocator must not. The tracer allocates
//! nothing in the common case; if it ever does, the reentrancy guard the
//! caller holds sends that allocation to the inner allocator unsampled.

use crate::site_table::MAX_DEPTH;

/// Writes the return addresses of the current stack, innermost first, into
/// `buf` and returns how many were written (at most `MAX_DEPTH`).
#[inline(never)]
pub(crate) fn capture(buf: &mut [usize; MAX_DEPTH]) -> usize {
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
