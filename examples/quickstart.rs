//! heapprof's quickstart: a process with a known heap, profiled.
//!
//! It keeps about 64 MiB live from `retain_buffers` (4 KiB objects) and
//! about 8 MiB from `retain_small` (64-byte objects), allocates and frees
//! 1 GiB in `churn`, then writes its heap profile.
//!
//! ```text
//! quickstart [OUT] [--text] [--unsymbolized] [--scale F] [--serve ADDR [--gops]]
//! ```
//! - `OUT`: where to write the profile (default `heap.pb.gz`); `-` for stdout.
//! - `--text`: Go's `debug=1` text format instead of gzipped pprof.
//! - `--unsymbolized`: addresses and build IDs only, as a process with too
//!   little memory left serves it (`heapprof pprof-heap` names it).
//! - `--scale F`: multiply every amount by F (tests use 1/16 at rate 1).
//! - `--serve ADDR`: then serve heapprof-http on ADDR (port 0: any), print
//!   `listening on http://ADDR` and block until killed.
//! - `--commands`: while serving, read `churn BYTES` lines on stdin and
//!   answer `done BYTES` after allocating and freeing that much (tests use
//!   it to allocate inside a `heapprof verify --uprobes` window).
//! - `--gops`: while serving, also start the gops agent
//!   (`heapprof_http::gops::listen`) and print `gops on ADDR`, or on stderr
//!   why it stays off.
//! - `--sites N`: also keep one 1 KiB object from each of N distinct call
//!   stacks (`spread_sites`), to exercise the site-table bound.
//!
//! On stdout it prints one `truth` line with the exact bytes each function
//! allocated and jemalloc's `stats.allocated` around the retaining phase, so
//! tests can hold the profile against the truth, and whether stacks were
//! captured by walking frame pointers (`frame_pointers=1`); then the
//! unwinder in use and how many samples its unwind table handed to libgcc.

use std::hint::black_box;
use std::io::Write;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const BUFFER_BYTES: usize = 4096;
const SMALL_BYTES: usize = 64;

/// Keeps `n` zeroed 4 KiB buffers. Returns them and the bytes allocated here.
#[inline(never)]
fn retain_buffers(n: usize) -> (Vec<Box<[u8]>>, usize) {
    let mut kept = Vec::with_capacity(n);
    for _ in 0..n {
        kept.push(vec![0u8; BUFFER_BYTES].into_boxed_slice());
    }
    let bytes = n * BUFFER_BYTES + n * std::mem::size_of::<Box<[u8]>>();
    (kept, bytes)
}

/// Keeps `n` 64-byte objects. Returns them and the bytes allocated here.
/// (Boxed on purpose: each object is its own 64-byte allocation.)
#[allow(clippy::vec_box)]
#[inline(never)]
fn retain_small(n: usize) -> (Vec<Box<[u8; SMALL_BYTES]>>, usize) {
    let mut kept = Vec::with_capacity(n);
    for i in 0..n {
        kept.push(Box::new([i as u8; SMALL_BYTES]));
    }
    let bytes = n * SMALL_BYTES + n * std::mem::size_of::<Box<[u8; SMALL_BYTES]>>();
    (kept, bytes)
}

/// Keeps one 1 KiB object from a stack `depth` frames deeper than its caller.
#[inline(never)]
fn spread_sites(depth: usize, kept: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        kept.push(vec![1u8; 1024]);
    } else {
        spread_sites(depth - 1, kept);
    }
    black_box(depth);
}

include!("common/churn.rs");

fn jemalloc_allocated() -> usize {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0)
}

