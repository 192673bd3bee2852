//! The profile-memory bench's service (`service`) profiled by heapprof,
//! with heapprof-http's endpoint.

mod service;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

fn main() {
    let heap = service::build_heap();
    #[cfg(feature = "large")]
    std::hint::black_box(service::use_large_dependencies());
    service::busy_threads();
    let addr = heapprof_http::spawn("127.0.0.1:0").expect("serve heapprof-http");
    println!("listening on http://{addr}");
    loop {
        std::thread::park();
        std::hint::black_box(&heap);
    }
}
