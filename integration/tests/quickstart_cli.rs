//! `heapprof ps`, `pprof-heap`, `top`, `diff` and `verify` against the
//! root crate's `examples/quickstart.rs` (~64 MiB in `retain_buffers`,
//! ~8 MiB in `retain_small`, scaled by `--scale`), as files and as a live
//! `--serve` process with heapprof-http.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Target, TempDir, bpf_skipped_by_request, example, family, verify_json};

const SCALE: &str = "0.0625";

/// Runs quickstart to write a profile at `scale` into `out`.
fn quickstart_file(out: &Path, scale: &str) {
    let status = Command::new(example("quickstart"))
        .arg(out)
        .args(["--scale", scale])
        .env("HEAPPROF_SAMPLE_RATE", "4096")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run quickstart");
    assert!(status.success(), "quickstart failed");
}

/// A quickstart serving its heap; returns it, its address and `truth` bytes.
fn quickstart_server(dir: &TempDir) -> (Target, String, u64) {
    quickstart_server_with(dir, &[])
}

/// [`quickstart_server`] with extra quickstart flags.
fn quickstart_server_with(dir: &TempDir, extra: &[&str]) -> (Target, String, u64) {
    let mut q = Target::spawn(
        Command::new(example("quickstart"))
            .arg(dir.0.join("start.pb.gz"))
            .args(["--scale", SCALE, "--serve", "127.0.0.1:0"])
            .args(extra)
            .env("HEAPPROF_DIR", &dir.0)
            .env("HEAPPROF_SAMPLE_RATE", "4096"),
    );
    let truth = q.line_starting("truth ");
    let kept: u64 = ["retain_buffers=", "retain_small="]
        .iter()
        .map(|k| {
            let v = truth
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .expect(k);
            v.parse::<u64>().unwrap()
        })
        .sum();
    let addr = q
        .line_starting("listening on http://")
        .trim_start_matches("listening on http://")
        .to_string();
    (q, addr, kept)
}

/// `heapprof top PROFILE` names `retain_buffers` first.
fn assert_top_is_retain_buffers(profile: &Path) {
    let top = heapprof(&["top", profile.to_str().unwrap(), "-n", "3"], None);
    assert!(
        top.lines()
            .nth(2)
            .unwrap()
            .contains("quickstart::retain_buffers"),
        "{top}"
    );
}

