//! Go compatibility: `go tool pprof` reads the quickstart profile and puts
//! `retain_buffers` first by flat in-use bytes (allocation plumbing and
//! heapprof's own frames do not hide the user's function).

mod common;

use std::process::Command;

use common::*;

fn go_tool_pprof(args: &[&str]) -> String {
    let out = Command::new("go")
        .arg("tool")
        .arg("pprof")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `go tool pprof` ({e}): install Go (Debian: apt-get install golang-go; scripts/test does)")
        });
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Function name of the first row of `go tool pprof -top` output.
fn first_top_row(top: &str) -> String {
    let mut lines = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"));
    lines.next().expect("header row");
    let row = lines.next().expect("a first row");
    // flat flat% sum% cum cum% name...
    row.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")
}

#[test]
fn go_tool_pprof_reads_the_profile_and_charges_the_users_function() {
    let path = std::env::temp_dir().join(format!("heapprof-go-{}.pb.gz", std::process::id()));
    let path_str = path.to_str().unwrap();
    // The default rate, as a user runs it.
    run_quickstart(&[], &[path_str]);

    let top = go_tool_pprof(&["-top", "-sample_index=inuse_space", path_str]);
    eprintln!("{top}");
    assert_eq!(first_top_row(&top), "quickstart::retain_buffers", "{top}");
    for plumbing in ["__rust_alloc", "raw_vec", "heapprof::"] {
        assert!(!top.contains(plumbing), "{plumbing} in -top output:\n{top}");
    }

    let traces = go_tool_pprof(&["-traces", path_str]);
    assert!(traces.contains("quickstart::retain_buffers"), "{traces}");
    assert!(traces.contains("quickstart::main"), "{traces}");

    // Every sample type is there, by Go's names.
    let p = decode(&std::fs::read(&path).unwrap());
    let types: Vec<_> = p
        .sample_type
        .iter()
        .map(|t| format!("{}/{}", string(&p, t.ty), string(&p, t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects/count",
            "alloc_space/bytes",
            "inuse_objects/count",
            "inuse_space/bytes"
        ]
    );
    let period = p.period_type.as_ref().unwrap();
    assert_eq!(
        (string(&p, period.ty), string(&p, period.unit)),
        ("space", "bytes")
    );
    assert_eq!(p.period, 512 * 1024);
    let main = &p.mapping[0];
    assert!(string(&p, main.filename).ends_with("quickstart"));
    assert!(
        string(&p, main.build_id).len() >= 16,
        "main binary has a build ID"
    );
    // Every address in the main binary resolved to a function. (Files and
    // lines are flagged only when every location has them; `_start` has
    // none, so those flags are honestly false for the main binary.)
    assert!(main.has_functions);
    let bytes_label = p.sample[0]
        .label
        .iter()
        .find(|l| string(&p, l.key) == "bytes");
    assert!(bytes_label.is_some_and(|l| l.num > 0), "Go's bytes label");
    std::fs::remove_file(&path).ok();
}

/// A delta in which nothing changed has no samples, so no addresses to
/// name; it is still a symbolized profile: no "unsymbolized" note and no
/// `drop_frames` (once, such a profile was marked unsymbolized).
#[test]
fn an_empty_delta_is_not_marked_unsymbolized() {
    let base = heapprof::snapshot();
    let empty = base.delta_since(&base);
    let p = decode(&empty.to_pprof());
    assert!(p.sample.is_empty(), "{} samples", p.sample.len());
    let comments: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    assert!(
        comments.iter().all(|c| !c.contains("unsymbolized")),
        "{comments:?}"
    );
    assert_eq!(p.drop_frames, 0);
}
