//! DWARF unwinding: libgcc's `_Unwind_Backtrace` over `.eh_frame`, through
//! the `backtrace` crate's unsynchronized tracer. Right for any code with
//! unwind tables, and the reference the faster unwinders (`frame_pointer`,
//! `table_walk`) are checked against.

use core::mem::MaybeUninit;

/// Writes the return addresses of the current stack, innermost first,
/// into `buf` (the first frames are inside libgcc and this function) and
/// returns how many (`buf[..n]`), at most `buf.len()`.
#[inline(never)]
pub(super) fn capture_dwarf(buf: &mut [MaybeUninit<usize>]) -> usize {
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
            buf[n].write(ip);
            n += 1;
            true
        });
    }
    n
}
