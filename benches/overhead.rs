//! Overhead of heapprof and its peers, each configuration as its own program
//! (a global allocator is per binary).
//!
//! `cargo bench --bench overhead` (`HEAPPROF_BENCH_QUICK=1` for a short run;
//! `HEAPPROF_BENCH_ONLY=jemalloc,dhat` and `HEAPPROF_BENCH_WORKLOADS=mixed`
//! restrict it; `HEAPPROF_BENCH_ROUNDS=N` runs N rounds instead of 11).
//!
//! Builds `benches/programs` (one `[[bin]]` per configuration, all running
//! the workloads of `benches/programs/src/workload.rs`), then runs the
//! configurations interleaved, one process per measurement, for several
//! rounds, and prints per workload the median ns per operation, the ratio of
//! medians to plain jemalloc, and the median of the per-round ratios (paired,
//! steadier on a loaded machine) and, for heapprof, the unwinder its
//! `HEAPPROF_UNWIND=auto` settled on. The `-fp` configurations are the same
//! programs built with `-C force-frame-pointers=yes`, `jemalloc-fp` their
//! baseline; the others are built without. Last, one line per pair:
//! `RATIO <workload> <configuration> <ratio-to-plain-jemalloc>`.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use support::{build_programs, median, program, quick};

struct Config {
    name: &'static str,
    /// Program path, or why it is unavailable.
    bin: Result<PathBuf, String>,
    env: &'static [(&'static str, &'static str)],
    /// Run `ops / divisor` operations (for configurations ~1000x slower).
    divisor: u64,
}

const WORKLOADS: [(&str, u64); 4] = [
    ("small16", 20_000_000),
    ("mixed", 1_000_000),
    ("mixed-2t", 500_000),
    ("realloc", 200_000),
];

