//! The profiler's estimates agree with uprobes' exact counts over a window
//! in which a heapprof-profiled Rust service (`examples/profiled_target.rs`,
//! jemalloc underneath, HEAPPROF_SAMPLE_RATE=4096) allocates 32 MiB it keeps
//! and 32 MiB it frees.

mod common;

use std::process::Command;

use common::{Target, TempDir, bpf_skipped_by_request, example, family, verify_json};

#[test]
fn profiler_agrees_with_uprobes_over_the_window() {
    if bpf_skipped_by_request("profiler_agrees_with_uprobes_over_the_window") {
        return;
    }
    let dir = TempDir::new("profiled");
    let mut target = Target::spawn(
        Command::new(example("profiled_target"))
            .env("HEAPPROF_DIR", &dir.0)
            .env("HEAPPROF_SAMPLE_RATE", "4096"),
    );
    target.line_starting("listening on ");
    let pid = target.pid().to_string();
    let grow = 32 << 20;
    let (code, report, stderr) = verify_json(
        &[&pid, "--uprobes", "--duration", "6"],
        &[("HEAPPROF_DIR", &dir.0)],
        || {
            target.send(&format!("grow {grow}\n"));
            target.line_starting("done ");
        },
    );
    let je = family(&report, "jemalloc");
    let live = je["live_bytes"].as_u64().unwrap();
    assert!(
        live >= grow,
        "uprobes saw {live} live bytes, expected >= {grow}: {je:#}"
    );
    // Judged (thousands of samples at rate 4096), and right.
    for name in ["window_alloc", "window_inuse", "profiler_vs_jemalloc"] {
        let c = common::check(&report, name);
        assert_eq!(c["status"], "agrees", "{c:#}\n{stderr}");
        eprintln!("{name}: {}", c["verdict"]);
    }
    assert_eq!(code, 0, "{report:#}");
    eprintln!(
        "cost: {} probe hits, target CPU {}s in a {}s window",
        report["uprobes"]["probe_hits"],
        report["uprobes"]["target_cpu_secs"],
        report["uprobes"]["window_secs"]
    );
}
