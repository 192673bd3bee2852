//! Cost of a profile from jemalloc's profiler through `jemalloc_pprof`
//! (`dump_pprof`: `prof.dump` to a temporary file, parsed, written as
//! unsymbolized pprof with mappings; symbols are resolved later by the
//! reader) with the same N distinct stacks as `profile-cost`, every
//! allocation sampled (`lg_prof_sample:0`).

mod cost;

mod malloc_conf;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

malloc_conf::malloc_conf!(c"prof:true,prof_active:true,lg_prof_sample:0");

fn main() {
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .expect("jemalloc profiling");
    cost::run(
        &|| ctl.blocking_lock().dump_pprof().expect("dump_pprof"),
        &|| String::new(),
    );
}
