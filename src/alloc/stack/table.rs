//! The compact unwind table: for every loaded module, the rule that
//! recovers the caller's frame at each code address, precomputed from
//! `.eh_frame` so that unwinding is a lookup, not a DWARF interpreter.
//!
//! `.eh_frame` describes, per function, a program of call-frame
//! instructions; running it up to an address yields that address's row:
//! how to compute the canonical frame address (CFA, the caller's stack
//! pointer before the call) and where the caller's registers are saved.
//! libgcc runs those programs at every frame of every unwind. The table
//! runs each once, at build time, and keeps one [`Rule`] (4 bytes) per
//! row, starting at the row's first address (4 bytes): about 8 bytes a row
//! plus 4 bytes per 256 bytes of code for the page index, built with
//! `gimli` in about 0.1-0.2 us a row: 36k rows (a small program and its C
//! library) in 3-7 ms and 340 KiB, libLLVM's 1.44 M rows in 80-110 ms and
//! 12.4 MiB (BENCHMARKS.md, "Cost of one sample").
//!
//! # What a rule expresses
//!
//! x86_64 only. A row is kept as a rule when the return address is saved
//! at `CFA - 8` (always so on x86_64, checked) and:
//! - the CFA is `rsp + offset` or `rbp + offset` (offset 8 B to 8 MiB),
//! - the caller's `rbp` is unchanged or saved at `CFA - 8 * slot`
//!   (slot < 64);
//! - or the return address is undefined: the outermost frame of a thread
//!   (`_start`, `clone3`), where unwinding ends;
//! - or the function is a signal trampoline (`__restore_rt`, FDE
//!   augmentation `S`): the interrupted registers are in the `ucontext_t`
//!   on the stack (`table_walk`).
//!
//! Anything else is [`Kind::Unsupported`]: CFA expressions (PLT stubs),
//! a CFA based on another register (`_dl_runtime_resolve` after stack
//! realignment, `__longjmp`), `rbp` kept in another register. Those rows
//! are rare (none in Rust code; a few dozen in libc, ld.so and libgcc);
//! a stack that reaches one is captured by libgcc instead. Addresses no
//! function covers are [`Kind::None`].
//!
//! # Lookup
//!
//! Modules are sorted by address; within one, row starts are `u32` offsets
//! from the module's first covered address, and `pages[p]` is the row that
//! covers the first byte of page `p` (256 bytes), so a lookup binary
//! searches only the rows of one page, usually one to four.
//!
//! Tables live in anonymous mappings (`pages`) that are never freed: a
//! capture may read a table at any time, without a lock (`builder`).

use core::mem::size_of;

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};

use super::modules::{Identity, Module};
use crate::alloc::pages;
#[cfg(test)]
use crate::alloc::scratch;
use crate::alloc::scratch::ScratchVec;

/// Bytes of code per entry of the page index.
const PAGE_SHIFT: u32 = 8;

/// Largest table, in bytes, whose three arrays are copied into one
/// mapping; larger ones keep the mappings they were built in. A copy
/// saves the partly filled last page of two of them, and the vDSO's
/// table is a few hundred bytes; not copying keeps a large table from
/// being mapped twice at once.
const COPY_UP_TO: usize = 1 << 20;

/// How a row finds the caller's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// No function covers the address.
    None,
    /// CFA = `rsp + offset`.
    Sp,
    /// CFA = `rbp + offset`.
    Bp,
    /// The return address is undefined: the outermost frame.
    Root,
    /// A signal trampoline: registers are in the `ucontext_t` at `rsp`.
    Signal,
    /// A row the table cannot express.
    Unsupported,
}

/// One row's rule in 32 bits: kind (3 bits), rbp slot (6 bits), CFA
/// offset in bytes (23 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rule(u32);

impl Rule {
    pub(super) const NONE: Rule = Rule(0);
    pub(super) const ROOT: Rule = Rule(3);
    pub(super) const SIGNAL: Rule = Rule(4);
    pub(super) const UNSUPPORTED: Rule = Rule(5);
    /// Largest CFA offset a rule holds, exclusive.
    pub(super) const MAX_OFFSET: u64 = 1 << 23;
    /// Largest rbp slot, exclusive.
    pub(super) const MAX_SLOT: u64 = 64;

