//! `heapprof verify --uprobes` counts exactly the bytes a target allocates
//! while the probes are attached: a C/glibc target built here, and a
//! Rust/jemalloc one (`examples/alloc_target.rs`).

mod common;

use std::process::Command;

use common::{Target, TempDir, bpf_skipped_by_request, example, family, verify_json};

const C_TARGET: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static void *keep[64];
__attribute__((noinline)) void leak_here(void) {
    for (int i = 0; i < 64; i++) { keep[i] = malloc(1000); memset(keep[i], 1, 1000); }
}
/* ns per malloc(64)+free pair */
__attribute__((noinline)) long bench(int n) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) { void *p = malloc(64); __asm__ volatile("" :: "r"(p) : "memory"); free(p); }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec)) / n;
}
int main(void) {
    char c;
    long base = bench(200000);
    printf("ready %d %ld\n", getpid(), base);
    fflush(stdout);
    if (read(0, &c, 1) != 1) return 1;       /* raw read: no stdio buffer in the window */
    long probed = bench(2000);                /* 2000 pairs, all freed */
    leak_here();                              /* 64 x 1000 live */
    for (int i = 0; i < 10; i++) free(malloc(5000));
    void *z = calloc(100, 30);                /* 3000 live */
    void *r = malloc(100); r = realloc(r, 20000); /* 20000 live */
    void *r0 = realloc(NULL, 777);            /* 777 live (malloc inside realloc) */
    void *pm = NULL; if (posix_memalign(&pm, 64, 4096)) return 2; /* 4096 live */
    void *al = aligned_alloc(64, 128);        /* 128 live */
    printf("done %d %ld\n", 64 * 1000 + 3000 + 20000 + 777 + 4096 + 128, probed);
    fflush(stdout);
    if (read(0, &c, 1) != 1) return 0;
    return z && r && r0 && al ? 0 : 3;
}
"#;

#[test]
fn c_glibc_target_live_bytes_are_exact() {
    if bpf_skipped_by_request("c_glibc_target_live_bytes_are_exact") {
        return;
    }
    let dir = TempDir::new("ctarget");
    let bin = dir.compile_c("target", C_TARGET);

    let mut target = Target::spawn(&mut Command::new(&bin));
    let ready = target.line_starting("ready ");
    let pid = target.pid().to_string();
    let mut done = String::new();
    let (code, report, stderr) = verify_json(&[&pid, "--uprobes", "--duration", "2"], &[], || {
        target.send("g");
        done = target.line_starting("done ");
    });
    let expected: u64 = done.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(expected, 92_001);
    let libc = family(&report, "libc");
    assert_eq!(libc["live_bytes"], expected, "{libc:#}\n{stderr}");
    assert_eq!(libc["live_count"], 69, "{libc:#}");
    assert_eq!(libc["dropped"], 0);
    let top = &report["uprobes"]["top_stacks"][0];
    assert_eq!(top["bytes"], 64_000, "{top:#}");
    assert!(
        top["frames"].to_string().contains("leak_here"),
        "leaking stack named: {top:#}"
    );
    assert_eq!(code, 0, "{report:#}");
    let base: f64 = ready.split_whitespace().nth(2).unwrap().parse().unwrap();
    let probed: f64 = done.split_whitespace().nth(2).unwrap().parse().unwrap();
    eprintln!(
        "cost (glibc malloc+free of 64 B): {base} ns unprobed, {probed} ns probed: {:.0}x; \
         {} probe hits",
        probed / base.max(1.0),
        report["uprobes"]["probe_hits"]
    );
    target.send("x");
}

/// Runs `alloc_target` (with `args` and `env`) under `verify --uprobes`
/// while it allocates its known set; checks the jemalloc family's live
/// bytes and count against it and returns (exit code, report).
fn known_set_under_uprobes(args: &[&str], env: &[(&str, &str)]) -> (i32, serde_json::Value) {
    let mut target = Target::spawn(
        Command::new(example("alloc_target"))
            .args(args)
            .envs(env.iter().copied()),
    );
    target.line_starting("ready ");
    let pid = target.pid().to_string();
    let mut done = String::new();
    let (code, report, stderr) = verify_json(&[&pid, "--uprobes", "--duration", "2"], &[], || {
        target.send("go\n");
        done = target.line_starting("done ");
    });
    let expected: u64 = done.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(expected, 1_015_696);
    let je = family(&report, "jemalloc");
    assert_eq!(je["live_bytes"], expected, "{je:#}\n{stderr}");
    assert_eq!(je["live_count"], 103, "{je:#}");
    (code, report)
}

#[test]
fn rust_jemalloc_target_live_bytes_are_exact() {
    if bpf_skipped_by_request("rust_jemalloc_target_live_bytes_are_exact") {
        return;
    }
    let (code, report) = known_set_under_uprobes(&[], &[]);
    let je = family(&report, "jemalloc");
    let symbols = je["symbols"].to_string();
    for s in [
        "_rjem_malloc",
        "_rjem_mallocx",
        "_rjem_calloc",
        "_rjem_realloc",
        "_rjem_sdallocx",
    ] {
        assert!(
            symbols.contains(&format!("\"{s}\"")),
            "{s} probed: {symbols}"
        );
    }
    // 50 churned buffers were allocated and freed inside the window.
    assert!(je["free_count"].as_u64().unwrap() >= 51, "{je:#}");
    assert_eq!(je["padded"], 0, "sampling is off: {je:#}");
    // Frame-pointer unwinding through jemalloc (built without frame
    // pointers) may skip the immediate caller; the binary's frames remain.
    let stacks = report["uprobes"]["top_stacks"].to_string();
    assert!(stacks.contains("alloc_target::"), "stacks: {stacks}");
    assert_eq!(code, 0, "{report:#}");
}

/// With every allocation sampled, heapprof pads the small ones' blocks
/// (4 KiB more asked of jemalloc) and says so at `heapprof_sampled_block`:
/// the uprobes still count exactly the bytes the program asked for.
#[test]
fn padded_samples_stay_exact() {
    if bpf_skipped_by_request("padded_samples_stay_exact") {
        return;
    }
    // Frame pointers: no unwind-table thread starting inside the window.
    let (code, report) = known_set_under_uprobes(&["1"], &[("HEAPPROF_UNWIND", "fp")]);
    let je = family(&report, "jemalloc");
    // The vector of boxes, 100 boxes, 1000 bytes grown to 10000, 50
    // churned buffers: padded; the 64-byte-aligned box is not.
    let padded = je["padded"].as_u64().unwrap();
    assert!(padded >= 153, "{je:#}");
    assert_eq!(
        je["padding_bytes"].as_u64().unwrap(),
        padded * 4096,
        "{je:#}"
    );
    assert!(
        report["uprobes"]["sampled_block_probe"].is_string(),
        "{:#}",
        report["uprobes"]
    );
    assert_eq!(code, 0, "{report:#}");
}
