//! Cost of one sample: nanoseconds per captured stack for each unwinder,
//! warm and cold, in a program built without frame pointers (what a
//! service gets by default) and in the same program built with them; then
//! nanoseconds per sampled allocation and free, the whole path, with the
//! unwinder each build uses (`sample-cost`).
//!
//! `cargo bench --bench stack_cost` (`HEAPPROF_BENCH_LEVELS=N` for a chain
//! of N calls instead of 20; `HEAPPROF_BENCH_DLOPEN=PATH` to also load the
//! shared library PATH into the build without frame pointers and report
//! its table).
//!
//! Builds `benches/programs`' `stack-cost` twice (see its docs for what is
//! measured), runs each once, and prints the table build figures of the
//! build without frame pointers and one table row per unwinder and build:
//! the first capture, p50 and p99 of warm captures and of captures after
//! evicting the L1/L2 caches and all caches, and the frames captured. libgcc's and the backtrace crate's stacks include a few of
//! their own frames on top.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use support::{build_program, program, result_fields, run_ok};

/// Runs `sample-cost` with `HEAPPROF_UNWIND=unwind` in each build and
/// prints the sampled path's table: p50 (p99) ns of an allocation and a
/// free, sampled and not, per cache state.
fn sample_cost(levels: &str) {
    println!("\nns per allocation and per free, 64 bytes, sampled or not:\n");
    println!(
        "| build | unwinder | op | warm: unsampled | sampled | L1/L2 evicted: unsampled | sampled | all evicted: unsampled | sampled |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (build, frame_pointers, unwind) in [
        ("fp", true, "fp"),
        ("no-fp", false, "table"),
        ("no-fp", false, "dwarf"),
    ] {
        let bin = build_program("sample-cost", frame_pointers)
            .unwrap_or_else(|e| panic!("building sample-cost ({build}): {e}"));
        let stdout = run_ok(
            program(&bin, &[("HEAPPROF_UNWIND", unwind)]).arg(levels),
            &format!("sample-cost ({build}, {unwind})"),
        );
        let results: Vec<BTreeMap<String, String>> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(result_fields)
            .collect();
        for op in ["alloc", "free"] {
            let cell = |state: &str, sampled: &str| {
                results
                    .iter()
                    .find(|f| f["op"] == op && f["state"] == state && f["sampled"] == sampled)
                    .map_or("-".into(), |f| format!("{} ({})", f["p50_ns"], f["p99_ns"]))
            };
            println!(
                "| {build} | {unwind} | {op} | {} | {} | {} | {} | {} | {} |",
                cell("warm", "0"),
                cell("warm", "1"),
                cell("evicted-l2", "0"),
                cell("evicted-l2", "1"),
                cell("evicted-all", "0"),
                cell("evicted-all", "1"),
            );
        }
    }
}

fn main() {
    let levels = std::env::var("HEAPPROF_BENCH_LEVELS").unwrap_or_else(|_| "20".into());
    let mut rows: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for (build, frame_pointers) in [("no-fp", false), ("fp", true)] {
        let bin = build_program("stack-cost", frame_pointers)
            .unwrap_or_else(|e| panic!("building stack-cost ({build}): {e}"));
        let mut run = program(&bin, &[("HEAPPROF_SAMPLE_RATE", "0")]);
        run.arg(&levels);
        if let (false, Ok(library)) = (frame_pointers, std::env::var("HEAPPROF_BENCH_DLOPEN")) {
            run.arg(library);
        }
        let stdout = run_ok(&mut run, &format!("stack-cost ({build})"));
        for line in stdout.lines() {
            if let Some(result) = line.strip_prefix("RESULT ") {
                rows.push((build.to_string(), result_fields(result)));
            } else if !frame_pointers {
                println!("{line}");
            }
        }
    }
    println!("\nns per captured stack:\n");
    println!(
        "| build | unwinder | frames | first | warm p50 | warm p99 | L1/L2 evicted p50 | p99 | all evicted p50 | p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut seen: Vec<(String, String)> = Vec::new();
    for (build, fields) in &rows {
        let key = (build.clone(), fields["method"].clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let get = |state: &str, what: &str| -> String {
            rows.iter()
                .find(|(b, f)| b == build && f["method"] == fields["method"] && f["state"] == state)
                .map_or("-".into(), |(_, f)| f[what].clone())
        };
        println!(
            "| {build} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fields["method"],
            fields["frames"],
            get("first", "p50_ns"),
            get("warm", "p50_ns"),
            get("warm", "p99_ns"),
            get("evicted-l2", "p50_ns"),
            get("evicted-l2", "p99_ns"),
            get("evicted-all", "p50_ns"),
            get("evicted-all", "p99_ns"),
        );
    }
    sample_cost(&levels);
}