    /// CFA = (`rbp` if `from_rbp`, else `rsp`) + `offset`; the caller's
    /// `rbp` at `CFA - 8 * rbp_slot` (0: unchanged). `None` if out of range.
    pub(super) fn cfa(from_rbp: bool, offset: u64, rbp_slot: u64) -> Option<Rule> {
        if !(8..Self::MAX_OFFSET).contains(&offset) || rbp_slot >= Self::MAX_SLOT {
            return None;
        }
        let kind = if from_rbp { 2 } else { 1 };
        Some(Rule(kind | (rbp_slot as u32) << 3 | (offset as u32) << 9))
    }

    /// The rule as 32 bits (the rule cache stores them).
    #[inline(always)]
    pub(super) fn bits(self) -> u32 {
        self.0
    }

    /// A rule from [`bits`](Self::bits).
    #[inline(always)]
    pub(super) fn from_bits(bits: u32) -> Rule {
        Rule(bits)
    }

    #[inline(always)]
    pub(super) fn kind(self) -> Kind {
        match self.0 & 7 {
            0 => Kind::None,
            1 => Kind::Sp,
            2 => Kind::Bp,
            3 => Kind::Root,
            4 => Kind::Signal,
            _ => Kind::Unsupported,
        }
    }

    /// Bytes from the base register to the CFA.
    #[inline(always)]
    pub(super) fn offset(self) -> u64 {
        u64::from(self.0 >> 9)
    }

    /// The caller's `rbp` is at `CFA - 8 * slot`; 0 when unchanged.
    #[inline(always)]
    pub(super) fn rbp_slot(self) -> u64 {
        u64::from((self.0 >> 3) & 63)
    }
}

/// Counts from building one module's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct BuildStats {
    pub fdes: usize,
    pub rows: usize,
    pub unsupported_rows: usize,
    /// FDEs gimli could not parse (their addresses become [`Kind::None`]).
    pub errors: usize,
}

/// One module's rows. `Copy`: the slices point into a mapping that is
/// never freed, shared by every table set that includes the module.
#[derive(Clone, Copy, Debug)]
pub(super) struct ModuleTable {
    /// The loader's name for the module (empty for the executable).
    pub name: &'static str,
    pub identity: Identity,
    /// First address covered.
    lo: u64,
    /// Bytes covered from `lo`.
    span: u64,
    /// Row starts, offsets from `lo`, ascending.
    starts: &'static [u32],
    /// The rule of each row.
    rules: &'static [u32],
    /// `pages[p]`: the row covering offset `p << PAGE_SHIFT`; one more
    /// entry than pages, so `pages[p + 1]` bounds page `p`'s rows.
    pages: &'static [u32],
    /// Bytes mapped for this table.
    pub bytes: usize,
    pub stats: BuildStats,
}

impl ModuleTable {
    /// Builds `module`'s table into memory mapped for it, unless the
    /// module has no usable rows, covers 4 GiB or more, or the table would
    /// take more than `max_bytes`. Allocates: never call it inside the
    /// allocator.
    ///
    /// Its memory is in mappings of its own (`alloc::scratch`), counted
    /// against the thread's scratch budget (`scratch::within`): `None` if
    /// they do not fit. The rows are read in the order of the module's
    /// `.eh_frame_hdr` index, which is by address, and merged as they
    /// come, into the arrays that then become the table (copied into one
    /// mapping if small): beyond the module's copied sections, a build
    /// maps little more than the table itself. Only a module whose
    /// functions overlap needs its rows kept and sorted first (16 bytes a
    /// row, unmapped once merged).
    pub(super) fn build(module: Module, max_bytes: usize) -> Option<ModuleTable> {
        let (merged, stats) = match in_index_order(&module) {
            Streamed::Done(merged, stats) => (merged, stats),
            Streamed::OutOfOrder => sorted(&module)?,
            Streamed::Failed => return None,
        };
        drop(module.eh_frame_hdr);
        drop(module.eh_frame);
        let (lo, span, starts, rules) = merged.finish()?;
        let pages = page_index(&starts, span)?;
        let words = starts.len() + rules.len() + pages.len();
        if words * size_of::<u32>() > max_bytes {
            return None;
        }
        let rows = starts.len();
        let (starts, rules, pages, bytes) = if words * size_of::<u32>() <= COPY_UP_TO {
            let mut all = ScratchVec::new();
            all.extend_from_slice(&starts)?;
            all.extend_from_slice(&rules)?;
            all.extend_from_slice(&pages)?;
            let (all, bytes) = all.keep()?;
            let (starts, rest) = all.split_at(starts.len());
            let (rules, pages) = rest.split_at(rules.len());
            (starts, rules, pages, bytes)
        } else {
            let (starts, a) = starts.keep()?;
            let (rules, b) = rules.keep()?;
            let (pages, c) = pages.keep()?;
            (starts, rules, pages, a + b + c)
        };
        Some(ModuleTable {
            name: module.name.leak(),
            identity: module.identity,
            lo,
            span,
            starts,
            rules,
            pages,
            bytes,
            stats: BuildStats { rows, ..stats },
        })
    }

