//! From an interrupted thread's registers to its return addresses, inside a
//! signal handler.
//!
//! Everything here is async-signal-safe: no allocation, no lock, no libgcc
//! (`_Unwind_Backtrace` takes the loader lock through `dl_iterate_phdr`,
//! which the interrupted thread may hold). [`unwind_from_context`] walks
//! the frame-pointer chain the way `alloc::stack::frame_pointer` does for
//! the current thread, with two differences: it starts from the registers
//! the kernel saved when the signal arrived, and the stack bounds come from
//! the caller (a snapshot of `/proc/self/maps`), because looking them up
//! (`pthread_getattr_np`) allocates. Every frame record is checked to lie
//! above the interrupted stack pointer and below the end of its stack
//! mapping, and each page of it is probed readable with a syscall before
//! the first load from it, so a garbage frame pointer ends the walk instead
//! of faulting.
//!
//! This is the one place that turns registers into a stack: a table-driven
//! DWARF unwinder (for code built without frame pointers) replaces the walk
//! here without touching the signal protocol around it.

/// The registers an unwind starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Registers {
    /// The interrupted instruction.
    pub pc: usize,
    /// The stack pointer at that instruction.
    pub sp: usize,
    /// The frame-pointer register (`rbp`, `x29`).
    pub fp: usize,
}

/// Where the interrupted thread's stack may be read: `[low, high)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackRange {
    pub low: usize,
    pub high: usize,
}

/// Readability is probed at this granularity: every page size Linux uses is
/// a multiple of it, so probing more often than needed is merely redundant.
const PROBE_GRANULE: usize = 4096;

