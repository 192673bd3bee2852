//! Incident 2, "the sidecar, not the service": a service and the log shipper
//! embedded beside it share one process, and only the shipper leaks.
//!
//! The service thread (`handle_request`, label `component=service`)
//! allocates and frees per request and keeps a small bounded response cache:
//! its heap is flat once the cache is full. The shipper thread
//! (`ship_logs`, label `component=log-shipper`) reads log lines and parses
//! them (`parse_record`); its tag pattern (a hand-written matcher standing
//! in for the regex `\[tags=(\w+)\]`) was written for `[tags=...]` while the
//! service writes `[tag=...]`, so no line ever parses. For each one the
//! shipper logs an error and keeps the failed record in its dead-letter
//! queue (`retain_failed_record`), which nothing ever drains.
//!
//! ```text
//! log_shipper [--serve ADDR] [--lines-per-sec N] [--requests-per-sec N]
//!             [--duration-secs S] [--out FILE]
//! ```
//! - `--serve ADDR`: serve heapprof on ADDR (port 0: any), print
//!   `listening on http://ADDR`; without `--duration-secs`, run until killed.
//! - `--lines-per-sec N`: log lines the shipper reads (default 1000, about
//!   450 KB/s of retained records).
//! - `--requests-per-sec N`: service requests (default 500).
//! - `--duration-secs S`: stop after S seconds and write the heap profile to
//!   `--out FILE` (default `log_shipper.pb.gz`).
//!
//! What heapprof shows: both components in one heap profile, each sample
//! labelled with its `component`. The whole process grows, but
//! `go tool pprof -tags` charges the growth to `component=log-shipper`, and
//! `go tool pprof -tagfocus component=log-shipper -top` puts
//! `retain_failed_record` first; the service's in-use bytes stay flat.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Responses the service keeps for repeated requests (bounded).
const CACHE_ENTRIES: usize = 256;

/// The service's bounded response cache: the oldest entry goes when full.
struct ResponseCache {
    entries: VecDeque<(u64, String)>,
}

impl ResponseCache {
    fn new() -> Self {
        Self {
            entries: VecDeque::with_capacity(CACHE_ENTRIES),
        }
    }
}

/// One request: reads a body, renders a response, caches it (bounded).
/// Everything else it allocates is freed before it returns.
#[inline(never)]
fn handle_request(id: u64, cache: &mut ResponseCache) -> usize {
    let body = vec![(id % 251) as u8; 8 * 1024];
    let mut response = String::with_capacity(2048);
    response.push_str("{\"status\":\"ok\",\"order\":");
    response.push_str(&id.to_string());
    response.push_str(",\"items\":[");
    for chunk in body.chunks(512) {
        response.push_str(&chunk.iter().map(|b| *b as usize).sum::<usize>().to_string());
        response.push(',');
    }
    response.push_str("0]}");
    let len = response.len();
    if cache.entries.len() == CACHE_ENTRIES {
        cache.entries.pop_front();
    }
    cache.entries.push_back((id, response));
    len
}

/// The service: `requests_per_sec` requests, under `component=service`.
fn run_service(requests_per_sec: u64) {
    let _labels = heapprof::set_labels(&[("component", "service")]);
    let mut cache = ResponseCache::new();
    let mut id = 0u64;
    paced(requests_per_sec, || {
        black_box(handle_request(id, &mut cache));
        id += 1;
    });
}

/// What the shipper was configured to find: the tag in `[tags=NAME]`.
/// A literal-prefix matcher standing in for the regex `\[tags=(\w+)\]`; the
/// service writes `[tag=NAME]`, so it never matches.
struct TagPattern {
    open: &'static str,
    close: char,
}

const TAG_PATTERN: TagPattern = TagPattern {
    open: "[tags=",
    close: ']',
};

impl TagPattern {
    fn find<'a>(&self, line: &'a str) -> Option<&'a str> {
        let start = line.find(self.open)? + self.open.len();
        let len = line[start..].find(self.close)?;
        let tag = &line[start..start + len];
        tag.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            .then_some(tag)
    }

    fn source(&self) -> &'static str {
        r"\[tags=(\w+)\]"
    }
}

/// A parsed record, ready to ship.
struct Record<'a> {
    level: &'a str,
    tag: &'a str,
    message: &'a str,
}

/// Reads the next line the service logged (the shipper's read buffer).
#[inline(never)]
fn read_line(seq: u64) -> String {
    let level = ["INFO", "WARN", "DEBUG"][(seq % 3) as usize];
    format!(
        "2024-03-{:02}T{:02}:{:02}:{:02}.{:03}Z {level} 1 --- [nio-8080-exec-{}] [tag=orders] \
         c.e.orders.OrderController : Completed order {seq} for customer {} in {} ms, \
         items={} total={}.{:02} EUR trace_id={:016x} span_id={:08x}",
        1 + seq % 28,
        seq / 3_600_000 % 24,
        seq / 60_000 % 60,
        seq / 1000 % 60,
        seq % 1000,
        seq % 16,
        seq.wrapping_mul(2_654_435_761) % 100_000,
        seq % 900 + 3,
        seq % 12 + 1,
        seq % 500,
        seq % 100,
        seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        seq.wrapping_mul(0x85eb_ca6b) as u32,
    )
}