/// Runs heapprof; exit 0 required (or 0/1 for `verify`, whose 1 means
/// "a check is outside tolerance").
fn heapprof(args: &[&str], env_dir: Option<&Path>) -> String {
    let mut cmd = common::heapprof();
    cmd.args(args);
    if let Some(d) = env_dir {
        cmd.env("HEAPPROF_DIR", d);
    }
    let out = cmd.output().expect("run heapprof");
    let ok = out.status.success() || (args[0] == "verify" && out.status.code() == Some(1));
    assert!(
        ok,
        "heapprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn top_and_diff_of_quickstart_profiles() {
    let dir = TempDir::new("qs-files");
    let (small, big) = (dir.0.join("small.pb.gz"), dir.0.join("big.pb.gz"));
    quickstart_file(&small, "0.0625");
    quickstart_file(&big, "0.125");
    let top = heapprof(&["top", small.to_str().unwrap(), "-n", "5"], None);
    let first = top.lines().nth(2).expect("a row");
    assert!(first.contains("retain_buffers"), "top row:\n{top}");
    let objects = heapprof(
        &["top", small.to_str().unwrap(), "--sample", "inuse_objects"],
        None,
    );
    assert!(
        objects.lines().nth(2).unwrap().contains("retain_small"),
        "{objects}"
    );

    let diff = heapprof(
        &[
            "diff",
            small.to_str().unwrap(),
            big.to_str().unwrap(),
            "-n",
            "3",
        ],
        None,
    );
    let first = diff.lines().nth(1).expect("a row");
    assert!(
        first.contains("+") && first.contains("retain_buffers"),
        "{diff}"
    );
    // 64 MiB * (0.125 - 0.0625) = 4 MiB more in retain_buffers, within
    // the sampling error.
    let load = |p: &Path| heapprof_cli::profile::decode(&std::fs::read(p).unwrap()).unwrap();
    let rows = heapprof_cli::profile::diff(&load(&small), &load(&big), "inuse_space").unwrap();
    let delta = rows[0].delta as f64;
    assert!(
        (delta - 4.0 * 1048576.0).abs() < 0.15 * 4.0 * 1048576.0,
        "{delta}: {diff}"
    );
}

/// What a process short of memory serves (addresses and build IDs) is
/// named outside it: by the path its mapping names, or by `--binary`
/// matched by build ID when that path is not there.
#[test]
fn pprof_heap_names_an_unsymbolized_profile() {
    use pprof::protos::Message;
    let dir = TempDir::new("qs-unsymbolized");
    let raw = dir.0.join("raw.pb.gz");
    let status = Command::new(example("quickstart"))
        .arg(&raw)
        .args(["--scale", SCALE, "--unsymbolized"])
        .env("HEAPPROF_SAMPLE_RATE", "4096")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run quickstart");
    assert!(status.success());
    let p = heapprof_cli::profile::read_proto(&std::fs::read(&raw).unwrap(), 1 << 30).unwrap();
    let s = |i: i64| p.string_table[i as usize].clone();
    assert!(
        p.location.iter().all(|l| l.line.is_empty()),
        "addresses only"
    );
    assert!(p.comment.iter().any(|&c| s(c).contains("unsymbolized")));
    assert!(
        !s(p.mapping[0].build_id).is_empty(),
        "build ID of the binary"
    );

    // By the mapping's own path.
    let named = dir.0.join("named.pb.gz");
    let raw_arg = raw.to_str().unwrap();
    heapprof(
        &["pprof-heap", raw_arg, "-o", named.to_str().unwrap()],
        None,
    );
    assert_top_is_retain_buffers(&named);

    // The binary moved: named with --binary, matched by build ID.
    let mut moved = p.clone();
    let gone = "/nonexistent/quickstart".to_owned();
    moved.string_table.push(gone);
    moved.mapping[0].filename = moved.string_table.len() as i64 - 1;
    let moved_path = dir.0.join("moved.pb.gz");
    std::fs::write(&moved_path, moved.encode_to_vec()).unwrap();
    let out = common::heapprof()
        .args([
            "pprof-heap",
            moved_path.to_str().unwrap(),
            "-o",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no file matches the build ID") && err.contains("--binary"),
        "{err}"
    );
    let copy = dir.0.join("quickstart-copy");
    std::fs::copy(example("quickstart"), &copy).unwrap();
    heapprof(
        &[
            "pprof-heap",
            moved_path.to_str().unwrap(),
            "--binary",
            copy.to_str().unwrap(),
            "-o",
            named.to_str().unwrap(),
        ],
        None,
    );
    assert_top_is_retain_buffers(&named);
}

#[test]
fn ps_pprof_heap_and_top_against_a_live_quickstart() {
    let dir = TempDir::new("qs-serve");
    let (q, addr, kept) = quickstart_server(&dir);
    let pid = q.pid().to_string();

    let ps = heapprof(&["ps"], Some(&dir.0));
    let row = ps
        .lines()
        .find(|l| l.trim_start().starts_with(&pid))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(row.contains(&addr) && row.contains("quickstart"), "{ps}");
    let json: serde_json::Value =
        serde_json::from_str(&heapprof(&["ps", "--json"], Some(&dir.0))).unwrap();
    assert_eq!(json[0]["addr"], addr.as_str());

    let file = dir.0.join("pulled.pb.gz");
    let said = heapprof(
        &["pprof-heap", &pid, "-o", file.to_str().unwrap()],
        Some(&dir.0),
    );
    assert!(said.starts_with("wrote "), "{said}");
    let p = heapprof_cli::profile::decode(&std::fs::read(&file).unwrap()).unwrap();
    let inuse = p.total("inuse_space").unwrap() as f64;
    assert!(
        (inuse - kept as f64).abs() <= 0.15 * kept as f64,
        "profile in-use {inuse} vs {kept} kept"
    );
    for source in [pid.as_str(), addr.as_str(), file.to_str().unwrap()] {
        let top = heapprof(&["top", source, "-n", "3"], Some(&dir.0));
        assert!(
            top.lines().nth(2).unwrap().contains("retain_buffers"),
            "{source}: {top}"
        );
        // Live targets are asked for ages; the saved file has none.
        let live = source != file.to_str().unwrap();
        assert_eq!(top.contains("OLDEST"), live, "{source}: {top}");
    }
}

#[test]
fn verify_a_live_quickstart() {
    let dir = TempDir::new("qs-verify");
    // It churns on command, inside the uprobe window, so the window has
    // allocations to hold the profiler's estimate against.
    let (mut q, addr, kept) = quickstart_server_with(&dir, &["--commands"]);
    let pid = q.pid().to_string();
    let (_, report, stderr) = verify_json(&[&pid], &[("HEAPPROF_DIR", &dir.0)], || {});
    let prof = &report["profiler"];
    assert_eq!(prof["addr"], addr.as_str(), "{report:#}\n{stderr}");
    let inuse = prof["inuse_bytes"].as_f64().unwrap();
    assert!(
        (inuse - kept as f64).abs() <= 0.15 * kept as f64,
        "{inuse} vs {kept}"
    );
    // RSS partitioned, the live heap's part measured (resident bytes of
    // the sampled blocks, scaled): never more than the live heap, within
    // sampling error.
    let rec = &report["reconciliation"];
    let source = rec["detail"]["heap_source"].as_str().unwrap_or("");
    assert!(source.contains("measured"), "{rec:#}");
    let resident = rec["detail"]["heap_estimate"]["bytes"].as_f64().unwrap();
    assert!(
        resident <= 1.15 * inuse,
        "resident {resident} vs live {inuse}"
    );
    assert!(
        rec["live_heap"].as_f64().unwrap() <= resident + 1.0,
        "{rec:#}"
    );
    common::assert_rss_partition(&report);
    let p = &report["process"];
    assert!(p["status"]["vm_rss"].as_f64().unwrap() >= inuse, "{p:#}");
    assert!(
        p["stacks"]["threads"].as_u64().unwrap() >= 2,
        "main + server threads: {p:#}"
    );
    assert!(report["cgroup"]["usage"].as_u64().unwrap() > 0);
    let text = heapprof(&["verify", &pid], Some(&dir.0));
    assert!(
        text.contains("RSS explained") && text.contains("check "),
        "{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("check ")) {
        eprintln!("{line}");
    }

    if bpf_skipped_by_request("verify_a_live_quickstart (uprobes part)") {
        return;
    }
    let (code, report, stderr) = verify_json(
        &[&pid, "--uprobes", "--duration", "3"],
        &[("HEAPPROF_DIR", &dir.0)],
        || {
            q.send("churn 67108864\n");
            q.line_starting("done ");
        },
    );
    let je = family(&report, "jemalloc");
    assert!(
        je["symbols"].to_string().contains("_rjem_sdallocx"),
        "{je:#}\n{stderr}"
    );
    // The profiler's allocated-bytes change over the window agrees with
    // the allocator calls the uprobes counted.
    let window_alloc = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "window_alloc")
        .unwrap_or_else(|| panic!("no window_alloc check: {report:#}\n{stderr}"))
        .clone();
    eprintln!("window_alloc: {}", window_alloc["verdict"]);
    assert_eq!(window_alloc["ok"], true, "{window_alloc:#}");
    assert!(code == 0 || code == 1, "{stderr}");
}
