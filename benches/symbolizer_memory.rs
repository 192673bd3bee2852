//! Anonymous memory of three symbolizers naming the same functions:
//! heapprof's resolver, blazesym and the backtrace crate's.
//!
//! `cargo bench --bench symbolizer_memory`
//!
//! Builds `benches/programs`' `symbolize-memory` (see its docs) and the
//! quickstart example as `cargo build` leaves it (full debug info,
//! unoptimised), then names 30, 300 and 3000 functions of each binary with
//! each symbolizer, each run in a fresh process, and prints the peak rise
//! of `RssAnon`, what is left afterwards and the time. The backtrace crate
//! names only its own process's code, so it runs on `symbolize-memory`
//! alone.

#[path = "support/mod.rs"]
mod support;

use support::{build, cargo, program, programs_dir, result_fields, root, run_ok};

fn main() {
    let dir = programs_dir().join("symbolizers");
    if let Err(e) = build(
        &dir,
        &["--features", "symbolizers", "--bin", "symbolize-memory"],
        "",
        &[],
    ) {
        panic!("building symbolize-memory: {e}");
    }
    let bin = dir.join("release/symbolize-memory");
    // A target directory of its own: the outer `cargo bench` holds the
    // workspace's.
    let examples = programs_dir().join("symbolizers-examples");
    let built = cargo()
        .current_dir(root())
        .args([
            "build",
            "--quiet",
            "--example",
            "quickstart",
            "--target-dir",
        ])
        .arg(&examples)
        .status()
        .expect("run cargo");
    assert!(built.success(), "building the quickstart example failed");
    let quickstart = examples.join("debug/examples/quickstart");

    println!(
        "| binary | size | functions | symbolizer | named | inlined frames | RssAnon peak rise | left afterwards | time |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (what, path) in [
        ("symbolize-memory (release, `debug = \"limited\"`)", &bin),
        (
            "quickstart (`cargo build`: full debug, unoptimised)",
            &quickstart,
        ),
    ] {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        for n in ["30", "300", "3000"] {
            for method in ["heapprof", "blazesym", "backtrace"] {
                if method == "backtrace" && path != &bin {
                    continue;
                }
                let stdout = run_ok(
                    program(&bin, &[]).args([method, path.to_str().unwrap(), n]),
                    &format!("symbolize-memory {method} {n}"),
                );
                let r = result_fields(
                    stdout
                        .lines()
                        .find_map(|l| l.strip_prefix("RESULT "))
                        .expect("a RESULT line"),
                );
                let mib = |k: &str| r[k].parse::<f64>().unwrap() / 1024.0;
                println!(
                    "| {what} | {:.0} MB | {} | {method} | {} | {} | {:.1} MiB | {:.1} MiB | {} ms |",
                    size as f64 / 1e6,
                    r["functions"],
                    r["named"],
                    r["inlined"],
                    mib("peak_kib"),
                    mib("after_kib"),
                    r["ms"],
                );
            }
        }
    }
}
