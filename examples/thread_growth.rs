//! Incident 4, "OOMKilled, but the heap was fine": the heap is flat while
//! the process's memory grows anyway, from thread stacks and page cache.
//!
//! At start the process allocates a fixed cache of about 20 MB
//! (`build_cache`, touched so it is resident) and never allocates much
//! again. Then, side by side:
//! - threads keep being created (`--threads-per-sec`, up to
//!   `--max-threads`); each touches about 256 KiB of its own stack
//!   (`touch_stack`) and parks forever, so RSS grows by thread stacks that
//!   no heap profile sees;
//! - a 64 MB file is written once and then read again and again through
//!   the page cache (`read_through_page_cache`), so the memory cgroup's
//!   cache grows too. Read again and again, those pages are active file
//!   pages, part of the working set; with `--reread-ms 0` they are read
//!   once and stay inactive: in usage (what the misleading "% of limit"
//!   panel showed) but not in the working set (what the kubelet and the
//!   OOM killer look at).
//!   The file is unlinked right after it is created: the open descriptor
//!   keeps it readable and nothing is left behind.
//!
//! ```text
//! thread_growth [--serve ADDR] [--threads-per-sec N] [--max-threads N]
//!               [--file-mb N] [--reread-ms MS] [--duration-secs S]
//! ```
//! - `--serve ADDR`: serve heapprof on ADDR (port 0: any), print
//!   `listening on http://ADDR`.
//! - `--threads-per-sec N`: new threads a second (default 20).
//! - `--max-threads N`: stop creating threads at N (default 2000).
//! - `--file-mb N`: size of the page-cache file (default 64; 0: none).
//! - `--reread-ms MS`: pause between reads of the file (default 500; 0:
//!   read it once).
//! - `--duration-secs S`: exit after S seconds (default: run until killed).
//!
//! Every 5 s it prints a line on stderr with threads, VmRSS and the heap
//! profiler's estimate. What heapprof shows: the heap profile stays flat
//! at the cache (`build_cache`, about 20 MB) while `/proc` shows threads
//! and RSS growing; `heapprof verify PID` explains RSS as heap + thread
//! stacks + other anonymous memory + file pages, and reads the cgroup's
//! usage, working set and cache the way the kubelet does.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use clap::Parser;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const CACHE_BYTES: usize = 20 << 20;
const STACK_TOUCH: usize = 256 << 10;
/// Stack reserved for each worker: room for the touched part and more.
const STACK_SIZE: usize = 1 << 20;
const CHUNK: usize = 1 << 20;

/// The service's one big, long-lived allocation: flat for the whole run.
#[inline(never)]
fn build_cache() -> Vec<u8> {
    // Non-zero so every page is written, hence resident (a zeroed vector
    // would be untouched calloc memory).
    vec![0x5a; CACHE_BYTES]
}

/// Dirties `STACK_TOUCH` bytes of this thread's stack; the pages stay
/// resident after the frame is gone.
#[inline(never)]
fn touch_stack() -> u8 {
    let mut frame = [0u8; STACK_TOUCH];
    for i in (0..STACK_TOUCH).step_by(4096) {
        frame[i] = i as u8 | 1;
    }
    black_box(&mut frame);
    frame[STACK_TOUCH - 4096]
}

/// A worker: touches its stack, then waits forever for work that never
/// comes (a pool that only grows).
fn worker() {
    black_box(touch_stack());
    loop {
        std::thread::park();
    }
}

/// Writes `bytes` to a new unlinked temporary file, from one reused buffer.
fn create_file(bytes: usize, buffer: &mut [u8]) -> std::io::Result<File> {
    let path = std::env::temp_dir().join(format!("heapprof-thread-growth-{}", std::process::id()));
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let mut written = 0;
    while written < bytes {
        let n = buffer.len().min(bytes - written);
        file.write_all(&buffer[..n])?;
        written += n;
    }
    file.flush()?;
    Ok(file)
}

