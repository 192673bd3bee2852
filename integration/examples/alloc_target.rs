//! A Rust + jemalloc process with an exactly known heap, for
//! `heapprof verify --uprobes` tests: every byte it allocates after `go` is
//! one the test expects.
//!
//! `alloc_target [RATE]`: heapprof's sample rate, 0 (off: every call
//! reaches jemalloc unchanged) unless given. At 1 every allocation is
//! sampled, and the small ones' blocks are padded, which the uprobes must
//! see through.
//!
//! Protocol: prints `ready PID`; then for each stdin line:
//! - `go`: allocates a fixed set through every jemalloc entry point Rust
//!   uses (malloc, calloc, realloc, mallocx, sdallocx) and prints
//!   `done LIVE_BYTES` — the bytes of that set still live;
//! - anything else or EOF: exits.

use std::hint::black_box;
use std::io::{BufRead, Write};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Over-aligned, so `Box::new` goes to `_rjem_mallocx`.
#[repr(align(64))]
#[expect(dead_code, reason = "only its size and alignment matter")]
struct Aligned([u8; 4096]);

/// What `allocate_known_set` keeps, and its live bytes.
type KnownSet = (Vec<Box<[u8]>>, Vec<u8>, Box<Aligned>, usize);

#[inline(never)]
fn allocate_known_set() -> KnownSet {
    let mut boxes: Vec<Box<[u8]>> = Vec::with_capacity(100); // malloc 1600
    for _ in 0..100 {
        boxes.push(vec![0u8; 10_000].into_boxed_slice()); // calloc 10000
    }
    let mut grown = vec![1u8; 1000]; // malloc 1000
    grown.reserve_exact(9000); // realloc to 10000
    let aligned = Box::new(Aligned([7; 4096])); // mallocx 4096
    for _ in 0..50 {
        black_box(Vec::<u8>::with_capacity(3000)); // malloc + sdallocx
    }
    let live = 100 * size_of::<Box<[u8]>>() + 100 * 10_000 + 10_000 + 4096;
    (boxes, grown, aligned, live)
}

fn main() {
    let rate = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    heapprof::set_sample_rate(rate);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready {}", std::process::id());
    let _ = out.flush();
    let mut line = String::with_capacity(256);
    let stdin = std::io::stdin();
    let mut kept = Vec::with_capacity(16);
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 || line.trim() != "go" {
            break;
        }
        let set = allocate_known_set();
        let _ = writeln!(out, "done {}", set.3);
        let _ = out.flush();
        kept.push(set);
    }
    black_box(&kept);
}
