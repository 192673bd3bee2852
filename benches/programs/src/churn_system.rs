//! The glibc target of `cargo bench --bench verifier_cost`: heapprof over
//! the system allocator, so that every block it churns is one `malloc` and
//! one `free` in libc, the calls bcc's `memleak-bpfcc` probes (quickstart,
//! the bench's other target, allocates through jemalloc's `_rjem_*`).
//!
//! ```text
//! churn-system [ADDR]
//! ```
//! Churns 64 MiB, prints `churn-system rate=R unwinder=U
//! frame_pointers=0|1` (as quickstart's truth line does after its own
//! churn: heapprof's `auto` unwinder settles after 16 samples, and 64 MiB
//! makes about 128 at the default rate), serves heapprof-http on
//! ADDR (default `127.0.0.1:0`; `heapprof verify` fetches the profile from
//! it), prints `listening on http://ADDR`, then answers every `churn BYTES`
//! line on stdin with `done BYTES` once it has allocated and freed that
//! many bytes, as `quickstart --serve ADDR --commands` does. It exits at
//! the end of stdin.

use std::io::{BufRead, Write};

#[global_allocator]
static ALLOC: heapprof::Profiler<std::alloc::System> = heapprof::Profiler::new(std::alloc::System);

include!("../../../examples/common/churn.rs");

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    churn(64 << 20);
    let unwinder = heapprof::unwinder();
    println!(
        "churn-system rate={} unwinder={} frame_pointers={}",
        heapprof::sample_rate(),
        unwinder.as_str(),
        u8::from(unwinder == heapprof::Unwinder::FramePointers)
    );
    let bound = heapprof_http::spawn(addr.as_str()).unwrap_or_else(|e| {
        eprintln!("churn-system: cannot serve on {addr}: {e}");
        std::process::exit(1);
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{bound}");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let Some(bytes) = line
            .strip_prefix("churn ")
            .and_then(|n| n.trim().parse().ok())
        else {
            continue;
        };
        let _ = writeln!(out, "done {}", churn(bytes));
        let _ = out.flush();
    }
}
