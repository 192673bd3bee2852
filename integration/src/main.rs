//! `heapprof`: find, pull and verify heapprof profiles of running
//! processes. The machinery is in the `heapprof_cli` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    heapprof_cli::main()
}
