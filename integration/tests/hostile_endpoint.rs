//! The endpoint of a real service (the root crate's quickstart with
//! `--serve`) against hostile clients: a flood of slow
//! connections at a 1,024 file-descriptor limit, the gops agent with a
//! token set, and a non-loopback address without a token.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;
use common::serve::Service;

/// quickstart serving on `addr` with a small heap, discovery files in
/// `dir`, its stderr piped (for [`common::collect_stderr`]).
fn quickstart(dir: &TempDir, addr: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::example("quickstart"));
    cmd.arg(dir.0.join("start.pb.gz"))
        .args(["--scale", "0.0625", "--serve", addr])
        .args(extra)
        .env_remove("HEAPPROF_TOKEN")
        .env("HEAPPROF_DIR", dir.0.join("discovery"))
        .env("HEAPPROF_SAMPLE_RATE", "65536")
        .stderr(Stdio::piped());
    cmd
}

/// `GET /metrics` on a fresh connection: the time to a complete 200
/// answer, or why not within `limit`.
fn metrics_within(addr: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let left = || {
        limit
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    conn.set_read_timeout(Some(left())).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        conn.set_read_timeout(Some(left())).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("after {:?}: {e}", start.elapsed())),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") || !text.contains("heapprof_inuse_bytes") {
        return Err(format!("not a metrics answer: {:.200}", text));
    }
    Ok(start.elapsed())
}

