//! The system allocator (glibc malloc).
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;

fn main() {
    workload::main();
}
