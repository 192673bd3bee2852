//! What a profile costs the profiled process in anonymous memory.
//!
//! `cargo bench --bench profile_memory` (`HEAPPROF_BENCH_QUICK=1`: 5 s CPU
//! profiles instead of 30 s).
//!
//! The same service (`benches/programs/src/service.rs`: quickstart's heap,
//! 256 more call sites, two busy threads) runs under each profiler:
//! heapprof with heapprof-http (`serve-heapprof`), and the peers
//! (`serve-peers`): jemalloc's profiler through jemalloc_pprof, symbolized
//! in process, for heap profiles, and pprof-rs for CPU profiles. Each is
//! built twice: as a service is usually built (`debug = "limited"`), and as
//! a large service in a development build: the `large` feature links what
//! such a service does (gRPC, an HTTPS client, JSON, regexes, tracing),
//! built with full debug info, no optimisation, debug assertions and
//! `-C link-dead-code`, a binary of 200 MB or more (the table gives each
//! binary's size).
//!
//! For each, over HTTP: the first heap profile, a later one (after 12 s,
//! once jemalloc's decay has returned the first one's pages), 100
//! concurrent heap requests, and a 30 s CPU profile. The figure is the
//! peak rise of the process's anonymous RSS (`RssAnon`, sampled every
//! millisecond) over the level just before the request; for the CPU
//! profile also what is still there 15 s after it ended ("kept").
//!
//! Then, for heapprof only, what an OOM guard's dump costs: the service
//! starts the guard with its 80% threshold already crossed (see
//! `serve_heapprof.rs`), without the reserve that would pre-pay the
//! dump, and the table gives the peak rise of `RssAnon` when the first,
//! unsymbolized pass has written both profiles, and when the second pass
//! has replaced them with named ones. Last, what heapprof's unwind
//! tables cost at start-up: `RssAnon` and `VmHWM` 3 s after the service
//! listens, and the peak of `RssAnon` until then (read every millisecond
//! from the start), with the tables (`HEAPPROF_UNWIND=auto`, the default
//! for a build without frame pointers) minus without
//! (`HEAPPROF_UNWIND=dwarf`). `VmHWM` counts file pages too: the unwind
//! sections the build reads.
//! `HEAPPROF_BENCH_GUARD_ONLY=1` runs only those two tables.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{build, program, programs_dir, quick};

const MIB: f64 = 1048576.0;

