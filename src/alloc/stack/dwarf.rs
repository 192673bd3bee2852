//! DWARF unwinding: libgcc's `_Unwind_Backtrace` over `.eh_frame`, through
//! the `backtrace` crate's unsynchronized tracer. Right for any code with
//! unwind tables; slower than walking frame pointers (`frame_pointer`).

use crate::alloc::site_table::MAX_DEPTH;

/// DWARF unwinding with `backtrace`'s unsynchronized tracer.
#[inline(never)]
pub(super) fn capture_dwarf(buf: &mut [usize; MAX_DEPTH]) -> usize {
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
