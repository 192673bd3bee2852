//! Verifier cost: how much `heapprof verify` slows an allocation-heavy
//! target down in each of its modes, against bcc's `memleak-bpfcc` on the
//! same target in the same run, and whether both name the leak of a
//! leaking example in their top outstanding stack.
//!
//! `cargo bench --bench verifier_cost` (`HEAPPROF_BENCH_QUICK=1`: two
//! rounds of 1 s measurements instead of five of 3 s). Needs root (BPF);
//! memleak needs `apt-get install bpfcc-tools linux-headers-amd64`.
//!
//! How:
//! - Builds `heapprof` (heapprof-cli) and the examples `quickstart` and
//!   `stealth_leak` with a nested `cargo build --release` into
//!   `target/bench-verifier`, and `churn-system` of `benches/programs`
//!   (`--features http`) into `target/bench-verifier/programs`, both from
//!   the repository root so that `.cargo/config.toml` (frame pointers)
//!   applies.
//! - Two targets, one table each ([`Workload`]), the same churn in both:
//!   `quickstart --serve 127.0.0.1:0 --commands` (heapprof over
//!   tikv-jemallocator) and `churn-system 127.0.0.1:0` (heapprof over
//!   glibc's malloc, the allocator memleak probes). A measurement sends
//!   `churn BYTES` commands for a fixed time and times each one up to its
//!   `done` answer; churn allocates and frees blocks of 16 B to 64 KiB
//!   (about 32 KiB on average), one at a time. The figure is nanoseconds
//!   per allocation (each is one alloc + free pair), from the number of
//!   blocks churn makes for BYTES (its generator, the same in both
//!   targets, is mirrored in [`churn_allocations`]). The chunk size is
//!   doubled until one command takes 25 ms, so the pipe round trip stays
//!   below 1 %.
//! - Modes: `none`, `heapprof verify PID --duration W` (no BPF),
//!   `... --kernel`, `... --uprobes`, `memleak-bpfcc -p PID W 1`. Timing
//!   starts only once the tool is attached: heapprof prints "... attached
//!   to PID" for BPF modes, and without BPF it is sleeping in its window
//!   (`/proc/PID/syscall`); memleak's probes are its `perf_event` file
//!   descriptors, counted until stable (bcc compiles for seconds first).
//! - One fresh target per round, warmed up by 10 s of churn, shared by all
//!   modes of that round, which run interleaved with unattached
//!   measurements: none, A, none, B, ..., none. Each attached figure is
//!   divided by the mean of the unattached ones just before and after it;
//!   the tables show medians over rounds (for `none`, over all its
//!   measurements).
//! - Cost per probed call, for the tools that probe churn's calls: the
//!   time an attached mode adds per allocation (its figure minus the mean
//!   of the unattached ones around it) over the [`CALLS_PER_ALLOC`]
//!   allocator calls each allocation makes. Both tools put a uprobe on the
//!   entry and a uretprobe on the return of malloc (or `_rjem_malloc`)
//!   and a uprobe on free (or `_rjem_sdallocx`), and take a user stack at
//!   each allocation.
//! - Agreement: `stealth_leak --leak-interval-ms 200` leaks 1 MiB every
//!   200 ms from `background_leak`. `heapprof verify --uprobes --json` and
//!   then memleak watch it for windows of the same length (one after the
//!   other: they cannot probe one process at once, see [`agreement`]); the
//!   bench reports whether the top outstanding stack of each names
//!   `background_leak`, and its bytes.
//!
//! memleak probes `malloc`, `free`, `mmap`, ... in libc (its `-O` default).
//! quickstart and stealth_leak allocate through jemalloc (tikv-jemallocator's
//! `_rjem_*` symbols in the executable), which memleak has no probe for; it
//! sees only libc's own allocations and the `mmap`s by which jemalloc grows
//! its arenas, charged to whichever allocation made it grow. `-O
//! <executable>` is tried once on quickstart and its outcome reported (the
//! executable does not define `malloc`, so bcc refuses it). churn-system
//! allocates through libc, so there both tools probe the same calls.
//!
//! Machine-readable lines: `VERIFIER <target> <mode> <ns-per-alloc> <ratio>
//! <added-ns-per-call>` (the last field is `-` for modes that do not probe
//! churn's calls; the mode `none` has ratio 1.00; `VERIFIER <target> <mode>
//! failed|unavailable`) and `AGREE heapprof=<yes|no>
//! memleak=<yes|no|unavailable>`.

