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

/// The mappings a handler may read, from a snapshot of `/proc/self/maps`
/// taken before it runs: the readable and writable private ones (every
/// thread stack and alternate signal stack is one of them) and the
/// executable ones, each sorted by start.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    pub stacks: Box<[StackRange]>,
    pub code: Box<[StackRange]>,
}

impl Layout {
    /// This process's layout now. Allocates: never call it in a handler.
    pub fn current(fs: &crate::sys::fs::Fs) -> Layout {
        let text = fs.read("/proc/self/maps").unwrap_or_default();
        let (mut stacks, mut code) = (Vec::new(), Vec::new());
        for m in crate::sys::maps::parse_maps(&text) {
            let range = StackRange {
                low: m.start as usize,
                high: m.end as usize,
            };
            if m.perms.starts_with("rw") && m.perms.ends_with('p') {
                stacks.push(range);
            } else if m.perms.starts_with("r-x") {
                code.push(range);
            }
        }
        stacks.sort_by_key(|r| r.low);
        code.sort_by_key(|r| r.low);
        Layout {
            stacks: stacks.into_boxed_slice(),
            code: code.into_boxed_slice(),
        }
    }

    /// What an unwind starting at stack pointer `sp` may read: the mapping
    /// holding `sp` (empty if none does: a stack mapped after the snapshot,
    /// whose unwind then yields the pc alone) and the code. Async-signal-safe.
    pub fn memory_at(&self, sp: usize) -> Memory<'_> {
        let after = self.stacks.partition_point(|r| r.low <= sp);
        let stack = after
            .checked_sub(1)
            .and_then(|i| self.stacks.get(i))
            .filter(|r| sp < r.high)
            .copied()
            .unwrap_or(StackRange { low: sp, high: sp });
        Memory {
            stack,
            code: &self.code,
        }
    }
}

/// What an unwind may read: the interrupted thread's stack mapping and the
/// process's executable mappings (sorted by start), both from a snapshot
/// of `/proc/self/maps` taken before the signal was sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Memory<'a> {
    pub stack: StackRange,
    pub code: &'a [StackRange],
}

/// How far above the interrupted stack pointer a frameless leaf's frame
/// is searched for its return address and its caller's saved frame
/// pointer. C library wrappers of blocking syscalls use far less.
const SCAN_BYTES: usize = 1024;

