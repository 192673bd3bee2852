//! Incident 1 end to end: the route cache that never evicts. A real
//! route_cache process serves heapprof; from outside, the leak ranking
//! names `RouteCache::insert` first and no churn function, a delta profile
//! read by `go tool pprof` puts the insert site first, and with
//! `--no-cache` there is no suspect at all.
//!
//! The sample rate is 64 KiB (not the default 512 KiB) so a run of a few
//! seconds has enough samples; the README walkthrough uses the default
//! rate over about 20 seconds.

mod common;

use std::time::Duration;

use common::serve::Service;

fn suspects(service: &Service) -> Vec<serde_json::Value> {
    let (status, body) = service.get("/debug/heapprof/leaks");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("leaks JSON");
    assert_eq!(json["recording"], true, "{json}");
    json["suspects"].as_array().cloned().unwrap_or_default()
}

fn first_function(suspect: &serde_json::Value) -> String {
    suspect["functions"][0].as_str().unwrap_or("").to_owned()
}

#[test]
fn the_cache_insert_is_the_leak_and_no_cache_means_no_leak() {
    let env = [("HEAPPROF_SAMPLE_RATE", "65536")];
    let args = ["--serve", "127.0.0.1:0", "--history-interval-ms", "250"];
    let leaking = Service::start("route_cache", &args, &env);
    let mut no_cache_args = args.to_vec();
    no_cache_args.push("--no-cache");
    let fixed = Service::start("route_cache", &no_cache_args, &env);

    std::thread::sleep(Duration::from_secs(7));

    let found = suspects(&leaking);
    let names: Vec<String> = found.iter().map(first_function).collect();
    eprintln!("suspects with the cache: {names:?}");
    assert!(
        names
            .first()
            .is_some_and(|n| n.ends_with("RouteCache::insert")),
        "{names:?}"
    );
    for churn in ["parse_netlink_event", "resolve_routes"] {
        assert!(
            !names.iter().any(|n| n.contains(churn)),
            "{churn} in {names:?}"
        );
    }
    let top = &found[0];
    assert!(top["r_squared"].as_f64().unwrap() >= 0.8);
    assert!(
        top["slope_bytes_per_minute"].as_f64().unwrap() > 1e6,
        "{top}"
    );

    let quiet = suspects(&fixed);
    assert!(quiet.is_empty(), "--no-cache still has suspects: {quiet:?}");

    // A delta profile over 3 seconds, read by go tool pprof.
    let (status, delta) = leaking.get("/debug/pprof/heap?seconds=3");
    assert_eq!(status, 200);
    let path =
        std::env::temp_dir().join(format!("heapprof-incident1-{}.pb.gz", std::process::id()));
    std::fs::write(&path, &delta).unwrap();
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(&path)
        .output()
        .expect("go tool pprof: install golang-go (scripts/test does)");
    let top = String::from_utf8_lossy(&out.stdout);
    let first_row = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or("");
    assert!(first_row.ends_with("RouteCache::insert"), "{top}");
    std::fs::remove_file(&path).ok();
}
