//! `heapprof verify --kernel` sees, through tracepoints, a C target map and
//! touch 32 MiB during the window: the mmap, the page faults (with the
//! faulting function on the sampled stacks) and the anonymous RSS rising,
//! whose last value agrees with /proc.

mod common;

use std::process::Command;

use common::{Target, TempDir, bpf_skipped_by_request, verify_json};

const C_TARGET: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define SIZE (32L << 20)
__attribute__((noinline)) void touch_pages(char *p) {
    for (long i = 0; i < SIZE; i += 4096) p[i] = 1;
}
int main(void) {
    char c;
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (read(0, &c, 1) != 1) return 1;
    char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    madvise(p, SIZE, MADV_NOHUGEPAGE); /* one fault per 4 KiB page */
    touch_pages(p);
    printf("done\n");
    fflush(stdout);
    if (read(0, &c, 1) != 1) return 0;
    return 0;
}
"#;

#[test]
fn kernel_sees_mmap_faults_and_rss() {
    if bpf_skipped_by_request("kernel_sees_mmap_faults_and_rss") {
        return;
    }
    let dir = TempDir::new("ktarget");
    let bin = dir.compile_c("k", C_TARGET);
    let mut target = Target::spawn(&mut Command::new(&bin));
    target.line_starting("ready ");
    let pid = target.pid().to_string();
    let (code, report, stderr) = verify_json(&[&pid, "--kernel", "--duration", "2"], &[], || {
        target.send("g");
        target.line_starting("done");
    });
    let k = &report["kernel"];
    let mib32 = 32u64 << 20;
    assert!(
        k["mmap_bytes"].as_u64().unwrap() >= mib32,
        "{k:#}\n{stderr}"
    );
    assert!(k["page_faults"].as_u64().unwrap() >= 8192, "{k:#}");
    let anon = &k["rss_anon"];
    let rise = anon["max"].as_u64().unwrap() - anon["min"].as_u64().unwrap();
    assert!(rise >= mib32 - (1 << 20), "anon RSS rose by {rise}: {k:#}");
    let top = k["fault_stacks"][0]["frames"].to_string();
    assert!(top.contains("touch_pages"), "top fault stack: {top}");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rss_anon_kernel_vs_proc")
        .unwrap_or_else(|| panic!("no rss check: {report:#}"));
    assert_eq!(check["ok"], true, "{check:#}");
    assert_eq!(code, 0, "{report:#}");
    target.send("x");
}