#[path = "verifier_cost/memleak.rs"]
mod memleak;
#[path = "verifier_cost/process.rs"]
mod process;
#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use memleak::{Memleak, Stack, find_memleak, memleak_attached, parse_memleak};
use process::{Target, Tool};
use support::{median, quick};

/// One churn command should take at least this long.
const COMMAND_TARGET: Duration = Duration::from_millis(25);

/// Extra seconds of a tool's window beyond the measurement (calibration of
/// the chunk size, detection of the attachment).
const WINDOW_SLACK_SECS: u64 = 3;

/// stealth_leak leaks 1 MiB this often in the agreement check.
const LEAK_INTERVAL_MS: u64 = 200;

/// Attempts to attach a tool before giving up. bcc 0.26's Python binding
/// passes an uninitialized `ref_ctr_offset` with each uprobe (bcc issue
/// #5236; 0x6 here, at times), and the kernel refuses a second uprobe with
/// another offset at the same file address, whatever the process (dmesg:
/// "ref_ctr_offset mismatch"): memleak can fail to attach while another
/// tool (`heapprof verify --uprobes`, which passes 0, e.g. in a concurrent
/// test) probes the same libc function, and the other way round. (bcc also
/// always reports "Failed to detach BPF from uprobe" at exit: it looks for
/// tracefs, which is not mounted here.)
const ATTACH_ATTEMPTS: usize = 3;

/// A fresh target churns this long before the first measurement: on the
/// VM of BENCHMARKS.md quickstart ran 20-30 % slower for its first 6-10 s.
const WARMUP: Duration = Duration::from_secs(10);

/// Allocator calls per churn allocation: one malloc (`_rjem_malloc` in
/// quickstart) and one free (`_rjem_sdallocx`). heapprof's uprobe counts
/// of both are printed under each table as a check.
const CALLS_PER_ALLOC: f64 = 2.0;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn work_dir() -> PathBuf {
    root().join("target/bench-verifier")
}

// ---------------------------------------------------------------- building

struct Binaries {
    heapprof: PathBuf,
    quickstart: PathBuf,
    churn_system: PathBuf,
    stealth_leak: PathBuf,
}

/// `cargo build --release --target-dir DIR ARGS` from the repository root.
/// The outer `cargo bench` holds the lock of its own target dir, so the
/// nested build must not inherit it; RUSTFLAGS would replace the
/// frame-pointer flags of `.cargo/config.toml` (which cargo finds from the
/// working directory, also for `--manifest-path benches/programs/...`).
fn cargo_build(target_dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_MANIFEST_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(root())
        .args(["build", "--release", "--target-dir"])
        .arg(target_dir)
        .args(args);
    eprintln!("building into {}: {}", target_dir.display(), args.join(" "));
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "nested cargo build {args:?} failed");
}

fn build() -> Binaries {
    cargo_build(&work_dir(), &["-p", "heapprof-cli", "--bin", "heapprof"]);
    cargo_build(
        &work_dir(),
        &[
            "-p",
            "heapprof",
            "--example",
            "quickstart",
            "--example",
            "stealth_leak",
        ],
    );
    // A workspace of its own (benches/programs/Cargo.toml), hence its own
    // target directory; the `http` feature brings heapprof-http.
    let programs = work_dir().join("programs");
    cargo_build(
        &programs,
        &[
            "--manifest-path",
            "benches/programs/Cargo.toml",
            "--features",
            "http",
            "--bin",
            "churn-system",
        ],
    );
    let release = work_dir().join("release");
    Binaries {
        heapprof: release.join("heapprof"),
        quickstart: release.join("examples/quickstart"),
        churn_system: programs.join("release/churn-system"),
        stealth_leak: release.join("examples/stealth_leak"),
    }
}

/// A command with none of the profiler's settings from the environment,
/// and a discovery directory of its own (shared by targets and `verify`).
fn command(path: &Path) -> Command {
    let mut c = Command::new(path);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HEAPPROF_") {
            c.env_remove(k);
        }
    }
    c.env("HEAPPROF_DIR", work_dir().join("discovery"));
    c
}

// ---------------------------------------------------------------- targets

/// A target that churns on command, timed in a table of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// `examples/quickstart.rs`: heapprof over tikv-jemallocator.
    Quickstart,
    /// `benches/programs/src/churn_system.rs`: heapprof over the system
    /// allocator (glibc), the same churn.
    ChurnSystem,
}

