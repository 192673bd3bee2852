//! Incident 3, "dashboards said healthy": a service whose health check and
//! own metrics always look normal while a background thread leaks 1 MiB
//! every 8 seconds (up to 2 GiB).
//!
//! ```text
//! stealth_leak --serve ADDR [--leak-interval-ms MS]
//! ```
//! - `GET /health` always answers `ok`.
//! - `GET /app-metrics` claims a flat, small memory use
//!   (`app_memory_bytes`), the number its dashboards plot.
//! - The heapprof endpoint is on the same address.
//!
//! `heapprof verify <pid> --uprobes --claims-url http://ADDR/app-metrics
//! --claims-key app_memory_bytes` counts the allocator's real calls from
//! outside and shows live bytes growing by about 1 MiB per interval, the
//! RSS, and the claim, flagged false; the top outstanding stack contains
//! `background_leak`.

use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// What the service says about itself, always.
const CLAIMED_BYTES: u64 = 48 * 1024 * 1024;
const LEAK_BYTES: usize = 1 << 20;
const LEAK_CAP: usize = 2 << 30;

/// Leaks one MiB every `interval`, forever (capped at 2 GiB).
#[inline(never)]
fn background_leak(interval: Duration) {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        if kept.len() * LEAK_BYTES < LEAK_CAP {
            kept.push(vec![0x5a; LEAK_BYTES]);
        }
        black_box(&kept);
        std::thread::sleep(interval);
    }
}

async fn health() -> &'static str {
    "ok\n"
}

async fn app_metrics() -> String {
    format!(
        "# HELP app_memory_bytes Memory the application believes it uses.\n\
         # TYPE app_memory_bytes gauge\n\
         app_memory_bytes {CLAIMED_BYTES}\n\
         # HELP app_healthy Whether the health check passes.\n\
         # TYPE app_healthy gauge\n\
         app_healthy 1\n"
    )
}

/// Incident 3: healthy dashboards over a steady leak.
#[derive(Parser)]
struct Args {
    /// Serve /health, /app-metrics and heapprof on ADDR.
    #[arg(long, value_name = "ADDR")]
    serve: String,
    /// Leak 1 MiB every MS milliseconds (positive).
    #[arg(long = "leak-interval-ms", value_name = "MS", default_value = "8000", value_parser = |v: &str| {
        v.parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or("needs a positive number")
    })]
    leak_interval: Duration,
}

fn main() {
    let Args {
        serve: addr,
        leak_interval: interval,
    } = Args::parse();
    std::thread::Builder::new()
        .name("background".into())
        .spawn(move || background_leak(interval))
        .expect("spawn the background thread");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("stealth_leak: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        let bound = listener.local_addr().expect("bound address");
        let _announce = heapprof_http::announce(bound);
        println!("listening on http://{bound}");
        let app = Router::new()
            .route("/health", get(health))
            .route("/app-metrics", get(app_metrics))
            .merge(heapprof_http::router());
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("stealth_leak: server stopped: {e}");
        }
    });
}
