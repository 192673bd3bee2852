//! Incident 1, "the cache that was never emptied": a node agent whose route
//! cache inserts on every netlink event and never evicts.
//!
//! Each simulated netlink event is parsed (`parse_netlink_event`: honest
//! churn, a buffer allocated and freed), its routes are resolved
//! (`resolve_routes`), and the result goes into `RouteCache::insert`, which
//! keeps a copy forever. `--no-cache` turns the cache off, and with it the
//! growth.
//!
//! ```text
//! route_cache [--serve ADDR] [--no-cache] [--events-per-sec N]
//!             [--duration-secs S] [--history-interval-ms MS]
//! ```
//! With `--serve`, the heapprof endpoint runs on ADDR (it prints
//! `listening on http://ADDR`) and the growth recorder runs, so after about
//! 20 seconds `heapprof leaks <pid>` (or `/debug/heapprof/leaks`) names
//! `RouteCache::insert` as the first suspect, and a delta profile
//! (`/debug/pprof/heap?seconds=10`) puts it first.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// One route, as the netlink library returns it.
#[derive(Clone, Copy)]
#[allow(dead_code)] // fields exist to give routes a realistic size
struct Route {
    destination: [u8; 16],
    gateway: [u8; 16],
    prefix_len: u8,
    ifindex: u32,
    metric: u32,
}

/// The IP/route information cache: inserts, never evicts.
struct RouteCache {
    enabled: bool,
    entries: HashMap<u64, Box<[Route]>>,
}

impl RouteCache {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            entries: HashMap::new(),
        }
    }

    /// Keeps a copy of `routes` under `key`. Nothing ever removes it.
    #[inline(never)]
    fn insert(&mut self, key: u64, routes: &[Route]) {
        if self.enabled {
            self.entries.insert(key, routes.into());
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Reads one netlink message into a fresh buffer (freed by the caller).
#[inline(never)]
fn parse_netlink_event(seq: u64) -> Vec<u8> {
    let len = 8 * 1024 + (seq % 8) as usize * 2048;
    let mut msg = vec![0u8; len];
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    msg
}

/// Resolves the routes a message describes (a short-lived list).
#[inline(never)]
fn resolve_routes(msg: &[u8]) -> Vec<Route> {
    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap_or([0; 8]));
    (0..16u32)
        .map(|i| Route {
            destination: [(seq as u8).wrapping_add(i as u8); 16],
            gateway: [i as u8; 16],
            prefix_len: 24,
            ifindex: i % 4,
            metric: 100 + i,
        })
        .collect()
}

/// Incident 1: a route cache that never evicts.
#[derive(Parser)]
struct Args {
    /// Serve heapprof on ADDR and record the growth history.
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,
    /// Turn the cache off (and with it the leak).
    #[arg(long = "no-cache", action = clap::ArgAction::SetFalse)]
    cache: bool,
    /// Simulated netlink events per second (at least 1).
    #[arg(long, value_name = "N", default_value = "1000", value_parser = |v: &str| v.parse::<u64>().map(|n| n.max(1)))]
    events_per_sec: u64,
    /// Exit after S seconds (default: run until killed).
    #[arg(long = "duration-secs", value_name = "S", value_parser = |v: &str| v.parse().map(Duration::from_secs))]
    duration: Option<Duration>,
    /// Interval of the growth recorder, milliseconds (at least 10).
    #[arg(long = "history-interval-ms", value_name = "MS", default_value = "1000", value_parser = |v: &str| v.parse::<u64>().map(|ms| Duration::from_millis(ms.max(10))))]
    history_interval: Duration,
}

fn main() {
    let args = Args::parse();
    let _history = args.serve.as_ref().map(|addr| {
        let bound = heapprof_http::spawn(addr.as_str()).unwrap_or_else(|e| {
            eprintln!("route_cache: cannot serve on {addr}: {e}");
            std::process::exit(1);
        });
        println!("listening on http://{bound}");
        heapprof::start_history(args.history_interval)
    });

    let mut cache = RouteCache::new(args.cache);
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (args.events_per_sec / 100).max(1);
    let mut seq = 0u64;
    while args.duration.is_none_or(|d| started.elapsed() < d) {
        let tick_start = Instant::now();
        for _ in 0..per_tick {
            let msg = parse_netlink_event(seq);
            let routes = resolve_routes(&msg);
            cache.insert(seq, &routes);
            black_box((&msg, &routes));
            seq += 1;
        }
        if let Some(rest) = tick.checked_sub(tick_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    println!(
        "route_cache: {seq} events, {} cache entries, {} bytes in use (estimated)",
        cache.len(),
        heapprof::stats().estimated_inuse_bytes
    );
    heapprof_http::cleanup();
}
