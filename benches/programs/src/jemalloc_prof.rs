//! jemalloc's own heap profiler, configured as jemalloc_pprof users do:
//! `prof:true,prof_active:true,lg_prof_sample:19` (one sample per 512 KiB
//! on average). tikv-jemalloc-sys builds jemalloc with the `_rjem_` prefix,
//! so its `malloc_conf` symbol is `_rjem_malloc_conf` (the environment
//! variable would be `_RJEM_MALLOC_CONF`).
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `const char *malloc_conf`, read by jemalloc at initialisation.
#[repr(transparent)]
pub struct ConfPtr(*const u8);
// SAFETY: points to an immutable static string.
unsafe impl Sync for ConfPtr {}

#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: ConfPtr = ConfPtr(
    c"prof:true,prof_active:true,lg_prof_sample:19"
        .as_ptr()
        .cast(),
);

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
