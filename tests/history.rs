//! Leak ranking from the growth history, and allocation age, in one process.

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;

use common::{decode, site_inuse};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Keeps everything it is given: the leak.
#[inline(never)]
fn leaky_insert(store: &mut Vec<Vec<u8>>, i: usize) {
    store.push(vec![i as u8; 2048]);
}

/// Allocates a lot and frees it all: not a leak.
#[inline(never)]
fn honest_churn(i: usize) -> usize {
    let v: Vec<Vec<u8>> = (0..64).map(|j| vec![(i + j) as u8; 4096]).collect();
    black_box(&v).len()
}

#[inline(never)]
fn old_objects() -> Vec<Vec<u8>> {
    (0..512).map(|i| vec![i as u8; 4096]).collect()
}

#[inline(never)]
fn young_objects() -> Vec<Vec<u8>> {
    (0..512).map(|i| vec![i as u8; 4096]).collect()
}

#[test]
fn the_steady_grower_is_the_first_suspect_and_churn_is_none() {
    heapprof::set_sample_rate(16 * 1024);

    // Allocation age: old objects survive a min_age filter, young ones not.
    let old = old_objects();
    std::thread::sleep(Duration::from_millis(400));
    let young = young_objects();
    let aged = heapprof::snapshot_older_than(Duration::from_millis(300));
    let all = heapprof::snapshot();
    let old_inuse = site_inuse(&aged, "old_objects");
    assert!(
        (old_inuse - site_inuse(&all, "old_objects")).abs() < 64 * 1024,
        "old objects all older than 300 ms: {old_inuse}"
    );
    assert_eq!(site_inuse(&aged, "young_objects"), 0);
    let oldest = all
        .sites()
        .iter()
        .filter(|s| {
            s.frames()
                .first()
                .is_some_and(|f| f.function.contains("old_objects"))
        })
        .filter_map(|s| s.oldest_age)
        .max()
        .expect("ages are recorded");
    assert!(oldest >= Duration::from_millis(400), "{oldest:?}");
    // Ages in the text format and, on request, as pprof labels.
    assert!(all.to_text().contains("# age: oldest "));
    let with_ages = decode(&all.to_pprof_with(&heapprof::PprofOptions::new().ages(true)));
    let s = |i: i64| with_ages.string_table[i as usize].as_str();
    let oldest_ms = with_ages
        .sample
        .iter()
        .flat_map(|x| &x.label)
        .filter(|l| s(l.key) == "oldest_age" && s(l.num_unit) == "ms")
        .map(|l| l.num)
        .max()
        .expect("oldest_age labels");
    assert!(oldest_ms >= 400, "{oldest_ms}");
    let plain = decode(&all.to_pprof());
    assert!(
        !plain.string_table.iter().any(|x| x == "oldest_age"),
        "ages are opt-in"
    );

    // Growth history: a steady leak and heavy churn side by side.
    let history = heapprof::start_history(Duration::from_millis(50));
    let mut store = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        leaky_insert(&mut store, i);
        if i % 4 == 0 {
            honest_churn(i);
        }
        i += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    history.stop();
    let suspects = heapprof::leak_suspects();
    let names: Vec<String> = suspects
        .iter()
        .map(|s| {
            s.frames
                .first()
                .map_or(String::new(), |f| f.function.clone())
        })
        .collect();
    eprintln!("suspects: {names:?}");
    assert!(
        names.first().is_some_and(|n| n.contains("leaky_insert")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("honest_churn")),
        "{names:?}"
    );
    let top = &suspects[0];
    assert!(top.r_squared >= 0.8, "the documented threshold");
    assert!(top.slope_bytes_per_minute > 0.0 && top.growth_bytes > 1 << 20);
    black_box((old, young, store));
}
