//! heapprof's views beyond Go's, over real HTTP: `?peak=1` (a spike that
//! is gone), `?min_age=` (only old live allocations) and
//! `/debug/heapprof/leaks` (steady growers).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use heapprof_http::Config;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

#[inline(never)]
fn views_spike() -> Vec<Vec<u8>> {
    (0..256).map(|i| vec![i as u8; 128 * 1024]).collect()
}

#[inline(never)]
fn views_old() -> Vec<Vec<u8>> {
    (0..256).map(|i| vec![i as u8; 16 * 1024]).collect()
}

#[inline(never)]
fn views_young() -> Vec<Vec<u8>> {
    (0..256).map(|i| vec![i as u8; 16 * 1024]).collect()
}

#[inline(never)]
fn views_leak(store: &mut Vec<Vec<u8>>) {
    store.push(vec![3u8; 4096]);
}

/// In-use bytes per leaf function.
fn inuse_by_function(p: &pprof::protos::Profile) -> std::collections::HashMap<String, i64> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let inuse = p
        .sample_type
        .iter()
        .position(|t| s(t.ty) == "inuse_space")
        .unwrap();
    let mut out = std::collections::HashMap::new();
    for sample in &p.sample {
        let loc = p
            .location
            .iter()
            .find(|l| l.id == sample.location_id[0])
            .unwrap();
        let f = p
            .function
            .iter()
            .find(|f| f.id == loc.line[0].function_id)
            .unwrap();
        *out.entry(s(f.name)).or_default() += sample.value[inuse];
    }
    out
}

fn sum_matching(map: &std::collections::HashMap<String, i64>, needle: &str) -> i64 {
    map.iter()
        .filter(|(k, _)| k.contains(needle))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn peak_min_age_and_leaks_views() {
    heapprof::set_sample_rate(16 * 1024);
    let addr = Config::new()
        .discovery_dir(temp_dir("views"))
        .spawn("127.0.0.1:0")
        .unwrap()
        .detach();

    // Peak: a 32 MiB spike, freed before the request.
    drop(black_box(views_spike()));
    let current = inuse_by_function(&decode(&get(addr, "/debug/pprof/heap").body));
    assert!(
        sum_matching(&current, "views_spike") < 1 << 20,
        "{current:?}"
    );
    let r = get(addr, "/debug/pprof/heap?peak=1");
    assert_eq!(r.status, 200, "{}", r.text());
    let peak = inuse_by_function(&decode(&r.body));
    assert!(sum_matching(&peak, "views_spike") > 28 << 20, "{peak:?}");

    // min_age: old objects yes, young ones no.
    let old = views_old();
    std::thread::sleep(Duration::from_millis(600));
    let young = views_young();
    let aged = inuse_by_function(&decode(&get(addr, "/debug/pprof/heap?min_age=400ms").body));
    assert!(sum_matching(&aged, "views_old") > 3 << 20, "{aged:?}");
    assert_eq!(sum_matching(&aged, "views_young"), 0, "{aged:?}");
    // ages=1: oldest/median age labels (ms) on samples with live objects.
    let p = decode(&get(addr, "/debug/pprof/heap?ages=1").body);
    let oldest = p
        .sample
        .iter()
        .flat_map(|x| &x.label)
        .filter(|l| p.string_table[l.key as usize] == "oldest_age")
        .map(|l| l.num)
        .max();
    assert!(oldest.is_some_and(|ms| ms >= 600), "{oldest:?}");
    let bad = get(addr, "/debug/pprof/heap?min_age=soon");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("like 500ms"), "{}", bad.text());

    // Leaks: without the recorder the answer says so.
    let r = get(addr, "/debug/heapprof/leaks");
    assert_eq!(r.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["recording"], false);
    let history = heapprof::start_history(Duration::from_millis(50));
    let mut store = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        views_leak(&mut store);
        std::thread::sleep(Duration::from_micros(300));
    }
    let r = get(addr, "/debug/heapprof/leaks");
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["recording"], true);
    let first = &json["suspects"][0];
    assert!(
        first["functions"][0]
            .as_str()
            .unwrap_or("")
            .contains("views_leak"),
        "{json:#}"
    );
    assert!(first["slope_bytes_per_minute"].as_f64().unwrap() > 0.0);
    history.stop();
    black_box((old, young, store));
}
