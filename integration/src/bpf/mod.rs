//! eBPF-based checks. The programs are C (`integration/bpf/*.bpf.c`),
//! compiled by `build.rs` with clang and embedded here.

mod error;
pub mod tracepoints;
pub mod uprobes;
