//! Incident 3, "dashboards said healthy": `heapprof verify --uprobes
//! --claims-url ... --claims-key ...` against the root crate's
//! `examples/stealth_leak.rs`, whose `/app-metrics` claims a flat 48 MiB
//! while a background thread leaks 1 MiB per interval.

mod common;

use std::process::Command;

use common::{
    Target, TempDir, assert_agrees, assert_profiler_not_failed, assert_rss_partition,
    bpf_skipped_by_request, example, verify_json,
};

const MIB: f64 = 1048576.0;

#[test]
fn stealth_leak_claim_is_flagged_false() {
    if bpf_skipped_by_request("stealth_leak_claim_is_flagged_false") {
        return;
    }
    let dir = TempDir::new("claims");
    let mut svc = Target::spawn(
        Command::new(example("stealth_leak"))
            .args(["--serve", "127.0.0.1:0", "--leak-interval-ms", "500"])
            .env("HEAPPROF_DIR", &dir.0),
    );
    let addr = svc
        .line_starting("listening on http://")
        .trim_start_matches("listening on http://")
        .to_string();
    let pid = svc.pid().to_string();
    let url = format!("http://{addr}/app-metrics");
    let (code, report, stderr) = verify_json(
        &[
            &pid,
            "--uprobes",
            "--duration",
            "4",
            "--claims-url",
            &url,
            "--claims-key",
            "app_memory_bytes",
        ],
        &[("HEAPPROF_DIR", &dir.0)],
        || {},
    );
    // Live bytes grow by ~1 MiB per 500 ms: 2 MiB/s.
    let g = &report["live_growth"];
    let rate = g["bytes_per_sec"]
        .as_f64()
        .expect("live_growth.bytes_per_sec");
    eprintln!(
        "live growth {:.2} MiB/s ({:.1} MiB/min) over {:.2}s",
        rate / MIB,
        g["bytes_per_min"].as_f64().unwrap() / MIB,
        g["window_secs"].as_f64().unwrap()
    );
    assert!(
        (rate - 2.0 * MIB).abs() <= 0.25 * 2.0 * MIB,
        "live growth {rate} B/s, expected 2 MiB/s within 25%: {g:#}\n{stderr}"
    );
    // The claim stayed at 48 MiB while that happened: false.
    let c = &report["claims"];
    assert_eq!(c["at_start"], 50331648.0, "{c:#}");
    assert_eq!(c["at_end"], 50331648.0, "{c:#}");
    assert_eq!(c["consistent"], false, "{c:#}");
    assert!(c["verdict"].as_str().unwrap().contains("FALSE"), "{c:#}");
    let growth = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "claim_vs_live_growth")
        .expect("claim_vs_live_growth check");
    assert_eq!(growth["ok"], false, "{growth:#}");
    assert_eq!(growth["status"], "claim_false", "{growth:#}");
    assert_eq!(code, 1, "a false claim fails verify");

    // The profiler is right, and verify says so: one window on both sides
    // (readings that span more than the uprobes' window make a right
    // profiler look 45-76% off), tolerances from the samples.
    eprintln!("window: {}", report["window"]["statement"]);
    let w = &report["window"];
    let (opened, closed) = (
        w["opened_ns"].as_u64().unwrap(),
        w["closed_ns"].as_u64().unwrap(),
    );
    let (first, last) = (
        w["profiler_first_ns"].as_u64().expect("first reading"),
        w["profiler_last_ns"].as_u64().expect("last reading"),
    );
    assert!(opened <= first && first < last && last <= closed, "{w:#}");
    assert!(
        (first - opened) + (closed - last) < 500_000_000,
        "the readings bracket the window within half a second: {w:#}"
    );
    assert_profiler_not_failed(&report);
    for name in ["window_alloc", "window_inuse", "profiler_vs_jemalloc"] {
        assert_agrees(&report, name);
    }
    assert_rss_partition(&report);
    eprintln!("{}", report["reconciliation"]["detail"]["explanation"]);

    // The leaking stack: the top outstanding uprobe stack is the 1 MiB
    // buffers, and the kernel's frame-pointer walk of it (this repository
    // builds with frame pointers, .cargo/config.toml) names background_leak,
    // as does the target's own profile over the same window.
    let top = &report["uprobes"]["top_stacks"][0];
    let top_bytes = top["bytes"].as_u64().unwrap();
    assert!(
        top_bytes >= 5 << 20 && top_bytes % (1 << 20) == 0,
        "top stack holds the 1 MiB leaks: {top:#}"
    );
    let uprobe_names = top["frames"].to_string();
    let profiler_names = report["profiler_window"]["top_growth"].to_string();
    eprintln!("uprobe stack: {uprobe_names}\nprofiler top grower: {profiler_names}");
    assert!(
        uprobe_names.contains("stealth_leak::background_leak"),
        "the top outstanding uprobe stack does not name background_leak: {uprobe_names}"
    );
    assert_eq!(
        top["frames"][0], "stealth_leak::background_leak",
        "uprobe stacks start where profiles start, past heapprof's frames: {uprobe_names}"
    );
    assert!(
        profiler_names.contains("stealth_leak::background_leak"),
        "the profiler's top grower is not background_leak: {profiler_names}"
    );
}
