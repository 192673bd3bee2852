//! The unwind-table capture allocates nothing: at rate 1 under
//! `HEAPPROF_UNWIND=table` every allocation still reaches the inner
//! allocator exactly once, and a capture by itself reaches it zero times
//! (pprof-rs's test_no_alloc_during_unwind). A `fork` child inherits the
//! tables, captures with them, and gets a builder thread of its own.
//!
//! The unwinder is chosen at the first sample, so the test runs itself
//! again in a child process with `HEAPPROF_UNWIND=table` set from the start.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heapprof::stack_hooks::{self, Method};

struct Counting;

static INNER_ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to System unchanged, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INNER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: caller's contract forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: caller's contract forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Counting> = heapprof::Profiler::new(Counting);

/// Set in the child process that runs the checks.
const CHILD: &str = "HEAPPROF_TABLE_HOT_PATH_CHILD";
const WAIT: Duration = Duration::from_secs(20);

/// Inner allocations made while allocating `n` boxes from one call site.
#[inline(never)]
fn inner_allocs_for(n: usize) -> usize {
    let before = INNER_ALLOCS.load(Ordering::Relaxed);
    for i in 0..n {
        black_box(Box::new(i));
    }
    INNER_ALLOCS.load(Ordering::Relaxed) - before
}

/// Inner allocations made by `n` table captures, which must all succeed.
#[inline(never)]
fn inner_allocs_for_captures(n: usize) -> usize {
    let mut buf = [0usize; 64];
    let before = INNER_ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        let depth = stack_hooks::capture(Method::Table, &mut buf).expect("table capture");
        black_box(depth);
    }
    INNER_ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn table_captures_allocate_nothing_and_work_after_fork() {
    if std::env::var_os(CHILD).is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "table_captures_allocate_nothing_and_work_after_fork",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("HEAPPROF_UNWIND", "table")
            .env("HEAPPROF_SAMPLE_RATE", "0")
            .output()
            .expect("run the child");
        assert!(
            out.status.success(),
            "child failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }

    let tables = stack_hooks::wait_for_tables(None, WAIT).expect("unwind tables");
    heapprof::set_sample_rate(1);
    // Warm up: this thread's stack bounds, the call site, the rule cache.
    inner_allocs_for(10);
    inner_allocs_for_captures(10);
    let fallbacks = heapprof::stats().unwind_table_fallbacks;

    // Every allocation sampled, and still exactly one inner allocation
    // each: capture, site lookup and bookkeeping allocate nothing.
    assert_eq!(inner_allocs_for(2_000), 2_000);
    assert_eq!(heapprof::unwinder(), heapprof::Unwinder::Table);
    assert_eq!(
        heapprof::stats().unwind_table_fallbacks,
        fallbacks,
        "samples went to libgcc"
    );
    // The capture alone: nothing.
    assert_eq!(inner_allocs_for_captures(10_000), 0);

    // SAFETY: the child only allocates, captures and waits for the unwind
    // builder, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let exact = inner_allocs_for(500) == 500;
        let captured = inner_allocs_for_captures(1_000) == 0;
        let unchanged = heapprof::stats().unwind_table_fallbacks == fallbacks;
        // The builder thread did not survive the fork: asking for a rescan
        // starts one in the child, which publishes a newer set.
        let rebuilt = stack_hooks::wait_for_tables(Some(tables.generation), WAIT).is_some();
        let code = i32::from(!exact)
            | i32::from(!captured) << 1
            | i32::from(!unchanged) << 2
            | i32::from(!rebuilt) << 3;
        // SAFETY: leaves the child without running the harness or atexit
        // handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "bits: 1 inner allocations, 2 capture allocated, 4 fallbacks, 8 no builder in the child"
    );
}
