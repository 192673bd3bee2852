//! Helpers shared by the integration tests: locating binaries, running
//! targets as real processes, running `heapprof verify`.
#![allow(dead_code)] // each test file uses a different subset

/// Running an example as a service, shared with the root crate's tests.
#[path = "../../../tests/common/serve.rs"]
pub mod serve;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The `heapprof` binary under test.
pub fn heapprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_heapprof"))
}

/// An example binary built by cargo next to the test binary
/// (target/debug/deps/test-xxx -> target/debug/examples/NAME).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --examples`) so the \
         example `{name}` is built",
        path.display()
    );
    path
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("heapprof-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl TempDir {
    /// Compiles C `source` with frame pointers (for user stacks) into an
    /// executable named `name` in this directory.
    pub fn compile_c(&self, name: &str, source: &str) -> PathBuf {
        let src = self.0.join(format!("{name}.c"));
        let bin = self.0.join(name);
        std::fs::write(&src, source).unwrap();
        let cc = Command::new("cc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("cc (gcc) must be installed");
        assert!(cc.success(), "compiling the C target {name} failed");
        bin
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A target process driven over stdin/stdout, killed on drop.
pub struct Target {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl Target {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line starting with `prefix` (earlier lines skipped).
    pub fn line_starting(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("target stdout");
            assert!(n > 0, "target exited before printing `{prefix}`");
            if line.starts_with(prefix) {
                return line.trim().to_string();
            }
        }
    }

    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).expect("write to target");
        stdin.flush().expect("flush target stdin");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True (and says so) when the run asked to skip BPF tests explicitly.
pub fn bpf_skipped_by_request(test: &str) -> bool {
    if std::env::var("HEAPPROF_SKIP_BPF").as_deref() == Ok("1") {
        eprintln!("{test}: skipped by request (HEAPPROF_SKIP_BPF=1)");
        return true;
    }
    false
}

/// Runs `heapprof verify ARGS --json`; calls `on_attached` once verify
/// says the uprobes are attached. Returns exit code, JSON and stderr.
/// Panics with a clear message when the kernel refuses BPF.
pub fn verify_json(
    args: &[&str],
    env: &[(&str, &Path)],
    on_attached: impl FnOnce(),
) -> (i32, serde_json::Value, String) {
    let mut cmd = heapprof();
    cmd.arg("verify").args(args).arg("--json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn heapprof verify");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut err_text = String::new();
    let mut on_attached = Some(on_attached);
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains(" attached to ")
            && let Some(f) = on_attached.take()
        {
            f();
        }
        err_text.push_str(&line);
        line.clear();
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("verify stdout");
    let code = child.wait().expect("wait verify").code().unwrap_or(-1);
    assert!(
        !err_text.contains("uprobes need root"),
        "BPF refused by the kernel: {err_text}\nrun as root (or with CAP_BPF+CAP_PERFMON), \
         or set HEAPPROF_SKIP_BPF=1 to skip BPF tests explicitly"
    );
    let json = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("verify {args:?} exited {code}, bad JSON ({e}): {out}\nstderr: {err_text}")
    });
    (code, json, err_text)
}

/// The uprobe counts of allocator `family` in a verify report.
pub fn family<'a>(report: &'a serde_json::Value, family: &str) -> &'a serde_json::Value {
    report["uprobes"]["families"]
        .as_array()
        .expect("uprobes.families")
        .iter()
        .find(|f| f["family"] == family)
        .unwrap_or_else(|| panic!("no {family} family in {report:#}"))
}

/// The v1 memory cgroup directory of this test process.
pub fn own_memory_cgroup() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = own
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            ctl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .expect("this test needs a cgroup v1 memory controller (none in /proc/self/cgroup)");
    format!("/sys/fs/cgroup/memory{}", path.trim_end_matches('/'))
}

/// A child memory cgroup of the test's own, removed on drop.
pub struct ChildCgroup(pub String);

