//! A Rust service profiled by heapprof (wrapping jemalloc) that allocates on
//! command, for checking the profiler's estimates against uprobes. It
//! serves the heapprof endpoint (heapprof-http) on `127.0.0.1:0`, which
//! `heapprof verify` reads.
//!
//! Prints `listening on http://ADDR`; stdin commands:
//! - `grow BYTES`: keeps BYTES more in 4 KiB buffers and allocates and
//!   frees as many again; prints `done KEPT_TOTAL`;
//! - anything else or EOF: exits.

use std::hint::black_box;
use std::io::{BufRead, Write};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const CHUNK: usize = 4096;

#[inline(never)]
fn grow(kept: &mut Vec<Box<[u8]>>, bytes: usize) {
    for _ in 0..bytes / CHUNK {
        kept.push(vec![1u8; CHUNK].into_boxed_slice());
    }
}

#[inline(never)]
fn churn(bytes: usize) {
    for _ in 0..bytes / CHUNK {
        black_box(Vec::<u8>::with_capacity(CHUNK));
    }
}

fn main() {
    let addr = heapprof_http::spawn("127.0.0.1:0").expect("serve heapprof");
    // Symbolize once now, so that profiles do not load debug info later.
    black_box(heapprof::snapshot().to_pprof());

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
    let mut kept: Vec<Box<[u8]>> = Vec::with_capacity(1 << 16);
    let mut line = String::with_capacity(256);
    let stdin = std::io::stdin();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let Some(bytes) = line
            .strip_prefix("grow ")
            .and_then(|b| b.trim().parse().ok())
        else {
            break;
        };
        grow(&mut kept, bytes);
        churn(bytes);
        let _ = writeln!(out, "done {}", kept.len() * CHUNK);
        let _ = out.flush();
    }
    heapprof_http::cleanup();
}
