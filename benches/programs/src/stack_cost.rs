//! Nanoseconds per captured stack, per unwinder, for `cargo bench --bench
//! stack_cost` (which builds this without and with frame pointers).
//!
//! `stack-cost [LEVELS]` captures, at the bottom of a chain of LEVELS
//! (default 20) calls through ten distinct functions plus `main` and the
//! runtime's frames, one stack at a time with each unwinder: frame
//! pointers, heapprof's unwind table (with and without its rule cache),
//! libgcc's `_Unwind_Backtrace` (what heapprof's `dwarf` uses), the
//! backtrace crate's `Backtrace::new_unresolved()` and framehop (samply's
//! unwinder, `framehop_capture.rs`; it prints `FRAMEHOP setup_ms=..
//! modules=.. anon_kept_kib=.. anon_peak_kib=..` and `FRAMEHOP
//! same_as_table=N of=M`, how many of its frames are the table's). For
//! each it prints
//!
//! ```text
//! RESULT method=M state=S p50_ns=X p99_ns=Y frames=F
//! ```
//!
//! `state`: `first` (the very first capture with M in this process, one
//! sample: it pays one-time costs such as page faults on the unwinder's
//! code and data), `warm` (captures back to back, 5000 samples),
//! `evicted-l2` (4 MiB swept before each capture, twice the L1 and L2
//! caches of the machines the benchmark runs on, while most of the last
//! level stays: what a sample costs when the program did other work since
//! the last one) and `evicted-all` (64 MiB swept, twice the last-level
//! cache: everything, the stack included, comes from memory), 300 samples
//! each. Times are from the TSC, calibrated against the monotonic clock.
//!
//! Before any capture it waits for the unwind tables and prints
//! `TABLES build_ms=.. bytes=.. rows=.. modules=.. anon_kept_kib=..
//! anon_peak_kib=..` and one `MODULE name=.. fdes=.. rows=..
//! unsupported_rows=.. bytes=..` each. `anon_kept_kib` is how much the
//! process's `RssAnon` grew over the build (the tables, and whatever the
//! build left behind), `anon_peak_kib` how much its `VmHWM` did (the
//! build's peak, an upper bound: `VmHWM` counts file pages too).
//! `stack-cost LEVELS LIBRARY` then loads LIBRARY with `dlopen`, waits for
//! the rescan and prints `DLOPEN build_ms=.. anon_kept_kib=..
//! anon_peak_kib=.. rss_anon_peak_kib=.. deferred=..` (for the rescan;
//! `rss_anon_peak_kib`: the rise of `RssAnon`, read every millisecond
//! while it runs; `deferred`: modules left
//! without a table for lack of memory, see `heapprof::Stats`) and the
//! library's `MODULE` line (none if it was deferred).

use std::hint::black_box;
use std::time::Duration;

use heapprof::stack_hooks::{self, Method};
use timing::{evict, report, ticks, ticks_per_ns};

#[path = "timing.rs"]
mod timing;

#[path = "framehop_capture.rs"]
mod framehop_capture;

thread_local! {
    /// framehop's unwinder and cache for the main thread (`main` sets it
    /// up once the unwind tables are built).
    static FRAMEHOP: std::cell::RefCell<Option<framehop_capture::Framehop>> =
        const { std::cell::RefCell::new(None) };
}

type Step = fn(u32, u32, &mut dyn FnMut());

macro_rules! steps {
    ($($name:ident = $salt:literal),*) => {
        $(
            // Distinct bodies (the salt), or rustc's function merging
            // folds the ten into one.
            #[inline(never)]
            fn $name(path: u32, level: u32, bottom: &mut dyn FnMut()) {
                if level == 0 {
                    bottom();
                } else {
                    STEPS[(path % 10) as usize](path / 10 + $salt, level - 1, bottom);
                }
                black_box(level);
            }
        )*
        static STEPS: [Step; 10] = [$($name),*];
    };
}

steps!(
    s0 = 0,
    s1 = 1,
    s2 = 2,
    s3 = 3,
    s4 = 4,
    s5 = 5,
    s6 = 6,
    s7 = 7,
    s8 = 8,
    s9 = 9
);

#[derive(Clone, Copy)]
enum Unwinder {
    Hook(Method),
    NewUnresolved,
    Framehop,
}

impl Unwinder {
    fn name(self) -> &'static str {
        match self {
            Unwinder::Hook(Method::FramePointers) => "frame-pointers",
            Unwinder::Hook(Method::Table) => "table",
            Unwinder::Hook(Method::TableUncached) => "table-no-rule-cache",
            Unwinder::Hook(Method::Libgcc) => "libgcc",
            Unwinder::NewUnresolved => "backtrace-new-unresolved",
            Unwinder::Framehop => "framehop",
        }
    }

    /// Captures once; returns the frames captured.
    #[inline(never)]
    fn capture(self, buf: &mut [usize]) -> usize {
        match self {
            Unwinder::Hook(m) => stack_hooks::capture(m, buf).unwrap_or(0),
            Unwinder::NewUnresolved => black_box(backtrace::Backtrace::new_unresolved())
                .frames()
                .len(),
            Unwinder::Framehop => {
                FRAMEHOP.with_borrow_mut(|f| f.as_mut().expect("framehop set up").capture(buf))
            }
        }
    }
}

