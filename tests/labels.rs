//! Labels split one process's profile by component, in the pprof samples
//! that `go tool pprof -tagfocus` and `-tags` read.

use std::hint::black_box;

mod common;

use common::{decode, value_index};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Shared by both components: only the label tells them apart.
#[inline(never)]
fn keep_records(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; size]).collect()
}

#[test]
fn allocations_carry_their_components_label() {
    // 1 KiB objects at rate 1024: each is sampled with p = 1 - 1/e, so the
    // service's 1024 objects give ~650 samples and 10% is ~4 standard
    // errors; the shipper's 8192 give far more.
    heapprof::set_sample_rate(1024);
    // 8 MiB kept under the log shipper's label, 1 MiB by the service, in
    // the same function and on two threads.
    let shipper = std::thread::spawn(|| {
        heapprof::with_labels(&[("component", "log-shipper")], || keep_records(8192, 1024))
    });
    let service = heapprof::with_labels(&[("component", "service")], || keep_records(1024, 1024));
    let shipper = shipper.join().unwrap();
    let unlabelled = keep_records(256, 1024);

    let p = decode(&heapprof::snapshot().to_pprof());
    let s = |i: i64| p.string_table[i as usize].as_str();
    let inuse = value_index(&p, "inuse_space");
    let mut by_component = std::collections::HashMap::<String, i64>::new();
    for sample in &p.sample {
        let component = sample
            .label
            .iter()
            .find(|l| s(l.key) == "component")
            .map_or("", |l| s(l.str));
        *by_component.entry(component.to_owned()).or_default() += sample.value[inuse];
    }
    let within = |got: i64, want: f64| (got as f64 - want).abs() / want < 0.10;
    // n records of 1 KiB plus the vector holding them (n * 24 bytes).
    let truth = |n: usize| (n * 1024 + n * std::mem::size_of::<Vec<u8>>()) as f64;
    let shipper_bytes = by_component["log-shipper"];
    let service_bytes = by_component["service"];
    assert!(
        within(shipper_bytes, truth(8192)),
        "log-shipper {shipper_bytes}"
    );
    assert!(
        within(service_bytes, truth(1024)),
        "service {service_bytes}"
    );
    assert!(
        by_component.get("").is_some_and(|&b| b >= 200 * 1024),
        "unlabelled allocations stay unlabelled"
    );

    // go tool pprof filters by the tag.
    let path = std::env::temp_dir().join(format!("heapprof-labels-{}.pb.gz", std::process::id()));
    std::fs::write(&path, heapprof::snapshot().to_pprof()).unwrap();
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-tags", path.to_str().unwrap()])
        .output()
        .expect("go tool pprof: install golang-go (scripts/test does)");
    let tags = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tags.contains("log-shipper") && tags.contains("service"),
        "{tags}"
    );
    let out = std::process::Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-tagfocus",
            "component=log-shipper",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(top.contains("labels::keep_records"), "{top}");
    std::fs::remove_file(&path).ok();
    black_box((shipper, service, unlabelled));
}
