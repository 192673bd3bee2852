//! Capturing a stack with the unwind table (`table`): no DWARF
//! interpreter, no lock, no allocation, no system call.
//!
//! The walk takes `rip`, `rsp` and `rbp` in one instruction sequence
//! inside its own frame, so the table's row for that `rip` describes that
//! `rsp`. Then, per frame: the rule for the address (the shared
//! `rule_cache` first, the table on a miss), the CFA from `rsp` or `rbp`,
//! the return address at `CFA - 8` and, if the frame saved it, the
//! caller's `rbp`. Every read is of an aligned word between the walk's own
//! frame and the top of this thread's stack (`bounds`), memory that is
//! mapped while the walk runs; the CFA must rise with every frame, so the
//! walk ends. A return address is looked up at `address - 1`, inside the
//! call instruction, as libgcc does; the first `rip` and the interrupted
//! `rip` of a signal frame are looked up as they are.
//!
//! The walk ends where libgcc's does: at a frame whose return address is
//! undefined (the thread's entry point) or null. Where it cannot answer as
//! libgcc would, it returns a [`Fallback`] and the caller captures with
//! libgcc instead: no table yet, an address outside every known module
//! (a library loaded since: `builder` is asked to rescan), an
//! inexpressible row, a stack other than the thread's own (a
//! `sigaltstack`), a frame outside the stack.
//!
//! A signal frame (`__restore_rt`) is walked through: the kernel left a
//! `ucontext_t` at its `rsp`, holding the interrupted `rip`, `rsp` and
//! `rbp`, and the interrupted `rip` is reported as a frame, as libgcc
//! reports it.

use core::mem::MaybeUninit;

use super::bounds::stack_bounds;
use super::table::{Kind, Rule, Tables};
use super::{builder, rule_cache};

/// Why the table did not capture a stack; the caller asks libgcc instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fallback {
    /// No table published yet (being built), none can be (the builder
    /// failed), or this architecture has no table unwinder.
    NotBuilt,
    /// A return address outside every module the table covers: a library
    /// loaded since the last build, or code without unwind tables.
    UnknownAddress,
    /// A row the table cannot express (`table`, "What a rule expresses").
    Unsupported,
    /// The walk did not start on this thread's own stack, or its bounds
    /// are unknown.
    ForeignStack,
    /// A frame outside the stack, or not above the previous one.
    BadFrame,
}

impl Fallback {
    /// The variant's name in snake case.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Fallback::NotBuilt => "not_built",
            Fallback::UnknownAddress => "unknown_address",
            Fallback::Unsupported => "unsupported",
            Fallback::ForeignStack => "foreign_stack",
            Fallback::BadFrame => "bad_frame",
        }
    }
}

/// Offsets in the `ucontext_t` the kernel pushes for a signal handler on
/// x86_64 Linux: `uc_mcontext.gregs` starts at byte 40, and `REG_RBP`,
/// `REG_RSP`, `REG_RIP` are its words 10, 15 and 16.
const UC_RBP: u64 = 40 + 8 * 10;
const UC_RSP: u64 = 40 + 8 * 15;
const UC_RIP: u64 = 40 + 8 * 16;

/// The registers a walk starts from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Registers {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