    /// First address covered.
    pub(super) fn lo(&self) -> u64 {
        self.lo
    }

    /// Whether `addr` is inside the rows of this module.
    #[inline(always)]
    fn covers(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.lo) < self.span
    }

    /// The rule at `addr`, which [`covers`](Self::covers) holds for.
    #[inline(always)]
    fn rule(&self, addr: u64) -> Rule {
        let at = addr.wrapping_sub(self.lo);
        let page = (at >> PAGE_SHIFT) as usize;
        let (Some(&first), Some(&last)) = (self.pages.get(page), self.pages.get(page + 1)) else {
            return Rule::NONE;
        };
        let (mut base, mut len) = (first as usize, last.saturating_sub(first) as usize + 1);
        let at = at as u32;
        // The last row starting at or before `at`.
        while len > 1 {
            let half = len / 2;
            if self.starts.get(base + half).is_some_and(|&s| s <= at) {
                base += half;
            }
            len -= half;
        }
        self.rules.get(base).map_or(Rule::NONE, |&r| Rule(r))
    }
}

/// One CFI row: `rule` holds for addresses `start..start + len`. 16
/// bytes: a table's rows are its build's largest scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    start: u64,
    len: u32,
    rule: Rule,
}

impl Row {
    fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }
}

const _: () = assert!(size_of::<Row>() == 16);

/// Calls `each` with every row of `module`'s FDEs, in the order of its
/// `.eh_frame_hdr` index, until `each` returns `None`. `None` if the
/// module has no usable index or `each` stopped it.
fn for_each_row(module: &Module, mut each: impl FnMut(Row) -> Option<()>) -> Option<BuildStats> {
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(module.eh_frame_hdr.address)
        .set_eh_frame(module.eh_frame.address)
        .set_text(module.text.start);
    let header = EhFrameHdr::new(&module.eh_frame_hdr.bytes, LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let index = header.table()?;
    let mut eh_frame = EhFrame::new(&module.eh_frame.bytes, LittleEndian);
    eh_frame.set_address_size(8);
    let mut context = UnwindContext::new();
    let mut stats = BuildStats::default();
    let mut fdes = index.iter(&bases);
    while let Ok(Some((_, pointer))) = fdes.next() {
        let fde = index
            .pointer_to_offset(pointer)
            .and_then(|offset| eh_frame.fde_from_offset(&bases, offset, EhFrame::cie_from_offset));
        let Ok(fde) = fde else {
            stats.errors += 1;
            continue;
        };
        stats.fdes += 1;
        let signal = fde.is_signal_trampoline();
        let Ok(mut table) = fde.rows(&eh_frame, &bases, &mut context) else {
            stats.errors += 1;
            continue;
        };
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    let rule = if signal {
                        Rule::SIGNAL
                    } else {
                        encode(
                            row.cfa(),
                            row.register(X86_64::RBP),
                            row.register(X86_64::RA),
                        )
                    };
                    stats.unsupported_rows += usize::from(rule == Rule::UNSUPPORTED);
                    let (start, end) = (row.start_address(), row.end_address());
                    match u32::try_from(end.saturating_sub(start)) {
                        Ok(0) => {}
                        Ok(len) => each(Row { start, len, rule })?,
                        // A row of 4 GiB or more: no table covers it.
                        Err(_) => stats.errors += 1,
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    stats.errors += 1;
                    break;
                }
            }
        }
    }
    Some(stats)
}

/// What merging a module's rows in index order came to.
enum Streamed {
    Done(Merged, BuildStats),
    /// A row started before the previous one ended: functions overlap, or
    /// the index is not sorted. The rows must be sorted first.
    OutOfOrder,
    /// No usable index, no memory, or a span of 4 GiB or more.
    Failed,
}

