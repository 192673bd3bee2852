//! The resident view of the heap profile (`/debug/pprof/heap?resident=1`)
//! in a real process: its `resident_space` values add up to the RSS;
//! allocated but untouched memory is not resident (a `calloc`ed block
//! nobody wrote); what is not heap hangs under virtual root frames; and
//! what building it costs in memory, next to a plain heap profile
//! (printed for the record with `--nocapture`, bounded loosely: peak and
//! anonymous RSS, where the peak also counts the file pages of debug info
//! that symbolizing maps).

mod common;

use std::hint::black_box;

use common::serve::{http_get, spawn_endpoint};
use common::{by_leaf, decode, string, value_index};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const MIB: u64 = 1 << 20;

/// 32 MiB written: resident.
#[inline(never)]
fn touched_for_the_resident_test() -> Vec<Vec<u8>> {
    (0..32).map(|_| vec![0x5a; MIB as usize]).collect()
}

/// 32 MiB zeroed and never written: allocated, not resident.
#[inline(never)]
fn untouched_for_the_resident_test() -> Vec<Vec<u8>> {
    (0..32).map(|_| vec![0u8; MIB as usize]).collect()
}

fn memory() -> (u64, u64) {
    let s = heapprof::sys::procfs::self_status();
    (s.rss_anon, s.vm_hwm)
}

/// One test: RSS is process-wide.
#[test]
fn resident_space_adds_up_to_rss_and_sees_untouched_memory() {
    heapprof::set_sample_rate(64 * 1024);
    let addr = spawn_endpoint();
    let touched = touched_for_the_resident_test();
    let untouched = untouched_for_the_resident_test();
    // Warm the endpoint and the symbolizer with a plain profile.
    assert_eq!(http_get(addr, "/debug/pprof/heap").0, 200);

    let (anon0, hwm0) = memory();
    let (status, plain) = http_get(addr, "/debug/pprof/heap");
    assert_eq!(status, 200);
    let (anon1, hwm1) = memory();
    let rss_before = heapprof::sys::procfs::self_status().vm_rss;
    let (status, body) = http_get(addr, "/debug/pprof/heap?resident=1");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (anon2, hwm2) = memory();
    let rss_after = heapprof::sys::procfs::self_status().vm_rss;
    eprintln!(
        "plain heap profile: anon {:+} KiB, peak {:+} KiB; resident view: anon {:+} KiB, \
         peak {:+} KiB",
        (anon1 as i64 - anon0 as i64) / 1024,
        (hwm1 as i64 - hwm0 as i64) / 1024,
        (anon2 as i64 - anon1 as i64) / 1024,
        (hwm2 as i64 - hwm1 as i64) / 1024,
    );
    assert!(
        hwm2.saturating_sub(hwm1) <= 8 * MIB,
        "the resident view raised the peak by {} KiB",
        (hwm2 - hwm1) / 1024
    );

    let p = decode(&body);
    let r = value_index(&p, "resident_space");
    assert_eq!(string(&p, p.default_sample_type), "resident_space");
    let total: i64 = p.sample.iter().map(|s| s.value[r]).sum();
    // RSS is measured inside the request: between the readings around it
    // (symbolizing afterwards maps debug info, file pages).
    eprintln!(
        "resident_space total {} KiB, VmRSS {} KiB before the request, {} KiB after",
        total / 1024,
        rss_before / 1024,
        rss_after / 1024
    );
    let (lo, hi) = (rss_before.min(rss_after), rss_before.max(rss_after));
    assert!(
        total as f64 >= 0.99 * lo as f64 && total as f64 <= 1.01 * hi as f64,
        "resident_space adds up to {total}, RSS was {rss_before} before, {rss_after} after"
    );
    let by = by_leaf(&p, "resident_space");
    let inuse = by_leaf(&p, "inuse_space");
    for root in ["[thread stacks]", "[file pages]", "[heapprof tables]"] {
        assert!(by.get(root).is_some_and(|b| *b > 0), "{root} in {by:?}");
    }
    // The leaf is the function or the closure inside it that allocates.
    let of = |m: &std::collections::HashMap<String, i64>, f: &str| -> i64 {
        m.iter()
            .filter(|(name, _)| name.starts_with(f))
            .map(|(_, v)| *v)
            .sum()
    };
    let t = of(&by, "resident_view::touched_for_the_resident_test");
    let u = of(&by, "resident_view::untouched_for_the_resident_test");
    let u_inuse = of(&inuse, "resident_view::untouched_for_the_resident_test");
    eprintln!(
        "touched: {} KiB resident; untouched: {} KiB resident of {} KiB in use",
        t / 1024,
        u / 1024,
        u_inuse / 1024
    );
    assert!(t as u64 >= 28 * MIB, "written memory is resident: {t}");
    assert!(
        u_inuse as u64 >= 28 * MIB,
        "the untouched blocks are in use: {u_inuse}"
    );
    assert!(u as u64 <= 2 * MIB, "untouched memory is not resident: {u}");
    // The plain profile is unchanged: four sample types.
    assert_eq!(decode(&plain).sample_type.len(), 4);

    // The sampling document says the same about the live heap, and costs
    // next to nothing.
    let (anon3, hwm3) = memory();
    let (status, doc) = http_get(addr, "/debug/heapprof/sampling?resident=1");
    assert_eq!(status, 200);
    let (anon4, hwm4) = memory();
    eprintln!(
        "sampling document: anon {:+} KiB, peak {:+} KiB",
        (anon4 as i64 - anon3 as i64) / 1024,
        (hwm4 as i64 - hwm3 as i64) / 1024
    );
    assert!(hwm4.saturating_sub(hwm3) <= 2 * MIB);
    let doc: heapprof::wire::SamplingDocument = serde_json::from_slice(&doc).unwrap();
    let heap = doc.resident.expect("resident=1").heap;
    eprintln!(
        "sampling document: resident heap {:.0} KiB ± {:.0} from {} samples",
        heap.bytes / 1024.0,
        heap.standard_error() / 1024.0,
        heap.samples
    );
    assert!(heap.bytes >= 28.0 * MIB as f64 && heap.bytes <= 40.0 * MIB as f64);
    black_box((touched, untouched));
}
