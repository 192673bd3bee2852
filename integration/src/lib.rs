//! heapprof-cli: the `heapprof` command's machinery — find processes that
//! serve heapprof profiles, pull and compare their profiles, and verify what
//! they claim against the kernel's view (procfs, memory cgroups) and, for a
//! bounded window, exact allocator counts from uprobes.

pub mod bpf;
pub mod cgroup;
pub mod claims;
pub mod discovery;
pub mod fetch;
pub mod fs;
pub mod leaks;
pub mod procfs;
pub mod profile;
pub mod reconcile;
pub mod report;
pub mod symbols;
pub mod verify;
