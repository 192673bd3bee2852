//! Stack capture by frame pointers: this repository builds with them
//! (`.cargo/config.toml`), so `HEAPPROF_UNWIND=auto` must settle on frame
//! pointers, and the stacks it records must be the ones DWARF unwinding
//! records, on the main thread and on spawned threads.

use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;

mod common;

use common::{decode, example, value_index};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Keeps `n` 1000-byte buffers, from a function only spawned threads call.
#[inline(never)]
fn thread_worker_keeps(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 1000]).collect()
}

#[test]
fn auto_trusts_frame_pointers_on_spawned_threads_and_counts_exactly() {
    heapprof::set_sample_rate(1);
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| thread_worker_keeps(500)))
        .collect();
    let kept: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // More samples than the checks `auto` makes, all on spawned threads.
    assert_eq!(
        heapprof::unwinder(),
        heapprof::Unwinder::FramePointers,
        "{} samples taken",
        4 * 501
    );
    let snap = heapprof::snapshot();
    let bytes = common::site_inuse(&snap, "thread_worker_keeps");
    heapprof::set_sample_rate(0);
    // 4 threads x 500 buffers of 1000 bytes, plus each thread's Vec of 500
    // Vec headers; at rate 1 the estimate is the truth.
    let truth = 4 * (500 * 1000 + 500 * std::mem::size_of::<Vec<u8>>()) as i64;
    assert_eq!(bytes, truth);
    black_box(kept);
}

/// Runs quickstart at rate 1 with `HEAPPROF_UNWIND=mode`; returns whether it
/// used frame pointers, its stderr, and its in-use bytes per stack (function
/// names, innermost first, without the C library's entry points).
fn quickstart_stacks(mode: &str) -> (bool, String, HashMap<Vec<String>, i64>) {
    let dir = std::env::temp_dir().join(format!("heapprof-unwind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join(format!("{mode}.pb.gz"));
    let out = Command::new(example("quickstart"))
        .args(["--scale", "0.0625"])
        .arg(&out_path)
        .env("HEAPPROF_SAMPLE_RATE", "1")
        .env("HEAPPROF_UNWIND", mode)
        .output()
        .expect("run quickstart");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "quickstart: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let frame_pointers = stdout.contains(" frame_pointers=1");
    let p = decode(&std::fs::read(&out_path).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let inuse = value_index(&p, "inuse_space");
    let name = |loc_id: u64| -> Vec<String> {
        let loc = p.location.iter().find(|l| l.id == loc_id).unwrap();
        loc.line
            .iter()
            .map(|line| {
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .unwrap();
                p.string_table[f.name as usize].clone()
            })
            .collect()
    };
    let mut stacks = HashMap::new();
    for sample in &p.sample {
        let stack: Vec<String> = sample
            .location_id
            .iter()
            .flat_map(|&id| name(id))
            .filter(|f| !f.starts_with("__libc_start") && f != "_start")
            .collect();
        *stacks.entry(stack).or_default() += sample.value[inuse];
    }
    (frame_pointers, stderr, stacks)
}

#[test]
fn frame_pointer_stacks_are_the_dwarf_stacks() {
    let (auto_fp, _, auto) = quickstart_stacks("auto");
    let (dwarf_fp, _, dwarf) = quickstart_stacks("dwarf");
    assert!(auto_fp, "auto did not settle on frame pointers");
    assert!(!dwarf_fp, "HEAPPROF_UNWIND=dwarf used frame pointers");
    for leaf in ["quickstart::retain_buffers", "quickstart::retain_small"] {
        let pick = |stacks: &HashMap<Vec<String>, i64>| -> Vec<(Vec<String>, i64)> {
            let mut v: Vec<_> = stacks
                .iter()
                .filter(|(s, _)| s.first().is_some_and(|f| f == leaf))
                .map(|(s, b)| (s.clone(), *b))
                .collect();
            v.sort();
            v
        };
        let (a, d) = (pick(&auto), pick(&dwarf));
        assert!(!d.is_empty(), "no {leaf} stack in the DWARF profile");
        assert!(
            d[0].0.iter().any(|f| f == "quickstart::main"),
            "{:?}",
            d[0].0
        );
        assert_eq!(a, d, "{leaf}: frame pointers vs DWARF");
    }
}

#[test]
fn an_unknown_unwind_setting_is_reported_and_auto_is_used() {
    let (fp, stderr, _) = quickstart_stacks("fast");
    assert!(
        stderr.contains("HEAPPROF_UNWIND is auto, fp or dwarf; using auto"),
        "{stderr}"
    );
    assert!(fp, "auto did not settle on frame pointers");
}
