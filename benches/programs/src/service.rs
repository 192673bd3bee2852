//! The service the profile-memory bench profiles, the same for every
//! profiler: quickstart's heap (64 MiB of 4 KiB buffers, 8 MiB of 64-byte
//! objects), 256 more call sites kept (a real service's spread), and two
//! threads that compute without allocating (so a CPU profile has samples
//! and RSS stays still).

use std::hint::black_box;
use std::time::Duration;

/// Keeps the heap; returns it so the caller keeps it alive.
pub fn build_heap() -> Vec<Box<[u8]>> {
    let mut kept = Vec::new();
    for _ in 0..16 * 1024 {
        kept.push(retain_buffer());
    }
    for i in 0..128 * 1024 {
        kept.push(retain_small(i));
    }
    for path in 0..256u32 {
        spread(8, path, &mut kept);
    }
    kept
}

#[inline(never)]
fn retain_buffer() -> Box<[u8]> {
    black_box(vec![1u8; 4096]).into_boxed_slice()
}

#[inline(never)]
fn retain_small(i: usize) -> Box<[u8]> {
    black_box(vec![i as u8; 64]).into_boxed_slice()
}

#[inline(never)]
fn spread(depth: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    if depth == 0 {
        kept.push(black_box(vec![7u8; 1024]).into_boxed_slice());
    } else if path & 1 == 0 {
        spread_left(depth - 1, path >> 1, kept);
    } else {
        spread_right(depth - 1, path >> 1, kept);
    }
}

#[inline(never)]
fn spread_left(depth: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    spread(depth, path, kept);
}

#[inline(never)]
fn spread_right(depth: u32, path: u32, kept: &mut Vec<Box<[u8]>>) {
    spread(depth, path, kept);
}

/// Two threads that keep the CPU busy without allocating.
pub fn busy_threads() {
    for t in 0..2u64 {
        std::thread::spawn(move || compute(t));
    }
}

#[inline(never)]
fn compute(mut x: u64) {
    loop {
        for _ in 0..1_000_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        black_box(x);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// With the `large` feature, the service also uses what a typical large
/// Rust service links (a gRPC endpoint, an HTTPS client, JSON, regexes,
/// time zones, structured logging), so that the binary and its debug info
/// are those of such a service. Returns something derived from each.
#[cfg(feature = "large")]
pub fn use_large_dependencies() -> usize {
    let json: serde_json::Value =
        serde_json::from_str(r#"{"service":"bench","replicas":3}"#).expect("json");
    let pattern = regex::Regex::new(r"^(\w+)-(\d+)$").expect("regex");
    let now = chrono::Utc::now().to_rfc3339();
    let client = reqwest::Client::builder()
        .user_agent("bench")
        .build()
        .expect("https client");
    let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
    let filter = tracing_subscriber::EnvFilter::new("info");
    let (health, _) = tonic_health::server::health_reporter();
    let layers = (
        tower_http::cors::CorsLayer::permissive(),
        tower_http::trace::TraceLayer::new_for_http(),
        tower_http::compression::CompressionLayer::new(),
        tower_http::services::ServeDir::new("/nonexistent"),
    );
    std::hint::black_box((&client, &endpoint, &filter, &health, &layers));
    json.to_string().len() + usize::from(pattern.is_match("pod-7")) + now.len()
}
