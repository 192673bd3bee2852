//! Incident 4 end to end, "OOMKilled, but the heap was fine": the
//! thread_growth example (flat heap, parked threads piling up, a file read
//! once through the page cache) runs in its own memory cgroup. `heapprof
//! verify PID --duration` reports the heap flat and the RSS growth as
//! thread stacks; the cgroup's working set is below its usage by the
//! inactive file pages, with the numbers memory.stat gives.
//!
//! Needs root (a child memory cgroup); fails with a clear message
//! otherwise, unless HEAPPROF_SKIP_BPF=1.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ChildCgroup, Target, TempDir, bpf_skipped_by_request, example, verify_json};

const MIB: u64 = 1 << 20;

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
        "echo $$ > {}/cgroup.procs && exec {} --serve 127.0.0.1:0 --threads-per-sec 40 \
         --max-threads 240 --file-mb 64 --reread-ms 0",
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
    assert!(after >= before + 60, "threads {before} -> {after}");
    assert!(
        g["thread_stacks"].as_i64().unwrap() > 10 * MIB as i64,
        "{g:#}"
    );
    eprintln!("{}", g["explanation"]);

    // 2. Once growth stopped: the cgroup as the kubelet reads it, and as
    // memory.stat says right after (retry while the kernel still moves).
    std::thread::sleep(Duration::from_secs(4));
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
