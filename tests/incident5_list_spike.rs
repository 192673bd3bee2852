//! Incident 5 end to end: a list request that killed the control plane.
//!
//! `peak_profile_names_the_list_handler_after_memory_went_down`: a real
//! list_spike process answers 8 concurrent 10,000-pod lists (about 40 MB of
//! JSON each). Afterwards the current heap profile holds nothing of
//! `build_pod_list` (under 5% of its bytes at the peak), while the peak
//! profile names it as the top in-use function.
//!
//! `oom_guard_dumps_before_the_cgroup_limit`: the same process runs in a
//! memory cgroup v1 this test creates, with a 512 MiB limit and the OOM
//! guard on. Clients pile up, one more every 1.5 s, each looping on list
//! requests, until the guard has written a dump or the working set is at
//! the guard's first threshold (80%); then the running clients keep the
//! load there until the guard's dump appears, no new requests start, and
//! ten concurrent lists (800+ MB) push the process into the limit, where
//! the kernel OOM-kills it (reported, not required; one still thrashing at
//! the limit after 30 s is killed by the test). The dumps must be on
//! disk afterwards, and the peak dump must name `build_pod_list` with the
//! burst's bytes: named in process, or, when the kill came between the
//! guard's unsymbolized pass and its named one, by `heapprof pprof-heap`.
//!
//! Why the load stops at 80% instead of one burst straight into the limit:
//! a burst raises memory at about 850 MB/s here, and the guard's named
//! dumps (two profiles) take 0.3 s of CPU in a debug build even with
//! symbols cached, which is seconds of wall time on 2 cores shared with
//! the list builders; a burst into a tight limit is killed before they
//! are written (measured: no dump at limits of baseline + 120, 200 and 400
//! MB). So the guard writes each dump twice: unsymbolized first (on disk
//! 0.1 s after the test sees 80%, against 1.5-2 s for the named dumps),
//! then named in place. With two busy loops beside the test, the single
//! named pass lost the race in 2 of 6 runs (the kill came during the hold,
//! with no file written); the two passes wrote their files in all of 7.
//! The test waits for the named copies while the process lives, and
//! checks a dump the kill left unsymbolized by naming it offline.
//!
//! The cgroup test needs root and cgroup v1's memory controller; with
//! `HEAPPROF_SKIP_BPF=1` it says it was skipped instead of failing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cgroup::ChildCgroup;
use common::serve::Service;

/// The two tests each drive a process with hundreds of MB of requests on a
/// small machine; one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const LIST_PATH: &str = "/api/v1/pods";

/// Longest the burst into the limit is given to end, by the kernel's OOM
/// kill or by the process answering.
const BURST_LIMIT: Duration = Duration::from_secs(30);

/// GETs `path` and reads the body without keeping it; returns the status
/// and body length, or the I/O error (the server may be killed meanwhile).
fn get_discarding(addr: SocketAddr, path: &str) -> std::io::Result<(u16, usize)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let len = std::io::copy(&mut reader.by_ref(), &mut std::io::sink())?;
    Ok((status, len as usize))
}

/// Fires `n` list requests at once and waits for all of them.
fn concurrent_lists(addr: SocketAddr, n: usize) -> Vec<std::io::Result<(u16, usize)>> {
    let threads: Vec<_> = (0..n)
        .map(|_| std::thread::spawn(move || get_discarding(addr, LIST_PATH)))
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

fn profile(service: &Service, path: &str) -> pprof::protos::Profile {
    let (status, body) = service.get(path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    common::decode(&body)
}

/// In-use bytes charged to `build_pod_list` (as the leaf).
fn pod_list_bytes(p: &pprof::protos::Profile) -> i64 {
    common::by_leaf(p, "inuse_space")
        .iter()
        .filter(|(f, _)| f.contains("build_pod_list"))
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn peak_profile_names_the_list_handler_after_memory_went_down() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let service = Service::start("list_spike", &["--serve", "127.0.0.1:0"], &[]);
    for result in concurrent_lists(service.addr, 8) {
        let (status, len) = result.expect("a list request");
        assert_eq!(status, 200);
        assert!(
            len > 35_000_000,
            "a 10,000-pod list is about 40 MB, got {len}"
        );
    }

    let peak = profile(&service, "/debug/pprof/heap?peak=1");
    let (top, top_bytes) = common::top_inuse_leaf(&peak);
    let at_peak = pod_list_bytes(&peak);
    eprintln!("peak profile: top {top} with {top_bytes} bytes; build_pod_list {at_peak}");
    assert!(top.contains("build_pod_list"), "peak's top is {top}");
    assert!(
        at_peak > 80_000_000,
        "8 concurrent lists should overlap at the peak (two 40 MB bodies at least): {at_peak}"
    );

    let current = profile(&service, "/debug/pprof/heap");
    let now = pod_list_bytes(&current);
    eprintln!("current profile: build_pod_list {now} bytes");
    assert!(
        (now as f64) < 0.05 * at_peak as f64,
        "build_pod_list still holds {now} bytes, >= 5% of its {at_peak} at the peak"
    );
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Completed dump files in `dir`, oldest first (by the name's time field).
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("heapprof-") && n.ends_with(".pb.gz"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').nth(2).map(str::to_owned))
            .unwrap_or_default()
    });
    found
}

fn newest(dumps: &[PathBuf], kind: &str) -> Option<PathBuf> {
    dumps
        .iter()
        .rev()
        .find(|p| p.to_string_lossy().ends_with(&format!("-{kind}.pb.gz")))
        .cloned()
}

/// Whether a dump is still the guard's unsymbolized first pass.
fn unsymbolized(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| common::is_unsymbolized(&common::decode(&bytes)))
}

/// The top in-use leaf of a dump and its bytes. A dump the guard had no
/// time to name (killed between its unsymbolized pass and its named one)
/// is named the way its note tells a user to, by `heapprof pprof-heap`.
fn top_of_dump(path: &Path) -> (String, i64) {
    let named = if unsymbolized(path) {
        let cli = common::cli();
        let out = path.with_extension("named.pb.gz");
        let run = std::process::Command::new(&cli)
            .arg("pprof-heap")
            .arg(path)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli.display()));
        assert!(
            run.status.success(),
            "heapprof pprof-heap {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        eprintln!(
            "{}: unsymbolized, named by heapprof pprof-heap",
            path.display()
        );
        out
    } else {
        path.to_owned()
    };
    let bytes = std::fs::read(&named).unwrap_or_else(|e| panic!("{}: {e}", named.display()));
    common::top_inuse_leaf(&common::decode(&bytes))
}

