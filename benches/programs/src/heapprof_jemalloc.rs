//! heapprof over jemalloc; the rate comes from `HEAPPROF_SAMPLE_RATE`
//! (default 512 KiB, 65536 for `heapprof-jemalloc-64k`, 0 for `-off`).
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

fn main() {
    workload::main();
    // After the workload: which unwinder `HEAPPROF_UNWIND=auto` settled on
    // (frame pointers in the `-fp` build, DWARF in the plain one).
    println!("unwinder {}", heapprof::unwinder().as_str());
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        let s = heapprof::stats();
        eprintln!(
            "heapprof rate={} sites={} live_samples={} dropped={} unwind_table_fallbacks={}",
            s.sample_rate, s.sites, s.live_samples, s.dropped_samples, s.unwind_table_fallbacks
        );
    }
}
