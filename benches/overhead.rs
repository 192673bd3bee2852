//! Overhead of heapprof and its peers, each configuration as its own program
//! (a global allocator is per binary).
//!
//! `cargo bench --bench overhead` (`HEAPPROF_BENCH_QUICK=1` for a short run;
//! `HEAPPROF_BENCH_ONLY=jemalloc,dhat` and `HEAPPROF_BENCH_WORKLOADS=mixed`
//! restrict it; `HEAPPROF_BENCH_ROUNDS=N` runs N rounds instead of 11;
//! `HEAPPROF_BENCH_PLACEMENTS=N`, 1 to 4, measures the jemalloc and heapprof
//! configurations at N code placements and averages them, see below).
//!
//! Builds `benches/programs` (one `[[bin]]` per configuration, all running
//! the workloads of `benches/programs/src/workload.rs`), then runs the
//! configurations interleaved, one process per measurement, for several
//! rounds, and prints per workload the median ns per operation, the ratio of
//! medians to plain jemalloc, the median of the per-round ratios (paired,
//! steadier on a loaded machine), for the `-fp` configurations the ratio to
//! `jemalloc-fp` (the same build without heapprof: what heapprof adds to a
//! service that already has frame pointers) and, for heapprof, the unwinder
//! its `HEAPPROF_UNWIND=auto` settled on. The `-fp` configurations are the
//! same programs built with `-C force-frame-pointers=yes`; the others are
//! built without. `mixed-2t` gets a second table, `mixed-2t-cpu`: the
//! threads' CPU time per op instead of the wall time, steadier on a 2-vCPU
//! machine where any other process preempts one of the two threads. Last,
//! one line per pair: `RATIO <workload> <configuration> <ratio-to-plain-jemalloc>`.
//!
//! Code placement alone moves a configuration by 3-5% on the project's
//! machines (BENCHMARKS.md, "Averaged over code placements"): a change
//! anywhere shifts the workload's loop and the allocator relative to cache
//! lines and branch-predictor slots. With `HEAPPROF_BENCH_PLACEMENTS=N` the
//! programs without and with frame pointers are also built with every Rust
//! function aligned to 32, 64 and 128 bytes (the first N-1 of those), all
//! placements run interleaved in every round, each ratio is taken against
//! the same placement's baseline, and the tables give the geometric mean
//! over placements, then each placement's ratio. The peers are measured at
//! the default placement only.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use support::{build_placed, build_programs, median, program, quick};

/// Which build of `benches/programs` a configuration's program comes from.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    /// Without frame pointers, at every placement.
    Plain,
    /// With frame pointers, at every placement.
    FramePointers,
    /// jemalloc with profiling compiled in, default placement only.
    Prof,
    /// The same with frame pointers, default placement only.
    ProfFramePointers,
}

/// One configuration: a program of one build, with its environment.
struct Template {
    name: &'static str,
    build: Build,
    bin: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// Run `ops / divisor` operations (for configurations ~1000x slower).
    divisor: u64,
}

const fn config(
    name: &'static str,
    build: Build,
    bin: &'static str,
    env: &'static [(&'static str, &'static str)],
) -> Template {
    Template {
        name,
        build,
        bin,
        env,
        divisor: 1,
    }
}

const OFF: &[(&str, &str)] = &[("HEAPPROF_SAMPLE_RATE", "0")];
const RATE_64K: &[(&str, &str)] = &[("HEAPPROF_SAMPLE_RATE", "65536")];
const PPROF_WRAPPER: &[(&str, &str)] = &[("PPROF_ALLOC_BACKEND", "wrapper")];

/// Every configuration, the baseline first.
const CONFIGS: [Template; 16] = [
    config("jemalloc", Build::Plain, "jemalloc", &[]),
    config("system", Build::Plain, "system", &[]),
    config(
        "heapprof-jemalloc-default",
        Build::Plain,
        "heapprof-jemalloc",
        &[],
    ),
    config(
        "heapprof-jemalloc-64k",
        Build::Plain,
        "heapprof-jemalloc",
        RATE_64K,
    ),
    config(
        "heapprof-jemalloc-off",
        Build::Plain,
        "heapprof-jemalloc",
        OFF,
    ),
    config(
        "heapprof-system-default",
        Build::Plain,
        "heapprof-system",
        &[],
    ),
    config("jemalloc-fp", Build::FramePointers, "jemalloc", &[]),
    config(
        "heapprof-jemalloc-default-fp",
        Build::FramePointers,
        "heapprof-jemalloc",
        &[],
    ),
    config(
        "heapprof-jemalloc-64k-fp",
        Build::FramePointers,
        "heapprof-jemalloc",
        RATE_64K,
    ),
    config(
        "heapprof-jemalloc-off-fp",
        Build::FramePointers,
        "heapprof-jemalloc",
        OFF,
    ),
    config(
        "heapprof-system-default-fp",
        Build::FramePointers,
        "heapprof-system",
        &[],
    ),
    config("jemalloc-prof", Build::Prof, "jemalloc-prof", &[]),
    config("jemalloc-profbuild", Build::Prof, "jemalloc-profbuild", &[]),
    config(
        "pprof-alloc-nofp",
        Build::Prof,
        "pprof-alloc",
        PPROF_WRAPPER,
    ),
    config(
        "pprof-alloc",
        Build::ProfFramePointers,
        "pprof-alloc",
        PPROF_WRAPPER,
    ),
    Template {
        divisor: 50,
        ..config("dhat", Build::Plain, "dhat", &[])
    },
];

