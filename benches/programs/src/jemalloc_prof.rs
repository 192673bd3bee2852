//! jemalloc's own heap profiler, configured as jemalloc_pprof users do:
//! `prof:true,prof_active:true,lg_prof_sample:19` (one sample per 512 KiB
//! on average), set through `_rjem_malloc_conf` (`malloc_conf.rs`).
#[path = "workload.rs"]
mod workload;

mod malloc_conf;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

malloc_conf::malloc_conf!(c"prof:true,prof_active:true,lg_prof_sample:19");

fn main() {
    // Refuse to measure a jemalloc whose profiler is not on.
    // SAFETY: "opt.prof" and "prof.active" are bool mallctls.
    let (prof, active, lg) = unsafe {
        (
            tikv_jemalloc_ctl::raw::read::<bool>(b"opt.prof\0").unwrap_or(false),
            tikv_jemalloc_ctl::raw::read::<bool>(b"prof.active\0").unwrap_or(false),
            tikv_jemalloc_ctl::raw::read::<usize>(b"prof.lg_sample\0").unwrap_or(0),
        )
    };
    if !(prof && active && lg == 19) {
        eprintln!(
            "jemalloc-prof: profiling not active (opt.prof={prof} prof.active={active} lg_sample={lg})"
        );
        std::process::exit(3);
    }
    workload::main();
}
