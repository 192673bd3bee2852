//! Helpers shared by the integration tests: locating binaries, running
//! targets as real processes, running `heapprof verify`.
#![allow(dead_code)] // each test file uses a different subset

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
