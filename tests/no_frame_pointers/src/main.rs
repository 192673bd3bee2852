//! Stacks of several shapes, unwound by heapprof's unwind table and by
//! libgcc, in a program built without frame pointers (tests/unwinder.rs
//! builds and runs it).
//!
//! ```text
//! stack-check compare
//! stack-check profile OUT
//! stack-check tight
//! ```
//! - `compare`: captures each shape's stack with the table and with
//!   libgcc (`heapprof::stack_hooks`) on the main thread, on spawned
//!   threads, through C library frames (`qsort`) and in signal handlers,
//!   synchronous and interrupting a spinning thread at any instruction;
//!   prints `compared N differed D fell_back F signal_fell_back S` (S:
//!   interrupted instructions the table declines) and the first
//!   difference.
//! - `profile OUT`: as a program profiled by heapprof (run it with
//!   `HEAPPROF_SAMPLE_RATE=1`), waits for the unwind tables, allocates from
//!   the same shapes on the main thread and on spawned threads, writes the
//!   heap profile to OUT and prints `unwinder NAME fallbacks N` (N: samples
//!   of the workload the table handed to libgcc).
//! - `tight`: run inside a memory cgroup with a limit, at
//!   `HEAPPROF_SAMPLE_RATE=0`: fills the cgroup to 5 MiB below its limit
//!   (outside the allocator), then samples at rate 1, so that the unwind
//!   tables are built with no room for them, and prints
//!   `tight deferred D tables T fallbacks F ...`; keeps sampling 11 s (one
//!   retry) and prints `still deferred D generation_before G ...`; then
//!   frees that memory, keeps sampling until the tables are built (at most
//!   30 s), and prints `roomy deferred D tables T waited_ms W`.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use heapprof::stack_hooks::{self, Method};

#[global_allocator]
static ALLOC: heapprof::Profiler<std::alloc::System> = heapprof::Profiler::new(std::alloc::System);

const DEPTH: usize = 256;

/// What the shapes do at the bottom of their stacks.
type Leaf<'a> = &'a (dyn Fn() + Sync);

/// Three frame shapes in turn: plain, a large frame, inlined callees.
#[inline(never)]
fn descend(depth: usize, leaf: Leaf) {
    match depth % 3 {
        _ if depth == 0 => leaf(),
        0 => descend(depth - 1, leaf),
        1 => with_large_frame(depth, leaf),
        _ => inlined_outer(depth, leaf),
    }
    black_box(depth);
}

#[inline(never)]
fn with_large_frame(depth: usize, leaf: Leaf) {
    let mut big = [0u8; 6000];
    black_box(&mut big);
    descend(depth - 1, leaf);
    black_box(&big);
}

#[inline(always)]
fn inlined_outer(depth: usize, leaf: Leaf) {
    inlined_inner(depth, leaf);
    black_box(depth + 1);
}

#[inline(always)]
fn inlined_inner(depth: usize, leaf: Leaf) {
    descend(depth - 1, leaf);
    black_box(depth + 2);
}

/// Closures through an iterator chain.
#[inline(never)]
fn through_iterators(leaf: Leaf) {
    (0..3)
        .map(|i| i * 2)
        .filter(|i| black_box(*i) % 4 == 0)
        .for_each(|_| leaf());
}

trait Shape {
    fn run(&self, leaf: Leaf);
}

struct Dynamic;

impl Shape for Dynamic {
    #[inline(never)]
    fn run(&self, leaf: Leaf) {
        descend(4, leaf);
    }
}

/// Through the C library: qsort calls back into Rust.
#[inline(never)]
fn through_qsort(leaf: Leaf) {
    thread_local! {
        /// The leaf of this thread's sort, as the address of a `Leaf`.
        static LEAF: Cell<usize> = const { Cell::new(0) };
        static CALLS: Cell<usize> = const { Cell::new(0) };
    }
    extern "C" fn compare(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
        let calls = CALLS.replace(CALLS.get() + 1);
        if calls.is_multiple_of(16) {
            // SAFETY: LEAF holds the address of the `Leaf` below, which
            // outlives this thread's qsort call.
            let leaf: &Leaf = unsafe { &*(LEAF.get() as *const Leaf) };
            leaf();
        }
        // SAFETY: qsort passes pointers to two u32 elements.
        let (a, b) = unsafe { (*a.cast::<u32>(), *b.cast::<u32>()) };
        a.cmp(&b) as libc::c_int
    }
    LEAF.set(&leaf as *const Leaf as usize);
    let mut values: Vec<u32> = (0..64).rev().collect();
    // SAFETY: sorts our own array of 4-byte elements.
    unsafe { libc::qsort(values.as_mut_ptr().cast(), values.len(), 4, Some(compare)) };
    LEAF.set(0);
    black_box(values);
}

