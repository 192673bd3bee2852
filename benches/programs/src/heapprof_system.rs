//! heapprof over the system allocator, default rate (512 KiB).
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: heapprof::Profiler<std::alloc::System> = heapprof::Profiler::new(std::alloc::System);

fn main() {
    workload::main();
    println!("unwinder {}", heapprof::unwinder().as_str());
}
