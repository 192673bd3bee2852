//! dhat-rs: records every allocation (with its backtrace) while a
//! `dhat::Profiler` is alive. Wraps the system allocator.
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let out = std::env::temp_dir().join(format!("heapprof-bench-dhat-{}.json", std::process::id()));
    let profiler = dhat::Profiler::builder().file_name(&out).build();
    workload::main();
    drop(profiler);
    let _ = std::fs::remove_file(out);
}
