//! The crates.io crate `pprof-alloc` (0.6), its wrapper sampler over
//! jemalloc at 512 KiB (run with `PPROF_ALLOC_BACKEND=wrapper`; without it
//! the crate hands profiling to jemalloc's native profiler instead). Stack
//! capture: its default `frame-pointer` feature.
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: pprof_alloc::PprofAlloc = pprof_alloc::PprofAlloc::new()
    .with_default(pprof_alloc::Allocator::Jemalloc)
    .with_pprof_sample_rate(512 * 1024);

fn main() {
    workload::main();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        let s = pprof_alloc::snapshot();
        eprintln!("pprof-alloc mode={:?} pprof={:?}", s.capture_mode, s.pprof);
    }
}