impl Registers {
    /// This function's caller's `rip`, `rsp` and `rbp` (this is always
    /// inlined), read together; `None` where the table walk is not
    /// supported.
    #[inline(always)]
    fn here() -> Option<Registers> {
        #[cfg(target_arch = "x86_64")]
        {
            let (pc, sp, bp): (u64, u64, u64);
            // SAFETY: reads three registers, touches no memory.
            unsafe {
                core::arch::asm!(
                    "lea {pc}, [rip]",
                    "mov {sp}, rsp",
                    "mov {bp}, rbp",
                    pc = out(reg) pc,
                    sp = out(reg) sp,
                    bp = out(reg) bp,
                    options(nomem, nostack, preserves_flags)
                );
            }
            Some(Registers { pc, sp, bp })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

/// Whether this architecture has the table walk.
pub(super) const SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// Writes the return addresses of the current stack, innermost first,
/// starting with the return into this function's caller, into `buf`;
/// returns how many (`buf[..n]`; at most `buf.len()`, the rest of a deeper
/// stack is cut off), or why the table cannot.
#[inline(never)]
pub(super) fn walk(buf: &mut [MaybeUninit<usize>]) -> Result<usize, Fallback> {
    let regs = Registers::here().ok_or(Fallback::NotBuilt)?;
    walk_from::<true>(regs, buf)
}

/// [`walk`] without the rule cache: every frame is a table lookup (what
/// a stack costs when none of its addresses is cached).
#[inline(never)]
pub(super) fn walk_uncached(buf: &mut [MaybeUninit<usize>]) -> Result<usize, Fallback> {
    let regs = Registers::here().ok_or(Fallback::NotBuilt)?;
    walk_from::<false>(regs, buf)
}

/// The walk from registers taken in the caller's frame, which is live.
#[inline(always)]
fn walk_from<const CACHED: bool>(
    regs: Registers,
    buf: &mut [MaybeUninit<usize>],
) -> Result<usize, Fallback> {
    let (low, high) = stack_bounds().ok_or(Fallback::ForeignStack)?;
    let (low, high) = (low as u64, high as u64);
    if !(low..high).contains(&regs.sp) {
        return Err(Fallback::ForeignStack);
    }
    let tables = builder::published().ok_or(Fallback::NotBuilt)?;
    unwind::<CACHED>(tables, regs, regs.sp, high, buf)
}

/// Unwinds from `regs`, reading only inside `[low, high)`, which must be
/// mapped and readable. `regs.pc` is looked up as it is (an instruction
/// pointer, not a return address) and not written to `buf`.
pub(super) fn unwind<const CACHED: bool>(
    tables: &Tables,
    regs: Registers,
    low: u64,
    high: u64,
    buf: &mut [MaybeUninit<usize>],
) -> Result<usize, Fallback> {
    let read = |addr: u64| -> Result<u64, Fallback> {
        if addr < low || addr.checked_add(8).is_none_or(|end| end > high) || !addr.is_multiple_of(8)
        {
            return Err(Fallback::BadFrame);
        }
        // SAFETY: [addr, addr + 8) is an aligned word inside [low, high),
        // which the caller guarantees is mapped and readable. Volatile:
        // the word belongs to another frame, not to any Rust object.
        Ok(unsafe { core::ptr::read_volatile(addr as *const u64) })
    };
    let Registers {
        pc: mut lookup,
        mut sp,
        mut bp,
    } = regs;
    let mut hint = usize::MAX;
    let mut n = 0;
    loop {
        let rule = rule_at::<CACHED>(tables, lookup, &mut hint);
        let cfa = match rule.kind() {
            Kind::Sp => sp.wrapping_add(rule.offset()),
            Kind::Bp => bp.wrapping_add(rule.offset()),
            Kind::Root => return Ok(n),
            Kind::None => return Err(Fallback::UnknownAddress),
            Kind::Unsupported => return Err(Fallback::Unsupported),
            Kind::Signal => {
                let ip = read(sp.wrapping_add(UC_RIP))?;
                let next_sp = read(sp.wrapping_add(UC_RSP))?;
                let next_bp = read(sp.wrapping_add(UC_RBP))?;
                if next_sp <= sp || next_sp > high || ip == 0 {
                    return Err(Fallback::BadFrame);
                }
                let Some(slot) = buf.get_mut(n) else {
                    return Ok(n);
                };
                slot.write(ip as usize);
                n += 1;
                (lookup, sp, bp) = (ip, next_sp, next_bp);
                continue;
            }
        };
        if cfa <= sp || cfa > high {
            return Err(Fallback::BadFrame);
        }
        let ra = read(cfa - 8)?;
        if rule.rbp_slot() != 0 {
            bp = read(cfa - 8 * rule.rbp_slot())?;
        }
        if ra == 0 {
            return Ok(n);
        }
        let Some(slot) = buf.get_mut(n) else {
            return Ok(n);
        };
        slot.write(ra as usize);
        n += 1;
        (lookup, sp) = (ra - 1, cfa);
    }
}

/// The rule at `addr`: from the rule cache, else from the tables (and
/// then cached).
#[inline(always)]
fn rule_at<const CACHED: bool>(tables: &Tables, addr: u64, hint: &mut usize) -> Rule {
    if CACHED && let Some(rule) = rule_cache::get(addr, tables.generation) {
        return rule;
    }
    let rule = tables.rule(addr, hint);
    if CACHED {
        rule_cache::put(addr, tables.generation, rule);
    }
    rule
}