impl Workload {
    const ALL: [Workload; 2] = [Workload::Quickstart, Workload::ChurnSystem];

    fn name(self) -> &'static str {
        match self {
            Workload::Quickstart => "quickstart",
            Workload::ChurnSystem => "churn-system",
        }
    }

    /// The allocator churn goes through, for the table's title.
    fn allocator(self) -> &'static str {
        match self {
            Workload::Quickstart => {
                "heapprof::Profiler<Jemalloc>: _rjem_malloc/_rjem_sdallocx in the executable"
            }
            Workload::ChurnSystem => "heapprof::Profiler<System>: glibc's malloc/free",
        }
    }

    /// The family `verify --uprobes` counts churn's calls in.
    fn family(self) -> &'static str {
        match self {
            Workload::Quickstart => "jemalloc",
            Workload::ChurnSystem => "libc",
        }
    }

    /// Whether `mode` probes the allocator calls churn makes (memleak
    /// probes libc only).
    fn probed_by(self, mode: Mode) -> bool {
        match mode {
            Mode::Uprobes => true,
            Mode::Memleak => self == Workload::ChurnSystem,
            _ => false,
        }
    }

    fn exe(self, bins: &Binaries) -> &Path {
        match self {
            Workload::Quickstart => &bins.quickstart,
            Workload::ChurnSystem => &bins.churn_system,
        }
    }

    /// Starts a fresh target, serving heapprof and reading commands.
    fn spawn(self, bins: &Binaries) -> Target {
        let mut cmd = command(self.exe(bins));
        match self {
            Workload::Quickstart => cmd.arg(work_dir().join("quickstart-heap.pb.gz")).args([
                "--serve",
                "127.0.0.1:0",
                "--commands",
            ]),
            Workload::ChurnSystem => cmd.arg("127.0.0.1:0"),
        };
        Target::spawn(cmd)
    }
}

// ---------------------------------------------------------------- measuring

/// Blocks `churn(total)` allocates in examples/quickstart.rs and in
/// benches/programs/src/churn_system.rs (a copy of it): the same xorshift
/// generator, seed and size rule (16 B + 0..65 520, the last one cut to
/// what is left). Keep in step with those functions.
fn churn_allocations(total: u64) -> u64 {
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let (mut done, mut blocks) = (0u64, 0u64);
    while done < total {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        done += (16 + rng % 65_521).min(total - done);
        blocks += 1;
    }
    blocks
}

#[derive(Clone, Copy, Debug)]
struct Throughput {
    ns_per_alloc: f64,
    mib_per_sec: f64,
    /// Allocations made, calibration included.
    allocations: u64,
}

/// Churns for `budget` with commands of about [`COMMAND_TARGET`] each.
fn measure(t: &mut Target, budget: Duration, counts: &mut HashMap<u64, u64>) -> Throughput {
    let mut count = |bytes: u64| {
        *counts
            .entry(bytes)
            .or_insert_with(|| churn_allocations(bytes))
    };
    let mut chunk: u64 = 1 << 20;
    let mut allocations = 0;
    loop {
        let took = t.churn(chunk);
        allocations += count(chunk);
        if took >= COMMAND_TARGET || chunk >= 1 << 40 {
            break;
        }
        chunk *= 2;
    }
    let per_command = count(chunk);
    let (mut elapsed, mut commands) = (Duration::ZERO, 0u64);
    while elapsed < budget {
        elapsed += t.churn(chunk);
        commands += 1;
    }
    allocations += commands * per_command;
    let secs = elapsed.as_secs_f64();
    Throughput {
        ns_per_alloc: secs * 1e9 / (commands * per_command) as f64,
        mib_per_sec: (commands * chunk) as f64 / secs / (1 << 20) as f64,
        allocations,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    None,
    Verify,
    Kernel,
    Uprobes,
    Memleak,
    /// memleak with `-O <target executable>` (only if it attaches).
    MemleakExe,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Verify => "verify",
            Mode::Kernel => "verify-kernel",
            Mode::Uprobes => "verify-uprobes",
            Mode::Memleak => "memleak",
            Mode::MemleakExe => "memleak-O-exe",
        }
    }
}

struct Setup {
    bins: Binaries,
    memleak: Result<Memleak, String>,
    /// Measurement time per mode and round.
    budget: Duration,
}

impl Setup {
    /// The tool's window, whole seconds (memleak's interval is an integer).
    fn window_secs(&self) -> u64 {
        self.budget.as_secs_f64().ceil() as u64 + WINDOW_SLACK_SECS
    }

