//! The workloads every configuration runs, shared by the `[[bin]]`s via
//! `#[path = "workload.rs"] mod workload;`.
//!
//! `<bin> <workload> <ops>` runs a warm-up (`ops / 10` operations, repeated
//! until 100 ms have passed), then `ops` timed operations, and prints
//! `ns_per_op <f64>`. All allocations go through the binary's
//! `#[global_allocator]`.
//!
//! - `small16`: one op = allocate a 16-byte box, write it, free it.
//! - `mixed`: one op = one allocation from the service-like distribution
//!   below, filled (memset of every byte) and read back (one load per
//!   64-byte line), then kept: 95% go to a 16-deep window of request-scoped
//!   objects (freed 16 ops later), 5% replace a random slot of a
//!   4096-slot cache (long-lived: ~82k ops on average, ~10 MB resident).
//!   Sizes: 50% 16-128 B, 30% 128 B-1 KiB, 14% 1-8 KiB, 5% 8-32 KiB,
//!   1% 32-64 KiB, uniform inside each band; mean ~2.4 KiB.
//! - `mixed-2t`: `mixed` on 2 threads at once, each doing `ops` ops; the
//!   figure is wall time / `ops` (one thread's op latency under contention),
//!   and it also prints `cpu_ns_per_op <f64>`: the threads' CPU time per op,
//!   which a thread preempted by another process does not inflate.
//! - `realloc`: one op = grow a `Vec<u8>` from empty to a uniform
//!   64 B-16 KiB by `extend_from_slice` of 64-byte chunks (doubling growth:
//!   ~6-11 reallocs per op), then drop it.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

pub fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(workload), Some(ops)) = (args.next(), args.next().and_then(|o| o.parse().ok()))
    else {
        eprintln!("usage: <bin> small16|mixed|mixed-2t|realloc <ops>");
        std::process::exit(2);
    };
    let ns = match workload.as_str() {
        "small16" => timed(ops, small16),
        "mixed" => timed(ops, |n| {
            black_box(Mixed::new(1).run(n));
        }),
        "mixed-2t" => {
            let (wall, cpu) = mixed_threads(ops, 2);
            println!("cpu_ns_per_op {cpu:.3}");
            wall
        }
        "realloc" => timed(ops, realloc),
        w => {
            eprintln!("unknown workload {w}");
            std::process::exit(2);
        }
    };
    println!("ns_per_op {ns:.3}");
}

fn timed(ops: u64, f: impl Fn(u64)) -> f64 {
    warm_up(ops, &f);
    let start = Instant::now();
    f(ops);
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn small16(ops: u64) {
    for i in 0..ops {
        let mut b = black_box(Box::new([0u8; 16]));
        b[(i & 15) as usize] = i as u8;
        black_box(&b);
    }
}

/// The warm-up: `ops / 10` operations, repeated until [`WARM_UP`] has
/// passed.
fn warm_up(ops: u64, mut f: impl FnMut(u64)) {
    let start = Instant::now();
    loop {
        f(ops / 10);
        if start.elapsed() >= WARM_UP {
            return;
        }
    }
}

/// The shortest warm-up: long enough that what a configuration does once
/// per process (heapprof builds its unwind tables on a thread of its own,
/// 3-7 ms, or longer with every vCPU busy) is over before the timed
/// operations start.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(100);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> usize {
        (lo + self.next() % (hi - lo)) as usize
    }
}

/// The `mixed` distribution (see the module docs).
fn mixed_size(rng: &mut Rng) -> usize {
    match rng.next() % 100 {
        0..50 => rng.range(16, 128),
        50..80 => rng.range(128, 1024),
        80..94 => rng.range(1024, 8 * 1024),
        94..99 => rng.range(8 * 1024, 32 * 1024),
        _ => rng.range(32 * 1024, 64 * 1024 + 1),
    }
}

struct Mixed {
    rng: Rng,
    window: VecDeque<Vec<u8>>,
    cache: Vec<Vec<u8>>,
}

const WINDOW: usize = 16;
const CACHE_SLOTS: usize = 4096;

impl Mixed {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            window: VecDeque::with_capacity(WINDOW + 1),
            cache: (0..CACHE_SLOTS).map(|_| Vec::new()).collect(),
        }
    }

    fn run(&mut self, ops: u64) -> u64 {
        let mut sum = 0u64;
        for i in 0..ops {
            let size = mixed_size(&mut self.rng);
            let mut block = Vec::<u8>::with_capacity(size);
            // Write every byte, read one byte per cache line.
            block.resize(size, i as u8);
            let block = black_box(block);
            sum = sum.wrapping_add(block.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>());
            if self.rng.next() % 100 < 5 {
                let slot = self.rng.range(0, CACHE_SLOTS as u64);
                self.cache[slot] = block; // frees the slot's old object
            } else {
                self.window.push_back(block);
                if self.window.len() > WINDOW {
                    self.window.pop_front();
                }
            }
        }
        sum
    }
}

/// `mixed` on `threads` threads: wall time per op (from the first thread's
/// start to the last one's end: one thread's op latency under contention)
/// and the threads' CPU time per op (their mean).
///
/// Each worker reads the clocks itself. A coordinating thread that timed
/// the run between two barriers would be a third runnable thread on a
/// 2-vCPU machine: woken by the barrier that starts the run, it can wait a
/// whole time slice for a CPU and then read a start time that is too late,
/// which made single runs up to 2x too fast.
fn mixed_threads(ops: u64, threads: u64) -> (f64, f64) {
    let barrier = std::sync::Barrier::new(threads as usize);
    let runs: Vec<(Instant, Instant, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut m = Mixed::new(t + 1);
                    warm_up(ops, |n| {
                        black_box(m.run(n));
                    });
                    barrier.wait();
                    let (start, cpu) = (Instant::now(), thread_cpu_ns());
                    black_box(m.run(ops));
                    (start, Instant::now(), thread_cpu_ns() - cpu)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let start = runs.iter().map(|r| r.0).min().expect("at least one thread");
    let end = runs.iter().map(|r| r.1).max().expect("at least one thread");
    let cpu: u64 = runs.iter().map(|r| r.2).sum();
    (
        (end - start).as_nanos() as f64 / ops as f64,
        cpu as f64 / (ops * threads) as f64,
    )
}

/// The calling thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant
    // the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn realloc(ops: u64) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let chunk = [7u8; 64];
    for _ in 0..ops {
        let target = rng.range(64, 16 * 1024 + 1);
        let mut v = Vec::new();
        while v.len() < target {
            v.extend_from_slice(&chunk);
        }
        black_box(&v);
    }
}
