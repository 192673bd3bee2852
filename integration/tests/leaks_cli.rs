//! `heapprof leaks` against the root crate's `examples/route_cache.rs`
//! (incident 1): after a few seconds of growth history, the route cache's
//! insert is the first suspect and the honest churn (parsing, resolving)
//! is not a suspect at all.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Target, TempDir, example};

#[test]
fn route_cache_insert_is_the_first_leak_suspect() {
    let dir = TempDir::new("leaks");
    let mut agent = Target::spawn(
        Command::new(example("route_cache"))
            .args(["--serve", "127.0.0.1:0", "--history-interval-ms", "250"])
            .env("HEAPPROF_DIR", &dir.0)
            .env("HEAPPROF_SAMPLE_RATE", "65536"),
    );
    agent.line_starting("listening on http://");
    std::thread::sleep(Duration::from_secs(7));
    let pid = agent.pid().to_string();
    let out = common::heapprof()
        .args(["leaks", &pid, "-n", "10"])
        .env("HEAPPROF_DIR", &dir.0)
        .output()
        .expect("run heapprof leaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "heapprof leaks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let first = text.lines().nth(2).expect("a suspect row");
    assert!(first.trim_start().starts_with("1 "), "{text}");
    assert!(first.contains("RouteCache::insert"), "first row:\n{text}");
    assert!(first.contains("MiB/min"), "{text}");
    for churn in ["parse_netlink_event", "resolve_routes"] {
        assert!(
            !text.contains(churn),
            "{churn} is churn, not a leak:\n{text}"
        );
    }

    // The same document as JSON, with a positive, steady slope.
    let out = common::heapprof()
        .args(["leaks", &pid, "--json"])
        .env("HEAPPROF_DIR", &dir.0)
        .output()
        .expect("run heapprof leaks --json");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["recording"], true);
    let top = &json["suspects"][0];
    assert!(
        top["slope_bytes_per_minute"].as_f64().unwrap() > 0.0,
        "{top:#}"
    );
    assert!(top["r_squared"].as_f64().unwrap() > 0.9, "{top:#}");
}

#[test]
fn leaks_without_recorder_says_how_to_start_it() {
    let dir = TempDir::new("leaks-off");
    // stealth_leak serves heapprof without the growth recorder.
    let mut svc = Target::spawn(
        Command::new(example("stealth_leak"))
            .args(["--serve", "127.0.0.1:0"])
            .env("HEAPPROF_DIR", &dir.0),
    );
    let addr = svc
        .line_starting("listening on http://")
        .trim_start_matches("listening on http://")
        .to_string();
    let out = common::heapprof()
        .args(["leaks", &addr])
        .output()
        .expect("run heapprof leaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("heapprof::start_history(interval)"), "{text}");
}
