//! Stack capture by frame pointers and by the unwind table, against
//! libgcc's unwinder (`HEAPPROF_UNWIND=dwarf`).
//!
//! This repository builds with frame pointers (`.cargo/config.toml`), so
//! `HEAPPROF_UNWIND=auto` must settle on them here, and the stacks frame
//! pointers and the table record must be the ones libgcc records, on the
//! main thread and on spawned threads. Without frame pointers (what a
//! service gets by default), `auto` must settle on the table, with the
//! same stacks: `tests/no_frame_pointers` is built that way and checked
//! here.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
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

/// `sample_type` bytes per stack of a profile (function names, innermost
/// first, without the C library's process entry points), for the stacks
/// whose innermost function is one of `leaves`.
fn stacks(profile: &Path, sample_type: &str, leaves: &[&str]) -> Vec<(Vec<String>, i64)> {
    let p = decode(&std::fs::read(profile).unwrap());
    let value = value_index(&p, sample_type);
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
    let mut by_stack: HashMap<Vec<String>, i64> = HashMap::new();
    for sample in &p.sample {
        let stack: Vec<String> = sample
            .location_id
            .iter()
            .flat_map(|&id| name(id))
            .filter(|f| !f.starts_with("__libc_start") && f != "_start")
            .collect();
        if stack.first().is_some_and(|f| leaves.contains(&f.as_str())) {
            *by_stack.entry(stack).or_default() += sample.value[value];
        }
    }
    let mut v: Vec<_> = by_stack.into_iter().collect();
    v.sort();
    v
}

/// Asserts two profiles' stacks are equal, showing only the differences.
fn assert_same_stacks(a: &[(Vec<String>, i64)], b: &[(Vec<String>, i64)], what: &str) {
    let only = |x: &[(Vec<String>, i64)], y: &[(Vec<String>, i64)]| -> Vec<(Vec<String>, i64)> {
        x.iter().filter(|s| !y.contains(s)).cloned().collect()
    };
    let (a_only, b_only) = (only(a, b), only(b, a));
    assert!(
        a_only.is_empty() && b_only.is_empty(),
        "{what}: only in the first {a_only:#?}\nonly in the second {b_only:#?}"
    );
}

/// Runs quickstart at rate 1 with `HEAPPROF_UNWIND=mode`; returns its
/// stdout and stderr and its in-use stacks of `retain_buffers` and
/// `retain_small`.
fn quickstart(mode: &str) -> (String, String, Vec<(Vec<String>, i64)>) {
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let leaves = ["quickstart::retain_buffers", "quickstart::retain_small"];
    let stacks = stacks(&out_path, "inuse_space", &leaves);
    let _ = std::fs::remove_dir_all(&dir);
    (stdout, stderr, stacks)
}

#[test]
fn frame_pointer_and_table_stacks_are_the_libgcc_stacks() {
    let (auto_out, _, auto) = quickstart("auto");
    let (table_out, _, table) = quickstart("table");
    let (dwarf_out, _, dwarf) = quickstart("dwarf");
    assert!(
        auto_out.contains("\nunwinder frame-pointers "),
        "{auto_out}"
    );
    assert!(table_out.contains("\nunwinder table "), "{table_out}");
    assert!(dwarf_out.contains("\nunwinder dwarf "), "{dwarf_out}");
    assert!(
        !dwarf.is_empty(),
        "no retaining stack in the libgcc profile"
    );
    assert!(
        dwarf[0].0.iter().any(|f| f == "quickstart::main"),
        "{:?}",
        dwarf[0].0
    );
    assert_same_stacks(&auto, &dwarf, "frame pointers vs libgcc");
    assert_same_stacks(&table, &dwarf, "table vs libgcc");
}

#[test]
fn an_unknown_unwind_setting_is_reported_and_auto_is_used() {
    let (stdout, stderr, _) = quickstart("fast");
    assert!(
        stderr.contains("HEAPPROF_UNWIND is auto, fp, table or dwarf; using auto"),
        "{stderr}"
    );
    assert!(stdout.contains("\nunwinder frame-pointers "), "{stdout}");
}