impl ChildCgroup {
    /// Creates `heapprof-test-<pid>` with `limit` bytes.
    pub fn create(limit: u64) -> Self {
        Self::create_named(&format!("heapprof-test-{}", std::process::id()), limit)
    }

    /// Creates child cgroup `name` of the test's own with `limit` bytes.
    pub fn create_named(name: &str, limit: u64) -> Self {
        let dir = format!("{}/{name}", own_memory_cgroup());
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {dir}: {e} (needs root)"));
        let cg = Self(dir);
        cg.write("memory.limit_in_bytes", &limit.to_string());
        cg
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(format!("{}/{file}", self.0), value)
            .unwrap_or_else(|e| panic!("writing {value} to {}/{file}: {e}", self.0));
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(format!("{}/{file}", self.0)).expect("cgroup file")
    }

    /// usage, working set, rss as cAdvisor computes them, read now.
    pub fn truth(&self) -> (u64, u64, u64) {
        let usage: u64 = self.read("memory.usage_in_bytes").trim().parse().unwrap();
        let stat = heapprof::sys::cgroup::parse_stat(&self.read("memory.stat"));
        let inactive = stat["total_inactive_file"];
        (usage, usage.saturating_sub(inactive), stat["total_rss"])
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0);
    }
}

/// The parts of `reconciliation` (every numeric field but `rss`, `anon`
/// and `threads`).
pub const RSS_PARTS: [&str; 7] = [
    "file",
    "shmem",
    "thread_stacks",
    "live_heap",
    "allocator_retained",
    "profiler",
    "other_anon",
];

/// Asserts what `verify` promises about `reconciliation`: its numeric
/// fields other than `rss`, `anon` and `threads` are exactly the parts of
/// the partition, each a byte count (a non-negative integer), and they
/// sum to RSS within 1%. Returns (sum of the parts, rss).
pub fn assert_rss_partition(report: &serde_json::Value) -> (u64, u64) {
    let x = &report["reconciliation"];
    let fields = x
        .as_object()
        .unwrap_or_else(|| panic!("no reconciliation: {report:#}"));
    let mut numeric: Vec<&str> = fields
        .iter()
        .filter(|(_, v)| v.is_number())
        .map(|(k, _)| k.as_str())
        .filter(|k| !["rss", "anon", "threads"].contains(k))
        .collect();
    numeric.sort_unstable();
    let mut parts = RSS_PARTS.to_vec();
    parts.sort_unstable();
    assert_eq!(numeric, parts, "reconciliation's numeric fields: {x:#}");
    let sum: u64 = RSS_PARTS
        .iter()
        .map(|p| {
            x[*p]
                .as_u64()
                .unwrap_or_else(|| panic!("{p} is not a byte count: {x:#}"))
        })
        .sum();
    let rss = x["rss"].as_u64().expect("rss");
    assert!(
        sum.abs_diff(rss) as f64 <= 0.01 * rss as f64,
        "parts sum to {sum}, RSS is {rss}: {x:#}"
    );
    (sum, rss)
}

/// The check named `name`.
pub fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {:#}", report["checks"]))
}

/// Asserts that no check of the profiler (window_*, profiler_vs_*) says
/// "disagrees": each agrees or has too few samples to judge. Prints them.
pub fn assert_profiler_not_failed(report: &serde_json::Value) {
    for c in report["checks"].as_array().expect("checks") {
        let name = c["name"].as_str().unwrap_or("");
        if name.starts_with("window_") || name.starts_with("profiler_vs_") {
            eprintln!("{name}: {}", c["verdict"]);
            assert_ne!(
                c["status"], "disagrees",
                "false failure of the profiler: {c:#}"
            );
            assert_eq!(c["ok"], true, "{c:#}");
        }
    }
}