/// Reads the whole file through the page cache, over and over, into one
/// reused buffer (no heap growth).
fn read_through_page_cache(file: &File, bytes: usize, mut buffer: Vec<u8>, every: Duration) {
    loop {
        let mut offset = 0;
        let mut sum = 0u64;
        while offset < bytes {
            match file.read_at(&mut buffer, offset as u64) {
                Ok(0) => break,
                Ok(n) => {
                    sum = sum.wrapping_add(buffer[n - 1] as u64);
                    offset += n;
                }
                Err(e) => {
                    eprintln!("thread_growth: reading the cache file: {e}");
                    return;
                }
            }
        }
        black_box(sum);
        if every.is_zero() {
            return;
        }
        std::thread::sleep(every);
    }
}

/// Threads in this process and VmRSS in bytes, from /proc/self/status.
fn proc_status() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:") * 1024)
}

/// Incident 4: heap flat, threads and page cache growing.
#[derive(Parser)]
struct Args {
    /// Serve heapprof on ADDR.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// New threads a second (at least 1).
    #[arg(long, value_name = "N", default_value = "20", value_parser = |v: &str| v.parse::<u64>().map(|n| n.max(1)))]
    threads_per_sec: u64,
    /// Stop creating threads at N.
    #[arg(long, value_name = "N", default_value = "2000")]
    max_threads: u64,
    /// Size of the page-cache file, MB (0: none).
    #[arg(long, value_name = "N", default_value = "64")]
    file_mb: u64,
    /// Pause between reads of the file, ms (0: read it once).
    #[arg(long = "reread-ms", value_name = "MS", default_value = "500", value_parser = |v: &str| v.parse().map(Duration::from_millis))]
    reread: Duration,
    /// Exit after S seconds (default: run until killed).
    #[arg(long = "duration-secs", value_name = "S", value_parser = |v: &str| v.parse().map(Duration::from_secs))]
    duration: Option<Duration>,
}

fn main() {
    let args = Args::parse();
    let cache = build_cache();
    let file_bytes = (args.file_mb as usize) << 20;
    if file_bytes > 0 {
        let mut buffer = vec![0xa5u8; CHUNK];
        let file = create_file(file_bytes, &mut buffer).unwrap_or_else(|e| {
            eprintln!("thread_growth: cannot create the cache file: {e}");
            std::process::exit(1);
        });
        let every = args.reread;
        std::thread::Builder::new()
            .name("page-cache-reader".into())
            .spawn(move || {
                read_through_page_cache(&file, file_bytes, buffer, every);
                // Keep the file (and its cached pages) until the end.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the reader");
    }
    if let Some(addr) = &args.serve {
        let bound = heapprof_http::spawn(addr.as_str()).unwrap_or_else(|e| {
            eprintln!("thread_growth: cannot serve on {addr}: {e}");
            std::process::exit(1);
        });
        println!("listening on http://{bound}");
    }

    let started = Instant::now();
    let interval = Duration::from_secs(1) / args.threads_per_sec as u32;
    let mut spawned = 0u64;
    let mut last_report = Instant::now();
    while args.duration.is_none_or(|d| started.elapsed() < d) {
        if spawned < args.max_threads {
            let spawn = std::thread::Builder::new()
                .name(format!("worker-{spawned}"))
                .stack_size(STACK_SIZE)
                .spawn(worker);
            match spawn {
                Ok(handle) => {
                    // Detached: parked forever.
                    drop(handle);
                    spawned += 1;
                }
                Err(e) => {
                    eprintln!("thread_growth: cannot create thread {spawned}: {e}");
                    spawned = args.max_threads;
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let (threads, rss) = proc_status();
            eprintln!(
                "thread_growth: {threads} threads, VmRSS {} MB, heap in use (estimated) {} MB",
                rss >> 20,
                heapprof::stats().estimated_inuse_bytes >> 20
            );
            last_report = Instant::now();
        }
        std::thread::sleep(interval);
    }
    black_box(&cache);
    heapprof_http::cleanup();
}
