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

struct Args {
    serve: Option<String>,
    cache: bool,
    events_per_sec: u64,
    duration: Option<Duration>,
    history_interval: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        serve: None,
        cache: true,
        events_per_sec: 1000,
        duration: None,
        history_interval: Duration::from_secs(1),
    };
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>| -> Result<u64, String> {
        v.as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a whole number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--serve" => args.serve = Some(it.next().ok_or("--serve needs an address")?),
            "--no-cache" => args.cache = false,
            "--events-per-sec" => args.events_per_sec = number(&arg, it.next())?.max(1),
            "--duration-secs" => {
                args.duration = Some(Duration::from_secs(number(&arg, it.next())?))
            }
            "--history-interval-ms" => {
                args.history_interval = Duration::from_millis(number(&arg, it.next())?.max(10))
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("route_cache: {e}");
        std::process::exit(2);
    });
    let _history = args.serve.as_ref().map(|addr| {
        let bound = heapprof_http::spawn(addr.as_str()).unwrap_or_else(|e| {
            eprintln!("route_cache: cannot serve on {addr}: {e}");
            std::process::exit(1);
        });
        println!("listening on http://{bound}");
        heapprof::history::start(args.history_interval)
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
