//! Incident 2 end to end: the sidecar, not the service. A real log_shipper
//! process (a service and an embedded log shipper, on two threads) serves
//! heapprof; two heap profiles fetched over HTTP three seconds apart split
//! the in-use bytes by the `component` label, the growth between them is
//! the log shipper's and not the service's, and `go tool pprof -tagfocus
//! component=log-shipper -top` puts `retain_failed_record` first.
//!
//! The sample rate is 16 KiB so the service's small bounded cache (about
//! 0.5 MiB) is sampled finely enough that its noise stays far below the
//! shipper's growth (about 1.5 MB/s at 5000 lines/s).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::serve::Service;
use pprof::protos::Profile;

/// In-use bytes per value of the `component` label ("" when unlabelled).
fn inuse_by_component(p: &Profile) -> HashMap<String, i64> {
    let inuse = common::value_index(p, "inuse_space");
    let mut out = HashMap::new();
    for sample in &p.sample {
        let component = sample
            .label
            .iter()
            .find(|l| common::string(p, l.key) == "component")
            .map_or("", |l| common::string(p, l.str));
        *out.entry(component.to_owned()).or_default() += sample.value[inuse];
    }
    out
}

fn heap_profile(service: &Service) -> (Vec<u8>, Profile) {
    let (status, body) = service.get("/debug/pprof/heap");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let profile = common::decode(&body);
    (body, profile)
}

#[test]
fn growth_is_charged_to_the_log_shipper_not_the_service() {
    let service = Service::start(
        "log_shipper",
        &["--serve", "127.0.0.1:0", "--lines-per-sec", "5000"],
        &[("HEAPPROF_SAMPLE_RATE", "16384")],
    );
    // Let the service's bounded cache fill, and warm the endpoint's symbol
    // cache so the endpoint's own first-time allocations are not growth.
    std::thread::sleep(Duration::from_secs(2));
    heap_profile(&service);
    let (_, first) = heap_profile(&service);
    std::thread::sleep(Duration::from_secs(3));
    let (second_gz, second) = heap_profile(&service);

    let before = inuse_by_component(&first);
    let after = inuse_by_component(&second);
    let mut growth: HashMap<String, i64> = HashMap::new();
    for key in before.keys().chain(after.keys()) {
        let g = after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0);
        growth.insert(key.clone(), g);
    }
    eprintln!("in use before: {before:?}\nin use after: {after:?}\ngrowth: {growth:?}");

    let shipper = growth.get("log-shipper").copied().unwrap_or(0);
    let service_growth = growth.get("service").copied().unwrap_or(0);
    let total_growth: i64 = growth.values().filter(|g| **g > 0).sum();
    assert!(
        shipper > 2_000_000,
        "the log shipper should have grown by megabytes in 3 s: {growth:?}"
    );
    assert!(
        shipper as f64 >= 0.8 * total_growth as f64,
        "log-shipper has {shipper} of {total_growth} bytes of growth (< 80%): {growth:?}"
    );
    assert!(
        (service_growth as f64) < 0.1 * shipper as f64,
        "the service grew by {service_growth} bytes, >= 10% of the shipper's {shipper}: {growth:?}"
    );
    assert!(
        after.get("service").copied().unwrap_or(0) > 0,
        "the service's cache is in use and labelled: {after:?}"
    );

    // The same answer from go tool pprof, focused on the shipper's label.
    let path =
        std::env::temp_dir().join(format!("heapprof-incident2-{}.pb.gz", std::process::id()));
    std::fs::write(&path, &second_gz).unwrap();
    let out = std::process::Command::new("go")
        .args([
            "tool",
            "pprof",
            "-tagfocus",
            "component=log-shipper",
            "-sample_index=inuse_space",
            "-top",
        ])
        .arg(&path)
        .output();
    std::fs::remove_file(&path).ok();
    let out = out.unwrap_or_else(|e| {
        panic!("cannot run `go tool pprof` ({e}): install Go (apt-get install golang-go; scripts/test does)")
    });
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}\n{top}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{top}");
    let first_row = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or("");
    assert!(
        first_row.ends_with("log_shipper::retain_failed_record"),
        "first row {first_row:?} of\n{top}"
    );
}
