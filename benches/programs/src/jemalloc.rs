//! Baseline: plain tikv-jemallocator.
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    workload::main();
}