/// Merges `module`'s rows as its index gives them, which is by address
/// unless functions overlap.
fn in_index_order(module: &Module) -> Streamed {
    let mut merged: Option<Merged> = None;
    let mut out_of_order = false;
    let stats = for_each_row(module, |row| {
        let merged = merged.get_or_insert_with(|| Merged::new(row.start));
        if row.start < merged.end {
            out_of_order = true;
            return None;
        }
        merged.append(row)
    });
    match (stats, merged) {
        (Some(stats), Some(merged)) => Streamed::Done(merged, stats),
        _ if out_of_order => Streamed::OutOfOrder,
        _ => Streamed::Failed,
    }
}

/// Merges `module`'s rows after sorting them, for modules whose functions
/// overlap.
fn sorted(module: &Module) -> Option<(Merged, BuildStats)> {
    let mut rows = ScratchVec::new();
    let stats = for_each_row(module, |row| rows.push(row))?;
    Some((merge(rows)?, stats))
}

/// The rule of one CFI row.
fn encode(
    cfa: &CfaRule<usize>,
    rbp: Option<RegisterRule<usize>>,
    ra: Option<RegisterRule<usize>>,
) -> Rule {
    match ra {
        Some(RegisterRule::Undefined) => return Rule::ROOT,
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Rule::UNSUPPORTED,
    }
    let (from_rbp, offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (false, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (true, offset)
        }
        _ => return Rule::UNSUPPORTED,
    };
    // No rule for rbp means "same value", as does Undefined as far as
    // recovering the caller's frames goes (libgcc leaves it as it is).
    let slot = match rbp {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => Some(0),
        Some(RegisterRule::Offset(o)) if o < 0 && o % 8 == 0 => Some(o.unsigned_abs() / 8),
        _ => None,
    };
    let (Ok(offset), Some(slot)) = (u64::try_from(offset), slot) else {
        return Rule::UNSUPPORTED;
    };
    Rule::cfa(from_rbp, offset, slot).unwrap_or(Rule::UNSUPPORTED)
}

/// Sorts `rows` by address and merges them.
fn merge(mut rows: ScratchVec<Row>) -> Option<Merged> {
    rows.sort_unstable_by_key(|r| (r.start, r.end()));
    let mut merged = Merged::new(rows.first()?.start);
    for row in rows.iter() {
        merged.append(*row)?;
    }
    Some(merged)
}

/// Rows merged into a table's `starts` and `rules`: each start relative
/// to `lo`, a [`Rule::NONE`] row after every gap between functions, runs
/// of one rule merged into one row.
struct Merged {
    lo: u64,
    /// End of the last row appended.
    end: u64,
    /// Largest end of any row appended.
    hi: u64,
    starts: ScratchVec<u32>,
    rules: ScratchVec<u32>,
}

impl Merged {
    /// Nothing merged yet; `lo` is the lowest start that will be appended.
    fn new(lo: u64) -> Merged {
        Merged {
            lo,
            end: lo,
            hi: lo,
            starts: ScratchVec::new(),
            rules: ScratchVec::new(),
        }
    }

    /// Appends `row`, which starts at or after every row appended so far.
    /// `None` without memory or if it starts 4 GiB or more past `lo`.
    fn append(&mut self, row: Row) -> Option<()> {
        if !self.starts.is_empty() && row.start > self.end {
            self.push(self.end, Rule::NONE)?;
        }
        self.push(row.start, row.rule)?;
        self.end = row.end();
        self.hi = self.hi.max(self.end);
        Some(())
    }

    fn push(&mut self, start: u64, rule: Rule) -> Option<()> {
        let start = u32::try_from(start.checked_sub(self.lo)?).ok()?;
        match (self.starts.last(), self.rules.last_mut()) {
            (_, Some(last)) if *last == rule.0 => {}
            (Some(&s), Some(last)) if s == start => *last = rule.0,
            _ => {
                self.starts.push(start)?;
                self.rules.push(rule.0)?;
            }
        }
        Some(())
    }

    /// `(lo, span, starts, rules)`, the last row closed by a
    /// [`Rule::NONE`] row; `None` without rows or if they span 4 GiB or
    /// more.
    fn finish(mut self) -> Option<(u64, u64, ScratchVec<u32>, ScratchVec<u32>)> {
        if self.starts.is_empty() {
            return None;
        }
        self.push(self.end, Rule::NONE)?;
        let span = self.hi - self.lo;
        (span <= u64::from(u32::MAX)).then_some((self.lo, span, self.starts, self.rules))
    }
}