/// Splits a line into level, tag and message; fails when the tag pattern
/// does not match (which, with this pattern, is always).
#[inline(never)]
fn parse_record(line: &str) -> Result<Record<'_>, &'static str> {
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    let level = fields.get(1).copied().ok_or("no level")?;
    let tag = TAG_PATTERN.find(line).ok_or("tag pattern did not match")?;
    let message = line.rsplit(" : ").next().unwrap_or(line);
    Ok(Record {
        level,
        tag,
        message,
    })
}

/// A record that failed to parse, kept for a retry that never happens.
struct FailedRecord {
    seq: u64,
    raw: Box<str>,
    error: String,
}

/// The leak: keeps a copy of every line that failed to parse, and nothing
/// ever drains the queue.
#[inline(never)]
fn retain_failed_record(queue: &mut Vec<FailedRecord>, seq: u64, line: &str, error: &str) {
    let mut message = String::with_capacity(error.len() + 48);
    message.push_str(error);
    message.push_str(" (pattern ");
    message.push_str(TAG_PATTERN.source());
    message.push(')');
    queue.push(FailedRecord {
        seq,
        raw: line.into(),
        error: message,
    });
}

/// The shipper: reads, parses and ships `lines_per_sec` lines, under
/// `component=log-shipper`.
fn ship_logs(lines_per_sec: u64) {
    let _labels = heapprof::set_labels(&[("component", "log-shipper")]);
    let mut dead_letters: Vec<FailedRecord> = Vec::new();
    let mut shipped = 0u64;
    let mut seq = 0u64;
    let mut last_report = Instant::now();
    paced(lines_per_sec, || {
        let line = read_line(seq);
        match parse_record(&line) {
            Ok(record) => {
                black_box((record.level, record.tag, record.message));
                shipped += 1;
            }
            Err(error) => {
                if dead_letters.is_empty() || last_report.elapsed() >= Duration::from_secs(10) {
                    let last = dead_letters.last().map_or(0, |r| r.seq);
                    eprintln!(
                        "log-shipper: ERROR cannot parse line {seq}: {error} (pattern {}); \
                         {} failed records kept (last {last}), {shipped} shipped",
                        TAG_PATTERN.source(),
                        dead_letters.len() + 1,
                    );
                    last_report = Instant::now();
                }
                retain_failed_record(&mut dead_letters, seq, &line, error);
            }
        }
        seq += 1;
    });
    black_box(
        dead_letters
            .iter()
            .map(|r| r.raw.len() + r.error.len())
            .sum::<usize>(),
    );
}

/// Calls `work` `per_sec` times a second, in 10 ms ticks, forever.
fn paced(per_sec: u64, mut work: impl FnMut()) {
    let tick = Duration::from_millis(10);
    let per_tick = per_sec.div_ceil(100).max(1);
    loop {
        let started = Instant::now();
        for _ in 0..per_tick {
            work();
        }
        if let Some(rest) = tick.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Incident 2: a service and the log shipper that is really leaking.
#[derive(Parser)]
#[command(group(clap::ArgGroup::new("mode").required(true).multiple(true).args(["serve", "duration"])))]
struct Args {
    /// Serve heapprof on ADDR.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// Log lines shipped per second (at least 1).
    #[arg(long, value_name = "N", default_value = "1000", value_parser = |v: &str| v.parse::<u64>().map(|n| n.max(1)))]
    lines_per_sec: u64,
    /// Service requests per second (at least 1).
    #[arg(long, value_name = "N", default_value = "500", value_parser = |v: &str| v.parse::<u64>().map(|n| n.max(1)))]
    requests_per_sec: u64,
    /// Run S seconds, write the profile to --out, exit.
    #[arg(long = "duration-secs", value_name = "S", value_parser = |v: &str| v.parse().map(Duration::from_secs))]
    duration: Option<Duration>,
    /// Where the profile goes with --duration-secs.
    #[arg(long, value_name = "FILE", default_value = "log_shipper.pb.gz")]
    out: String,
}

fn main() {
    let args = Args::parse();
    if let Some(addr) = &args.serve {
        let bound = heapprof_http::spawn(addr.as_str()).unwrap_or_else(|e| {
            eprintln!("log_shipper: cannot serve on {addr}: {e}");
            std::process::exit(1);
        });
        println!("listening on http://{bound}");
    }
    let spawn = |name: &str, f: fn(u64), rate: u64| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || f(rate))
            .unwrap_or_else(|e| panic!("log_shipper: cannot spawn {name}: {e}"))
    };
    let service = spawn("service", run_service, args.requests_per_sec);
    let _shipper = spawn("log-shipper", ship_logs, args.lines_per_sec);
    let Some(duration) = args.duration else {
        // Both loops run forever: serve until killed.
        let _ = service.join();
        return;
    };
    std::thread::sleep(duration);
    let profile = heapprof::snapshot().to_pprof();
    if let Err(e) = std::fs::write(&args.out, &profile) {
        eprintln!("log_shipper: cannot write {}: {e}", args.out);
        std::process::exit(1);
    }
    println!(
        "log_shipper: wrote {} ({} bytes in use, estimated)",
        args.out,
        heapprof::stats().estimated_inuse_bytes
    );
    heapprof_http::cleanup();
    // The loops never end; leave without joining them.
    std::process::exit(0);
}
