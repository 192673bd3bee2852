//! A profile must never be what kills the pod.
//!
//! quickstart `--serve` runs in a memory cgroup v1 whose limit is set, once
//! it serves, to its usage plus 24 MiB, then plus 8 MiB. Each time: the
//! first heap profile, 6 more, 3 concurrent ones, a `?seconds=5` delta and
//! a 5 s CPU profile. Every answer must be a 200 (or a 503 with a reason,
//! when a build cannot fit), the cgroup's OOM killer must never fire, and
//! the service must still be there. With 24 MiB the heap profiles are whole
//! (named, `retain_buffers` on top); with 8 MiB answers may degrade (an
//! unsymbolized profile, or a 503). The cgroup's usage counts page cache,
//! which the kernel reclaims first and the admission counts as room, so
//! whether they do depends on the cache; a last round sets the limit to the
//! working set plus 4 MiB, where a named heap profile does not fit and the
//! answers must degrade.
//!
//! Needs root and the cgroup v1 memory controller; fails with the reason
//! otherwise, unless HEAPPROF_SKIP_BPF=1.

mod common;

use std::time::Duration;

use common::cgroup::ChildCgroup;
use common::serve::Service;

const MIB: u64 = 1 << 20;

/// What one answer was.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A profile with names; its top in-use function for heap profiles.
    Named(String),
    /// A profile of addresses and mappings (the process had too little room).
    Unsymbolized,
    /// 503 with this reason.
    NoRoom(String),
}

fn classify(path: &str, status: u16, body: &[u8]) -> Answer {
    match status {
        200 => {}
        503 => return Answer::NoRoom(String::from_utf8_lossy(body).into_owned()),
        other => panic!(
            "{path}: status {other}: {}",
            String::from_utf8_lossy(body).trim()
        ),
    }
    let p = common::decode(body);
    if common::is_unsymbolized(&p) {
        assert!(
            p.mapping
                .iter()
                .any(|m| !common::string(&p, m.build_id).is_empty()),
            "{path}: an unsymbolized profile carries build IDs"
        );
        return Answer::Unsymbolized;
    }
    if path.starts_with("/debug/pprof/heap") && !path.contains("seconds") {
        return Answer::Named(common::top_inuse_leaf(&p).0);
    }
    Answer::Named(String::new())
}

/// Runs the requests against `service`; the answers, in order.
fn requests(service: &Service) -> Vec<(String, Answer)> {
    let mut out = Vec::new();
    let mut ask = |path: &str| {
        let (status, body) = service.get(path);
        out.push((path.to_owned(), classify(path, status, &body)));
    };
    for _ in 0..7 {
        ask("/debug/pprof/heap");
    }
    let addr = service.addr;
    let concurrent: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let (status, body) = common::serve::http_get(addr, "/debug/pprof/heap");
                classify("/debug/pprof/heap", status, &body)
            })
        })
        .collect();
    ask("/debug/pprof/heap?seconds=5");
    ask("/debug/pprof/profile?seconds=5");
    for c in concurrent {
        out.push(("/debug/pprof/heap (concurrent)".into(), c.join().unwrap()));
    }
    out
}

/// quickstart serving in `cg`, its limit then set to its usage + `extra`.
fn serve_with_headroom(cg: &ChildCgroup, extra: u64) -> (Service, u64) {
    let mut cmd = cg.serve_command(&common::example("quickstart"));
    cmd.env(
        "HEAPPROF_DIR",
        std::env::temp_dir().join("heapprof-profile-memory"),
    );
    let service = common::spawn_service(cmd, "quickstart in a memory cgroup");
    assert!(
        cg.holds(service.pid()),
        "quickstart is in {}",
        cg.0.display()
    );
    std::thread::sleep(Duration::from_millis(500));
    let usage = cg.memory().usage;
    let limit = usage + extra;
    cg.set_limit(limit).expect("set the limit");
    (service, limit)
}

/// quickstart in `cg` with `extra` bytes of headroom, asked [`requests`];
/// fails if anything was OOM-killed.
fn answers_with_headroom(cg: &ChildCgroup, extra: u64) -> (Service, Vec<(String, Answer)>) {
    let (mut service, limit) = serve_with_headroom(cg, extra);
    let answers = requests(&service);
    eprintln!(
        "limit {} MiB (usage + {} MiB): {answers:#?}",
        limit / MIB,
        extra / MIB
    );
    assert_eq!(cg.oom_kills(), 0, "the OOM killer fired: {answers:?}");
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "quickstart died"
    );
    (service, answers)
}

#[test]
fn profiles_fit_in_a_tight_memory_cgroup_or_degrade() {
    let cg = match ChildCgroup::create("heapprof-profile-memory", 1 << 30) {
        Ok(cg) => cg,
        Err(e) if std::env::var("HEAPPROF_SKIP_BPF").as_deref() == Ok("1") => {
            eprintln!("SKIPPED by request (HEAPPROF_SKIP_BPF=1): {e}");
            return;
        }
        Err(e) => panic!(
            "this test needs root and a cgroup v1 memory controller to create a child memory \
             cgroup: {e}. Run it as root, or set HEAPPROF_SKIP_BPF=1 to skip it"
        ),
    };

    // usage + 24 MiB: whole profiles.
    let (mut service, answers) = answers_with_headroom(&cg, 24 * MIB);
    for (path, answer) in &answers {
        match answer {
            Answer::Named(top) if path == "/debug/pprof/heap" => assert!(
                top.contains("retain_buffers"),
                "{path}: top in-use function {top}"
            ),
            Answer::Named(_) => {}
            Answer::Unsymbolized => assert!(
                path.contains("profile"),
                "{path} unsymbolized with 24 MiB of headroom"
            ),
            Answer::NoRoom(reason) => assert!(
                path.contains("profile") && reason.contains("not enough memory"),
                "{path}: 503 {reason}"
            ),
        }
    }
    let _ = service.child.kill();
    let _ = service.child.wait();
    drop(service);

    // usage + 8 MiB: answers degrade, nothing is killed.
    let (mut service, answers) = answers_with_headroom(&cg, 8 * MIB);
    for (path, answer) in &answers {
        match answer {
            Answer::Named(top) if path == "/debug/pprof/heap" => assert!(
                top.contains("retain_buffers"),
                "{path}: top in-use function {top}"
            ),
            Answer::NoRoom(reason) => assert!(
                reason.contains("not enough memory") && reason.contains("retry"),
                "{path}: 503 {reason}"
            ),
            _ => {}
        }
    }
    // working set + 4 MiB: below what a named profile may need (3 MiB and
    // a 2 MiB margin), above an unsymbolized one: the answers degrade.
    let limit = cg.working_set() + 4 * MIB;
    cg.set_limit(limit).expect("set the limit");
    let degraded: Vec<Answer> = (0..3)
        .map(|_| {
            let (status, body) = service.get("/debug/pprof/heap");
            classify("/debug/pprof/heap", status, &body)
        })
        .collect();
    eprintln!(
        "limit {} MiB (working set + 4 MiB): {degraded:?}",
        limit / MIB
    );
    assert_eq!(cg.oom_kills(), 0, "the OOM killer fired: {degraded:?}");
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "quickstart died"
    );
    assert!(
        degraded
            .iter()
            .all(|a| matches!(a, Answer::Unsymbolized | Answer::NoRoom(_))),
        "named profiles with 4 MiB of headroom: {degraded:?}"
    );
    assert!(
        degraded.contains(&Answer::Unsymbolized),
        "an unsymbolized profile fits in 4 MiB: {degraded:?}"
    );
    let _ = service.child.kill();
    let _ = service.child.wait();
}