/// Writes the interrupted thread's stack into `buf`, innermost first, and
/// returns how many entries were written.
///
/// Entries follow the return-address convention of sampled stacks, so the
/// same symbolizer reads both: the first entry is `pc + 1` (a return
/// address points just after its call; `pc + 1` points just after the
/// interrupted instruction's first byte), the others are return addresses.
///
/// The frame-pointer chain starts at `regs.fp` when the record there looks
/// genuine: inside the stack above `regs.sp`, its return address just
/// after a call instruction (x86_64). Code built without frame pointers
/// (most of libc) breaks that in two ways, both repaired from the words
/// just above the stack pointer (at most [`SCAN_BYTES`]):
/// - a frameless leaf (a syscall wrapper) leaves its caller out of the
///   chain; the first return address above the stack pointer, below the
///   chain's first record, is that caller;
/// - a leaf that uses the frame-pointer register for data leaves no chain
///   at all; the caller's frame pointer it saved on entry is then found as
///   the first word that points to two genuine records in a row.
///
/// Every read is 8-aligned, inside the stack mapping (or a code mapping,
/// for the call-instruction check) and on pages probed readable first. The
/// chain stops at a record that moves down the stack, a return address that
/// is null or not after a call, or a full `buf`.
///
/// Async-signal-safe and panic-free.
pub(crate) fn unwind_from_context(regs: Registers, memory: Memory<'_>, buf: &mut [usize]) -> usize {
    if regs.pc == 0 {
        return 0;
    }
    let Some(first) = buf.first_mut() else {
        return 0;
    };
    *first = regs.pc.wrapping_add(1);
    let mut n = 1;
    let mut reader = Reader::new(memory, regs.sp);
    let scan_end = reader.low.saturating_add(SCAN_BYTES);
    let start = if reader.is_record(regs.fp) {
        Some(regs.fp)
    } else {
        reader.find_saved_frame_pointer(scan_end)
    };
    // The frameless leaf's caller, when the chain does not already start
    // with it.
    let first_record = start.unwrap_or(scan_end).min(scan_end);
    if let Some(ret) = reader.find_return_address(first_record)
        && start.and_then(|fp| reader.stack_word(fp.wrapping_add(8))) != Some(ret)
        && let Some(slot) = buf.get_mut(n)
    {
        *slot = ret;
        n += 1;
    }
    let Some(mut fp) = start else {
        return n;
    };
    while n < buf.len() {
        let (Some(next), Some(ret)) =
            (reader.stack_word(fp), reader.stack_word(fp.wrapping_add(8)))
        else {
            break;
        };
        if ret == 0 || !reader.follows_call(ret) {
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

/// Bounds-checked, probe-first reads of the interrupted thread's stack and
/// of code.
struct Reader<'a> {
    low: usize,
    high: usize,
    code: &'a [StackRange],
    /// `[low & !page, probed_to)` has been probed readable, page by page.
    probed_to: usize,
}

impl<'a> Reader<'a> {
    fn new(memory: Memory<'a>, sp: usize) -> Self {
        let low = memory.stack.low.max(sp);
        Reader {
            low,
            high: memory.stack.high,
            code: memory.code,
            probed_to: low & !(PROBE_GRANULE - 1),
        }
    }

    /// The stack word at `addr`, if `addr` is 8-aligned, inside
    /// `[low, high)` and readable.
    fn stack_word(&mut self, addr: usize) -> Option<usize> {
        let end = addr.checked_add(8)?;
        if !addr.is_multiple_of(8) || addr < self.low || end > self.high {
            return None;
        }
        while self.probed_to < end {
            if !is_readable(self.probed_to) {
                return None;
            }
            self.probed_to = self.probed_to.saturating_add(PROBE_GRANULE);
        }
        // SAFETY: [addr, addr + 8) is 8-aligned, inside the thread's stack
        // mapping and on pages probed readable. The interrupted thread is
        // this thread (the handler runs on it), so its own stack cannot be
        // unmapped while we read. Volatile: the word belongs to frames of
        // interrupted code, not to any Rust object.
        Some(unsafe { core::ptr::read_volatile(addr as *const usize) })
    }

    /// Whether `fp` holds a genuine frame record: `[next, ret]` with `next`
    /// null or higher up the stack and `ret` just after a call.
    fn is_record(&mut self, fp: usize) -> bool {
        let (Some(next), Some(ret)) = (self.stack_word(fp), self.stack_word(fp.wrapping_add(8)))
        else {
            return false;
        };
        ret != 0 && (next == 0 || next > fp) && self.follows_call(ret)
    }

    /// The first word in `[low, end)` that points to a genuine record
    /// whose successor is genuine too (or the end of the chain): the
    /// caller's frame pointer saved by a function that reuses the register.
    fn find_saved_frame_pointer(&mut self, end: usize) -> Option<usize> {
        let mut addr = self.low.checked_add(7)? & !7;
        while addr < end {
            let w = self.stack_word(addr)?;
            if w > addr && self.is_record(w) {
                match self.stack_word(w) {
                    Some(0) => return Some(w),
                    Some(next) if self.is_record(next) => return Some(w),
                    _ => {}
                }
            }
            addr += 8;
        }
        None
    }

    /// The first word in `[low, end)` that is a return address.
    fn find_return_address(&mut self, end: usize) -> Option<usize> {
        let mut addr = self.low.checked_add(7)? & !7;
        while addr < end {
            let w = self.stack_word(addr)?;
            if self.follows_call(w) {
                return Some(w);
            }
            addr += 8;
        }
        None
    }

    /// Whether `ret` points into code just after a call instruction: on
    /// x86_64 a direct `call rel32` (`E8`) or an indirect `call r/m64`
    /// (`FF /2`) whose encoded length ends exactly at `ret`. Elsewhere, any
    /// address in code.
    fn follows_call(&self, ret: usize) -> bool {
        let Some(before) = ret.checked_sub(8) else {
            return false;
        };
        let in_code = self.code.iter().any(|r| r.low <= before && ret <= r.high);
        if !in_code {
            return false;
        }
        if !cfg!(target_arch = "x86_64") {
            return true;
        }
        if !is_readable(before) || !is_readable(ret - 1) {
            return false;
        }
        // SAFETY: [ret - 8, ret) lies inside an executable file mapping
        // and both its ends were just probed readable; code is not a Rust
        // object, hence the unaligned volatile read.
        let bytes = unsafe { core::ptr::read_volatile(before as *const [u8; 8]) };
        if bytes[3] == 0xe8 {
            return true;
        }
        (2..=7).any(|k| {
            let at = 8 - k;
            bytes[at] == 0xff
                && bytes.get(at + 1).is_some_and(|&modrm| {
                    (modrm >> 3) & 7 == 2
                        && indirect_call_len(modrm, bytes.get(at + 2).copied()) == k
                })
        })
    }
}

/// Length of `FF /2` (`call r/m64`) with this ModRM byte (and SIB byte,
/// when there is one): opcode, ModRM, SIB, displacement.
fn indirect_call_len(modrm: u8, sib: Option<u8>) -> usize {
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return 2;
    }
    let has_sib = rm == 4;
    let disp = match md {
        0 if rm == 5 => 4,
        0 if has_sib && sib.is_some_and(|s| s & 7 == 5) => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    2 + usize::from(has_sib) + disp
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

    /// Fake code: `call rel32` instructions back to back, so that every
    /// address `CALLS + 5 * (i + 1)` is a return address; then indirect
    /// calls of several encodings.
    struct Code {
        bytes: Vec<u8>,
    }

    const INDIRECT: &[&[u8]] = &[
        &[0xff, 0xd0],                      // call rax
        &[0x41, 0xff, 0xd3],                // call r11
        &[0xff, 0x50, 0x18],                // call [rax+0x18]
        &[0xff, 0x54, 0x24, 0x08],          // call [rsp+8]
        &[0xff, 0x15, 1, 2, 3, 4],          // call [rip+disp32]
        &[0xff, 0x94, 0x24, 0x10, 0, 0, 0], // call [rsp+disp32]
    ];

    impl Code {
        fn new() -> Self {
            let mut bytes = vec![0x90; 16];
            for _ in 0..8 {
                bytes.extend_from_slice(&[0xe8, 0, 0, 0, 0]);
            }
            for call in INDIRECT {
                bytes.extend_from_slice(call);
            }
            bytes.extend_from_slice(&[0x90; 16]);
            Code { bytes }
        }

        fn base(&self) -> usize {
            self.bytes.as_ptr() as usize
        }

        /// The return address after the i-th direct call.
        fn ret(&self, i: usize) -> usize {
            self.base() + 16 + 5 * (i + 1)
        }

        fn range(&self) -> [StackRange; 1] {
            [StackRange {
                low: self.base(),
                high: self.base() + self.bytes.len(),
            }]
        }
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

    /// The walk from pc 0x4000, `sp` and `fp` over `stack` and `code`.
    fn walk(stack: &[usize], code: &[StackRange], sp: usize, fp: usize) -> Vec<usize> {
        let memory = Memory {
            stack: range(stack),
            code,
        };
        let regs = Registers { pc: 0x4000, sp, fp };
        let mut buf = [0usize; 16];
        let n = unwind_from_context(regs, memory, &mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn walks_a_chain_from_registers() {
        let code = Code::new();
        let ranges = code.range();
        let mut stack = vec![0usize; 64];
        let (a, b, c) = (
            addr_of(&stack, 10),
            addr_of(&stack, 20),
            addr_of(&stack, 30),
        );
        stack[10] = b;
        stack[11] = code.ret(0);
        stack[20] = c;
        stack[21] = code.ret(1);
        stack[30] = 0;
        stack[31] = code.ret(2);
        let regs = Registers {
            pc: 0x4000,
            sp: addr_of(&stack, 2),
            fp: a,
        };
        let memory = Memory {
            stack: range(&stack),
            code: &ranges,
        };
        let mut buf = [0usize; 16];
        let n = unwind_from_context(regs, memory, &mut buf);
        assert_eq!(&buf[..n], &[0x4001, code.ret(0), code.ret(1), code.ret(2)]);
        let mut short = [0usize; 2];
        assert_eq!(unwind_from_context(regs, memory, &mut short), 2);
        assert_eq!(short, [0x4001, code.ret(0)]);
        assert_eq!(unwind_from_context(regs, memory, &mut []), 0);
        // A return address that does not follow a call ends the chain.
        stack[21] = code.ret(1) + 1;
        let memory = Memory {
            stack: range(&stack),
            code: &ranges,
        };
        assert_eq!(unwind_from_context(regs, memory, &mut buf), 2);
    }

    #[test]
    fn recognises_direct_and_indirect_calls() {
        let code = Code::new();
        let ranges = code.range();
        let stack = vec![0usize; 8];
        let reader = Reader::new(
            Memory {
                stack: range(&stack),
                code: &ranges,
            },
            0,
        );
        assert!(reader.follows_call(code.ret(3)));
        assert!(!reader.follows_call(code.ret(3) - 1));
        let mut end = code.ret(7);
        for call in INDIRECT {
            end += call.len();
            assert!(reader.follows_call(end), "{call:x?}");
        }
        assert!(!reader.follows_call(0x1000), "outside any code mapping");
        assert_eq!(indirect_call_len(0xd0, None), 2);
        assert_eq!(indirect_call_len(0x14, Some(0x25)), 7);
    }

    #[test]
    fn a_frameless_leafs_caller_is_found_above_the_stack_pointer() {
        // The leaf pushed nothing: its return address is at sp and the
        // frame-pointer register still holds its caller's record.
        let code = Code::new();
        let ranges = code.range();
        let mut stack = vec![0usize; 64];
        stack[4] = code.ret(0);
        let record = addr_of(&stack, 10);
        stack[10] = 0;
        stack[11] = code.ret(1);
        let sp = addr_of(&stack, 4);
        let walked = walk(&stack, &ranges, sp, record);
        assert_eq!(walked, [0x4001, code.ret(0), code.ret(1)]);
    }

    #[test]
    fn a_leaf_that_reuses_the_frame_pointer_register_is_bridged() {
        // The leaf saved the caller's frame pointer (word 6) and put data in
        // the register; the chain resumes from the saved value.
        let code = Code::new();
        let ranges = code.range();
        let mut stack = vec![0usize; 64];
        let (caller, outer) = (addr_of(&stack, 20), addr_of(&stack, 30));
        stack[6] = caller;
        stack[8] = code.ret(0); // the leaf's return address
        stack[20] = outer;
        stack[21] = code.ret(1);
        stack[30] = 0;
        stack[31] = code.ret(2);
        let walked = walk(&stack, &ranges, addr_of(&stack, 4), 0x1234_5678);
        assert_eq!(walked, [0x4001, code.ret(0), code.ret(1), code.ret(2)]);
    }

    #[test]
    fn garbage_frame_pointers_end_the_walk() {
        let code = Code::new();
        let ranges = code.range();
        let mut stack = vec![0usize; 64];
        let sp = addr_of(&stack, 8);
        let regs = |fp| Registers { pc: 0x4000, sp, fp };
        let mut buf = [0usize; 16];
        let r = range(&stack);
        let memory = Memory {
            stack: r,
            code: &ranges,
        };
        for fp in [
            addr_of(&stack, 4),
            addr_of(&stack, 10) + 3,
            r.high + 64,
            0,
            usize::MAX - 7,
        ] {
            assert_eq!(
                unwind_from_context(regs(fp), memory, &mut buf),
                1,
                "{fp:#x}"
            );
        }
        // A record that links downwards is no record: only the return
        // address found above the stack pointer is kept.
        let a = addr_of(&stack, 20);
        stack[20] = addr_of(&stack, 12);
        stack[21] = code.ret(0);
        let memory = Memory {
            stack: range(&stack),
            code: &ranges,
        };
        let n = unwind_from_context(regs(a), memory, &mut buf);
        assert_eq!(&buf[..n], &[0x4001, code.ret(0)]);
        let none = Registers { pc: 0, ..regs(a) };
        assert_eq!(unwind_from_context(none, memory, &mut buf), 0);
    }

    #[test]
    fn unreadable_pages_inside_the_range_are_never_read() {
        // Two pages: readable, then PROT_NONE; a record on the readable page
        // links into the unreadable one.
        let code = Code::new();
        let ranges = code.range();
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
            *((base + 72) as *mut usize) = code.ret(0);
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
        let memory = Memory {
            stack: StackRange {
                low: base,
                high: base + 2 * page,
            },
            code: &ranges,
        };
        let mut buf = [0usize; 8];
        let n = unwind_from_context(regs, memory, &mut buf);
        assert_eq!(&buf[..n], &[0x4001, code.ret(0)]);
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(base as *mut _, 2 * page) };
    }
}
