//! Cost of producing a profile with N distinct call sites.
//!
//! `profile-cost <N>` (N a power of ten, 10..=1000000) allocates one 64-byte
//! object, kept, from each of N distinct call stacks: a chain of log10(N)
//! calls through ten distinct functions, chosen by the digits of the path
//! number. Run it with `HEAPPROF_SAMPLE_RATE=1 HEAPPROF_MAX_SITES=200000`.
//! Prints `COST <key>=<value> ...` for the first `to_pprof` (symbolizes)
//! and a second one (symbol cache): wall time, jemalloc `stats.allocated`
//! high-water above the level before the call (polled every 200 us from a
//! thread), the VmHWM rise over VmRSS before the call (after resetting
//! VmHWM), bytes written, `Stats::own_memory_bytes` and the site count.

mod cost;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

fn main() {
    cost::run(&|| heapprof::snapshot().to_pprof(), &|| {
        let s = heapprof::stats();
        format!(
            "own_memory_mb={:.1} sites={} symbol_cache_mb={:.1} dropped_samples={} overflowed_samples={}",
            s.own_memory_bytes as f64 / 1048576.0,
            s.sites,
            s.symbol_cache_bytes as f64 / 1048576.0,
            s.dropped_samples,
            s.overflowed_samples,
        )
    });
}
