//! The command line of `heapprof`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Find, pull and verify heapprof heap profiles of running processes.
#[derive(Debug, Parser)]
#[command(name = "heapprof", version)]
pub struct Cli {
    /// Bearer token for endpoints that require one (started with
    /// HEAPPROF_TOKEN).
    #[arg(long, global = true, env = "HEAPPROF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Deadline of one request, seconds (a `seconds=N` window is added).
    #[arg(long, global = true, default_value_t = 60.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Largest answer, file or inflated profile accepted, bytes.
    #[arg(long, global = true, default_value_t = crate::profile::DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    /// Connect to the address a discovery file names even when it is not a
    /// loopback address.
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List processes serving heapprof (from the discovery directory).
    Ps {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a heap profile (or read one from a file); name it if it is
    /// unsymbolized; open it in `go tool pprof` if Go is installed.
    PprofHeap {
        /// PID, HOST:PORT or a profile file.
        target: String,
        /// Write the profile here instead.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The binary the profile was taken from (matched by build ID),
        /// when its path in the profile is not where it is here.
        #[arg(long, value_name = "PATH")]
        binary: Vec<PathBuf>,
        /// A directory with debug files under `.build-id/xx/yyyy.debug`,
        /// besides `/usr/lib/debug`.
        #[arg(long, value_name = "DIR")]
        debug_dir: Vec<PathBuf>,
    },
    /// Top call sites of a profile, readable without Go.
    Top {
        /// PID, HOST:PORT or a profile file.
        source: String,
        /// Rows.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
        /// Sample type.
        #[arg(long, default_value = "inuse_space", value_parser = SAMPLE_TYPES)]
        sample: String,
    },
    /// Per-site growth between two profiles, largest first.
    Diff {
        /// The old profile (PID, HOST:PORT or file).
        old: String,
        /// The new profile.
        new: String,
        /// Rows.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
        /// Sample type.
        #[arg(long, default_value = "inuse_space", value_parser = SAMPLE_TYPES)]
        sample: String,
    },
    /// Leak suspects: call sites whose in-use bytes grow steadily, from the
    /// target's growth recorder (`heapprof::start_history`).
    Leaks {
        /// PID or HOST:PORT.
        target: String,
        /// Print the JSON document as served.
        #[arg(long)]
        json: bool,
        /// Rows.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
    /// Hold the profiler's claims against procfs, the memory cgroup and uprobes.
    Verify(VerifyArgs),
}

/// Arguments of `heapprof verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The process.
    #[arg(required_unless_present = "cgroup", conflicts_with = "cgroup")]
    pub pid: Option<u32>,
    /// Verify a cgroup (and its children) instead of a process.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Window, seconds: of the uprobes and tracepoints (default 5); with
    /// --cgroup, read the cgroup and its children at both ends of it and
    /// name the child that grew most.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Count allocations exactly with uprobes for the window (costly).
    #[arg(long)]
    pub uprobes: bool,
    /// Watch RSS, mmap/munmap/brk, page faults and OOM kills with
    /// tracepoints for the window (cheap).
    #[arg(long)]
    pub kernel: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Allowed disagreement, percent.
    #[arg(long, default_value_t = 10.0)]
    pub tolerance: f64,
    /// Stacks with outstanding allocations to show.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Where the service publishes its own memory figure (Prometheus
    /// text or JSON), to hold it against reality.
    #[arg(long, requires = "claims_key", value_name = "URL")]
    pub claims_url: Option<String>,
    /// The metric name (Prometheus) or top-level key (JSON) of the claim.
    #[arg(long, requires = "claims_url", value_name = "KEY")]
    pub claims_key: Option<String>,
}

const SAMPLE_TYPES: [&str; 4] = [
    "inuse_space",
    "alloc_space",
    "inuse_objects",
    "alloc_objects",
];
