//! Shared by the benches that drive `benches/programs` (a standalone crate
//! with one binary per allocator configuration; see its Cargo.toml).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Frame pointers on (the repository's `.cargo/config.toml` sets them, and a
/// nested cargo started from the repository picks that up) or explicitly
/// off: an empty `RUSTFLAGS` overrides the config file.
const FRAME_POINTERS: &str = "-C force-frame-pointers=yes";
const NO_FRAME_POINTERS: &str = "";

/// Where the programs crate lives and where its builds go.
pub struct Programs {
    /// Built without frame pointers: what a service gets by default.
    pub plain: PathBuf,
    /// The plain configurations built with frame pointers (`-fp` in the
    /// tables), or why they could not be built.
    pub fp: Result<PathBuf, String>,
    /// `Err` with the reason when the `prof` build failed.
    pub prof: Result<PathBuf, String>,
    /// The `prof` build with `-C force-frame-pointers=yes`, for pprof-alloc,
    /// whose default stack walker follows frame pointers.
    pub prof_fp: Result<PathBuf, String>,
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The outer `cargo bench` exports its own settings; the programs crate
    // is a separate workspace with its own profile.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_MANIFEST_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// Where the builds of `benches/programs` go.
pub fn programs_dir() -> PathBuf {
    root().join("target/bench-programs")
}

/// Builds `benches/programs` in release into `target_dir` with `args`,
/// `RUSTFLAGS` and extra environment (cargo's `CARGO_PROFILE_*` settings).
pub fn build(
    target_dir: &Path,
    args: &[&str],
    rustflags: &str,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let manifest = root().join("benches/programs/Cargo.toml");
    eprintln!(
        "building {} into {} {}",
        manifest.display(),
        target_dir.display(),
        args.join(" ")
    );
    let mut cmd = cargo();
    let out = cmd
        .env("RUSTFLAGS", rustflags)
        .envs(env.iter().copied())
        .args(["build", "--release", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first_error = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or("cargo build failed")
        .to_string();
    eprintln!("{stderr}");
    Err(first_error)
}

/// Builds the programs: the plain build (must succeed), and if asked the
/// frame-pointer build of the plain configurations and the `prof` builds
/// (jemalloc with profiling compiled in). Those may fail, reported per
/// configuration.
pub fn build_programs(with_prof: bool, with_fp: bool) -> Programs {
    let base = programs_dir();
    let (plain_name, plain_flags) = plain_build(false);
    let plain_dir = base.join(plain_name);
    if let Err(e) = build(&plain_dir, &["--bins"], plain_flags, &[]) {
        panic!("building benches/programs failed: {e}");
    }
    let (fp_name, fp_flags) = plain_build(true);
    let fp_plain_dir = base.join(fp_name);
    let fp = if !with_fp {
        Err("not built".into())
    } else {
        build(
            &fp_plain_dir,
            &[
                "--bin",
                "jemalloc",
                "--bin",
                "heapprof-jemalloc",
                "--bin",
                "heapprof-system",
            ],
            fp_flags,
            &[],
        )
        .map(|()| fp_plain_dir.join("release"))
    };
    let (prof, prof_fp) = if with_prof {
        let prof_dir = base.join("prof");
        let prof = build(
            &prof_dir,
            &[
                "--features",
                "prof",
                "--bin",
                "jemalloc-prof",
                "--bin",
                "jemalloc-profbuild",
                "--bin",
                "pprof-alloc",
                "--bin",
                "accuracy-jemalloc",
                "--bin",
                "profile-cost-jemalloc",
            ],
            NO_FRAME_POINTERS,
            &[],
        )
        .map(|()| prof_dir.join("release"));
        let fp_dir = base.join("prof-fp");
        let prof_fp = build(
            &fp_dir,
            &["--features", "prof", "--bin", "pprof-alloc"],
            FRAME_POINTERS,
            &[],
        )
        .map(|()| fp_dir.join("release"));
        (prof, prof_fp)
    } else {
        (Err("not built".into()), Err("not built".into()))
    };
    Programs {
        plain: plain_dir.join("release"),
        fp,
        prof,
        prof_fp,
    }
}

/// Builds one program of the plain configurations, without frame pointers
/// (into the plain build's directory) or with them (the `-fp` one), and
/// returns its path.
pub fn build_program(bin: &str, frame_pointers: bool) -> Result<PathBuf, String> {
    let (name, rustflags) = plain_build(frame_pointers);
    let dir = programs_dir().join(name);
    build(&dir, &["--bin", bin], rustflags, &[])?;
    Ok(dir.join("release").join(bin))
}

/// The plain configurations' build without or with frame pointers: its
/// directory's name under [`programs_dir`] and its `RUSTFLAGS`.
fn plain_build(frame_pointers: bool) -> (&'static str, &'static str) {
    if frame_pointers {
        ("fp", FRAME_POINTERS)
    } else {
        ("plain", NO_FRAME_POINTERS)
    }
}

/// A command for one program with a clean profiler environment: every
/// variable any of the profilers reads is removed, then `env` is applied.
pub fn program(path: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(path);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("HEAPPROF_")
            || k.starts_with("PPROF_ALLOC_")
            || k.ends_with("MALLOC_CONF")
            || k == "ALLOCATOR"
        {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c
}

/// Runs `cmd` to completion and returns its standard output; panics,
/// with `what` and both outputs, if it could not run or failed.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// Nearest-rank percentile, `q` in [0, 1].
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

pub fn quick() -> bool {
    std::env::var_os("HEAPPROF_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// The `key=value` fields of a program's `RESULT ...` line (the line
/// without its prefix).
pub fn result_fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Builds `bins` of the programs crate with every Rust function aligned to
/// `2^align_log2` bytes (LLVM's `-align-all-functions`; jemalloc's C code
/// keeps its own), with or without frame pointers, into a directory of its
/// own, and returns the directory the programs are in. Aligning every
/// function moves the workload's code and the wrapper's relative to cache
/// lines and to each other: one more code placement of the same source.
pub fn build_placed(
    align_log2: u32,
    frame_pointers: bool,
    bins: &[&str],
) -> Result<PathBuf, String> {
    let (name, flags) = plain_build(frame_pointers);
    let dir = programs_dir().join(format!("{name}-align{align_log2}"));
    let rustflags = format!("{flags} -C llvm-args=-align-all-functions={align_log2}");
    let args: Vec<&str> = bins.iter().flat_map(|b| ["--bin", b]).collect();
    build(&dir, &args, rustflags.trim(), &[])?;
    Ok(dir.join("release"))
}
