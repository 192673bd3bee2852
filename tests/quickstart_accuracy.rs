//! Accuracy of the estimates against the truth the quickstart example
//! reports, at a rate with enough samples that 10% is several standard
//! deviations, and exactness at rate 1.

mod common;

use common::*;

#[test]
fn estimates_are_within_ten_percent_at_rate_4096_and_exact_at_rate_1() {
    let dir = std::env::temp_dir().join(format!("heapprof-acc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Rate 4096: per-site estimates within 10% of the truth.
    let out = dir.join("rate4096.pb.gz");
    let truth = run_quickstart(
        &[("HEAPPROF_SAMPLE_RATE", "4096")],
        &[out.to_str().unwrap()],
    );
    assert_eq!(truth["rate"], 4096);
    let p = decode(&std::fs::read(&out).unwrap());
    assert_eq!(p.period, 4096);
    let inuse = by_leaf(&p, "inuse_space");
    let alloc = by_leaf(&p, "alloc_space");
    assert_close(
        "retain_buffers inuse_space",
        inuse["quickstart::retain_buffers"],
        truth["retain_buffers"],
        0.10,
    );
    assert_close(
        "retain_small inuse_space",
        inuse["quickstart::retain_small"],
        truth["retain_small"],
        0.10,
    );
    assert_close(
        "churn alloc_space",
        alloc["quickstart::churn"],
        1 << 30,
        0.10,
    );
    assert!(
        inuse.get("quickstart::churn").copied().unwrap_or(0).abs() < 64 * 1024,
        "churn frees everything it allocates: {:?}",
        inuse.get("quickstart::churn")
    );

    // The same estimate against jemalloc's own accounting: stats.allocated
    // grows by what the two retain functions keep (measured with sampling
    // off, where heapprof adds nothing to the allocations).
    let off = run_quickstart(
        &[("HEAPPROF_SAMPLE_RATE", "0")],
        &[dir.join("off.pb.gz").to_str().unwrap()],
    );
    let retained_est = inuse["quickstart::retain_buffers"] + inuse["quickstart::retain_small"];
    assert_close(
        "retained vs jemalloc stats.allocated",
        retained_est,
        off["jemalloc_retained"],
        0.10,
    );

    // Rate 1: every allocation is sampled; the numbers are exact.
    let out = dir.join("rate1.pb.gz");
    let truth = run_quickstart(
        &[("HEAPPROF_SAMPLE_RATE", "1")],
        &[out.to_str().unwrap(), "--scale", "0.0625"],
    );
    let p = decode(&std::fs::read(&out).unwrap());
    let inuse = by_leaf(&p, "inuse_space");
    let inuse_objects = by_leaf(&p, "inuse_objects");
    let alloc = by_leaf(&p, "alloc_space");
    assert_eq!(
        inuse["quickstart::retain_buffers"],
        truth["retain_buffers"] as i64
    );
    assert_eq!(
        inuse["quickstart::retain_small"],
        truth["retain_small"] as i64
    );
    // Objects: the buffers (and their vector) and the small boxes (and theirs).
    assert_eq!(inuse_objects["quickstart::retain_buffers"], 1024 + 1);
    assert_eq!(inuse_objects["quickstart::retain_small"], 8192 + 1);
    assert_eq!(alloc["quickstart::churn"], truth["churn"] as i64);
    assert_eq!(inuse.get("quickstart::churn").copied().unwrap_or(0), 0);

    std::fs::remove_dir_all(&dir).ok();
}

/// At the site bound, new stacks are charged to the overflow site: the
/// profile says so and the totals stay exact.
#[test]
fn a_full_site_table_keeps_totals_and_names_the_overflow() {
    let out = std::env::temp_dir().join(format!("heapprof-sites-{}.pb.gz", std::process::id()));
    let truth = run_quickstart(
        &[("HEAPPROF_SAMPLE_RATE", "1"), ("HEAPPROF_MAX_SITES", "16")],
        &[out.to_str().unwrap(), "--scale", "0.0625", "--sites", "40"],
    );
    let p = decode(&std::fs::read(&out).unwrap());
    let inuse = by_leaf(&p, "inuse_space");
    let overflow = inuse
        .get(heapprof::SITE_TABLE_FULL)
        .copied()
        .unwrap_or_else(|| panic!("no overflow site in {inuse:?}"));
    let spread = inuse.get("quickstart::spread_sites").copied().unwrap_or(0);
    // The 40 spread_sites objects (1 KiB each) and the vector of them are
    // all counted, in their own sites until the table is full, then in the
    // overflow site (which may also hold other late stacks).
    assert!(overflow > 0);
    assert!(
        spread + overflow >= 40 * 1024,
        "spread {spread} + overflow {overflow}"
    );
    // Sites created before the table filled keep exact values.
    assert_eq!(
        inuse["quickstart::retain_buffers"],
        truth["retain_buffers"] as i64
    );
    std::fs::remove_file(&out).ok();
}