/// Every shape, with `leaf` at the bottom. One stack is deeper than the
/// 64 frames heapprof keeps per sample: where such a stack is cut depends
/// on how many of the unwinder's own frames sit on top, so that one is
/// compared in place only.
fn shapes(leaf: Leaf) {
    for depth in [0, 1, 2, 3, 7, 20] {
        descend(depth, leaf);
    }
    if !PROFILING.load(Ordering::Relaxed) {
        descend(90, leaf);
    }
    through_iterators(leaf);
    Dynamic.run(leaf);
    through_qsort(leaf);
}

/// Every shape on this thread and on four spawned threads.
fn shapes_on_threads(leaf: Leaf) {
    shapes(leaf);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| shapes(leaf));
        }
    });
}

// ---- compare ----------------------------------------------------------

static COMPARED: AtomicUsize = AtomicUsize::new(0);
static DIFFERED: AtomicUsize = AtomicUsize::new(0);
static FELL_BACK: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_FELL_BACK: AtomicUsize = AtomicUsize::new(0);
static FIRST_DIFFERENCE: Mutex<Option<String>> = Mutex::new(None);

/// Captures with the table and with libgcc from this one frame.
#[inline(never)]
fn capture_both(
    table: &mut [usize; DEPTH],
    libgcc: &mut [usize; DEPTH],
) -> (Result<usize, &'static str>, usize) {
    let t = stack_hooks::capture(Method::Table, table);
    let l = stack_hooks::capture(Method::Libgcc, libgcc).unwrap_or(0);
    (t, l)
}

/// Compares the two stacks from the caller of `capture_both` outwards:
/// `table[2]` (the two captures return into `capture_both` from different
/// calls) must appear near the top of libgcc's stack, and from there on
/// the two must be equal to the end. Returns a description if not.
fn compare_here_quietly() -> Option<String> {
    let (mut table, mut libgcc) = ([0; DEPTH], [0; DEPTH]);
    let (t, l) = capture_both(&mut table, &mut libgcc);
    let Ok(t) = t else {
        FELL_BACK.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    COMPARED.fetch_add(1, Ordering::Relaxed);
    let (table, libgcc) = (&table[..t], &libgcc[..l]);
    let same = same_stack(table, libgcc);
    (!same).then(|| format!("table  {table:x?}\nlibgcc {libgcc:x?}"))
}

/// The two captures agree from the table's third frame on (their first
/// frames are the capture functions themselves): libgcc's stack, from the
/// same address within its first 12 frames, is the table's.
fn same_stack(table: &[usize], libgcc: &[usize]) -> bool {
    table.get(2).is_some_and(|anchor| {
        libgcc
            .iter()
            .take(12)
            .position(|ip| ip == anchor)
            .is_some_and(|j| table[2..] == libgcc[j..])
    })
}

fn compare_here() {
    if let Some(difference) = compare_here_quietly() {
        DIFFERED.fetch_add(1, Ordering::Relaxed);
        FIRST_DIFFERENCE.lock().unwrap().get_or_insert(difference);
    }
}

/// In a signal handler: no locks, so only counts.
extern "C" fn compare_in_handler(_: libc::c_int) {
    let (mut table, mut libgcc) = ([0; DEPTH], [0; DEPTH]);
    let (t, l) = capture_both(&mut table, &mut libgcc);
    let t = match t {
        Ok(t) => t,
        Err(why) => {
            // The table declines a few interrupted instructions, in PLT
            // stubs (a CFA expression); libgcc answers for those.
            SIGNAL_FELL_BACK.fetch_add(1, Ordering::Relaxed);
            black_box(why);
            return;
        }
    };
    COMPARED.fetch_add(1, Ordering::Relaxed);
    let (table, libgcc) = (&table[..t], &libgcc[..l]);
    let same = same_stack(table, libgcc);
    if !same {
        DIFFERED.fetch_add(1, Ordering::Relaxed);
    }
}

fn compare() {
    stack_hooks::wait_for_tables(None, Duration::from_secs(20)).expect("unwind tables");
    shapes_on_threads(&compare_here);
    // SAFETY: installs an extern "C" handler that only captures and counts.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = compare_in_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    // A signal raised synchronously at the bottom of each shape.
    // SAFETY: raise delivers SIGUSR1 to this thread, whose handler is set.
    shapes(&|| unsafe {
        libc::raise(libc::SIGUSR1);
    });
    // Signals interrupting a thread at any instruction of the shapes.
    let stop = AtomicBool::new(false);
    let spinner = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            spinner.store(unsafe { libc::pthread_self() } as usize, Ordering::Release);
            while !stop.load(Ordering::Relaxed) {
                shapes(&|| {});
            }
        });
        let thread = loop {
            match spinner.load(Ordering::Acquire) {
                0 => std::thread::yield_now(),
                t => break t as libc::pthread_t,
            }
        };
        for _ in 0..2000 {
            // SAFETY: the spinner runs until `stop` is set.
            unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
            std::thread::sleep(Duration::from_micros(100));
        }
        stop.store(true, Ordering::Relaxed);
    });
    println!(
        "compared {} differed {} fell_back {} signal_fell_back {}",
        COMPARED.load(Ordering::Relaxed),
        DIFFERED.load(Ordering::Relaxed),
        FELL_BACK.load(Ordering::Relaxed),
        SIGNAL_FELL_BACK.load(Ordering::Relaxed)
    );
    if let Some(difference) = FIRST_DIFFERENCE.lock().unwrap().take() {
        println!("first difference:\n{difference}");
    }
}

