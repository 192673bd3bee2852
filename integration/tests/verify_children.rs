//! Incident 2, "the sidecar, not the service", end to end: a pod-like
//! cgroup with two container cgroups is made under the test's own v1
//! memory cgroup; one runs `sleep` (flat), the other the `log_shipper`
//! example, whose dead-letter queue keeps every line it fails to parse.
//! `heapprof verify --cgroup POD --duration S` reads the pod and its
//! containers at both ends of the window and names the container that
//! grew; `heapprof verify PID --uprobes` on the shipper names
//! `retain_failed_record` on both sides, no check of the profiler fails
//! falsely, and the RSS partition adds up.
//!
//! Needs root (cgroups, uprobes); fails with a clear message otherwise,
//! unless HEAPPROF_SKIP_BPF=1.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Target, TempDir, assert_profiler_not_failed, assert_rss_partition, bpf_skipped_by_request,
    example, verify_json,
};

/// Removes the cgroup directories (children first) once their processes
/// are gone, retrying while the kernel still counts them.
struct Cgroups(Vec<String>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let gone = (0..50).any(|_| {
                let ok = std::fs::remove_dir(dir).is_ok();
                if !ok {
                    std::thread::sleep(Duration::from_millis(100));
                }
                ok
            });
            if !gone {
                eprintln!("could not remove {dir}");
            }
        }
    }
}

/// Runs `argv` inside cgroup `dir` (the shell joins it, then execs).
fn spawn_in(dir: &str, argv: &str, env: &[(&str, &std::path::Path)]) -> Target {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("echo $$ > {dir}/cgroup.procs && exec {argv}"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Target::spawn(&mut cmd)
}

#[test]
fn verify_cgroup_names_the_growing_child_and_the_shipper_leak() {
    if bpf_skipped_by_request("verify_cgroup_names_the_growing_child_and_the_shipper_leak") {
        return;
    }
    let parent = format!(
        "{}/heapprof-pod-{}",
        common::own_memory_cgroup(),
        std::process::id()
    );
    let mut cgroups = Cgroups(Vec::new());
    for dir in [
        parent.clone(),
        format!("{parent}/container-a"),
        format!("{parent}/container-b"),
    ] {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {dir}: {e} (needs root)"));
        cgroups.0.push(dir);
    }
    let tmp = TempDir::new("children");
    let env = [("HEAPPROF_DIR", tmp.0.as_path())];
    let flat = spawn_in(&format!("{parent}/container-a"), "sleep 60", &[]);
    let shipper_cmd = format!(
        "{} --serve 127.0.0.1:0 --lines-per-sec 10000",
        example("log_shipper").display()
    );
    let mut shipper = spawn_in(&format!("{parent}/container-b"), &shipper_cmd, &env);
    shipper.line_starting("listening on http://");
    std::thread::sleep(Duration::from_millis(500)); // both have joined and run

    let out = common::heapprof()
        .args(["verify", "--cgroup", &parent, "--duration", "2", "--json"])
        .output()
        .expect("run verify");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let g = &report["growing_child"];
    eprintln!("children: {:#}", report["children_growth"]);
    assert_eq!(g["name"], "container-b", "{report:#}");
    // About 4 MB/s of dead letters; allow for a loaded machine.
    assert!(
        g["working_set_change"].as_i64().unwrap() >= 2 << 20,
        "{g:#}"
    );
    let a = report["children_growth"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "container-a")
        .expect("container-a row");
    assert!(
        a["working_set_change"].as_i64().unwrap().abs() < 1 << 20,
        "{a:#}"
    );

    let text = common::heapprof()
        .args(["verify", "--cgroup", &parent, "--duration", "1"])
        .output()
        .expect("run verify");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("growing: container-b +")),
        "{text}"
    );

    // Inside the growing container: the process, held against uprobes.
    let pid = shipper.pid().to_string();
    let (code, report, stderr) = verify_json(&[&pid, "--uprobes", "--duration", "3"], &env, || {});
    eprintln!("window: {}", report["window"]["statement"]);
    assert_profiler_not_failed(&report);
    let grower = report["profiler_window"]["top_growth"].to_string();
    assert!(
        grower.contains("log_shipper::retain_failed_record"),
        "the profiler's top grower: {grower}\n{stderr}"
    );
    let top = report["uprobes"]["top_stacks"][0]["frames"].to_string();
    assert!(
        top.contains("log_shipper::retain_failed_record"),
        "the top outstanding uprobe stack: {top}"
    );
    let (sum, rss) = assert_rss_partition(&report);
    eprintln!("{}", report["reconciliation"]["detail"]["explanation"]);
    eprintln!("parts {sum} vs RSS {rss}");
    assert_eq!(code, 0, "{:#}", report["checks"]);
    drop(flat);
    drop(shipper);
    drop(cgroups);
}