/// With the file-descriptor limit at 1,024, 1,100 slow connections (each
/// sends a request head one byte a second, and connects again when
/// closed): with the connection cap (256), the header-read timeout (5 s),
/// the eviction of stalled connections and a deep listen backlog, every
/// `/metrics` asked during the flood answers, each within 10 s
/// (Prometheus' default scrape timeout; 1.6 to 2.7 s measured).
#[test]
fn a_flood_of_slow_connections_does_not_take_metrics_down() {
    const FLOOD: usize = 1_100;
    const BOUND: Duration = Duration::from_secs(10);
    let dir = TempDir::new("hostile-flood");
    let mut cmd = quickstart(&dir, "127.0.0.1:0", &[]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let service = Service::spawn(cmd, "quickstart (1,024 descriptors)");
    let addr = service.addr;
    assert_eq!(metrics_within(addr, BOUND).map(|_| ()), Ok(()), "before");

    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (stop, connected) = (Arc::clone(&stop), Arc::clone(&connected));
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut conn) =
                            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        else {
                            continue;
                        };
                        connected.fetch_add(1, Ordering::Relaxed);
                        let head = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
                        let mut sent = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let byte = head.get(sent).copied().unwrap_or(b'a');
                            if conn.write_all(&[byte]).is_err() {
                                break;
                            }
                            sent += 1;
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                })
                .expect("a flood thread")
        })
        .collect();

    // Let the flood fill the service's slots and its listen backlog.
    std::thread::sleep(Duration::from_secs(3));
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", service.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut most_fds = fds();
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(25) {
        let answered = metrics_within(addr, BOUND * 3);
        most_fds = most_fds.max(fds());
        latencies.push(answered);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let connections = connected.load(Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    eprintln!(
        "{connections} flood connections, at most {most_fds} descriptors open in the service; \
         /metrics: {latencies:?}"
    );
    assert!(
        connections >= FLOOD,
        "the flood connected {connections} times"
    );
    assert!(
        most_fds > 200,
        "the flood held few of the service's descriptors ({most_fds})"
    );
    for (i, answered) in latencies.iter().enumerate() {
        match answered {
            Ok(took) => assert!(*took < BOUND, "/metrics #{i} took {took:?}: {latencies:?}"),
            Err(e) => panic!("/metrics #{i} failed: {e}; all: {latencies:?}"),
        }
    }
    assert_eq!(metrics_within(addr, BOUND).map(|_| ()), Ok(()), "after");
}

/// gops' client side: the port from `<dir>/<pid>`, one signal byte, the
/// answer up to `limit` bytes (the agent closes after answering).
fn gops_ask(dir: &std::path::Path, pid: u32, signal: u8, limit: u64) -> Vec<u8> {
    let port: u16 = std::fs::read_to_string(dir.join(pid.to_string()))
        .expect("a gops port file")
        .trim()
        .parse()
        .expect("a port");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the agent");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(&[signal]).unwrap();
    let mut answer = Vec::new();
    conn.take(limit).read_to_end(&mut answer).unwrap();
    answer
}

/// The gops protocol has no authentication: any local connection would get
/// version, memstats, a heap profile and a copy of the binary. With
/// `HEAPPROF_TOKEN` set the agent stays off (one line says why, no port
/// file is written) while the endpoint requires the token; without one it
/// answers, but BinaryDump stays off unless the service turns it on.
#[test]
fn the_gops_agent_stays_off_with_a_token_and_dumps_no_binary() {
    const VERSION: u8 = 0x4;
    const BINARY_DUMP: u8 = 0x9;
    let dir = TempDir::new("hostile-gops");
    let gops_dir = dir.0.join("gops");

    let mut cmd = quickstart(&dir, "127.0.0.1:0", &["--gops"]);
    cmd.env("HEAPPROF_TOKEN", "s3cret")
        .env("GOPS_CONFIG_DIR", &gops_dir);
    let mut stderr = None;
    let service = Service::spawn_with(cmd, "quickstart --gops with a token", |child| {
        stderr = Some(common::collect_stderr(child));
    });
    let said = common::wait_for_text(stderr.as_ref().unwrap(), "gops agent off");
    assert!(
        said.contains(
            "quickstart: gops agent off: refusing to start: HEAPPROF_TOKEN is set, and the gops \
             protocol has no authentication"
        ),
        "{said}"
    );
    let port_files = std::fs::read_dir(&gops_dir).map_or(0, |d| d.count());
    assert_eq!(port_files, 0, "no port file, no agent");
    let (status, _) = common::serve::http_get(service.addr, "/metrics");
    assert_eq!(status, 401, "the endpoint wants the token");
    let (status, _) = common::serve::http_get_with(
        service.addr,
        "/metrics",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
    drop(service);

    let mut cmd = quickstart(&dir, "127.0.0.1:0", &["--gops"]);
    cmd.env("GOPS_CONFIG_DIR", &gops_dir);
    let service = Service::spawn(cmd, "quickstart --gops without a token");
    let pid = service.pid();
    assert_eq!(
        gops_ask(&gops_dir, pid, VERSION, 1024),
        b"heapprof-http 0.1.0 (Rust)\n"
    );
    let dump = gops_ask(&gops_dir, pid, BINARY_DUMP, 1 << 20);
    assert!(
        dump.len() < 200 && String::from_utf8_lossy(&dump).contains("BinaryDump is off"),
        "{} bytes: {:.200}",
        dump.len(),
        String::from_utf8_lossy(&dump)
    );
}

/// `spawn()` on an address that is not loopback, without a token, says
/// once, on stderr, that anyone who can reach it gets profiles; with a
/// token, or on loopback, it says nothing. (The test binds 0.0.0.0 but
/// talks to loopback only.)
#[test]
fn serving_beyond_loopback_without_a_token_warns_once() {
    let dir = TempDir::new("hostile-nonloopback");
    let warning = "which is not a loopback address, without a token";
    for (addr, token, warnings) in [
        ("0.0.0.0:0", None, 1),
        ("0.0.0.0:0", Some("s3cret"), 0),
        ("127.0.0.1:0", None, 0),
    ] {
        let mut cmd = quickstart(&dir, addr, &[]);
        if let Some(token) = token {
            cmd.env("HEAPPROF_TOKEN", token);
        }
        let mut stderr = None;
        let service = Service::spawn_with(cmd, "quickstart", |child| {
            stderr = Some(common::collect_stderr(child));
        });
        let local = SocketAddr::from(([127, 0, 0, 1], service.addr.port()));
        let auth: &[(&str, &str)] = match token {
            Some(_) => &[("Authorization", "Bearer s3cret")],
            None => &[],
        };
        assert_eq!(common::serve::http_get_with(local, "/metrics", auth).0, 200);
        let said = if warnings > 0 {
            common::wait_for_text(stderr.as_ref().unwrap(), warning)
        } else {
            std::thread::sleep(Duration::from_millis(200));
            stderr.as_ref().unwrap().lock().unwrap().clone()
        };
        assert_eq!(
            said.matches(warning).count(),
            warnings,
            "{addr} token {token:?}: {said}"
        );
        if warnings > 0 {
            assert!(said.contains("set HEAPPROF_TOKEN to require one"), "{said}");
        }
    }
}