/// Clients that each loop on list requests until stopped; one more is
/// added by [`Clients::add`].
struct Clients {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            served: Arc::new(AtomicUsize::new(0)),
            threads: Vec::new(),
        }
    }

    fn add(&mut self) {
        let (addr, stop, served) = (self.addr, self.stop.clone(), self.served.clone());
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get_discarding(addr, LIST_PATH) {
                    Ok((200, _)) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return, // the server is gone (OOM-killed)
                }
            }
        }));
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn oom_guard_dumps_before_the_cgroup_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const LIMIT: u64 = 512 << 20;
    let Some(cg) = ChildCgroup::create_or_skip("heapprof-spike", LIMIT) else {
        return;
    };
    let dir =
        TempDir(std::env::temp_dir().join(format!("heapprof-spike-dumps-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);

    let mut cmd = cg.serve_command(&common::example("list_spike"));
    cmd.env("HEAPPROF_DUMP_DIR", &dir.0)
        .env_remove("HEAPPROF_DUMP_LIMIT_BYTES");
    let mut service = common::spawn_service(cmd, "list_spike in a memory cgroup");
    let in_cgroup = cg.read("cgroup.procs");
    assert!(
        in_cgroup
            .lines()
            .any(|l| l.trim() == service.pid().to_string()),
        "pid {} is not in {} ({in_cgroup:?})",
        service.pid(),
        cg.0.display()
    );
    // A service that has answered a list and been profiled before, as a
    // running one has: the list handler's stacks are symbolized, so the
    // guard's dump takes milliseconds instead of a debug build's second of
    // first-time symbolization (during which the clients below would push
    // the process into the limit).
    for result in concurrent_lists(service.addr, 1) {
        assert!(matches!(result, Ok((200, _))), "warm-up list: {result:?}");
    }
    profile(&service, "/debug/pprof/heap?peak=1");
    profile(&service, "/debug/pprof/heap");
    // The working set, as the guard and the kubelet count it: usage also
    // holds the page cache of the binary read for symbolization (150 MB
    // when the build is not in the page cache yet), inactive file pages
    // that the kernel reclaims before it OOM-kills anything.
    let baseline = cg.working_set();
    eprintln!(
        "limit {LIMIT}, baseline working set {baseline} (usage {})",
        cg.memory().usage
    );
    assert!(
        baseline < LIMIT / 4,
        "the idle service's working set is already {baseline} of {LIMIT} bytes"
    );

    // Clients pile up, one more every 1.5 s, until the guard has dumped or
    // the working set is at the guard's first threshold.
    let mut clients = Clients::new(service.addr);
    let started = Instant::now();
    let (mut dumped, mut high) = (false, false);
    while !dumped && !high && clients.threads.len() < 10 {
        clients.add();
        let step = Instant::now();
        while step.elapsed() < Duration::from_millis(1500) && !dumped && !high {
            std::thread::sleep(Duration::from_millis(50));
            dumped = !dumps(&dir.0).is_empty();
            high = cg.working_set() as f64 >= 0.8 * LIMIT as f64;
        }
    }
    eprintln!(
        "after {:.1} s with {} clients: dumped {dumped}, working set {} ({:.0}% of the limit), \
         {} lists served, max usage {}",
        started.elapsed().as_secs_f64(),
        clients.threads.len(),
        cg.working_set(),
        100.0 * cg.working_set() as f64 / LIMIT as f64,
        clients.served.load(Ordering::Relaxed),
        cg.read("memory.max_usage_in_bytes").trim(),
    );
    // No more clients, but the ones running keep the working set where it
    // is until the guard's dump appears: the guard samples memory every
    // 100 ms and, on 2 cores busy with list builders, may not have run at
    // the moment the test saw 80%. Stopping the load right away let memory
    // fall back under the threshold before the guard looked (1 run in 6).
    let hold = Instant::now();
    while dumps(&dir.0).is_empty() && hold.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "held the load {:.1} s more until a dump appeared ({} dumps)",
        hold.elapsed().as_secs_f64(),
        dumps(&dir.0).len()
    );
    // No new requests; the guard, now that it has CPU, writes its dumps.
    clients.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dumps(&dir.0).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("dumps before the burst: {}", dumps(&dir.0).len());
    // The guard writes each dump twice: unsymbolized at once, then named in
    // place. Give it the time for the second pass, as the hold above gives
    // the first; a process already killed keeps its first-pass files.
    let naming = Instant::now();
    while dumps(&dir.0).iter().any(|d| unsymbolized(d))
        && service.child.try_wait().ok().flatten().is_none()
        && naming.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let written = dumps(&dir.0);
    let first_pass: Vec<&PathBuf> = written.iter().filter(|d| unsymbolized(d)).collect();
    eprintln!(
        "named in {:.1} s: {} of {} dumps",
        naming.elapsed().as_secs_f64(),
        written.len() - first_pass.len(),
        written.len()
    );
    assert!(
        first_pass.is_empty() || service.child.try_wait().ok().flatten().is_some(),
        "the guard left {first_pass:?} unsymbolized for 20 s in a process that is still running"
    );
    // Then the burst that kills: ten lists at once, 800+ MB against 512.
    // In about one run in five the kernel lets the process thrash at the
    // limit (reclaiming and refaulting its file pages) for 40-140 s before
    // it OOM-kills it; after BURST_LIMIT the test kills it itself, which
    // ends the clients' connections.
    let (sent, burst) = std::sync::mpsc::channel();
    let addr = service.addr;
    std::thread::spawn(move || sent.send(concurrent_lists(addr, 10)));
    let burst = burst.recv_timeout(BURST_LIMIT).unwrap_or_else(|_| {
        eprintln!("burst: no answer in {BURST_LIMIT:?}; the test kills the process");
        let _ = service.child.kill();
        burst
            .recv()
            .expect("the burst's clients end with the process")
    });
    let answered = burst.iter().filter(|r| matches!(r, Ok((200, _)))).count();
    std::thread::sleep(Duration::from_millis(500));
    let exited = service.child.try_wait().ok().flatten();
    eprintln!(
        "burst: {answered} of 10 lists answered; OOM kills in the cgroup: {}; process {}",
        cg.oom_kills(),
        exited.map_or("still running".to_owned(), |s| format!("ended: {s}"))
    );
    let _ = service.child.kill();
    let _ = service.child.wait();
    drop(service);

    let found = dumps(&dir.0);
    let names: Vec<String> = found
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    eprintln!("dumps: {names:?}");
    assert!(
        !found.is_empty(),
        "the OOM guard wrote no dump in {} (limit {LIMIT} bytes)",
        dir.0.display()
    );
    assert!(
        names.iter().any(|n| n.contains("-080pct-current")),
        "no dump at the 80% threshold: {names:?}"
    );
    // The peak dump is the one that names the spike whatever the moment of
    // the dump; the current one does when the dump ran while lists were
    // being built (reported, not required). A dump the kill interrupted
    // between its two passes is unsymbolized: the newest named peak is
    // read, and an unsymbolized one is named offline only when there is no
    // other (a minute for this debug build's debug info).
    let current = newest(&found, "current").expect("a current dump");
    if unsymbolized(&current) {
        eprintln!("{}: unsymbolized (the kill came first)", current.display());
    } else {
        let (top, bytes) = top_of_dump(&current);
        eprintln!("{}: top {top:?} with {bytes} bytes", current.display());
    }
    let named: Vec<PathBuf> = found.iter().filter(|d| !unsymbolized(d)).cloned().collect();
    let peak = newest(&named, "peak")
        .or_else(|| newest(&found, "peak"))
        .unwrap_or_else(|| panic!("no peak dump among {names:?}"));
    let (top, bytes) = top_of_dump(&peak);
    eprintln!("{}: top {top:?} with {bytes} bytes", peak.display());
    assert!(
        top.contains("build_pod_list") && bytes > 80_000_000,
        "{} names {top} ({bytes} bytes) first, not build_pod_list with the lists of the burst",
        peak.display()
    );
    drop(cg);
}
