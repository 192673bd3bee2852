//! Incident 2, "the sidecar, not the service": `heapprof verify --cgroup
//! POD --duration S` reads a pod cgroup and its container cgroups at both
//! ends of the window and names the container that grew. A parent cgroup
//! with two children is made under the test's own v1 memory cgroup; one
//! child runs `sleep` (flat), the other a C program that allocates and
//! touches 2 MiB every 100 ms.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Target, TempDir};

const GROWER: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    for (int i = 0; i < 600; i++) {
        char *p = malloc(2 << 20);
        memset(p, i, 2 << 20);
        usleep(100000);
    }
    return 0;
}
"#;

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
fn spawn_in(dir: &str, argv: &str) -> Target {
    Target::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {dir}/cgroup.procs && exec {argv}")),
    )
}

#[test]
fn verify_cgroup_names_the_growing_child() {
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
    let grower = tmp.compile_c("grower", GROWER);
    let flat = spawn_in(&format!("{parent}/container-a"), "sleep 60");
    let growing = spawn_in(
        &format!("{parent}/container-b"),
        &grower.display().to_string(),
    );
    std::thread::sleep(Duration::from_millis(300)); // both have joined

    let out = common::heapprof()
        .args(["verify", "--cgroup", &parent, "--duration", "2", "--json"])
        .output()
        .expect("run verify");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let g = &report["growing_child"];
    eprintln!("children: {:#}", report["children_growth"]);
    assert_eq!(g["name"], "container-b", "{report:#}");
    // ~20 steps of 2 MiB in 2 s; allow for scheduling.
    assert!(
        g["working_set_change"].as_i64().unwrap() >= 20 << 20,
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
    drop(flat);
    drop(growing);
    drop(cgroups);
}
