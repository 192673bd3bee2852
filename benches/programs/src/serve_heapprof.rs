//! The profile-memory bench's service (`service`) profiled by heapprof,
//! with heapprof-http's endpoint.
//!
//! With `SERVE_GUARD_DIR=DIR`, the service also runs heapprof's OOM guard
//! (dumps into DIR, no reserve, memory read every 10 ms). Once its unwind
//! tables are built and two more seconds have passed, it prints `guard
//! starting` on stdout, waits a second, and starts the guard with an
//! absolute limit of its RSS / 0.85, so that the 80% threshold is already
//! crossed at the guard's first reading: one dump, at a moment the bench
//! knows, of the same heap the bench's heap requests profile.

mod service;

use std::time::Duration;

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
    let _guard = std::env::var_os("SERVE_GUARD_DIR").map(|dir| {
        // Settled first: the unwind tables are built on a thread of their
        // own after start-up.
        let tables = heapprof::stack_hooks::wait_for_tables(None, Duration::from_secs(60))
            .expect("unwind tables");
        println!("unwind tables: {} bytes", tables.mapped_bytes);
        std::thread::sleep(Duration::from_secs(2));
        println!("guard starting");
        std::thread::sleep(Duration::from_secs(1));
        let rss = heapprof::sys::procfs::self_status().vm_rss;
        heapprof::OomGuardConfig::new(dir)
            .limit_bytes((rss as f64 / 0.85) as u64)
            .thresholds(&[0.8])
            .reserve_bytes(0)
            .interval(Duration::from_millis(10))
            .start()
            .expect("start the OOM guard")
    });
    loop {
        std::thread::park();
        std::hint::black_box(&heap);
    }
}
