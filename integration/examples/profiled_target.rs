//! A Rust service profiled by heapprof (wrapping jemalloc) that allocates on
//! command, for checking the profiler's estimates against uprobes.
//!
//! It serves `GET /debug/pprof/heap` itself on `127.0.0.1:0` with a few
//! lines of `std::net` and writes the discovery file (`<dir>/<pid>.json`,
//! dir per `heapprof_cli::discovery::dir`), so the test depends only on the
//! core crate; a real service would use heapprof-http.
//!
//! Prints `listening on http://ADDR`; stdin commands:
//! - `grow BYTES`: keeps BYTES more in 4 KiB buffers and allocates and
//!   frees as many again; prints `done KEPT_TOTAL`;
//! - anything else or EOF: exits.

use std::hint::black_box;
use std::io::{BufRead, Read, Write};
use std::net::TcpListener;

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

fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut req = [0u8; 2048];
        let n = conn.read(&mut req).unwrap_or(0);
        let head = String::from_utf8_lossy(&req[..n]);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = if path.starts_with("/debug/pprof/heap") {
            ("200 OK", heapprof::snapshot().to_pprof())
        } else {
            ("404 Not Found", b"not found".to_vec())
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(&body);
    }
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dir = heapprof::sys::discovery::dir();
    let file = heapprof::sys::discovery::announce(&dir, addr).expect("discovery");
    // Symbolize once now, so the profile requests made while probes are
    // attached do not load debug info inside the window.
    black_box(heapprof::snapshot().to_pprof());
    std::thread::spawn(move || serve(listener));

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
    let _ = std::fs::remove_file(file);
}