/// `pages[p]` = the row covering offset `p << PAGE_SHIFT`, for every page
/// of `span` plus one bounding entry.
fn page_index(starts: &[u32], span: u64) -> Option<ScratchVec<u32>> {
    let count = (span >> PAGE_SHIFT) as usize + 1;
    let mut pages = ScratchVec::new();
    let mut row = 0usize;
    for page in 0..=count {
        let at = ((page as u64) << PAGE_SHIFT).min(span) as u32;
        while starts.get(row + 1).is_some_and(|&s| s <= at) {
            row += 1;
        }
        pages.push(row as u32)?;
    }
    Some(pages)
}

/// The tables of every module, as published (`builder`): sorted by
/// address, never freed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tables {
    /// Increments with every published set; tags rule-cache entries.
    pub generation: u32,
    pub modules: &'static [ModuleTable],
}

impl Tables {
    /// Copies `modules` (sorted by address) into a mapping of their own.
    pub(super) fn leak(generation: u32, modules: &[ModuleTable]) -> Option<&'static Tables> {
        let (modules, _) = pages::leak_copy(modules)?;
        let (set, _) = pages::leak_copy(&[Tables {
            generation,
            modules,
        }])?;
        set.first()
    }

    /// The rule at `addr`. `hint` is the index of the module of the last
    /// lookup (a caller is usually in the same module as its callee).
    #[inline(always)]
    pub(super) fn rule(&self, addr: u64, hint: &mut usize) -> Rule {
        if let Some(m) = self.modules.get(*hint)
            && m.covers(addr)
        {
            return m.rule(addr);
        }
        let i = self.modules.partition_point(|m| m.lo <= addr);
        match i
            .checked_sub(1)
            .and_then(|i| Some((i, self.modules.get(i)?)))
        {
            Some((i, m)) if m.covers(addr) => {
                *hint = i;
                m.rule(addr)
            }
            _ => Rule::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This executable's module and the C library's, freshly scanned.
    fn modules_here() -> Vec<Module> {
        use super::super::modules::{self, Scanned};
        let here = modules_here as fn() -> Vec<Module> as usize as u64;
        let modules: Vec<Module> = modules::scan(&|_| false)
            .modules
            .into_iter()
            .filter_map(|m| match m {
                Scanned::New(m) if m.text.contains(&here) || m.name.contains("libc.so") => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(modules.len(), 2, "this executable and libc");
        modules
    }

    #[test]
    fn merging_in_index_order_gives_the_table_sorting_gives() {
        for module in modules_here() {
            let Streamed::Done(streamed, stats) = in_index_order(&module) else {
                panic!("{:?}: rows out of order", module.name);
            };
            let (sorted, sorted_stats) = sorted(&module).unwrap();
            assert_eq!(stats, sorted_stats);
            let (a, b) = (streamed.finish().unwrap(), sorted.finish().unwrap());
            assert_eq!((a.0, a.1), (b.0, b.1), "{:?}: lo and span", module.name);
            assert!(*a.2 == *b.2 && *a.3 == *b.3, "{:?}: rows", module.name);
            assert!(a.2.len() > 1000, "{:?}: {} rows", module.name, a.2.len());
        }
    }

    #[test]
    fn a_build_that_does_not_fit_its_budget_gives_up() {
        for module in modules_here() {
            let (table, refused) =
                scratch::within(Some(16 << 10), || ModuleTable::build(module, usize::MAX));
            assert!(table.is_none() && refused, "16 KiB is not enough");
        }
        for module in modules_here() {
            let (table, refused) = scratch::within(None, || ModuleTable::build(module, usize::MAX));
            let table = table.expect("a table without a budget");
            assert!(!refused);
            // Streamed, a build maps its table's arrays and, for a small
            // table, their copy (beyond the copied sections, mapped
            // before): three times the table is enough.
            let module = modules_here()
                .into_iter()
                .find(|m| m.identity == table.identity)
                .unwrap();
            let enough = 3 * table.bytes;
            let (again, refused) =
                scratch::within(Some(enough), || ModuleTable::build(module, usize::MAX));
            assert!(again.is_some() && !refused, "{enough} bytes are enough");
        }
    }

    #[test]
    fn rules_round_trip_and_reject_what_they_cannot_hold() {
        let r = Rule::cfa(true, 16, 2).unwrap();
        assert_eq!((r.kind(), r.offset(), r.rbp_slot()), (Kind::Bp, 16, 2));
        let r = Rule::cfa(false, (1 << 23) - 8, 0).unwrap();
        assert_eq!(
            (r.kind(), r.offset(), r.rbp_slot()),
            (Kind::Sp, (1 << 23) - 8, 0)
        );
        assert_eq!(Rule::cfa(false, 1 << 23, 0), None);
        assert_eq!(Rule::cfa(false, 0, 0), None);
        assert_eq!(Rule::cfa(false, 8, 64), None);
        for (rule, kind) in [
            (Rule::NONE, Kind::None),
            (Rule::ROOT, Kind::Root),
            (Rule::SIGNAL, Kind::Signal),
            (Rule::UNSUPPORTED, Kind::Unsupported),
        ] {
            assert_eq!(rule.kind(), kind);
        }
    }

    #[test]
    fn encodes_the_rows_a_compiler_emits() {
        let sp = |offset| CfaRule::RegisterAndOffset {
            register: X86_64::RSP,
            offset,
        };
        let ra = || Some(RegisterRule::Offset(-8));
        // Function entry: CFA = rsp + 8, rbp untouched.
        assert_eq!(encode(&sp(8), None, ra()), Rule::cfa(false, 8, 0).unwrap());
        // After `push rbp; mov rbp, rsp`: CFA = rbp + 16, rbp at CFA - 16.
        let bp = CfaRule::RegisterAndOffset {
            register: X86_64::RBP,
            offset: 16,
        };
        let saved = Some(RegisterRule::Offset(-16));
        assert_eq!(encode(&bp, saved, ra()), Rule::cfa(true, 16, 2).unwrap());
        // The outermost frame.
        assert_eq!(
            encode(&sp(8), None, Some(RegisterRule::Undefined)),
            Rule::ROOT
        );
        // CFA from another register, rbp in a register, RA elsewhere.
        let rbx = CfaRule::RegisterAndOffset {
            register: X86_64::RBX,
            offset: 8,
        };
        assert_eq!(encode(&rbx, None, ra()), Rule::UNSUPPORTED);
        let in_reg = Some(RegisterRule::Register(X86_64::R12));
        assert_eq!(encode(&sp(8), in_reg, ra()), Rule::UNSUPPORTED);
        let odd_ra = Some(RegisterRule::Offset(-16));
        assert_eq!(encode(&sp(16), None, odd_ra), Rule::UNSUPPORTED);
    }

    #[test]
    fn merged_rows_mark_gaps_and_the_page_index_bounds_every_lookup() {
        let a = Rule::cfa(false, 8, 0).unwrap();
        let b = Rule::cfa(false, 16, 0).unwrap();
        // Two functions with a gap, the second starting with the same rule
        // as the first one's last row; rows given out of order.
        let mut rows = ScratchVec::new();
        for (start, end, rule) in [
            (0x1000, 0x1001, a),
            (0x1001, 0x1100, b),
            (0x1400, 0x1401, b),
            (0x1401, 0x1500, a),
        ] {
            let len = (end - start) as u32;
            rows.push(Row { start, len, rule }).unwrap();
        }
        let (lo, span, starts, rules) = merge(rows).unwrap().finish().unwrap();
        assert_eq!((lo, span), (0x1000, 0x500));
        assert_eq!(*starts, [0, 1, 0x100, 0x400, 0x401, 0x500]);
        assert_eq!(*rules, [a.0, b.0, 0, b.0, a.0, 0]);
        let pages = page_index(&starts, span).unwrap();
        let table = ModuleTable {
            name: "",
            identity: Identity {
                eh_frame_hdr: 0,
                len: 0,
                hash: 0,
            },
            lo,
            span,
            starts: starts.to_vec().leak(),
            rules: rules.to_vec().leak(),
            pages: pages.to_vec().leak(),
            bytes: 0,
            stats: BuildStats::default(),
        };
        let expect = |addr: u64| match addr {
            0x1000 => a,
            0x1001..0x1100 => b,
            0x1100..0x1400 => Rule::NONE,
            0x1400 => b,
            0x1401..0x1500 => a,
            _ => unreachable!(),
        };
        for addr in 0x1000..0x1500 {
            assert!(table.covers(addr));
            assert_eq!(table.rule(addr), expect(addr), "{addr:#x}");
        }
        assert!(!table.covers(0x1500) && !table.covers(0xfff));
        let modules: &'static [ModuleTable] = vec![table].leak();
        let set = Tables {
            generation: 0,
            modules,
        };
        let mut hint = usize::MAX;
        assert_eq!(set.rule(0x1002, &mut hint), b);
        assert_eq!(hint, 0);
        assert_eq!(set.rule(0x1600, &mut hint), Rule::NONE);
        assert_eq!(set.rule(0x10, &mut hint), Rule::NONE);
    }
}
