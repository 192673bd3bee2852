//! Every route over real HTTP against a spawned server (`Config::spawn`),
//! in a process profiled by heapprof, plus the discovery file.

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::OnceLock;

use common::*;
use heapprof_http::{Announcement, Config};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Keeps 8 MiB live from one recognizable function.
#[inline(never)]
fn routes_test_retain() -> Vec<Box<[u8]>> {
    (0..128)
        .map(|_| vec![1u8; 64 * 1024].into_boxed_slice())
        .collect()
}

/// One open server and its retained heap, shared by the tests of this file.
fn server() -> SocketAddr {
    static SERVER: OnceLock<SocketAddr> = OnceLock::new();
    *SERVER.get_or_init(|| {
        heapprof::set_sample_rate(64 * 1024);
        std::mem::forget(black_box(routes_test_retain()));
        let dir = temp_dir("routes-discovery");
        Config::new()
            .discovery_dir(&dir)
            .spawn("127.0.0.1:0")
            .unwrap()
            .detach()
    })
}

#[test]
fn heap_is_gzipped_pprof_naming_the_retaining_function() {
    let r = get(server(), "/debug/pprof/heap");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"heap\"")
    );
    let p = decode(&r.body);
    let types: Vec<_> = p
        .sample_type
        .iter()
        .map(|t| p.string_table[t.ty as usize].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    let names = function_names(&p);
    assert!(
        names.iter().any(|n| n.contains("routes_test_retain")),
        "{names:?}"
    );
}

#[test]
fn allocs_defaults_to_alloc_space() {
    let r = get(server(), "/debug/pprof/allocs?gc=1");
    assert_eq!(r.status, 200, "{}", r.text());
    let p = decode(&r.body);
    assert_eq!(
        p.string_table[p.default_sample_type as usize],
        "alloc_space"
    );
}

#[test]
fn debug_1_is_text_and_seconds_is_a_delta() {
    let r = get(server(), "/debug/pprof/heap?debug=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(r.text().starts_with("heap profile: "), "{}", r.text());

    let r = get(server(), "/debug/pprof/heap?seconds=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"heap-delta\"")
    );
    let p = decode(&r.body);
    assert!(
        p.duration_nanos >= 1_000_000_000,
        "delta covers the window: {}",
        p.duration_nanos
    );
}

#[test]
fn bad_parameters_are_400_with_the_reason() {
    for (path, reason) in [
        (
            "/debug/pprof/heap?seconds=abc",
            "expected a whole number of seconds",
        ),
        (
            "/debug/pprof/heap?seconds=-1",
            "expected a whole number of seconds",
        ),
        ("/debug/pprof/heap?seconds=100000", "from 1 to 300"),
        ("/debug/pprof/heap?debug=7", "debug=\"7\": expected 0 or 1"),
        ("/debug/pprof/heap?gc=x", "gc=\"x\": expected 0 or 1"),
        (
            "/debug/pprof/profile?seconds=abc",
            "expected a whole number",
        ),
    ] {
        let r = get(server(), path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(reason), "{path}: {}", r.text());
    }
}

#[test]
fn index_cmdline_and_metrics() {
    let r = get(server(), "/debug/pprof/");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("<a href='heap?debug=1'>heap</a>"),
        "{}",
        r.text()
    );

    let r = get(server(), "/debug/pprof/cmdline");
    assert_eq!(r.status, 200);
    let argv: Vec<String> = std::env::args().collect();
    assert_eq!(r.text(), argv.join("\0"));

    let r = get(server(), "/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    let inuse: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("heapprof_inuse_bytes "))
        .expect("heapprof_inuse_bytes")
        .parse()
        .unwrap();
    assert!(
        inuse >= 4.0 * 1024.0 * 1024.0,
        "8 MiB retained, estimate {inuse}"
    );
    assert!(
        text.contains("heapprof_jemalloc_allocated_bytes "),
        "{text}"
    );
}

#[inline(never)]
fn symbol_target() -> u64 {
    black_box(42)
}

#[test]
fn symbol_speaks_gos_remote_symbolization_protocol() {
    let r = get(server(), "/debug/pprof/symbol");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "num_symbols: 1\n");

    let pc = symbol_target as fn() -> u64 as usize;
    let body = format!("{pc:#x}+0x1");
    let r = request(
        server(),
        "POST",
        "/debug/pprof/symbol",
        &[],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{pc:#x} ")))
        .unwrap_or_else(|| panic!("{pc:#x} not resolved:\n{text}"));
    assert!(line.contains("symbol_target"), "{line}");
}

#[test]
fn discovery_file_names_this_process_and_goes_away_with_the_server() {
    let dir = temp_dir("routes-discovery-own");
    let server = Config::new()
        .discovery_dir(&dir)
        .spawn("127.0.0.1:0")
        .unwrap();
    let path = server.discovery_file().unwrap().to_owned();
    assert_eq!(path, dir.join(format!("{}.json", std::process::id())));
    let a: Announcement = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(a.pid, std::process::id());
    assert_eq!(a.addr, server.addr().to_string());
    assert_eq!(a.version, "0.1.0");
    assert_eq!(a.cmdline, std::env::args().collect::<Vec<_>>());
    let addr = server.addr();
    assert_eq!(get(addr, "/debug/pprof/cmdline").status, 200);
    server.shutdown();
    assert!(!path.exists(), "discovery file removed on shutdown");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed after shutdown"
    );
}

#[test]
fn a_token_protects_every_route() {
    let server = Config::new()
        .token(Some("t0ken".into()))
        .announce(false)
        .spawn("127.0.0.1:0")
        .unwrap();
    let addr = server.addr();
    for path in [
        "/debug/pprof/",
        "/debug/pprof/heap",
        "/debug/pprof/allocs",
        "/debug/pprof/cmdline",
        "/debug/pprof/symbol",
        "/metrics",
    ] {
        let none = get(addr, path);
        assert_eq!(none.status, 401, "{path}");
        assert!(
            none.text().contains("Authorization: Bearer"),
            "{}",
            none.text()
        );
        let wrong = request(addr, "GET", path, &[("Authorization", "Bearer t0keN")], b"");
        assert_eq!(wrong.status, 401, "{path}");
        let right = request(addr, "GET", path, &[("Authorization", "Bearer t0ken")], b"");
        assert_eq!(right.status, 200, "{path}: {}", right.text());
    }
}