    /// The command line of `mode`, as printed in the table.
    fn shown(&self, mode: Mode) -> String {
        let w = self.window_secs();
        let exe = self.bins.quickstart.display();
        match mode {
            Mode::None => "(nothing attached)".into(),
            Mode::Verify => format!("heapprof verify PID --duration {w} --json"),
            Mode::Kernel => format!("heapprof verify PID --kernel --duration {w} --json"),
            Mode::Uprobes => format!("heapprof verify PID --uprobes --duration {w} --json"),
            Mode::Memleak | Mode::MemleakExe => {
                let obj = if mode == Mode::MemleakExe {
                    format!("-O {exe} ")
                } else {
                    String::new()
                };
                match &self.memleak {
                    Ok(m) => m.shown(&format!("{obj}-p PID {w} 1")),
                    Err(_) => format!("memleak-bpfcc {obj}-p PID {w} 1"),
                }
            }
        }
    }

    /// Starts the tool of `mode` on `pid` and waits until it is attached.
    fn attach(&self, mode: Mode, pid: u32) -> Result<Tool, String> {
        let w = self.window_secs().to_string();
        let pid_s = pid.to_string();
        let heapprof = |flag: Option<&str>| {
            let mut c = command(&self.bins.heapprof);
            c.args(["verify", &pid_s, "--duration", &w, "--json"])
                .args(flag);
            c
        };
        match mode {
            Mode::None => Err("nothing to attach".into()),
            Mode::Verify => {
                let mut tool = Tool::spawn(heapprof(None))?;
                // Without BPF, verify reads /proc and the profile, then
                // sleeps through its window (clock_nanosleep or nanosleep).
                tool.wait_until("sleeping in its window", Duration::from_secs(30), |p| {
                    std::fs::read_to_string(format!("/proc/{p}/syscall"))
                        .is_ok_and(|s| s.starts_with("230 ") || s.starts_with("35 "))
                })?;
                Ok(tool)
            }
            Mode::Kernel | Mode::Uprobes => {
                let flag = if mode == Mode::Kernel {
                    "--kernel"
                } else {
                    "--uprobes"
                };
                let mut tool = Tool::spawn(heapprof(Some(flag)))?;
                tool.wait_stderr(&format!("attached to {pid}"), Duration::from_secs(60))?;
                Ok(tool)
            }
            Mode::Memleak | Mode::MemleakExe => {
                let m = self.memleak.as_ref().map_err(Clone::clone)?;
                let mut args = Vec::new();
                if mode == Mode::MemleakExe {
                    args.extend(["-O".to_string(), self.bins.quickstart.display().to_string()]);
                }
                args.extend(["-p".into(), pid_s.clone(), w.clone(), "1".into()]);
                let mut tool = Tool::spawn(m.command(&args))?;
                memleak_attached(&mut tool)?;
                Ok(tool)
            }
        }
    }
}

/// One attached measurement and what the tool said about its window.
struct Attached {
    throughput: Throughput,
    /// For uprobes: the allocations and frees the probes counted in the
    /// family churn goes through.
    probe_calls: Option<(u64, u64)>,
    /// For memleak: outstanding bytes and stacks it reported.
    memleak_outstanding: Option<(u64, usize)>,
    /// The window ended before the measurement did.
    window_short: bool,
}

fn run_attached(
    setup: &Setup,
    workload: Workload,
    mode: Mode,
    t: &mut Target,
    counts: &mut HashMap<u64, u64>,
) -> Result<Attached, String> {
    let tool = attach_retrying(setup, mode, t.pid())?;
    let attached = Instant::now();
    let throughput = measure(t, setup.budget, counts);
    let window_short = attached.elapsed() >= Duration::from_secs(setup.window_secs());
    let (status, out, err) = tool.finish(Duration::from_secs(setup.window_secs() + 120));
    let failed = |what: &str| format!("{} {what} ({status:?}): {err}", mode.name());
    let mut r = Attached {
        throughput,
        probe_calls: None,
        memleak_outstanding: None,
        window_short,
    };
    match mode {
        Mode::Memleak | Mode::MemleakExe => {
            if !out.contains("stacks with outstanding allocations") {
                return Err(failed("printed no report"));
            }
            let stacks = parse_memleak(&out);
            r.memleak_outstanding = Some((stacks.iter().map(|s| s.bytes).sum(), stacks.len()));
        }
        _ => {
            // verify exits 1 when a check fails, 2 on errors.
            let json: serde_json::Value =
                serde_json::from_str(&out).map_err(|_| failed("printed no JSON report"))?;
            let family = json["uprobes"]["families"]
                .as_array()
                .and_then(|fams| fams.iter().find(|f| f["family"] == workload.family()));
            if mode == Mode::Uprobes
                && let Some(f) = family
            {
                let n = |key: &str| f[key].as_u64().unwrap_or(0);
                r.probe_calls = Some((n("alloc_count"), n("free_count") + n("free_unknown")));
            }
        }
    }
    Ok(r)
}

