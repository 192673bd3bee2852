//! Accuracy workload for heapprof: the sites of `sites.rs`, their exact
//! truth, and heapprof's estimates for them. Run with
//! `HEAPPROF_SAMPLE_RATE` and `HEAPPROF_SEED`; prints one line per site:
//! `SITE <name> <alloc_truth> <alloc_est> <inuse_truth> <inuse_est>`.

use std::hint::black_box;

mod sites;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

fn main() {
    let (kept, truth) = sites::run_all();
    let snap = heapprof::snapshot();
    let mut est = [(0i64, 0i64); 6];
    for site in snap.sites() {
        let which = site
            .frames()
            .iter()
            .find_map(|f| sites::site_of(&f.function));
        if let Some(i) = which {
            est[i].0 += site.alloc_bytes;
            est[i].1 += site.inuse_bytes;
        }
    }
    println!("rate {}", snap.sample_rate());
    for ((name, t), e) in sites::SITES.iter().zip(truth).zip(est) {
        println!("SITE {name} {} {} {} {}", t.0, e.0, t.1, e.1);
    }
    black_box(&kept);
}
