//! Accuracy workload for jemalloc's own heap profiler: the sites of
//! `sites.rs` under jemalloc with `prof:true,prof_active:true,
//! prof_accum:true` and the sample rate from `_RJEM_MALLOC_CONF`
//! (`lg_prof_sample:N`, default 19). Dumps the heap profile with the
//! `prof.dump` mallctl, parses it, unbiases each stack as jeprof does for
//! `heap_v2` profiles (scale = 1 / (1 - exp(-avg_size / rate)), avg_size =
//! the stack's sampled bytes / objects), attributes stacks to sites by
//! symbolizing them, and prints the same `SITE` lines as `accuracy`.
//! jemalloc's sampler cannot be seeded: runs differ by its own per-thread
//! seed.

use std::hint::black_box;

mod sites;

mod malloc_conf;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

malloc_conf::malloc_conf!(c"prof:true,prof_active:true,prof_accum:true,lg_prof_sample:19");

fn symbol(addr: usize) -> Option<usize> {
    let mut found = None;
    backtrace::resolve((addr - 1) as *mut std::ffi::c_void, |s| {
        if found.is_none()
            && let Some(name) = s.name()
        {
            found = sites::site_of(&format!("{name:#}"));
        }
    });
    found
}

fn main() {
    let (kept, truth) = sites::run_all();
    // SAFETY: a usize mallctl.
    let lg: usize =
        unsafe { tikv_jemalloc_ctl::raw::read(b"prof.lg_sample\0") }.expect("jemalloc profiling");
    let rate = (1u64 << lg) as f64;
    let path =
        std::env::temp_dir().join(format!("heapprof-acc-jemalloc-{}.heap", std::process::id()));
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: prof.dump takes a `const char *` file name.
    unsafe { tikv_jemalloc_ctl::raw::write(b"prof.dump\0", cpath.as_ptr()) }.expect("prof.dump");
    let dump = std::fs::read_to_string(&path).expect("read the dump");
    let _ = std::fs::remove_file(&path);

    let unbias = |objs: f64, bytes: f64| {
        if objs == 0.0 {
            return 0.0;
        }
        bytes / (1.0 - (-(bytes / objs) / rate).exp())
    };
    let mut est = [(0f64, 0f64); 6];
    let mut site: Option<usize> = None;
    for line in dump.lines() {
        if let Some(stack) = line.strip_prefix("@ ") {
            site = stack
                .split_whitespace()
                .filter_map(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .find_map(symbol);
        } else if let Some(counts) = line.trim_start().strip_prefix("t*: ")
            && let Some(i) = site
        {
            // "<objs>: <bytes> [<accum objs>: <accum bytes>]"
            let nums: Vec<f64> = counts
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            if nums.len() == 4 {
                est[i].1 += unbias(nums[0], nums[1]);
                est[i].0 += unbias(nums[2], nums[3]);
            }
            site = None;
        }
    }
    println!("rate {rate}");
    for ((name, t), e) in sites::SITES.iter().zip(truth).zip(est) {
        println!("SITE {name} {} {:.0} {} {:.0}", t.0, e.0, t.1, e.1);
    }
    black_box(&kept);
}
