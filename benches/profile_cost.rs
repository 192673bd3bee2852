//! Cost of producing a profile with 1k, 10k and 100k call sites.
//!
//! `cargo bench --bench profile_cost` (`HEAPPROF_BENCH_QUICK=1`: one run
//! per size instead of three).
//!
//! Runs `benches/programs/src/profile_cost.rs` with `HEAPPROF_SAMPLE_RATE=1
//! HEAPPROF_MAX_SITES=200000`: it allocates from N distinct call stacks,
//! then times `heapprof::snapshot().to_pprof()` twice (first call
//! symbolizes, second uses the symbol cache) and reports the heap high-water
//! during each call, the VmHWM rise, and `Stats::own_memory_bytes`.
//! Prints the median over the runs of each figure.
//!
//! Then the same for jemalloc's profiler through the `jemalloc_pprof` crate
//! (`profile-cost-jemalloc`, `lg_prof_sample:0` so every allocation is
//! sampled; `dump_pprof` writes unsymbolized addresses and mappings, so its
//! figure excludes symbolization, which the reader of the profile does).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use support::{build_programs, median, program, quick};

fn main() {
    let runs = if quick() { 1 } else { 3 };
    let programs = build_programs(true, false);
    let heapprof = programs.plain.join("profile-cost");
    let jemalloc = programs
        .prof
        .as_ref()
        .map(|d| d.join("profile-cost-jemalloc"));
    measure("heapprof", &heapprof, runs);
    match jemalloc {
        Ok(bin) => measure("jemalloc_pprof", &bin, runs),
        Err(e) => println!("jemalloc_pprof: unavailable ({e})"),
    }
}

fn measure(who: &str, bin: &std::path::Path, runs: usize) {
    for n in [1000u32, 10_000, 100_000] {
        // (call, key) -> values over runs
        let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            let out = program(
                bin,
                &[
                    ("HEAPPROF_SAMPLE_RATE", "1"),
                    ("HEAPPROF_MAX_SITES", "200000"),
                ],
            )
            .arg(n.to_string())
            .output()
            .expect("run profile-cost");
            assert!(out.status.success(), "profile-cost failed: {out:?}");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(rest) = line.strip_prefix("COST ") else {
                    continue;
                };
                let mut call = String::new();
                for kv in rest.split_whitespace() {
                    let Some((k, v)) = kv.split_once('=') else {
                        continue;
                    };
                    if k == "call" {
                        call = v.to_string();
                    } else if let Ok(v) = v.parse() {
                        values
                            .entry((call.clone(), k.to_string()))
                            .or_default()
                            .push(v);
                    }
                }
            }
        }
        for call in ["first", "cached"] {
            let cells: Vec<String> = values
                .iter()
                .filter(|((c, _), _)| c == call)
                .map(|((_, k), v)| format!("{k}={}", trim(median(v))))
                .collect();
            if !cells.is_empty() {
                println!("{who} sites_requested={n} call={call} {}", cells.join(" "));
            }
        }
    }
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