fn print_module(m: &stack_hooks::ModuleSummary) {
    let name = if m.name.is_empty() {
        "(executable)"
    } else {
        &m.name
    };
    println!(
        "MODULE name={name} fdes={} rows={} unsupported_rows={} bytes={}",
        m.fdes, m.rows, m.unsupported_rows, m.bytes
    );
}

/// `same_as_table=N of=M`: how many of framehop's frames, outermost
/// first, are the table's (the innermost one or two are each unwinder's
/// own capture function).
#[inline(never)]
fn same_frames() -> String {
    let (mut table, mut framehop) = (vec![0usize; 256], vec![0usize; 256]);
    let t = Unwinder::Hook(Method::Table).capture(&mut table);
    let f = Unwinder::Framehop.capture(&mut framehop);
    let same = table[..t]
        .iter()
        .rev()
        .zip(framehop[..f].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    format!("same_as_table={same} of={f}")
}

/// Loads `library` and reports what the rescan built for it.
fn load(library: &str, generation: u32, build_ns: u64) {
    let path = std::ffi::CString::new(library).expect("library path");
    // SAFETY: loads a library without running anything from it but its
    // initialisers; it stays loaded.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {library} failed");
    let before = memory();
    // RssAnon read every millisecond while the rescan runs: VmHWM counts
    // the file pages the build reads too.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (summary, anon_peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(memory().0);
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        });
        let summary = stack_hooks::wait_for_tables(Some(generation), Duration::from_secs(120));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (summary, sampler.join().unwrap())
    });
    let summary = summary.expect("tables after dlopen");
    println!(
        "DLOPEN build_ms={:.2} {} rss_anon_peak_kib={} deferred={}",
        (summary.build_ns - build_ns) as f64 / 1e6,
        grown_since(before),
        anon_peak.saturating_sub(before.0) / 1024,
        heapprof::stats().unwind_tables_deferred
    );
    let file = library.rsplit('/').next().unwrap_or(library);
    summary
        .modules
        .iter()
        .filter(|m| m.name.ends_with(file))
        .for_each(print_module);
}

/// (`RssAnon`, `VmHWM`) of this process, bytes.
fn memory() -> (u64, u64) {
    let status = heapprof::sys::procfs::self_status();
    (status.rss_anon, status.vm_hwm)
}

/// `anon_kept_kib=.. anon_peak_kib=..`: growth since `before` (see the
/// module docs).
fn grown_since(before: (u64, u64)) -> String {
    let after = memory();
    format!(
        "anon_kept_kib={} anon_peak_kib={}",
        after.0.saturating_sub(before.0) / 1024,
        after.1.saturating_sub(before.1) / 1024
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let levels: u32 = args.get(1).map_or(20, |l| l.parse().expect("LEVELS"));
    let before = memory();
    let summary =
        stack_hooks::wait_for_tables(None, Duration::from_secs(30)).expect("unwind tables");
    println!(
        "TABLES build_ms={:.2} bytes={} rows={} modules={} {}",
        summary.build_ns as f64 / 1e6,
        summary.mapped_bytes,
        summary.modules.iter().map(|m| m.rows).sum::<usize>(),
        summary.modules.len(),
        grown_since(before)
    );
    summary.modules.iter().for_each(print_module);
    let before = memory();
    let framehop = framehop_capture::Framehop::new();
    println!(
        "FRAMEHOP setup_ms={:.2} modules={} {}",
        framehop.setup_ns as f64 / 1e6,
        framehop.modules,
        grown_since(before)
    );
    FRAMEHOP.set(Some(framehop));
    let per_ns = ticks_per_ns();
    let mut all = vec![0u8; 64 << 20];
    let mut l2 = vec![0u8; 4 << 20];
    let unwinders = [
        Unwinder::Hook(Method::FramePointers),
        Unwinder::Hook(Method::Table),
        Unwinder::Hook(Method::TableUncached),
        Unwinder::Hook(Method::Libgcc),
        Unwinder::NewUnresolved,
        Unwinder::Framehop,
    ];
    let mut buf = vec![0usize; 256];
    let mut bottom = || {
        for unwinder in unwinders {
            let timed = |buf: &mut [usize]| {
                let t0 = ticks();
                let frames = unwinder.capture(buf);
                let t1 = ticks();
                ((t1 - t0) as f64 / per_ns, frames)
            };
            let (first, frames) = timed(&mut buf);
            report(unwinder.name(), "first", vec![first], frames);
            let warm = (0..5000).map(|_| timed(&mut buf).0).collect();
            report(unwinder.name(), "warm", warm, frames);
            for (state, sweep) in [("evicted-l2", &mut l2), ("evicted-all", &mut all)] {
                let evicted = (0..300)
                    .map(|_| {
                        evict(sweep);
                        timed(&mut buf).0
                    })
                    .collect();
                report(unwinder.name(), state, evicted, frames);
            }
        }
        // After the timings, so that no unwinder's first capture is warmed.
        println!("FRAMEHOP {}", same_frames());
    };
    STEPS[0](1_234_567, levels, &mut bottom);
    if let Some(library) = args.get(2) {
        load(library, summary.generation, summary.build_ns);
    }
}