fn main() {
    let cpu_seconds = if quick() { 5 } else { 30 };
    let builds: [Build; 2] = [
        Build {
            what: "debug = \"limited\"",
            dir: "limited",
            features: "",
            rustflags: "",
            env: &[],
        },
        Build {
            what: "large service, full debug info, unoptimised",
            dir: "full",
            features: ",large",
            rustflags: "-C link-dead-code=yes",
            env: &[
                ("CARGO_PROFILE_RELEASE_DEBUG", "2"),
                ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0"),
                ("CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS", "true"),
                ("CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS", "true"),
            ],
        },
    ];
    let guard_only = std::env::var_os("HEAPPROF_BENCH_GUARD_ONLY").is_some();
    if !guard_only {
        println!(
            "| program | binary | first heap | later heap | 100 concurrent | CPU {cpu_seconds} s: while | kept |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
    }
    let mut guard_rows = Vec::new();
    let mut table_rows = Vec::new();
    for b in &builds {
        let (what, dir) = (b.what, b.dir);
        let heapprof = build_one(
            dir,
            &[
                "--features",
                &format!("http{}", b.features),
                "--bin",
                "serve-heapprof",
            ],
            b,
        )
        .map(|d| d.join("serve-heapprof"));
        guard_rows.push(match &heapprof {
            Ok(bin) => guard_dump(bin, what),
            Err(e) => format!("| {what} | unavailable: {e} | | |"),
        });
        if let Ok(bin) = &heapprof {
            table_rows.push(start_up(bin, what));
        }
        if guard_only {
            continue;
        }
        let peers = build_one(
            &format!("{dir}-prof"),
            &[
                "--features",
                &format!("prof,symbolize{}", b.features),
                "--bin",
                "serve-peers",
            ],
            b,
        )
        .map(|d| d.join("serve-peers"));
        for (who, bin) in [("heapprof", heapprof), ("jemalloc_pprof + pprof-rs", peers)] {
            match bin {
                Ok(bin) => {
                    let size = std::fs::metadata(&bin).map_or(0, |m| m.len());
                    let row = measure(&bin, cpu_seconds);
                    println!(
                        "| {who} | {what}, {:.0} MB | {} | {} | {} | {} | {} |",
                        size as f64 / 1e6,
                        row[0],
                        row[1],
                        row[2],
                        row[3],
                        row[4]
                    );
                }
                Err(e) => println!("| {who} | {what} | unavailable: {e} | | | | |"),
            }
        }
    }
    println!("\nAn OOM guard's dump (heapprof, no reserve), peak rise of RssAnon:\n");
    println!("| binary | unsymbolized pass written | named pass written | dump files |");
    println!("| --- | --- | --- | --- |");
    for row in guard_rows {
        println!("{row}");
    }
    println!("\nheapprof's unwind tables at start-up, with minus without:\n");
    println!("| binary | RssAnon kept | RssAnon peak | VmHWM |");
    println!("| --- | --- | --- | --- |");
    for row in table_rows {
        println!("{row}");
    }
}

/// One row of the start-up table (see the module docs).
fn start_up(bin: &Path, what: &str) -> String {
    let status = |unwind: &str| {
        let mut child = program(bin, &[("HEAPPROF_UNWIND", unwind)])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the service");
        let sampler = PeakSampler::start(child.id());
        listening(&mut child);
        std::thread::sleep(Duration::from_secs(3));
        let text = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let peak = sampler.finish();
        let _ = child.kill();
        let _ = child.wait();
        (
            heapprof::sys::procfs::parse_status(&text.unwrap_or_default()),
            peak,
        )
    };
    let ((with, with_peak), (without, without_peak)) = (status("auto"), status("dwarf"));
    let rise = |a: u64, b: u64| (a as f64 - b as f64) / MIB;
    let size = std::fs::metadata(bin).map_or(0, |m| m.len());
    format!(
        "| {what}, {:.0} MB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        size as f64 / 1e6,
        rise(with.rss_anon, without.rss_anon),
        rise(with_peak, without_peak),
        rise(with.vm_hwm, without.vm_hwm)
    )
}

/// One row of the OOM-guard table: runs the service with its guard (see
/// the module docs) and follows the dump directory.
fn guard_dump(bin: &Path, what: &str) -> String {
    let dir = std::env::temp_dir().join(format!("heapprof-bench-guard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = program(bin, &[])
        .env("SERVE_GUARD_DIR", &dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the service");
    wait_for_line(&mut child, "guard starting");
    let sampler = PeakSampler::start(child.id());
    let started = std::time::Instant::now();
    let rise = || sampler.rise() as f64 / MIB;
    // (file name, inode) of the dump files.
    let files = || -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pb.gz"))
            .filter_map(|e| {
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?.ino(),
                ))
            })
            .collect()
    };
    let mut first = None;
    let mut named = None;
    while started.elapsed() < Duration::from_secs(120) {
        let now = files();
        match &first {
            None if now.len() == 2 => first = Some((rise(), started.elapsed(), now)),
            Some((_, _, then)) if now.iter().all(|f| !then.contains(f)) && now.len() == 2 => {
                named = Some((rise(), started.elapsed()));
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = sampler.finish() as f64 / MIB;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let size = std::fs::metadata(bin).map_or(0, |m| m.len());
    let cell = |r: Option<(f64, Duration)>| {
        r.map_or("not written in 120 s".into(), |(mib, at)| {
            format!("{mib:.1} MiB ({:.2} s)", at.as_secs_f64())
        })
    };
    format!(
        "| {what}, {:.0} MB | {} | {} | {} |",
        size as f64 / 1e6,
        cell(first.as_ref().map(|(mib, at, _)| (*mib, *at))),
        cell(named.map(|(_, at)| (total, at))),
        first.map_or(0, |(_, _, f)| f.len()),
    )
}

/// One way of building the service.
struct Build {
    /// What the table's binary column says.
    what: &'static str,
    /// Target directory under `target/bench-programs/memory-`.
    dir: &'static str,
    /// Features added to each program's own.
    features: &'static str,
    rustflags: &'static str,
    env: &'static [(&'static str, &'static str)],
}

fn build_one(dir: &str, args: &[&str], b: &Build) -> Result<PathBuf, String> {
    let target = programs_dir().join(format!("memory-{dir}"));
    build(&target, args, b.rustflags, b.env).map(|()| target.join("release"))
}

/// The five figures of one program, formatted.
fn measure(bin: &Path, cpu_seconds: u64) -> [String; 5] {
    let mut child = program(bin, &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the service");
    let addr = listening(&mut child);
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let heap = "/debug/pprof/heap";
    let first = peak_rise(pid, || get(&addr, heap));
    std::thread::sleep(Duration::from_secs(12));
    let later = peak_rise(pid, || get(&addr, heap));
    std::thread::sleep(Duration::from_secs(12));
    let mut failed = 0;
    let burst = peak_rise(pid, || {
        let clients: Vec<_> = (0..100)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || get(&addr, heap))
            })
            .collect();
        let answered = clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .filter(|&bytes| bytes > 0)
            .count();
        failed = 100 - answered;
        answered
    });
    std::thread::sleep(Duration::from_secs(12));
    let before = rss_anon(pid);
    let cpu = peak_rise(pid, || {
        get(
            &addr,
            &format!("/debug/pprof/profile?seconds={cpu_seconds}"),
        )
    });
    std::thread::sleep(Duration::from_secs(15));
    let kept = rss_anon(pid).saturating_sub(before);
    let _ = child.kill();
    let _ = child.wait();
    [
        mib(first),
        mib(later),
        match failed {
            0 => mib(burst),
            n => format!("{} ({n} of 100 failed)", mib(burst)),
        },
        mib(cpu),
        format!("{:.1} MiB", kept as f64 / MIB),
    ]
}

fn mib((rise, bytes): (u64, usize)) -> String {
    if bytes == 0 {
        return "no answer".into();
    }
    format!("{:.1} MiB", rise as f64 / MIB)
}

/// The address the service listens on, from its stdout.
fn listening(child: &mut Child) -> String {
    wait_for_line(child, "listening on http://")
        .trim()
        .to_owned()
}

/// Reads `child`'s piped stdout up to the first line starting with
/// `prefix` and returns the rest of that line; the lines after it are
/// read and dropped on a thread of their own.
fn wait_for_line(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let rest = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the service exited before printing {prefix:?}"))
            .expect("a line");
        if let Some(rest) = line.strip_prefix(prefix) {
            break rest.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    rest
}

/// `RssAnon` of `pid`, bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    heapprof::sys::procfs::parse_status(&status).rss_anon
}

/// Runs `f` while sampling `pid`'s anonymous RSS every millisecond; the
/// peak rise over the level before, and `f`'s result.
fn peak_rise(pid: u32, f: impl FnOnce() -> usize) -> (u64, usize) {
    let sampler = PeakSampler::start(pid);
    let out = f();
    (sampler.finish(), out)
}

/// A thread that reads a process's `RssAnon` every millisecond and keeps
/// the highest reading.
struct PeakSampler {
    /// `RssAnon` when sampling started, bytes.
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakSampler {
    fn start(pid: u32) -> Self {
        let base = rss_anon(pid);
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_anon(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Self {
            base,
            peak,
            stop,
            thread,
        }
    }

    /// The peak rise over `base` so far, bytes.
    fn rise(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base)
    }

    /// Samples 50 ms more, stops, and returns the peak rise, bytes.
    fn finish(self) -> u64 {
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

/// GET `path`; the body's length (0 unless 200).
fn get(addr: &str, path: &str) -> usize {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw);
    let ok = raw.starts_with(b"HTTP/1.1 200");
    let head = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    if ok { raw.len() - head } else { 0 }
}