fn main() {
    let quick = quick();
    let only: Option<Vec<String>> = std::env::var("HEAPPROF_BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let wanted =
        |n: &str| n == "jemalloc" || only.as_ref().is_none_or(|o| o.iter().any(|x| x == n));
    let with_prof = [
        "jemalloc-prof",
        "jemalloc-profbuild",
        "pprof-alloc",
        "pprof-alloc-nofp",
    ]
    .iter()
    .any(|n| wanted(n));
    let with_fp = [
        "jemalloc-fp",
        "heapprof-jemalloc-default-fp",
        "heapprof-jemalloc-64k-fp",
        "heapprof-jemalloc-off-fp",
        "heapprof-system-default-fp",
    ]
    .iter()
    .any(|n| wanted(n));
    let programs = build_programs(with_prof, with_fp);
    let plain = |bin: &str| Ok(programs.plain.join(bin));
    let fp = |bin: &str| built(&programs.fp, "frame-pointer", bin);
    let prof = |bin: &str| built(&programs.prof, "prof", bin);
    let prof_fp = |bin: &str| built(&programs.prof_fp, "prof", bin);
    let configs: Vec<Config> = vec![
        Config {
            name: "jemalloc",
            bin: plain("jemalloc"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "system",
            bin: plain("system"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "heapprof-jemalloc-default",
            bin: plain("heapprof-jemalloc"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "heapprof-jemalloc-64k",
            bin: plain("heapprof-jemalloc"),
            env: &[("HEAPPROF_SAMPLE_RATE", "65536")],
            divisor: 1,
        },
        Config {
            name: "heapprof-jemalloc-off",
            bin: plain("heapprof-jemalloc"),
            env: &[("HEAPPROF_SAMPLE_RATE", "0")],
            divisor: 1,
        },
        Config {
            name: "heapprof-system-default",
            bin: plain("heapprof-system"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "jemalloc-fp",
            bin: fp("jemalloc"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "heapprof-jemalloc-default-fp",
            bin: fp("heapprof-jemalloc"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "heapprof-jemalloc-64k-fp",
            bin: fp("heapprof-jemalloc"),
            env: &[("HEAPPROF_SAMPLE_RATE", "65536")],
            divisor: 1,
        },
        Config {
            name: "heapprof-jemalloc-off-fp",
            bin: fp("heapprof-jemalloc"),
            env: &[("HEAPPROF_SAMPLE_RATE", "0")],
            divisor: 1,
        },
        Config {
            name: "heapprof-system-default-fp",
            bin: fp("heapprof-system"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "jemalloc-prof",
            bin: prof("jemalloc-prof"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "jemalloc-profbuild",
            bin: prof("jemalloc-profbuild"),
            env: &[],
            divisor: 1,
        },
        Config {
            name: "pprof-alloc-nofp",
            bin: prof("pprof-alloc"),
            env: &[("PPROF_ALLOC_BACKEND", "wrapper")],
            divisor: 1,
        },
        Config {
            name: "pprof-alloc",
            bin: prof_fp("pprof-alloc"),
            env: &[("PPROF_ALLOC_BACKEND", "wrapper")],
            divisor: 1,
        },
        Config {
            name: "dhat",
            bin: plain("dhat"),
            env: &[],
            divisor: 50,
        },
    ]
    .into_iter()
    .filter(|c| wanted(c.name))
    .collect();
    let workloads: Vec<(&str, u64)> = match std::env::var("HEAPPROF_BENCH_WORKLOADS") {
        Ok(w) => WORKLOADS
            .iter()
            .copied()
            .filter(|(n, _)| w.split(',').any(|x| x == *n))
            .collect(),
        Err(_) => WORKLOADS.to_vec(),
    };
    let (rounds, scale) = if quick { (3, 4) } else { (11, 1) };
    let rounds = std::env::var("HEAPPROF_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rounds);

    // times[w][c] = ns per op of each round; errors[c] = why it failed.
    let mut times = vec![vec![Vec::new(); configs.len()]; workloads.len()];
    let mut errors: Vec<Option<String>> = configs.iter().map(|c| c.bin.clone().err()).collect();
    // What each heapprof program reported; auto settles per binary.
    let mut unwinders: Vec<Option<String>> = vec![None; configs.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (w, (workload, ops)) in workloads.iter().enumerate() {
            for (c, config) in configs.iter().enumerate() {
                if errors[c].is_some() {
                    continue;
                }
                let Ok(bin) = &config.bin else { continue };
                let ops = (ops / scale / config.divisor).to_string();
                match run(bin, config.env, workload, &ops) {
                    Ok((ns, unwinder)) => {
                        times[w][c].push(ns);
                        if unwinder.is_some() {
                            unwinders[c] = unwinder;
                        }
                    }
                    Err(e) => {
                        eprintln!("{} {workload}: {e}", config.name);
                        errors[c] = Some(e);
                    }
                }
            }
        }
    }

    let mut ratio_lines = Vec::new();
    for (w, (workload, _)) in workloads.iter().enumerate() {
        let base = &times[w][0];
        let base_median = median(base);
        println!(
            "workload {workload}: median ns per op over {rounds} interleaved rounds{}",
            if quick { " (quick)" } else { "" }
        );
        println!(
            "  {:<30} {:>10} {:>9} {:>13}  unwinder",
            "configuration", "ns/op", "x jemalloc", "paired ratio"
        );
        for (c, config) in configs.iter().enumerate() {
            if let Some(e) = &errors[c] {
                println!("  {:<30} unavailable: {e}", config.name);
                continue;
            }
            let t = &times[w][c];
            let m = median(t);
            let paired: Vec<f64> = t.iter().zip(base).map(|(a, b)| a / b).collect();
            println!(
                "  {:<30} {m:>10.2} {:>9.3}x {:>12.3}x  {}",
                config.name,
                m / base_median,
                median(&paired),
                unwinders[c].as_deref().unwrap_or("-")
            );
            ratio_lines.push(format!(
                "RATIO {workload} {} {:.4}",
                config.name,
                m / base_median
            ));
        }
    }
    for line in ratio_lines {
        println!("{line}");
    }
}

/// `bin` of a build that may have failed: its path, or why there is none.
fn built(dir: &Result<PathBuf, String>, build: &str, bin: &str) -> Result<PathBuf, String> {
    dir.as_ref()
        .map(|d| d.join(bin))
        .map_err(|e| format!("{build} build failed: {e}"))
}

/// Runs one measurement: ns per operation, and the unwinder a heapprof
/// program reports having used.
fn run(
    bin: &Path,
    env: &[(&str, &str)],
    workload: &str,
    ops: &str,
) -> Result<(f64, Option<String>), String> {
    let out = program(bin, env)
        .args([workload, ops])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let ns = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ns_per_op "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no ns_per_op in output: {stdout}"))?;
    let unwinder = stdout
        .lines()
        .find_map(|l| l.strip_prefix("unwinder "))
        .map(str::to_owned);
    Ok((ns, unwinder))
}