/// The programs the extra placements build: those of the jemalloc and
/// heapprof configurations.
const PLACED_BINS: [&str; 3] = ["jemalloc", "heapprof-jemalloc", "heapprof-system"];

/// Function alignments (log2 of bytes) of the placements after the default.
const ALIGNMENTS: [u32; 3] = [5, 6, 7];

/// One configuration at one placement, as measured.
struct Config {
    template: &'static Template,
    /// Program path, or why it is unavailable.
    bin: Result<PathBuf, String>,
    /// 0 for the default placement, `k` for `ALIGNMENTS[k - 1]`.
    placement: usize,
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
    let listed = |n: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n));
    let with_fp = CONFIGS
        .iter()
        .any(|t| t.build == Build::FramePointers && listed(t.name));
    let with_prof = CONFIGS
        .iter()
        .any(|t| matches!(t.build, Build::Prof | Build::ProfFramePointers) && listed(t.name));
    // The baselines run whenever something is divided by them.
    let wanted = |n: &str| n == "jemalloc" || (n == "jemalloc-fp" && with_fp) || listed(n);
    let placements = match std::env::var("HEAPPROF_BENCH_PLACEMENTS") {
        Err(_) => 1,
        Ok(v) => match v.parse::<usize>() {
            Ok(n @ 1..=4) => n,
            _ => {
                eprintln!("HEAPPROF_BENCH_PLACEMENTS={v}: expected a number of placements, 1 to 4");
                std::process::exit(2);
            }
        },
    };

    let programs = build_programs(with_prof, with_fp);
    // Per placement, the directories of the plain and frame-pointer builds.
    let mut builds = vec![(Ok(programs.plain.clone()), programs.fp.clone())];
    for &align in &ALIGNMENTS[..placements - 1] {
        let fp = if with_fp {
            build_placed(align, true, &PLACED_BINS)
        } else {
            Err("not built".into())
        };
        builds.push((build_placed(align, false, &PLACED_BINS), fp));
    }
    let mut configs = Vec::new();
    for (placement, (plain, fp)) in builds.iter().enumerate() {
        for template in CONFIGS.iter().filter(|t| wanted(t.name)) {
            let placed = template.build == Build::Plain || template.build == Build::FramePointers;
            if placement > 0 && !(placed && PLACED_BINS.contains(&template.bin)) {
                continue;
            }
            let bin = match template.build {
                Build::Plain => built(plain, "plain", template.bin),
                Build::FramePointers => built(fp, "frame-pointer", template.bin),
                Build::Prof => built(&programs.prof, "prof", template.bin),
                Build::ProfFramePointers => built(&programs.prof_fp, "prof", template.bin),
            };
            configs.push(Config {
                template,
                bin,
                placement,
            });
        }
    }
    let index = |name: &str, placement: usize| {
        configs
            .iter()
            .position(|c| c.template.name == name && c.placement == placement)
    };
    // Per configuration: its plain-jemalloc baseline and, for the
    // frame-pointer heapprof ones, jemalloc-fp.
    let baselines: Vec<(usize, Option<usize>)> = configs
        .iter()
        .map(|c| {
            let plain = index("jemalloc", c.placement).expect("jemalloc always runs");
            let own = (c.template.build == Build::FramePointers
                && c.template.name != "jemalloc-fp")
                .then(|| index("jemalloc-fp", c.placement))
                .flatten();
            (plain, own)
        })
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

    // What the tables report: each workload's wall time per op, and for
    // `mixed-2t` also its threads' CPU time per op (`mixed-2t-cpu`), which a
    // thread preempted by another process does not inflate. columns[k] =
    // (name, workload index, whether it is the CPU time).
    let mut columns: Vec<(String, usize, bool)> = Vec::new();
    for (w, (workload, _)) in workloads.iter().enumerate() {
        columns.push((workload.to_string(), w, false));
        if *workload == "mixed-2t" {
            columns.push((format!("{workload}-cpu"), w, true));
        }
    }
    // times[k][c] = ns per op of each round in column k; errors[c] = why
    // configuration c failed.
    let mut times = vec![vec![Vec::new(); configs.len()]; columns.len()];
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
                let ops = (ops / scale / config.template.divisor).to_string();
                match run(bin, config.template.env, workload, &ops) {
                    Ok(Measured {
                        ns,
                        cpu_ns,
                        unwinder,
                    }) => {
                        for (k, &(_, of, cpu)) in columns.iter().enumerate() {
                            match (of == w, cpu, cpu_ns) {
                                (true, false, _) => times[k][c].push(ns),
                                (true, true, Some(cpu_ns)) => times[k][c].push(cpu_ns),
                                _ => {}
                            }
                        }
                        if unwinder.is_some() {
                            unwinders[c] = unwinder;
                        }
                    }
                    Err(e) => {
                        eprintln!("{} {workload}: {e}", config.template.name);
                        errors[c] = Some(e);
                    }
                }
            }
        }
    }

    let mut ratio_lines = Vec::new();
    for (k, (workload, _, cpu)) in columns.iter().enumerate() {
        let times = &times[k];
        let ratio = |c: usize, base: usize| median(&times[c]) / median(&times[base]);
        let paired = |c: usize, base: usize| {
            let r: Vec<f64> = times[c]
                .iter()
                .zip(&times[base])
                .map(|(a, b)| a / b)
                .collect();
            median(&r)
        };
        println!(
            "workload {workload}: median {} ns per op over {rounds} interleaved rounds{}{}",
            if *cpu { "CPU" } else { "wall" },
            if placements > 1 {
                format!(", geometric mean over {placements} code placements")
            } else {
                String::new()
            },
            if quick { " (quick)" } else { "" }
        );
        println!(
            "  {:<30} {:>10} {:>10} {:>13} {:>12}  unwinder",
            "configuration", "ns/op", "x jemalloc", "paired ratio", "x jemalloc-fp"
        );
        for template in CONFIGS.iter().filter(|t| wanted(t.name)) {
            let placed: Vec<usize> = (0..configs.len())
                .filter(|&c| std::ptr::eq(configs[c].template, template))
                .collect();
            // A configuration without its baselines has no ratio either.
            let failed = placed.iter().find_map(|&c| {
                let (plain, own) = baselines[c];
                [Some(c), Some(plain), own]
                    .into_iter()
                    .flatten()
                    .find_map(|i| errors[i].as_ref().map(|e| (configs[i].template.name, e)))
            });
            if let Some((which, e)) = failed {
                println!("  {:<30} unavailable: {which}: {e}", template.name);
                continue;
            }
            let mean = |f: &dyn Fn(usize) -> f64| geometric_mean(placed.iter().map(|&c| f(c)));
            let to_plain = mean(&|c| ratio(c, baselines[c].0));
            let own = baselines[placed[0]].1.map(|_| {
                mean(&|c| ratio(c, baselines[c].1.expect("same build at every placement")))
            });
            println!(
                "  {:<30} {:>10.2} {:>9.3}x {:>12.3}x {:>12}  {}",
                template.name,
                median(&times[placed[0]]),
                to_plain,
                mean(&|c| paired(c, baselines[c].0)),
                own.map_or("-".into(), |r| format!("{r:.3}x")),
                unwinders[placed[0]].as_deref().unwrap_or("-")
            );
            if placed.len() > 1 {
                let each = |base: &dyn Fn(usize) -> usize| {
                    placed
                        .iter()
                        .map(|&c| format!("{:.3}", ratio(c, base(c))))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                print!("      per placement: {}", each(&|c| baselines[c].0));
                if own.is_some() {
                    print!(
                        "; x jemalloc-fp: {}",
                        each(&|c| baselines[c].1.expect("same build at every placement"))
                    );
                }
                println!();
            }
            ratio_lines.push(format!("RATIO {workload} {} {to_plain:.4}", template.name));
        }
    }
    for line in ratio_lines {
        println!("{line}");
    }
}

