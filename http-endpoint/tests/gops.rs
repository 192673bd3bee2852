//! The gops agent, driven by a client written from the gops protocol: read
//! the port from `<config dir>/<pid>`, connect, send one signal byte, read
//! until the agent closes.

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const STACK_TRACE: u8 = 0x1;
const GC: u8 = 0x2;
const MEM_STATS: u8 = 0x3;
const VERSION: u8 = 0x4;
const HEAP_PROFILE: u8 = 0x5;
const STATS: u8 = 0x7;

#[inline(never)]
fn gops_test_retain() -> Vec<Box<[u8]>> {
    (0..64)
        .map(|_| vec![1u8; 64 * 1024].into_boxed_slice())
        .collect()
}

/// gops' client side: the port from the pid file, one byte, read to EOF.
fn ask(config_dir: &std::path::Path, pid: u32, signal: u8) -> Vec<u8> {
    let port = std::fs::read_to_string(config_dir.join(pid.to_string())).unwrap();
    let port: u16 = port.trim().parse().unwrap();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(&[signal]).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    answer
}

/// One test: the agent and its port file are process-wide.
#[test]
fn gops_client_gets_version_memstats_heap_profile_and_stats() {
    heapprof::set_sample_rate(64 * 1024);
    let kept = black_box(gops_test_retain());
    let dir = temp_dir("gops");
    let addr = heapprof_http::gops::Agent::new()
        .config_dir(&dir)
        .listen()
        .unwrap();
    assert!(addr.ip().is_loopback());
    let pid = std::process::id();
    let port_file = dir.join(pid.to_string());
    assert_eq!(
        std::fs::read_to_string(&port_file).unwrap(),
        addr.port().to_string(),
        "port as plain decimal text"
    );

    let version = String::from_utf8(ask(&dir, pid, VERSION)).unwrap();
    assert_eq!(version, "heapprof-http 0.1.0 (Rust)\n");

    let mem = String::from_utf8(ask(&dir, pid, MEM_STATS)).unwrap();
    let inuse: i64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("heapprof-inuse: "))
        .and_then(|v| v.strip_suffix(" bytes"))
        .unwrap_or_else(|| panic!("no heapprof-inuse line:\n{mem}"))
        .parse()
        .unwrap();
    assert!(
        inuse >= 2 * 1024 * 1024,
        "4 MiB retained, estimate {inuse}:\n{mem}"
    );
    assert!(mem.contains("jemalloc-allocated: "), "{mem}");
    assert!(mem.contains("rss: "), "{mem}");

    let profile = decode(&ask(&dir, pid, HEAP_PROFILE));
    let names = function_names(&profile);
    assert!(
        names.iter().any(|n| n.contains("gops_test_retain")),
        "{names:?}"
    );

    let stats = String::from_utf8(ask(&dir, pid, STATS)).unwrap();
    assert!(stats.starts_with("OS threads: "), "{stats}");
    assert!(stats.contains("num CPU: "), "{stats}");

    // `gops stack`: every thread's stack, Go's goroutine-dump layout; the
    // agent's own thread is caught answering, this one waiting in `ask`
    // (blocked in libc's recv, which keeps no frame pointer).
    let stacks = String::from_utf8(ask(&dir, pid, STACK_TRACE)).unwrap();
    let threads = heapprof::sys::procfs::self_status().threads as usize;
    let headers = stacks.lines().filter(|l| l.starts_with("thread ")).count();
    assert!(
        headers.abs_diff(threads) <= 2,
        "{headers} vs {threads}:\n{stacks}"
    );
    assert!(
        stacks.contains("\"heapprof-gops\" [R (running)]:\nheapprof_http::gops::answer\n\t"),
        "{stacks}"
    );
    assert!(stacks.contains("\ngops::ask\n\t"), "{stacks}");

    assert_eq!(ask(&dir, pid, GC), b"ok");
    let unknown = String::from_utf8(ask(&dir, pid, 0x42)).unwrap();
    assert!(unknown.contains("not supported"), "{unknown}");

    heapprof_http::cleanup();
    assert!(!port_file.exists(), "cleanup removes the port file");
    drop(kept);
}
