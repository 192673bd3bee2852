//! heapprof-cli: the `heapprof` command. It finds processes that serve
//! heapprof profiles (`ps`), pulls and compares their profiles (`top`,
//! `diff`, `pprof-heap`, `leaks`), and verifies what they claim against
//! the kernel's view: procfs, memory cgroups and, for a bounded window,
//! exact allocator counts from uprobes (`verify`).
//!
//! The command is one file per subcommand (`commands`), one module for
//! what it prints (`format`), and the machinery they share: `fetch` (the
//! HTTP client), `profile` (decoding profile.proto), `scrape` (numbers
//! from metrics endpoints), `verify` with its eBPF programs (`bpf`) and
//! ELF symbols (`symbols`). Linux facts (procfs, cgroups, discovery
//! files) come from `heapprof::sys`, shared with the profiled process.

mod bpf;
mod cli;
mod commands;
mod fetch;
mod format;
mod name_profile;
pub mod profile;
mod scrape;
mod symbols;
mod verify;

use std::process::ExitCode;

use clap::Parser;

/// The `heapprof` command: parses `std::env::args`, runs the subcommand,
/// prints errors as one line. Exit codes: 0, 1 when `verify` finds a
/// failing check, 2 on an error.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let Ok(timeout) = std::time::Duration::try_from_secs_f64(cli.timeout) else {
        eprintln!(
            "heapprof: --timeout {}: expected a positive number of seconds",
            cli.timeout
        );
        return ExitCode::from(2);
    };
    fetch::configure(fetch::Settings {
        token: cli.token.filter(|t| !t.is_empty()),
        timeout,
        max_bytes: cli.max_bytes,
        allow_remote: cli.allow_remote,
    });
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("heapprof: {}", format::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}
