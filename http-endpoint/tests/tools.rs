//! The tools people point at the endpoint, run for real: `go tool pprof`
//! reads `/debug/pprof/heap` straight from the URL, and `promtool check
//! metrics` accepts `/metrics`. A missing tool fails the test (it does not
//! skip): install Go and Prometheus' promtool (Debian: golang-go,
//! prometheus).

mod common;

use std::hint::black_box;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;
use heapprof_http::Config;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Keeps 16 MiB live: the top in-use function of this process.
#[inline(never)]
fn tools_test_retain() -> Vec<Box<[u8]>> {
    (0..256)
        .map(|_| vec![1u8; 64 * 1024].into_boxed_slice())
        .collect()
}

fn server() -> SocketAddr {
    static SERVER: OnceLock<SocketAddr> = OnceLock::new();
    *SERVER.get_or_init(|| {
        heapprof::set_sample_rate(64 * 1024);
        std::mem::forget(black_box(tools_test_retain()));
        Config::new()
            .announce(false)
            .spawn("127.0.0.1:0")
            .unwrap()
            .detach()
    })
}

fn run(program: &str, args: &[&str], stdin: &[u8], install_hint: &str) -> std::process::Output {
    let tmp = temp_dir(&format!("tools-{program}"));
    let mut child = Command::new(program)
        .args(args)
        .env("PPROF_TMPDIR", &tmp)
        .env("HOME", &tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): {install_hint}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn go_tool_pprof_reads_the_heap_endpoint_directly() {
    let url = format!("http://{}/debug/pprof/heap", server());
    let out = run(
        "go",
        &["tool", "pprof", "-top", "-sample_index=inuse_space", &url],
        b"",
        "install Go (Debian: apt-get install golang-go)",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof failed:\n{stderr}\n{stdout}"
    );
    assert!(stderr.contains("Fetching profile over HTTP"), "{stderr}");
    let first_row = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_else(|| panic!("no rows:\n{stdout}"));
    assert!(
        first_row.contains("tools_test_retain"),
        "the retaining function is the top row:\n{stdout}"
    );
}

#[test]
fn promtool_accepts_the_metrics() {
    let r = get(server(), "/metrics");
    assert_eq!(r.status, 200);
    let out = run(
        "promtool",
        &["check", "metrics"],
        &r.body,
        "install Prometheus' promtool (Debian: apt-get install prometheus)",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}\n---\n{}",
        r.text()
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}
