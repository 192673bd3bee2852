//! Helpers shared by the end-to-end tests: locating example binaries built
//! by `cargo test`, running them, and reading pprof profiles.
#![allow(dead_code)]

pub mod cgroup;
pub mod serve;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use pprof::protos::{Message, Profile};

/// Path of an example binary built by this `cargo test` run
/// (target/<profile>/examples/<name>).
pub fn example(name: &str) -> PathBuf {
    let path = example_dir().join(name);
    assert!(
        path.exists(),
        "example binary {} is missing: run the tests with `cargo test` (which builds examples) or `cargo build --examples`",
        path.display()
    );
    path
}

/// Path of the `heapprof` command built by this `cargo test --workspace`
/// run (target/<profile>/heapprof).
pub fn cli() -> PathBuf {
    let examples = example_dir();
    let path = examples.parent().expect("target dir").join("heapprof");
    assert!(
        path.exists(),
        "the heapprof command {} is missing: run the tests with `cargo test --workspace` \
         (which builds it) or `cargo build -p heapprof-cli`",
        path.display()
    );
    path
}

/// target/<profile>/examples of this `cargo test` run.
fn example_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
}

/// Runs the quickstart example with `env` and `args`; returns the `truth`
/// line's fields.
pub fn run_quickstart(env: &[(&str, &str)], args: &[&str]) -> HashMap<String, u64> {
    let out = Command::new(example("quickstart"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run quickstart");
    assert!(
        out.status.success(),
        "quickstart failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("truth "))
        .unwrap_or_else(|| panic!("no truth line in {stdout}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("number")))
        .collect()
}

/// Decodes a gzipped profile.proto.
pub fn decode(gz: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("gunzip profile");
    Profile::decode(raw.as_slice()).expect("decode profile.proto")
}

pub fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// Whether `p` carries heapprof's unsymbolized note (addresses only).
pub fn is_unsymbolized(p: &Profile) -> bool {
    p.comment
        .iter()
        .any(|&c| string(p, c).contains("unsymbolized"))
}

/// Index of the sample type named `name`.
pub fn value_index(p: &Profile, name: &str) -> usize {
    p.sample_type
        .iter()
        .position(|t| string(p, t.ty) == name)
        .unwrap_or_else(|| panic!("no sample type {name}"))
}

/// Name of the innermost function of a sample (its first location's first
/// line, which is what `go tool pprof -top` charges as flat).
pub fn leaf_function(p: &Profile, sample: &pprof::protos::Sample) -> String {
    let loc_id = sample.location_id[0];
    let loc = p
        .location
        .iter()
        .find(|l| l.id == loc_id)
        .expect("location");
    let line = loc.line.first().expect("symbolized location");
    let f = p
        .function
        .iter()
        .find(|f| f.id == line.function_id)
        .expect("function");
    string(p, f.name).to_owned()
}

/// Sum of value `name` per leaf function.
pub fn by_leaf(p: &Profile, name: &str) -> HashMap<String, i64> {
    let i = value_index(p, name);
    let mut out = HashMap::new();
    for s in &p.sample {
        *out.entry(leaf_function(p, s)).or_default() += s.value[i];
    }
    out
}

/// Asserts `got` is within `tolerance` (a fraction) of `want`.
pub fn assert_close(what: &str, got: i64, want: u64, tolerance: f64) {
    let err = (got as f64 - want as f64) / want as f64;
    assert!(
        err.abs() <= tolerance,
        "{what}: estimated {got}, truth {want}, error {:.2}% > {:.0}%",
        err * 100.0,
        tolerance * 100.0
    );
    eprintln!(
        "{what}: estimated {got}, truth {want}, error {:+.2}%",
        err * 100.0
    );
}

/// Runs `cmd` (which must end up printing `listening on http://ADDR`, for
/// example a shell that moves itself into a cgroup and then `exec`s an
/// example) as a [`serve::Service`], killed on drop. `what` names it in
/// panics.
pub fn spawn_service(cmd: Command, what: &str) -> serve::Service {
    serve::Service::spawn(cmd, what)
}

/// Name of the leaf function with the most in-use bytes, and those bytes.
pub fn top_inuse_leaf(p: &Profile) -> (String, i64) {
    by_leaf(p, "inuse_space")
        .into_iter()
        .max_by_key(|(_, v)| *v)
        .unwrap_or_default()
}

/// Estimated in-use bytes of the sites whose innermost (trimmed) frame's
/// function name contains `needle`.
pub fn site_inuse(snap: &heapprof::Snapshot, needle: &str) -> i64 {
    snap.sites()
        .iter()
        .filter(|s| {
            s.frames()
                .first()
                .is_some_and(|f| f.function.contains(needle))
        })
        .map(|s| s.inuse_bytes)
        .sum()
}