/// The geometric mean of `ratios`.
fn geometric_mean(ratios: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = ratios.fold((0.0, 0), |(s, n), r| (s + r.ln(), n + 1));
    (sum / n as f64).exp()
}

/// `bin` of a build that may have failed: its path, or why there is none.
fn built(dir: &Result<PathBuf, String>, build: &str, bin: &str) -> Result<PathBuf, String> {
    dir.as_ref()
        .map(|d| d.join(bin))
        .map_err(|e| format!("{build} build failed: {e}"))
}

/// One measurement: what a program printed.
struct Measured {
    /// Wall time per operation, ns.
    ns: f64,
    /// CPU time per operation, ns, from the workloads that report it.
    cpu_ns: Option<f64>,
    /// The unwinder a heapprof program reports having used.
    unwinder: Option<String>,
}

/// Runs one measurement.
fn run(bin: &Path, env: &[(&str, &str)], workload: &str, ops: &str) -> Result<Measured, String> {
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
    let cpu_ns = stdout
        .lines()
        .find_map(|l| l.strip_prefix("cpu_ns_per_op "))
        .and_then(|v| v.trim().parse().ok());
    let unwinder = stdout
        .lines()
        .find_map(|l| l.strip_prefix("unwinder "))
        .map(str::to_owned);
    Ok(Measured {
        ns,
        cpu_ns,
        unwinder,
    })
}
