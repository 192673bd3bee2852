//! The profile-memory bench's service (`service`) profiled by the peers:
//! jemalloc's profiler through `jemalloc_pprof` for heap profiles
//! (symbolized in process, its `symbolize` feature, so that they name
//! functions as heapprof's do; one sample per 512 KiB like heapprof), and
//! pprof-rs for CPU profiles (100 Hz, as heapprof and Go).

mod malloc_conf;
mod pprof_server;
mod service;

use std::io::Write;
use std::time::Duration;

use pprof::protos::Message;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

malloc_conf::malloc_conf!(c"prof:true,prof_active:true,lg_prof_sample:19");

/// A heap profile, or nothing (an empty answer, which the bench counts as
/// a failure) when jemalloc_pprof fails.
fn heap() -> Vec<u8> {
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .expect("jemalloc profiling");
    ctl.blocking_lock().dump_pprof().unwrap_or_else(|e| {
        eprintln!("dump_pprof failed: {e}");
        Vec::new()
    })
}

fn cpu(window: Duration) -> Vec<u8> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(100)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .expect("pprof-rs");
    std::thread::sleep(window);
    let report = guard.report().build().expect("report");
    drop(guard);
    let raw = report.pprof().expect("pprof").encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).expect("gzip");
    gz.finish().expect("gzip")
}

fn main() {
    let heap_kept = service::build_heap();
    #[cfg(feature = "large")]
    std::hint::black_box(service::use_large_dependencies());
    service::busy_threads();
    std::hint::black_box(&heap_kept);
    pprof_server::serve(heap, cpu);
}
