//! Hooks for tests and benchmarks, not part of the API
//! (`heapprof::stack_hooks`, hidden from the docs): one stack captured by
//! a named unwinder outside the `HEAPPROF_UNWIND` policy, and the unwind
//! table's figures.

use std::time::Duration;

use super::table_walk::Fallback;
use super::{builder, dwarf, frame_pointer, table_walk};
use crate::alloc::reentrancy::Reentrancy;

/// An unwinder to capture with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The frame-pointer chain.
    FramePointers,
    /// The unwind table with its rule cache.
    Table,
    /// The unwind table without the rule cache: every frame a table lookup.
    TableUncached,
    /// libgcc's `_Unwind_Backtrace`.
    Libgcc,
}

/// Captures the current stack with `method` into `buf`: return addresses,
/// innermost first. Frame pointers and the table start with the return
/// into this function; libgcc's stack starts inside libgcc. `Err` names
/// why the unwinder declined (frame pointers: a stack it cannot walk;
/// table: a fallback, such as tables not built yet).
#[inline(never)]
pub fn capture(method: Method, buf: &mut [usize]) -> Result<usize, &'static str> {
    // A thread's first walk looks up its stack bounds, which may allocate.
    let _untracked = Reentrancy::enter();
    // SAFETY: the unwinders store only return addresses through it.
    let buf = unsafe { super::as_out(buf) };
    match method {
        Method::FramePointers => frame_pointer::walk(buf).ok_or("not walkable"),
        Method::Table => table_walk::walk(buf).map_err(Fallback::as_str),
        Method::TableUncached => table_walk::walk_uncached(buf).map_err(Fallback::as_str),
        Method::Libgcc => Ok(dwarf::capture_dwarf(buf)),
    }
}

/// The address `capture`'s first frame returns into is inside this
/// function.
pub fn capture_entry() -> usize {
    capture as fn(Method, &mut [usize]) -> Result<usize, &'static str> as usize
}

/// One module's table.
#[derive(Clone, Debug)]
pub struct ModuleSummary {
    /// The loader's name (empty for the executable).
    pub name: String,
    /// Functions (FDEs) read.
    pub fdes: usize,
    /// Rows kept, gaps included.
    pub rows: usize,
    /// Rows the table cannot express (captures reaching them use libgcc).
    pub unsupported_rows: usize,
    /// Bytes mapped for the table.
    pub bytes: usize,
}

/// The published tables.
#[derive(Clone, Debug)]
pub struct TableSummary {
    /// Increments with every published set.
    pub generation: u32,
    /// Time spent building and publishing tables so far, in nanoseconds.
    pub build_ns: u64,
    /// Bytes mapped for all tables so far, replaced sets included.
    pub mapped_bytes: usize,
    /// The modules of the current set, by address.
    pub modules: Vec<ModuleSummary>,
}

/// Waits up to `timeout` for tables (starting the builder); with
/// `newer_than`, for a set of another generation, after asking for a
/// rescan. `None` on timeout or if the builder failed.
pub fn wait_for_tables(newer_than: Option<u32>, timeout: Duration) -> Option<TableSummary> {
    let tables = builder::wait_for_tables(newer_than, timeout)?;
    Some(TableSummary {
        generation: tables.generation,
        build_ns: builder::build_ns(),
        mapped_bytes: builder::table_bytes(),
        modules: tables
            .modules
            .iter()
            .map(|m| ModuleSummary {
                name: m.name.to_string(),
                fdes: m.stats.fdes,
                rows: m.stats.rows,
                unsupported_rows: m.stats.unsupported_rows,
                bytes: m.bytes,
            })
            .collect(),
    })
}
