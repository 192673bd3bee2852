//! One file per subcommand of `heapprof`, each a `run` taking its parsed
//! arguments; what they print for people is built in `format`.

mod diff;
mod leaks;
mod pprof_heap;
mod ps;
mod top;
mod verify;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Command;

/// Runs one command; the exit code is 1 when `verify` finds a check that
/// fails, 0 otherwise (errors are the caller's to report, with 2).
pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Ps { json } => ps::run(json)?,
        Command::PprofHeap {
            target,
            output,
            binary,
            debug_dir,
        } => pprof_heap::run(&target, output, &binary, &debug_dir)?,
        Command::Top {
            source,
            count,
            sample,
        } => top::run(&source, count, &sample)?,
        Command::Diff {
            old,
            new,
            count,
            sample,
        } => diff::run(&old, &new, count, &sample)?,
        Command::Leaks {
            target,
            json,
            count,
        } => leaks::run(&target, json, count)?,
        Command::Verify(args) => return verify::run(args),
    }
    Ok(ExitCode::SUCCESS)
}