/// The interrupted context's registers.
///
/// # Safety
/// `context` is the third argument the kernel passed to an `SA_SIGINFO`
/// signal handler that is still running: a valid `ucontext_t`.
pub(crate) unsafe fn registers(context: *const core::ffi::c_void) -> Option<Registers> {
    if context.is_null() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller guarantees a live ucontext_t.
        let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
        let gregs = &uc.uc_mcontext.gregs;
        let reg = |i: libc::c_int| gregs.get(i as usize).map(|&r| r as usize);
        Some(Registers {
            pc: reg(libc::REG_RIP)?,
            sp: reg(libc::REG_RSP)?,
            fp: reg(libc::REG_RBP)?,
        })
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: the caller guarantees a live ucontext_t.
        let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
        let mc = &uc.uc_mcontext;
        Some(Registers {
            pc: mc.pc as usize,
            sp: mc.sp as usize,
            fp: *mc.regs.get(29)? as usize,
        })
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// Writes the interrupted thread's stack into `buf`, innermost first, and
/// returns how many entries were written.
///
/// Entries follow the return-address convention of sampled stacks, so the
/// same symbolizer reads both: the first entry is `pc + 1` (a return
/// address points just after its call; `pc + 1` points just after the
/// interrupted instruction's first byte), the others are the return
/// addresses of the frame-pointer chain that starts at `regs.fp`. The walk
/// reads only 8-aligned frame records inside `[max(stack.low, regs.sp),
/// stack.high)`, each moving towards the top of the stack, each page
/// probed readable first; it stops at the first record that breaks a rule,
/// a null return address or a full `buf`.
///
/// Async-signal-safe and panic-free.
pub(crate) fn unwind_from_context(regs: Registers, stack: StackRange, buf: &mut [usize]) -> usize {
    if regs.pc == 0 {
        return 0;
    }
    let Some(first) = buf.first_mut() else {
        return 0;
    };
    *first = regs.pc.wrapping_add(1);
    let mut n = 1;
    let low = stack.low.max(regs.sp);
    let high = stack.high;
    let mut fp = regs.fp;
    // Addresses below this are on pages already probed readable.
    let mut probed_to = 0usize;
    while n < buf.len() {
        if !fp.is_multiple_of(8) || fp < low {
            break;
        }
        let Some(end) = fp.checked_add(16) else {
            break;
        };
        if end > high {
            break;
        }
        if end > probed_to {
            let mut page = fp.max(probed_to) & !(PROBE_GRANULE - 1);
            let mut readable = true;
            while page < end {
                if !is_readable(page) {
                    readable = false;
                    break;
                }
                page = page.saturating_add(PROBE_GRANULE);
            }
            if !readable {
                break;
            }
            probed_to = page;
        }
        // SAFETY: [fp, fp + 16) is 8-aligned, inside the thread's stack
        // mapping and on pages just probed readable. The interrupted thread
        // is this thread (the handler runs on it), so its own stack cannot
        // be unmapped while we read. Volatile: the words belong to frames
        // of interrupted code, not to any Rust object.
        let (next, ret) = unsafe {
            (
                core::ptr::read_volatile(fp as *const usize),
                core::ptr::read_volatile((fp + 8) as *const usize),
            )
        };
        if ret == 0 {
            break;
        }
        if let Some(slot) = buf.get_mut(n) {
            *slot = ret;
        }
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

/// Whether the 8 bytes at `addr` can be read, asked of the kernel so that an
/// unreadable address is an answer rather than a fault.
///
/// `rt_sigprocmask` copies the new mask from `addr` before it validates
/// `how`: with an invalid `how` it fails with `EFAULT` when `addr` cannot be
/// read and with `EINVAL` otherwise, changing nothing either way (the trick
/// Abseil's `AddressIsReadable` uses). Sets `errno`; the signal handler
/// restores it. Async-signal-safe.
fn is_readable(addr: usize) -> bool {
    const KERNEL_SIGSET_BYTES: libc::c_long = 8;
    // SAFETY: a raw syscall with scalar arguments and a pointer the kernel
    // only reads through copy_from_user, which cannot fault in user space;
    // an invalid `how` (-1) guarantees the signal mask is not changed.
    let result = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            -1 as libc::c_long,
            addr as *const libc::c_void,
            core::ptr::null_mut::<libc::c_void>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    if result == 0 {
        return true;
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    errno != libc::EFAULT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack: frame records `[next fp, return address]` laid out in a
    /// buffer the way a frame-pointer chain lays them out on a real stack.
    fn fake_stack(words: usize) -> Vec<usize> {
        vec![0usize; words]
    }

    fn addr_of(stack: &[usize], index: usize) -> usize {
        &stack[index] as *const usize as usize
    }

    fn range(stack: &[usize]) -> StackRange {
        let low = stack.as_ptr() as usize;
        StackRange {
            low,
            high: low + std::mem::size_of_val(stack),
        }
    }

    #[test]
    fn walks_a_chain_from_registers() {
        let mut stack = fake_stack(64);
        // Three records at words 10, 20, 30; the last one links to 0.
        let (a, b, c) = (
            addr_of(&stack, 10),
            addr_of(&stack, 20),
            addr_of(&stack, 30),
        );
        stack[10] = b;
        stack[11] = 0x1111;
        stack[20] = c;
        stack[21] = 0x2222;
        stack[30] = 0;
        stack[31] = 0x3333;
        let regs = Registers {
            pc: 0x4000,
            sp: addr_of(&stack, 2),
            fp: a,
        };
        let mut buf = [0usize; 16];
        let n = unwind_from_context(regs, range(&stack), &mut buf);
        assert_eq!(&buf[..n], &[0x4001, 0x1111, 0x2222, 0x3333]);
        // A short buffer stops the walk.
        let mut short = [0usize; 2];
        assert_eq!(unwind_from_context(regs, range(&stack), &mut short), 2);
        assert_eq!(short, [0x4001, 0x1111]);
        assert_eq!(unwind_from_context(regs, range(&stack), &mut []), 0);
    }

    #[test]
    fn garbage_frame_pointers_end_the_walk() {
        let mut stack = fake_stack(64);
        let sp = addr_of(&stack, 8);
        let regs = |fp| Registers { pc: 0x4000, sp, fp };
        let mut buf = [0usize; 16];
        let r = range(&stack);
        // Below the interrupted stack pointer, misaligned, outside the stack.
        for fp in [
            addr_of(&stack, 4),
            addr_of(&stack, 10) + 3,
            r.high + 64,
            0,
            usize::MAX - 7,
        ] {
            assert_eq!(unwind_from_context(regs(fp), r, &mut buf), 1, "{fp:#x}");
        }
        // A record that links downwards ends the walk after itself.
        let a = addr_of(&stack, 20);
        stack[20] = addr_of(&stack, 12);
        stack[21] = 0x1111;
        assert_eq!(unwind_from_context(regs(a), range(&stack), &mut buf), 2);
        // No pc, no stack.
        let none = Registers { pc: 0, ..regs(a) };
        assert_eq!(unwind_from_context(none, range(&stack), &mut buf), 0);
    }

    #[test]
    fn unreadable_pages_inside_the_range_are_never_read() {
        // Two pages: readable, then PROT_NONE; a record on the readable page
        // links into the unreadable one.
        let page = 4096;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as usize;
        // SAFETY: both words lie on the first page of the mapping.
        unsafe {
            *((base + 64) as *mut usize) = base + page + 64;
            *((base + 72) as *mut usize) = 0x1111;
        }
        // SAFETY: the second page of our own mapping.
        let protected = unsafe { libc::mprotect((base + page) as *mut _, page, libc::PROT_NONE) };
        assert_eq!(protected, 0);
        assert!(is_readable(base));
        assert!(!is_readable(base + page));
        let regs = Registers {
            pc: 0x4000,
            sp: base,
            fp: base + 64,
        };
        let whole = StackRange {
            low: base,
            high: base + 2 * page,
        };
        let mut buf = [0usize; 8];
        assert_eq!(unwind_from_context(regs, whole, &mut buf), 2);
        assert_eq!(&buf[..2], &[0x4001, 0x1111]);
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(base as *mut _, 2 * page) };
    }
}
