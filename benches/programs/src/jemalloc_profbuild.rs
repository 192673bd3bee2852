//! Plain jemalloc from the `prof` build: profiling compiled in, inactive
//! (shows what the `profiling` feature alone costs, next to jemalloc-prof
//! and pprof-alloc, which need it).
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    workload::main();
}