/// Builds `tests/no_frame_pointers` in release without frame pointers (an
/// empty RUSTFLAGS replaces `.cargo/config.toml`'s) into a target
/// directory of its own next to this test's; returns the program.
fn build_without_frame_pointers() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/this-test
    let target = exe.ancestors().nth(3).expect("target directory");
    let target = target.join("no-frame-pointers");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/no_frame_pointers/Cargo.toml");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cargo.env_remove(var);
    }
    let out = cargo
        .env("RUSTFLAGS", "")
        .args(["build", "--release", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building {}:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("release/stack-check")
}

/// The `key value` pairs of a line of whitespace-separated words.
fn fields(line: &str) -> HashMap<&str, &str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .chunks(2)
        .filter_map(|kv| Some((kv[0], *kv.get(1)?)))
        .collect()
}

#[test]
fn without_frame_pointers_auto_settles_on_the_table_with_the_libgcc_stacks() {
    let program = build_without_frame_pointers();
    // Captures compared in place: threads, qsort, signal handlers.
    let out = Command::new(&program).arg("compare").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: HashMap<&str, usize> = fields(stdout.lines().next().unwrap_or_default())
        .into_iter()
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    assert_eq!(counts["differed"], 0, "{stdout}");
    assert_eq!(counts["fell_back"], 0, "{stdout}");
    assert!(counts["compared"] > 500, "{stdout}");
    // Interrupted instructions the table declines (PLT stubs) are rare.
    assert!(
        counts["signal_fell_back"] * 20 < counts["compared"],
        "{stdout}"
    );

    // The same shapes, sampled through the allocator at rate 1.
    let dir = std::env::temp_dir().join(format!("heapprof-no-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = |mode: &str| {
        let path = dir.join(format!("{mode}.pb.gz"));
        let out = Command::new(&program)
            .arg("profile")
            .arg(&path)
            .env("HEAPPROF_SAMPLE_RATE", "1")
            .env("HEAPPROF_UNWIND", mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (stdout, stacks(&path, "alloc_space", &["stack_check::keep"]))
    };
    let (auto_out, auto) = profile("auto");
    let (table_out, table) = profile("table");
    let (dwarf_out, dwarf) = profile("dwarf");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        auto_out.contains("unwinder table fallbacks 0"),
        "{auto_out}"
    );
    assert!(
        table_out.contains("unwinder table fallbacks 0"),
        "{table_out}"
    );
    assert!(dwarf_out.contains("unwinder dwarf"), "{dwarf_out}");
    // The profile holds every shape: inlined frames, the C library's
    // frames, spawned threads.
    let all: Vec<&String> = dwarf.iter().flat_map(|(s, _)| s).collect();
    for frame in [
        "stack_check::inlined_inner",
        "stack_check::with_large_frame",
        "msort_with_tmp",
        "start_thread",
        "stack_check::main",
    ] {
        assert!(all.iter().any(|f| *f == frame), "no {frame} in {dwarf:#?}");
    }
    assert_same_stacks(&table, &dwarf, "table vs libgcc");
    assert_same_stacks(&auto, &dwarf, "auto vs libgcc");
}

/// A module whose unwind table would not fit the memory cgroup's headroom
/// gets none (its frames go to libgcc) until there is room: the build
/// never pushes the process toward its limit, and it is retried.
#[test]
fn a_table_that_does_not_fit_the_memory_cgroup_waits_for_room() {
    let program = build_without_frame_pointers();
    let Some(cg) = common::cgroup::ChildCgroup::create_or_skip("heapprof-tables", 512 << 20) else {
        return;
    };
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2" tight"#)
        .arg("sh")
        .arg(&cg.0)
        .arg(&program)
        .env("HEAPPROF_SAMPLE_RATE", "0")
        .env_remove("HEAPPROF_UNWIND")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |first: &str| -> HashMap<&str, u64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no {first} line: {stdout}"));
        fields(line.strip_prefix(first).unwrap())
            .into_iter()
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect()
    };
    let (tight, still, roomy) = (line("tight"), line("still"), line("roomy"));
    assert!(tight["deferred"] > 0, "{stdout}");
    assert!(tight["fallbacks"] > 0, "libgcc took the frames: {stdout}");
    // The retry while memory was still short built and published nothing.
    assert_eq!(still["deferred"], tight["deferred"], "{stdout}");
    assert_eq!(
        still["generation_before"], still["generation_after"],
        "{stdout}"
    );
    assert_eq!(still["tables_before"], still["tables_after"], "{stdout}");
    assert_eq!(roomy["deferred"], 0, "{stdout}");
    assert!(roomy["tables"] > 0, "{stdout}");
    assert_eq!(cg.oom_kills(), 0, "{stdout}");
}
