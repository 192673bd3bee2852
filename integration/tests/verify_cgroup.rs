//! `heapprof verify` reads a memory cgroup v1 exactly as cAdvisor does: a
//! target runs in a child cgroup this test creates, and verify's usage,
//! working set, rss and limit equal what `memory.stat` and friends say at
//! the same moment (within one page per field).

mod common;

use std::process::Command;

use common::{ChildCgroup, Target, example};

fn within_page(a: &serde_json::Value, b: u64) -> bool {
    a.as_u64().is_some_and(|a| a.abs_diff(b) <= 4096)
}

#[test]
fn v1_child_cgroup_matches_memory_stat() {
    let limit = 256 << 20;
    let cg = ChildCgroup::create(limit);
    let mut target = Target::spawn(&mut Command::new(example("alloc_target")));
    target.line_starting("ready ");
    let pid = target.pid();
    cg.write("cgroup.procs", &pid.to_string());
    target.send("go\n"); // ~1 MB charged to the new cgroup
    target.line_starting("done ");
    // Page cache charged to the cgroup too, so usage != working set:
    // a shell joins the cgroup and writes 16 MiB to a file.
    let dir = common::TempDir::new("cgfile");
    let file = dir.0.join("cache.bin");
    let dd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && dd if=/dev/zero of={} bs=1M count=16 2>/dev/null",
            cg.0,
            file.display()
        ))
        .status()
        .expect("sh");
    assert!(
        dd.success(),
        "writing the cache file from inside the cgroup"
    );

    for mode in [vec![pid.to_string()], vec!["--cgroup".into(), cg.0.clone()]] {
        let mut last = String::new();
        let agreed = (0..5).any(|_| {
            let out = common::heapprof()
                .arg("verify")
                .args(&mode)
                .arg("--json")
                .output()
                .expect("run verify");
            let (usage, ws, rss) = cg.truth();
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            let c = &report["cgroup"];
            last = format!("verify {mode:?}: {c:#}\ntruth usage {usage} ws {ws} rss {rss}");
            assert_eq!(c["dir"], cg.0.as_str(), "{last}");
            assert_eq!(c["version"], "V1");
            assert_eq!(c["limit"], limit, "{last}");
            assert!(c["usage"].as_u64().unwrap() > 0, "{last}");
            assert!(c["cache"].as_u64().unwrap() >= 8 << 20, "{last}");
            within_page(&c["usage"], usage)
                && within_page(&c["working_set"], ws)
                && within_page(&c["rss"], rss)
        });
        assert!(
            agreed,
            "verify and memory.stat disagree by more than a page: {last}"
        );
        eprintln!("{last}");
    }
    drop(target);
}

#[test]
fn gone_process_and_bad_cgroup_are_one_line_errors() {
    let out = common::heapprof()
        .args(["verify", "4194303"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    let out = common::heapprof()
        .args(["verify", "--cgroup", "/no/such/cgroup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("heapprof: no memory cgroup found"), "{err}");
}
