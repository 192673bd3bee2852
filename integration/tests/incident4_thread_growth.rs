//! Incident 4 end to end, "OOMKilled, but the heap was fine": the
//! thread_growth example (flat heap, parked threads piling up, a file read
//! once through the page cache) runs in its own memory cgroup. `heapprof
//! verify PID --duration` reports the heap flat and the RSS growth as
//! thread stacks, in a partition of RSS whose parts add up; the profiler
//! is not called wrong against jemalloc (2 live samples are no verdict,
//! and jemalloc's thread-cache structures, about 30 KiB a thread, are not
//! the program's heap); the cgroup's working set is below its usage
//! by the inactive file pages, with the numbers memory.stat gives.
//!
//! Timing on a loaded 2-core machine: the thread cap is far enough that
//! the window never meets it (threads grow at 40/s for 15 s), the growth
//! asked of the window is a quarter of the nominal rate, and the cgroup
//! is compared with memory.stat only once the thread count has stopped
//! moving.
//!
//! Needs root (a child memory cgroup); fails with a clear message
//! otherwise, unless HEAPPROF_SKIP_BPF=1.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    ChildCgroup, Target, TempDir, assert_profiler_not_failed, assert_rss_partition,
    bpf_skipped_by_request, example, verify_json,
};

const MIB: u64 = 1 << 20;
/// Threads the example stops at.
const MAX_THREADS: u64 = 600;
/// Threads it creates per second until then.
const THREADS_PER_SEC: u64 = 40;

/// The target's thread count now.
fn threads(pid: u32) -> u64 {
    heapprof::sys::procfs::read_status(&heapprof::sys::fs::Fs::real(), pid)
        .map(|s| s.threads)
        .unwrap_or(0)
}

#[test]
fn heap_flat_threads_growing_and_working_set_below_usage() {
    if bpf_skipped_by_request("incident4") {
        return;
    }
    let cg = ChildCgroup::create_named(
        &format!("heapprof-incident4-{}", std::process::id()),
        2 << 30,
    );
    let dir = TempDir::new("incident4");
    let exe = example("thread_growth");
    // The shell joins the cgroup, then becomes the example.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} --serve 127.0.0.1:0 --threads-per-sec \
         {THREADS_PER_SEC} --max-threads {MAX_THREADS} --file-mb 64 --reread-ms 0",
        cg.0,
        exe.display()
    );
    let mut target = Target::spawn(
        Command::new("sh")
            .args(["-c", &script])
            .env("HEAPPROF_DIR", &dir.0),
    );
    target.line_starting("listening on http://");
    let pid = target.pid().to_string();
    std::thread::sleep(Duration::from_millis(800));

    // 1. Over a window while threads pile up.
    let env = [("HEAPPROF_DIR", dir.0.as_path())];
    let (_, report, stderr) = verify_json(&[&pid, "--duration", "3"], &env, || {});
    let g = &report["rss_growth"];
    assert!(g.is_object(), "no rss_growth: {report:#}\n{stderr}");
    assert_eq!(g["mostly"], "thread stacks", "{g:#}");
    assert_eq!(g["heap_flat"], true, "{g:#}");
    let (before, after) = (
        g["threads"][0].as_u64().unwrap(),
        g["threads"][1].as_u64().unwrap(),
    );
    let seconds = g["seconds"].as_f64().unwrap();
    let nominal = (THREADS_PER_SEC as f64 * seconds) as u64;
    assert!(
        after < MAX_THREADS,
        "the window must end before the cap: threads {before} -> {after}"
    );
    assert!(
        after >= before + nominal / 4,
        "threads {before} -> {after} in {seconds:.1}s (nominal +{nominal})"
    );
    // Each new thread dirties 256 KiB of its stack.
    let stacks = g["thread_stacks"].as_i64().unwrap();
    assert!(
        stacks >= (after - before) as i64 * 200 * 1024,
        "thread stacks grew {stacks} for {} threads: {g:#}",
        after - before
    );
    eprintln!("{}", g["explanation"]);
    assert_rss_partition(&report);
    assert_profiler_not_failed(&report);
    eprintln!("{}", report["reconciliation"]["detail"]["explanation"]);

    // 2. Once growth stopped (at the cap): the cgroup as the kubelet reads
    // it, and as memory.stat says right after (retry while the kernel
    // still moves).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while threads(target.pid()) < MAX_THREADS && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut last = String::new();
    for _ in 0..5 {
        let (_, report, _) = verify_json(&[&pid], &env, || {});
        let c = &report["cgroup"];
        let (usage, working_set, rss) = cg.truth();
        let (v_usage, v_ws) = (
            c["usage"].as_u64().unwrap(),
            c["working_set"].as_u64().unwrap(),
        );
        let inactive = c["inactive_file"].as_u64().unwrap();
        assert!(
            inactive >= 48 * MIB,
            "the file read once stays inactive: {c:#}"
        );
        assert!(v_ws < v_usage, "working set below usage: {c:#}");
        assert_eq!(
            v_ws,
            v_usage.saturating_sub(inactive),
            "working set = usage - inactive_file"
        );
        let close = |a: u64, b: u64| a.abs_diff(b) <= 4096;
        if close(v_usage, usage)
            && close(v_ws, working_set)
            && close(c["rss"].as_u64().unwrap(), rss)
        {
            drop(target);
            return;
        }
        last = format!(
            "verify {c:#} vs memory.stat usage {usage} working set {working_set} rss {rss}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("verify and memory.stat disagree by more than a page: {last}");
}