// ---- profile ----------------------------------------------------------

static PROFILING: AtomicBool = AtomicBool::new(false);
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Allocates 100 bytes and keeps them.
#[inline(never)]
fn keep() {
    let block = vec![7u8; 100];
    KEPT.lock().unwrap().push(black_box(block));
}

fn profile(out: &str) {
    // Samples taken before the tables exist use libgcc: wait, so that the
    // profile is the table's.
    stack_hooks::wait_for_tables(None, Duration::from_secs(20)).expect("unwind tables");
    KEPT.lock().unwrap().reserve(10_000);
    PROFILING.store(true, Ordering::Relaxed);
    let before = heapprof::stats().unwind_table_fallbacks;
    shapes_on_threads(&keep);
    let stats = heapprof::stats();
    println!(
        "unwinder {} fallbacks {}",
        stats.unwinder.as_str(),
        stats.unwind_table_fallbacks - before
    );
    std::fs::write(out, heapprof::snapshot().to_pprof()).expect("write the profile");
}

/// Allocates and frees a few blocks: at rate 1, samples that want a stack.
fn sample_a_few() {
    for i in 0..20u8 {
        descend(6, &|| {
            black_box(vec![i; 64]);
        });
    }
}

/// `tight` (see the module docs).
fn tight() {
    let (headroom, limit) = heapprof::headroom().expect("a memory cgroup with a limit");
    // Fill the cgroup to 5 MiB below its limit, inside the margin that
    // admission keeps free (8 MiB under a 512 MiB limit), so that no unwind
    // table fits. The ballast is mapped outside the allocator and written
    // page by page.
    let bytes = headroom.saturating_sub(5 << 20) as usize;
    // SAFETY: a fresh private anonymous mapping, checked for failure; no
    // other code knows its address.
    let ballast = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(ballast, libc::MAP_FAILED, "mmap {bytes} bytes");
    // SAFETY: the mapping is `bytes` long and writable.
    unsafe { std::ptr::write_bytes(ballast.cast::<u8>(), 1, bytes) };
    heapprof::set_sample_rate(1);
    sample_a_few();
    std::thread::sleep(Duration::from_millis(500));
    sample_a_few();
    let stats = heapprof::stats();
    println!(
        "tight deferred {} tables {} fallbacks {} limit_kib {} headroom_kib {}",
        stats.unwind_tables_deferred,
        stats.unwind_table_bytes,
        stats.unwind_table_fallbacks,
        limit >> 10,
        heapprof::headroom().map_or(0, |(h, _)| h >> 10),
    );
    // A retry while memory is still short builds nothing, copies nothing
    // and publishes no new set (every set stays mapped for good).
    let generation =
        || stack_hooks::wait_for_tables(None, Duration::from_secs(1)).map_or(0, |t| t.generation);
    let before = (generation(), heapprof::stats().unwind_table_bytes);
    let waited = std::time::Instant::now();
    while waited.elapsed() < Duration::from_secs(11) {
        sample_a_few();
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = heapprof::stats();
    println!(
        "still deferred {} generation_before {} generation_after {} tables_before {} tables_after {}",
        stats.unwind_tables_deferred,
        before.0,
        generation(),
        before.1,
        stats.unwind_table_bytes,
    );
    // SAFETY: unmaps the ballast mapped above, which nothing refers to.
    unsafe { libc::munmap(ballast, bytes) };
    let started = std::time::Instant::now();
    let stats = loop {
        sample_a_few();
        let stats = heapprof::stats();
        if (stats.unwind_tables_deferred == 0 && stats.unwind_table_bytes > 0)
            || started.elapsed() > Duration::from_secs(30)
        {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "roomy deferred {} tables {} waited_ms {}",
        stats.unwind_tables_deferred,
        stats.unwind_table_bytes,
        started.elapsed().as_millis()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("compare") => compare(),
        Some("profile") => profile(args.get(2).expect("profile OUT")),
        Some("tight") => tight(),
        _ => {
            eprintln!("usage: stack-check compare | profile OUT | tight");
            std::process::exit(2);
        }
    }
}