/// Flags, parsed by hand on purpose: quickstart is "a process with a known
/// heap", and a parser library allocates from dozens of distinct stacks
/// before `retain_buffers` runs, which would fill a small site table
/// (`HEAPPROF_MAX_SITES=16` in the site-bound test) before the functions
/// under test get their own sites.
struct Args {
    out: String,
    text: bool,
    unsymbolized: bool,
    scale: f64,
    sites: usize,
    serve: Option<String>,
    commands: bool,
    gops: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        out: "heap.pb.gz".into(),
        text: false,
        unsymbolized: false,
        scale: 1.0,
        sites: 0,
        serve: None,
        commands: false,
        gops: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--text" => args.text = true,
            "--unsymbolized" => args.unsymbolized = true,
            "--scale" => {
                let v = it.next().ok_or("--scale needs a number")?;
                args.scale = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 16.0)
                    .ok_or_else(|| format!("--scale {v}: expected a number in (0, 16]"))?;
            }
            "--sites" => {
                let v = it.next().ok_or("--sites needs a number")?;
                args.sites = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= 50)
                    .ok_or_else(|| format!("--sites {v}: expected 0 to 50"))?;
            }
            "--serve" => args.serve = Some(it.next().ok_or("--serve needs an address")?),
            "--commands" => args.commands = true,
            "--gops" => args.gops = true,
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            a => args.out = a.into(),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::exit(2);
        }
    };
    let scaled = |n: usize| ((n as f64) * args.scale).round() as usize;

    let before = jemalloc_allocated();
    let (buffers, buffer_bytes) = retain_buffers(scaled(16 * 1024));
    let (small, small_bytes) = retain_small(scaled(128 * 1024));
    let retained = jemalloc_allocated().saturating_sub(before);
    let churn_bytes = churn(scaled(1 << 30));
    let mut spread = Vec::with_capacity(args.sites);
    for depth in 0..args.sites {
        spread_sites(depth, &mut spread);
    }

    println!(
        "truth retain_buffers={buffer_bytes} retain_small={small_bytes} churn={churn_bytes} \
         jemalloc_retained={retained} rate={} frame_pointers={}",
        heapprof::sample_rate(),
        u8::from(heapprof::unwinder() == heapprof::Unwinder::FramePointers)
    );
    let stats = heapprof::stats();
    println!(
        "unwinder {} table_fallbacks={}",
        stats.unwinder.as_str(),
        stats.unwind_table_fallbacks
    );

    let snap = heapprof::snapshot();
    // What the profile costs: the first encoding symbolizes, later ones
    // reuse the symbol cache.
    let options = heapprof::PprofOptions::new().symbolize(!args.unsymbolized);
    let (body, first) = timed(|| {
        if args.text {
            snap.to_text_with(&options).into_bytes()
        } else {
            snap.to_pprof_with(&options)
        }
    });
    let (_, cached) = timed(|| snap.to_pprof());
    println!(
        "profile first_ms={:.1} cached_ms={:.1} first_alloc_bytes={} sites={} own_memory_bytes={}",
        first.0,
        cached.0,
        first.1,
        snap.stats().sites,
        snap.stats().own_memory_bytes
    );
    let written = if args.out == "-" {
        std::io::stdout().write_all(&body)
    } else {
        std::fs::write(&args.out, &body)
    };
    if let Err(e) = written {
        eprintln!("quickstart: cannot write {}: {e}", args.out);
        std::process::exit(1);
    }
    if let Some(addr) = &args.serve {
        serve(addr, args.commands, args.gops);
    }
    black_box((&buffers, &small, &spread));
}

/// Serves heapprof-http on `addr` and blocks until killed (the heap stays).
fn serve(addr: &str, commands: bool, gops: bool) {
    match heapprof_http::spawn(addr) {
        Ok(bound) => {
            if gops {
                match heapprof_http::gops::listen() {
                    Ok(agent) => println!("gops on {agent}"),
                    Err(e) => eprintln!("quickstart: gops agent off: {e}"),
                }
            }
            println!("listening on http://{bound}");
            let _ = std::io::stdout().flush();
            if commands {
                // `churn BYTES` on stdin: allocate and free that much, then
                // say `done BYTES` (tests trigger this inside a verify
                // window).
                for line in std::io::stdin().lines().map_while(Result::ok) {
                    if let Some(n) = line
                        .strip_prefix("churn ")
                        .and_then(|n| n.trim().parse().ok())
                    {
                        println!("done {}", churn(n));
                        let _ = std::io::stdout().flush();
                    }
                }
            }
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("quickstart: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs `f`; returns its result, milliseconds and the growth of jemalloc's
/// allocated bytes across it (what stays allocated: caches).
fn timed<T>(f: impl FnOnce() -> T) -> (T, (f64, usize)) {
    let before = jemalloc_allocated();
    let start = std::time::Instant::now();
    let out = f();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    (out, (ms, jemalloc_allocated().saturating_sub(before)))
}
