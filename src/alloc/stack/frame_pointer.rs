//! Walking the frame-pointer chain of the current thread's stack.
//!
//! Code built with frame pointers (`-C force-frame-pointers=yes` for Rust;
//! Rust's standard library ships with them) starts each function by
//! pushing the caller's frame pointer and pointing the frame-pointer
//! register at it, so every frame holds `[previous frame pointer, return
//! address]` and the frames form a linked list up the stack. Walking it is
//! two loads per frame, about 70 ns for 30 frames (`stack` compares the
//! unwinders).
//!
//! The chain is only as good as the code on the stack: a function built
//! without frame pointers is skipped (if it leaves the register alone) or
//! ends the walk with garbage (if it uses the register for data). Garbage
//! never becomes a wild read: every frame pointer is checked to lie inside
//! this thread's stack, above the previous one, before it is read. Whether
//! the chain is also *right* is for `stack` to decide, by comparing it
//! with the DWARF unwinder's answer.

use core::mem::MaybeUninit;

use super::bounds::stack_bounds;

/// Writes the return addresses on the frame-pointer chain, innermost
/// first, starting with the return into this function's caller, into
/// `buf`, and returns how many were written (`buf[..n]`).
///
/// Returns `None` when the chain cannot be walked safely: an architecture
/// without a known frame layout, a thread whose stack bounds are unknown,
/// or code running on a stack other than the thread's own (a signal stack,
/// a coroutine). Returns `Some(0)` when the frame-pointer register does
/// not point into this stack at all. The first call on each thread looks the bounds up with
/// `pthread_getattr_np`, which may allocate and, on the main thread, reads
/// `/proc/self/maps`; callers hold the reentrancy guard.
#[inline(never)]
pub(crate) fn walk(buf: &mut [MaybeUninit<usize>]) -> Option<usize> {
    let mut fp = frame_pointer()?;
    let (low, high) = stack_bounds()?;
    let here = &fp as *const usize as usize;
    if !(low..high).contains(&here) {
        return None;
    }
    let mut n = 0;
    // A register that does not point into the stack above this frame is
    // not a frame pointer (code built without them): an empty chain, which
    // `stack` counts as a disagreement with DWARF.
    if !(here..high).contains(&fp) {
        return Some(0);
    }
    // A frame record is two words: the previous frame pointer, then the
    // return address. Each iteration reads one record inside [here, high).
    while n < buf.len() && fp.is_multiple_of(8) && fp.checked_add(16).is_some_and(|end| end <= high)
    {
        // SAFETY: fp is 8-aligned and [fp, fp + 16) lies between this
        // frame's own locals and the top of this thread's stack, memory
        // that is mapped and readable while this function runs. Volatile:
        // the words belong to other frames, not to any Rust object.
        let (next, ret) = unsafe {
            (
                core::ptr::read_volatile(fp as *const usize),
                core::ptr::read_volatile((fp + 8) as *const usize),
            )
        };
        if ret == 0 {
            break;
        }
        buf[n].write(ret);
        n += 1;
        // The outermost frame has a null (or bogus) link; records only
        // ever move towards the top of the stack.
        if next <= fp {
            break;
        }
        fp = next;
    }
    Some(n)
}

/// The frame-pointer register: this function's caller's frame, since this
/// is always inlined.
#[inline(always)]
fn frame_pointer() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let fp: usize;
        // SAFETY: reads a register, touches no memory.
        unsafe {
            core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        Some(fp)
    }
    #[cfg(target_arch = "aarch64")]
    {
        let fp: usize;
        // SAFETY: reads a register, touches no memory.
        unsafe {
            core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        Some(fp)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// Whether the function whose code starts at `f` keeps a frame pointer:
/// it begins `push %rbp; mov %rsp,%rbp` (x86_64, after an optional
/// `endbr64`) or sets x29 from sp in its first instructions (aarch64).
/// For tests, which run with this repository's frame pointers
/// (`.cargo/config.toml`) unless an explicit `RUSTFLAGS` replaces them.
#[cfg(test)]
pub(crate) fn keeps_frame_pointer(f: *const u8) -> bool {
    // SAFETY: `f` is the entry of a function of this binary; its first 16
    // bytes are code in a mapped, readable text segment.
    let code = unsafe { core::slice::from_raw_parts(f, 16) };
    if cfg!(target_arch = "x86_64") {
        let prologue = [0x55, 0x48, 0x89, 0xe5];
        code.starts_with(&prologue) || code[4..].starts_with(&prologue)
    } else if cfg!(target_arch = "aarch64") {
        code.chunks(4)
            .any(|i| u32::from_le_bytes([i[0], i[1], i[2], i[3]]) == 0x9100_03fd)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn nested(depth: usize, buf: &mut [MaybeUninit<usize>]) -> Option<usize> {
        if depth == 0 {
            walk(buf)
        } else {
            let n = nested(depth - 1, buf);
            // Keep the recursion from becoming a loop.
            core::hint::black_box(depth);
            n
        }
    }

    fn built_with_frame_pointers() -> bool {
        keeps_frame_pointer(
            nested as fn(usize, &mut [MaybeUninit<usize>]) -> Option<usize> as *const u8,
        )
    }

    #[test]
    fn walks_a_deep_chain_on_this_threads_stack() {
        let mut buf = [MaybeUninit::uninit(); 64];
        let n = nested(20, &mut buf).expect("stack bounds of a test thread");
        if built_with_frame_pointers() {
            assert!(n > 20, "{n} frames for a 20-deep recursion");
            // SAFETY: walk wrote the first n entries.
            assert!(buf[..n].iter().all(|ret| unsafe { ret.assume_init() } != 0));
        } else {
            // Functions without frame pointers are invisible to the walk.
            assert!(n < 20, "{n} frames for a recursion without frame pointers");
        }
    }

    #[test]
    fn stops_at_the_buffer_length() {
        let mut buf = [MaybeUninit::uninit(); 4];
        let n = nested(20, &mut buf).expect("stack bounds of a test thread");
        if built_with_frame_pointers() {
            assert_eq!(n, 4);
        } else {
            assert!(n <= 4, "{n}");
        }
    }
}
