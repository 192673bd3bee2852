//! Accuracy of heapprof's per-site estimates against exact truth.
//!
//! `cargo bench --bench accuracy` (`HEAPPROF_BENCH_QUICK=1`: 3 seeds
//! instead of 10).
//!
//! Runs `benches/programs/src/accuracy.rs` (six call sites with known sizes:
//! 4 KiB buffers, 64 B objects, 16 B-8 KiB objects, 1 KiB objects half
//! freed, 100 KiB objects, 256 MiB of 16 B-64 KiB churn) for each rate and
//! `HEAPPROF_SEED=1..=N`, and prints, per rate and metric, the distribution
//! of the relative error |estimate / truth - 1| over sites x seeds (median,
//! p90, max) and the mean signed error (bias). In-use errors leave out the
//! churn site (its truth is 0; its absolute in-use estimate is printed).
//!
//! The same for jemalloc's own profiler (`accuracy-jemalloc`, built with
//! jemalloc's profiling, `_RJEM_MALLOC_CONF=lg_prof_sample:N`, the dump
//! unbiased as jeprof does), over N unseeded runs. jemalloc counts size-class
//! bytes, not requested bytes, so its error is also given over the three
//! sites whose request is exactly a size class (4 KiB, 64 B, 1 KiB):
//! `exact-class` rows.

#[path = "support/mod.rs"]
mod support;

use support::{build_programs, median, percentile, program, quick};

const RATES: [u64; 3] = [4096, 65536, 524288];

struct SiteResult {
    name: String,
    alloc_truth: f64,
    alloc_est: f64,
    inuse_truth: f64,
    inuse_est: f64,
}

/// Sites whose requested size is exactly a jemalloc size class.
const EXACT_CLASS: [&str; 3] = ["site_buffers_4k", "site_small_64", "site_half_freed"];

fn main() {
    let seeds = if quick() { 3 } else { 10 };
    let programs = build_programs(true, false);
    let heapprof_bin = programs.plain.join("accuracy");
    let jemalloc_bin = programs.prof.as_ref().map(|d| d.join("accuracy-jemalloc"));
    let run_heapprof = |rate: u64, seed: u64| {
        program(
            &heapprof_bin,
            &[
                ("HEAPPROF_SAMPLE_RATE", &rate.to_string()),
                ("HEAPPROF_SEED", &seed.to_string()),
            ],
        )
        .output()
    };
    report("heapprof", seeds, run_heapprof, false);
    match &jemalloc_bin {
        Ok(bin) => {
            let run_jemalloc = |rate: u64, _seed: u64| {
                let conf = format!("lg_prof_sample:{}", rate.trailing_zeros());
                program(bin, &[("_RJEM_MALLOC_CONF", &conf)]).output()
            };
            report("jemalloc-prof", seeds, run_jemalloc, true);
        }
        Err(e) => println!("jemalloc-prof: unavailable ({e})"),
    }
}

fn report(
    who: &str,
    seeds: u64,
    run: impl Fn(u64, u64) -> std::io::Result<std::process::Output>,
    exact_class_rows: bool,
) {
    println!(
        "{who}: per-site relative error |estimate/truth - 1| over sites x runs, {seeds} runs per rate"
    );
    println!(
        "{:>8} {:<11} {:>8} {:>8} {:>8} {:>9}",
        "rate", "metric", "median", "p90", "max", "mean bias"
    );
    let mut per_site = Vec::new();
    for rate in RATES {
        let mut alloc_err = Vec::new();
        let mut inuse_err = Vec::new();
        let mut churn_inuse = Vec::new();
        let mut exact_err = Vec::new();
        for seed in 1..=seeds {
            let out = run(rate, seed).expect("run the accuracy program");
            assert!(out.status.success(), "accuracy program failed: {out:?}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            for site in parse(&stdout) {
                let a = site.alloc_est / site.alloc_truth - 1.0;
                alloc_err.push(a);
                per_site.push((rate, site.name.clone(), "alloc", a));
                if site.inuse_truth > 0.0 {
                    let i = site.inuse_est / site.inuse_truth - 1.0;
                    inuse_err.push(i);
                    if EXACT_CLASS.contains(&site.name.as_str()) {
                        exact_err.push(i);
                        exact_err.push(a);
                    }
                    per_site.push((rate, site.name.clone(), "inuse", i));
                } else {
                    churn_inuse.push(site.inuse_est);
                }
            }
        }
        let mut rows = vec![("alloc", &alloc_err), ("inuse", &inuse_err)];
        if exact_class_rows {
            rows.push(("exact-class", &exact_err));
        }
        for (metric, errs) in rows {
            let abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
            println!(
                "{rate:>8} {metric:<11} {:>7.2}% {:>7.2}% {:>7.2}% {:>+8.2}%",
                median(&abs) * 100.0,
                percentile(&abs, 0.9) * 100.0,
                percentile(&abs, 1.0) * 100.0,
                errs.iter().sum::<f64>() / errs.len() as f64 * 100.0
            );
        }
        println!(
            "{rate:>8} churn in-use estimate (truth 0): max {:.0} B",
            churn_inuse.iter().fold(0f64, |m, v| m.max(v.abs()))
        );
    }
    println!("{who} per site: median |error| over runs");
    let mut names: Vec<&str> = per_site.iter().map(|s| s.1.as_str()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    for name in names {
        for metric in ["alloc", "inuse"] {
            let cells: Vec<String> = RATES
                .iter()
                .map(|&r| {
                    let v: Vec<f64> = per_site
                        .iter()
                        .filter(|s| s.0 == r && s.1 == name && s.2 == metric)
                        .map(|s| s.3.abs())
                        .collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:.2}%", median(&v) * 100.0)
                    }
                })
                .collect();
            if cells.iter().any(|c| c != "-") {
                println!(
                    "  {name:<18} {metric:<6} rates {RATES:?}: {}",
                    cells.join("  ")
                );
            }
        }
    }
}

fn parse(stdout: &str) -> Vec<SiteResult> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("SITE "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| f[i].parse::<f64>().expect("number");
            SiteResult {
                name: f[0].to_string(),
                alloc_truth: n(1),
                alloc_est: n(2),
                inuse_truth: n(3),
                inuse_est: n(4),
            }
        })
        .collect()
}