/// [`Setup::attach`], up to [`ATTACH_ATTEMPTS`] times.
fn attach_retrying(setup: &Setup, mode: Mode, pid: u32) -> Result<Tool, String> {
    let mut attempt = 1;
    loop {
        match setup.attach(mode, pid) {
            Ok(tool) => return Ok(tool),
            Err(e) if attempt < ATTACH_ATTEMPTS => {
                eprintln!("  {} did not attach ({e}); retrying", mode.name());
                attempt += 1;
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("{e} ({attempt} attempts)")),
        }
    }
}

/// Tries memleak with `-O <executable>` once: it attaches only if the
/// executable defines libc's allocator names.
fn try_memleak_exe(setup: &Setup, t: &Target) -> Result<(), String> {
    setup.attach(Mode::MemleakExe, t.pid()).map(drop)
}

// ---------------------------------------------------------------- agreement

/// What a tool reported outstanding on stealth_leak.
struct Outstanding {
    /// The stack with the most bytes.
    top: Stack,
    /// Stacks reported, and those naming `background_leak`: their bytes
    /// and allocations.
    stacks: usize,
    leak_stacks: usize,
    leak_bytes: u64,
    leak_count: u64,
}

fn names_leak(s: &Stack) -> bool {
    s.frames.iter().any(|f| f.contains("background_leak"))
}

impl Outstanding {
    fn of(stacks: Vec<Stack>) -> Option<Outstanding> {
        let leak: Vec<&Stack> = stacks.iter().filter(|s| names_leak(s)).collect();
        let (leak_stacks, leak_bytes, leak_count) = (
            leak.len(),
            leak.iter().map(|s| s.bytes).sum(),
            leak.iter().map(|s| s.count).sum(),
        );
        let n = stacks.len();
        let top = stacks.into_iter().max_by_key(|s| s.bytes)?;
        Some(Outstanding {
            top,
            stacks: n,
            leak_stacks,
            leak_bytes,
            leak_count,
        })
    }
}

struct Agreement {
    heapprof: Result<Outstanding, String>,
    memleak: Result<Outstanding, String>,
    /// heapprof's own profile: the site that grew most over the window.
    profiler_growth: Option<(i64, Vec<String>)>,
    command_heapprof: String,
    command_memleak: String,
}

fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Both tools on one `stealth_leak`, one after the other over windows of
/// `secs`: they cannot probe it at the same time, because the Python
/// binding of bcc 0.26 passes an uninitialized `ref_ctr_offset` to the
/// kernel (bcc issue #5236), which then refuses a second uprobe with
/// another offset at the same address (EINVAL, "ref_ctr_offset mismatch").
fn agreement(setup: &Setup, secs: u64) -> Agreement {
    let mut cmd = command(&setup.bins.stealth_leak);
    cmd.args([
        "--serve",
        "127.0.0.1:0",
        "--leak-interval-ms",
        &LEAK_INTERVAL_MS.to_string(),
    ]);
    let target = Target::spawn(cmd);
    let pid = target.pid().to_string();

    let heapprof_args = format!("verify {pid} --uprobes --duration {secs} --json --top 5");
    let mut profiler_growth = None;
    let heapprof = Tool::spawn({
        let mut c = command(&setup.bins.heapprof);
        c.args(heapprof_args.split(' '));
        c
    })
    .and_then(|tool| {
        let (status, out, err) = tool.finish(Duration::from_secs(secs + 120));
        let json: serde_json::Value = serde_json::from_str(&out)
            .map_err(|_| format!("heapprof verify printed no JSON ({status:?}): {err}"))?;
        let growth = &json["profiler_window"]["top_growth"];
        profiler_growth = growth[1].as_i64().map(|b| (b, json_strings(&growth[0])));
        let stacks = json["uprobes"]["top_stacks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| Stack {
                        bytes: s["bytes"].as_u64().unwrap_or(0),
                        count: s["count"].as_u64().unwrap_or(0),
                        frames: json_strings(&s["frames"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Outstanding::of(stacks).ok_or_else(|| "no outstanding stacks in the uprobes report".into())
    });

    let memleak_args = format!("-p {pid} {secs} 1");
    let memleak = setup.memleak.as_ref().map_err(Clone::clone).and_then(|m| {
        let args: Vec<String> = memleak_args.split(' ').map(String::from).collect();
        let mut attempt = 1;
        let tool = loop {
            let mut tool = Tool::spawn(m.command(&args))?;
            match memleak_attached(&mut tool) {
                Ok(()) => break tool,
                Err(e) if attempt < ATTACH_ATTEMPTS => {
                    eprintln!("memleak did not attach to stealth_leak ({e}); retrying");
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        };
        let (status, out, err) = tool.finish(Duration::from_secs(secs + 120));
        Outstanding::of(parse_memleak(&out)).ok_or_else(|| {
            if out.contains("stacks with outstanding allocations") {
                "no outstanding allocations reported".to_string()
            } else {
                format!("no report ({status:?}): {err}")
            }
        })
    });
    drop(target);
    let shown_memleak = match &setup.memleak {
        Ok(m) => m.shown(&memleak_args),
        Err(_) => format!("memleak-bpfcc {memleak_args}"),
    };
    Agreement {
        heapprof,
        memleak,
        profiler_growth,
        command_heapprof: format!("heapprof {heapprof_args}"),
        command_memleak: shown_memleak,
    }
}

// ---------------------------------------------------------------- report

fn ns(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A stack on one line, innermost first: up to the frame that names
/// `background_leak` (at most 16), else the first 8.
fn frames_line(frames: &[String]) -> String {
    let leak = frames.iter().position(|f| f.contains("background_leak"));
    let n = leak.map_or(8, |i| i + 1).min(16);
    let mut line = frames[..n.min(frames.len())].join(" <- ");
    if frames.len() > n {
        line.push_str(&format!(" <- ... ({} frames in all)", frames.len()));
    }
    line
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// One attached measurement, against the unattached ones around it.
#[derive(Clone, Copy)]
struct Sample {
    throughput: Throughput,
    /// Its ns per allocation over the mean of those unattached figures.
    ratio: f64,
    /// Its ns per allocation minus that mean.
    added_ns: f64,
}

/// Everything the rounds on one target measured.
struct Results {
    workload: Workload,
    /// Modes timed (in round order), memleak-O-exe only if it attached.
    modes: Vec<Mode>,
    none: Vec<Throughput>,
    /// Per mode, one sample per round.
    attached: HashMap<Mode, Vec<Sample>>,
    failures: HashMap<Mode, String>,
    /// verify --uprobes: allocations and frees the probes counted, and the
    /// allocations the bench made.
    probe_check: Vec<(u64, u64, u64)>,
    /// memleak: (outstanding bytes, stacks) at the end of each window.
    memleak_seen: Vec<(u64, usize)>,
    /// memleak -O <executable> (tried on quickstart only).
    exe_attempt: Option<Result<(), String>>,
}

fn run_rounds(setup: &Setup, workload: Workload, rounds: usize) -> Results {
    let mut r = Results {
        workload,
        modes: vec![Mode::Verify, Mode::Kernel, Mode::Uprobes],
        none: Vec::new(),
        attached: HashMap::new(),
        failures: HashMap::new(),
        probe_check: Vec::new(),
        memleak_seen: Vec::new(),
        exe_attempt: None,
    };
    if setup.memleak.is_ok() {
        r.modes.push(Mode::Memleak);
    }
    let name = workload.name();
    let mut counts = HashMap::new();
    for round in 1..=rounds {
        let mut t = workload.spawn(&setup.bins);
        if t.frame_pointers == Some(false) {
            println!("warning: {name} was built without frame pointers");
        }
        if workload == Workload::Quickstart && r.exe_attempt.is_none() && setup.memleak.is_ok() {
            let attempt = try_memleak_exe(setup, &t);
            if attempt.is_ok() {
                r.modes.push(Mode::MemleakExe);
            }
            r.exe_attempt = Some(attempt);
        }
        measure(&mut t, WARMUP, &mut counts);
        let mut before = measure(&mut t, setup.budget, &mut counts);
        r.none.push(before);
        eprintln!(
            "{name} round {round}/{rounds} target {}: none {} ns",
            t.pid(),
            ns(before.ns_per_alloc)
        );
        for mode in r.modes.clone() {
            let result = run_attached(setup, workload, mode, &mut t, &mut counts);
            let after = measure(&mut t, setup.budget, &mut counts);
            r.none.push(after);
            match result {
                Ok(a) => {
                    let around = mean(&[before.ns_per_alloc, after.ns_per_alloc]);
                    let sample = Sample {
                        throughput: a.throughput,
                        ratio: a.throughput.ns_per_alloc / around,
                        added_ns: a.throughput.ns_per_alloc - around,
                    };
                    eprintln!(
                        "  {} {} ns ({:.2}x); none {} ns",
                        mode.name(),
                        ns(a.throughput.ns_per_alloc),
                        sample.ratio,
                        ns(after.ns_per_alloc)
                    );
                    if a.window_short {
                        eprintln!("  warning: the {} window ended too early", mode.name());
                    }
                    if let Some((allocs, frees)) = a.probe_calls {
                        r.probe_check
                            .push((allocs, frees, a.throughput.allocations));
                    }
                    if let Some(o) = a.memleak_outstanding {
                        r.memleak_seen.push(o);
                    }
                    r.attached.entry(mode).or_default().push(sample);
                }
                Err(e) => {
                    eprintln!("  {}: {e}", mode.name());
                    r.failures.insert(mode, e);
                }
            }
            before = after;
        }
    }
    r
}

fn mib(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Prints the table of one target and its notes; returns its `VERIFIER`
/// lines.
fn print_table(setup: &Setup, r: &Results, rounds: usize) -> Vec<String> {
    let target = r.workload.name();
    let churn_mean = (1u64 << 30) as f64 / churn_allocations(1 << 30) as f64;
    println!();
    println!(
        "Verifier cost: {target} churn through {} (blocks of 16 B..64 KiB, mean \
         {churn_mean:.0} B, each freed at once); {rounds} rounds x {:.0} s per mode, one fresh \
         target per round; medians",
        r.workload.allocator(),
        setup.budget.as_secs_f64()
    );
    let row = |mode: &str, ns_alloc: &str, mib_s: &str, ratio: &str, call: &str, cmd: &str| {
        println!("{mode:<15} {ns_alloc:>10} {mib_s:>11} {ratio:>12} {call:>13}  {cmd}");
    };
    row(
        "MODE",
        "NS/ALLOC",
        "ALLOC MIB/S",
        "X UNATTACHED",
        "ADDED NS/CALL",
        "COMMAND",
    );
    let none_ns = median(&r.none.iter().map(|t| t.ns_per_alloc).collect::<Vec<_>>());
    let none_mib = median(&r.none.iter().map(|t| t.mib_per_sec).collect::<Vec<_>>());
    row(
        "none",
        &ns(none_ns),
        &mib(none_mib),
        "1.00",
        "-",
        &setup.shown(Mode::None),
    );
    let mut machine = vec![format!("VERIFIER {target} none {} 1.00 -", ns(none_ns))];
    for &mode in &r.modes {
        let Some(v) = r.attached.get(&mode) else {
            let why = r.failures.get(&mode).cloned().unwrap_or_default();
            row(mode.name(), "failed", "", "", "", &why);
            machine.push(format!("VERIFIER {target} {} failed", mode.name()));
            continue;
        };
        let of = |f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let per_alloc = of(|s| s.throughput.ns_per_alloc);
        let ratio = of(|s| s.ratio);
        let per_call = if r.workload.probed_by(mode) {
            ns(of(|s| s.added_ns) / CALLS_PER_ALLOC)
        } else {
            "-".into()
        };
        row(
            mode.name(),
            &ns(per_alloc),
            &mib(of(|s| s.throughput.mib_per_sec)),
            &format!("{ratio:.2}"),
            &per_call,
            &setup.shown(mode),
        );
        machine.push(format!(
            "VERIFIER {target} {} {} {ratio:.2} {per_call}",
            mode.name(),
            ns(per_alloc)
        ));
    }
    if let Err(e) = &setup.memleak {
        row("memleak", "unavailable", "", "", "", e);
        machine.push(format!("VERIFIER {target} memleak unavailable"));
    }
    println!();
    println!("X UNATTACHED: each attached figure over the mean of the unattached ones around it.");
    println!(
        "ADDED NS/CALL: the attached figure minus that mean, over the {CALLS_PER_ALLOC} allocator \
         calls (malloc, free) of an allocation; only for tools that probe those calls."
    );
    let family = r.workload.family();
    for (allocs, frees, issued) in &r.probe_check {
        println!(
            "verify --uprobes counted {allocs} {family} allocations and {frees} frees in its \
             window; the bench made {issued} allocations (the rest is the target's own)"
        );
    }
    if !r.memleak_seen.is_empty() {
        let seen: Vec<String> = r
            .memleak_seen
            .iter()
            .map(|(bytes, stacks)| format!("{bytes} B in {stacks} stacks"))
            .collect();
        println!(
            "memleak reported outstanding at the end of its window, per round: {}",
            seen.join(", ")
        );
    }
    match &r.exe_attempt {
        Some(Ok(())) => {
            println!("memleak -O <quickstart executable>: attached (row memleak-O-exe)")
        }
        Some(Err(e)) => println!("memleak -O <quickstart executable>: cannot attach: {e}"),
        None => {}
    }
    if setup.memleak.is_ok() && r.workload == Workload::Quickstart {
        println!(
            "note: memleak probes libc's malloc/calloc/realloc/free/posix_memalign/memalign/\
             aligned_alloc/valloc/pvalloc and mmap/munmap; the target allocates through \
             jemalloc's _rjem_malloc/_rjem_sdallocx in its executable, which memleak does \
             not probe: it sees none of the churn"
        );
    }
    if setup.memleak.is_ok() && r.workload == Workload::ChurnSystem {
        println!(
            "note: here memleak and verify --uprobes probe the same calls: glibc's malloc \
             (entry and return) and free (entry), 3 probe hits per allocation; both take a \
             user stack per allocation. heapprof's free probe sits 3 bytes in, past the \
             `test %rdi,%rdi` that the kernel cannot emulate and single-steps; memleak's \
             sits on it"
        );
    }
    machine
}

/// Prints the agreement; returns the `AGREE` line.
fn print_agreement(agree: &Agreement, secs: u64) -> String {
    println!();
    println!(
        "Agreement on stealth_leak --leak-interval-ms {LEAK_INTERVAL_MS} (1 MiB per interval \
         from background_leak: at most {} MiB per window), {secs} s windows, heapprof then \
         memleak:",
        secs * 1000 / LEAK_INTERVAL_MS
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut line = Vec::new();
    for (who, cmd, r) in [
        ("heapprof", &agree.command_heapprof, &agree.heapprof),
        ("memleak", &agree.command_memleak, &agree.memleak),
    ] {
        println!("  {cmd}");
        match r {
            Ok(o) => {
                let named = names_leak(&o.top);
                println!(
                    "    top outstanding stack: {} bytes in {} allocations; names background_leak: {}",
                    o.top.bytes,
                    o.top.count,
                    yes(named)
                );
                println!("    frames: {}", frames_line(&o.top.frames));
                println!(
                    "    {} of the {} stacks reported name background_leak: {} bytes in {} allocations",
                    o.leak_stacks, o.stacks, o.leak_bytes, o.leak_count
                );
                line.push(format!("{who}={}", yes(named)));
            }
            Err(e) => {
                println!("    unavailable: {e}");
                line.push(format!("{who}=unavailable"));
            }
        }
    }
    if let Some((bytes, frames)) = &agree.profiler_growth {
        println!(
            "  (heapprof's own profile, same window: top growth {bytes} bytes at {})",
            frames_line(frames)
        );
    }
    format!("AGREE {}", line.join(" "))
}

fn main() {
    let (rounds, budget, agree_secs) = if quick() {
        (2, Duration::from_secs(1), 3)
    } else {
        (5, Duration::from_secs(3), 6)
    };
    let bins = build();
    let _ = std::fs::create_dir_all(work_dir().join("discovery"));
    let memleak = find_memleak();
    if let Err(e) = &memleak {
        println!("memleak-bpfcc unavailable: {e}");
    }
    let setup = Setup {
        bins,
        memleak,
        budget,
    };
    let results: Vec<Results> = Workload::ALL
        .iter()
        .map(|&w| run_rounds(&setup, w, rounds))
        .collect();
    let agree = agreement(&setup, agree_secs);
    let machine: Vec<String> = results
        .iter()
        .flat_map(|r| print_table(&setup, r, rounds))
        .collect();
    let agree_line = print_agreement(&agree, agree_secs);
    println!();
    for line in machine {
        println!("{line}");
    }
    println!("{agree_line}");
}
