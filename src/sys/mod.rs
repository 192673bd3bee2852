//! What heapprof knows about Linux, written once and shared by the three
//! crates: procfs (and this process's own tasks), memory cgroups, mappings
//! (what backs them, how RSS splits over them, which pages are resident),
//! build IDs, glibc's allocator statistics, the monotonic clock, and the
//! files processes of one user leave for each other (discovery, port
//! files, dumps). Not part of heapprof's API:
//! heapprof-http and heapprof-cli use it at the same version.
//!
//! Readers take an [`fs::Fs`] root so that unit tests can point them at
//! captured copies of the kernel's files; parsers take text.

pub mod build_id;
pub mod cgroup;
pub mod clock;
pub mod discovery;
pub mod files;
pub mod fs;
pub mod glibc;
pub(crate) mod mapped_file;
pub mod maps;
pub mod partition;
pub mod procfs;
pub mod residency;
pub mod tasks;