/// Asserts that check `name` was judged and agrees.
pub fn assert_agrees(report: &serde_json::Value, name: &str) {
    let c = check(report, name);
    assert_eq!(c["status"], "agrees", "{c:#}");
}

/// Spawns example `name` with `--serve 127.0.0.1:0` and `args`, its
/// discovery files in `dir`; returns it and the address it serves.
pub fn serve_example(
    name: &str,
    args: &[&str],
    dir: &TempDir,
    env: &[(&str, &str)],
) -> (Target, String) {
    let mut cmd = Command::new(example(name));
    cmd.args(["--serve", "127.0.0.1:0"])
        .args(args)
        .env("HEAPPROF_DIR", &dir.0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut target = Target::spawn(&mut cmd);
    let addr = target
        .line_starting("listening on http://")
        .trim_start_matches("listening on http://")
        .to_string();
    (target, addr)
}

/// True when this test may go on as root; false (and says so) when it
/// needs root and the run asked to skip such tests (`HEAPPROF_SKIP_BPF=1`);
/// otherwise panics saying why root is needed.
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if heapprof::sys::files::euid() == 0 {
        return true;
    }
    if bpf_skipped_by_request(test) {
        return false;
    }
    panic!(
        "{test} needs root ({why}); run it as root, or set HEAPPROF_SKIP_BPF=1 to skip \
         tests that need root explicitly"
    );
}

/// Copies `binaries` into `dir` with mode 0755 (and makes `dir` 0755), so
/// that processes of other users can run them wherever the build lives.
pub fn share_binaries(dir: &TempDir, binaries: &[&Path]) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    mode(&dir.0).expect("chmod the shared directory");
    binaries
        .iter()
        .map(|bin| {
            let to = dir.0.join(bin.file_name().expect("a file name"));
            std::fs::copy(bin, &to).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
            mode(&to).expect("chmod a shared binary");
            to
        })
        .collect()
}

/// How a command run by [`run_within`] ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit code, or `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: std::time::Duration,
    /// Peak resident memory of the process, bytes (`wait4`'s `ru_maxrss`).
    pub max_rss: u64,
}

/// Runs `cmd` to its end with piped output; kills it and panics when it
/// takes longer than `limit` (a hang is what some tests look for).
// The child is reaped with wait4 (for its peak RSS), not Child::wait.
#[allow(clippy::zombie_processes)]
pub fn run_within(cmd: &mut Command, limit: std::time::Duration) -> Finished {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = r.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: pid is our own child, not yet reaped (std's Child is
        // never waited on here); the pointers are to live locals.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        assert_eq!(reaped, 0, "wait4: {}", std::io::Error::last_os_error());
        if !timed_out && start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        !timed_out,
        "{cmd:?} did not finish within {limit:?}: killed\nstdout: {stdout}\nstderr: {stderr}"
    );
    Finished {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout,
        stderr,
        elapsed,
        max_rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// A TCP server on loopback standing for whatever a hostile discovery
/// file or command line can point the CLI at: each connection gets its
/// request head read, then `answer`. Counts connections; stops on drop.
pub struct FakeServer {
    pub addr: std::net::SocketAddr,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeServer {
    pub fn start(answer: impl Fn(&mut std::net::TcpStream) + Send + Sync + 'static) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        let (count, stopped) = (Arc::clone(&connections), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let answer = Arc::clone(&answer);
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read_exact(&mut byte).is_ok() {
                        head.push(byte[0]);
                    }
                    answer(&mut conn);
                });
            }
        });
        FakeServer {
            addr,
            connections,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Collects `child`'s piped stderr from now on, in the background; the
/// text so far is in the returned string.
pub fn collect_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr piped");
    let sink = std::sync::Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Waits up to 5 s for `text` to contain `needle`; the text then.
pub fn wait_for_text(text: &std::sync::Mutex<String>, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let now = text.lock().unwrap().clone();
        if now.contains(needle) || start.elapsed() > std::time::Duration::from_secs(5) {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
