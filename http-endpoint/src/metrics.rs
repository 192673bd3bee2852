//! `/metrics`: Prometheus text exposition (format 0.0.4) of the profiler's
//! estimates and health, jemalloc's statistics (feature `jemalloc`) and
//! the process's RSS and threads. Names follow Prometheus conventions:
//! `heapprof_` prefix, base units (`_bytes`), `_total` on counters.

use std::fmt::{Display, Write};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::Result;
use crate::routes::blocking;

/// The exposition's content type.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub(crate) async fn handler() -> Result<Response> {
    let body = blocking(render).await?;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// The metrics as Prometheus text, every family with `# HELP` and
/// `# TYPE`. Takes a snapshot of the site counters (no symbolization), so
/// it costs a copy of the site table, not a profile build.
pub fn render() -> String {
    let snapshot = heapprof::snapshot();
    let totals = snapshot.totals();
    let stats = *snapshot.stats();
    let samples: i64 = snapshot
        .sites()
        .iter()
        .map(|s| s.sampled.alloc_objects)
        .sum();
    // The snapshot is the profiler's own heap: gone before the allocator
    // is read.
    drop(snapshot);
    let inuse = heapprof::sampling::live_estimate(None);
    let mut out = Exposition::default();
    out.gauge(
        "heapprof_inuse_bytes",
        "Estimated bytes in live allocations (unbiased estimate from the sampled allocations).",
        totals.inuse_bytes,
    );
    out.gauge(
        heapprof::wire::metric::INUSE_STANDARD_ERROR,
        "Standard error of heapprof_inuse_bytes from the live samples (sampling error: about heapprof_inuse_bytes / sqrt(live samples) when objects are small).",
        inuse.standard_error().round(),
    );
    out.counter(
        heapprof::wire::metric::SAMPLED_ALLOCATIONS,
        "Allocations sampled since the process started (the estimates stand on these).",
        samples,
    );
    out.gauge(
        heapprof::wire::metric::OWN_HEAP,
        "Heap bytes the profiler's own work holds without sampling them (symbol cache, growth history, OOM-guard reserve), approximate.",
        stats.own_heap_bytes,
    );
    out.gauge(
        "heapprof_inuse_objects",
        "Estimated live allocations (unbiased estimate from the sampled allocations).",
        totals.inuse_objects,
    );
    out.counter(
        "heapprof_allocated_bytes_total",
        "Estimated bytes allocated since the process started.",
        totals.alloc_bytes,
    );
    out.counter(
        "heapprof_allocated_objects_total",
        "Estimated allocations made since the process started.",
        totals.alloc_objects,
    );
    out.gauge(
        "heapprof_sample_rate_bytes",
        "Mean bytes allocated between two samples (0: sampling off).",
        stats.sample_rate,
    );
    out.gauge(
        "heapprof_own_memory_bytes",
        "Memory the profiler itself holds: site table, stacks, unwind tables and live-sample table.",
        stats.own_memory_bytes,
    );
    out.gauge(
        "heapprof_frame_pointer_unwinding",
        "1 when sampled stacks are captured by walking frame pointers, 0 for the unwind table, libgcc's DWARF unwinder, or while HEAPPROF_UNWIND=auto is still checking.",
        u8::from(stats.unwinder == heapprof::Unwinder::FramePointers),
    );
    out.gauge(
        "heapprof_unwind_table_unwinding",
        "1 when sampled stacks are captured with heapprof's unwind table (built from .eh_frame), 0 otherwise.",
        u8::from(stats.unwinder == heapprof::Unwinder::Table),
    );
    out.counter(
        "heapprof_unwind_table_fallbacks_total",
        "Samples the unwind table handed to libgcc's unwinder (tables not built yet, code loaded since, signal alternate stacks, inexpressible rows).",
        stats.unwind_table_fallbacks,
    );
    out.gauge(
        "heapprof_unwind_tables_deferred",
        "Loaded modules without an unwind table because building it did not fit the memory cgroup's headroom (retried every 10 s; their frames go to libgcc).",
        stats.unwind_tables_deferred,
    );
    out.gauge(
        "heapprof_sites",
        "Distinct allocating call sites recorded.",
        stats.sites,
    );
    out.gauge(
        "heapprof_max_sites",
        "Bound on distinct call sites (HEAPPROF_MAX_SITES).",
        stats.max_sites,
    );
    out.gauge(
        "heapprof_live_samples",
        "Sampled allocations currently live.",
        stats.live_samples,
    );
    out.counter(
        "heapprof_dropped_samples_total",
        "Samples not taken because the live-sample table was full (estimates biased low when rising).",
        stats.dropped_samples,
    );
    out.counter(
        "heapprof_overflowed_samples_total",
        "Samples charged to the overflow site because the site table was full.",
        stats.overflowed_samples,
    );
    #[cfg(feature = "jemalloc")]
    if let Some(j) = crate::jemalloc::stats() {
        use heapprof::wire::metric;
        for (name, help, value) in [
            (
                metric::JEMALLOC_ALLOCATED,
                "jemalloc: Bytes allocated by the application (stats.allocated).",
                j.allocated,
            ),
            (
                metric::JEMALLOC_ACTIVE,
                "jemalloc: Bytes in active pages (stats.active).",
                j.active,
            ),
            (
                metric::JEMALLOC_RESIDENT,
                "jemalloc: Bytes in physically resident allocator pages (stats.resident).",
                j.resident,
            ),
            (
                metric::JEMALLOC_MAPPED,
                "jemalloc: Bytes in active extents mapped by the allocator (stats.mapped).",
                j.mapped,
            ),
            (
                metric::JEMALLOC_RETAINED,
                "jemalloc: Bytes of virtual memory retained, not returned to the OS (stats.retained).",
                j.retained,
            ),
            (
                metric::JEMALLOC_METADATA,
                "jemalloc: Bytes of allocator metadata (stats.metadata).",
                j.metadata,
            ),
            (
                metric::JEMALLOC_TCACHE,
                "jemalloc: Bytes of freed objects cached in thread caches, counted in stats.allocated (stats.arenas.<all>.tcache_bytes).",
                j.tcache,
            ),
            (
                metric::JEMALLOC_INTERNAL,
                "jemalloc: Bytes of its own structures allocated like objects (thread caches), counted in stats.allocated (stats.arenas.<all>.internal).",
                j.internal,
            ),
        ] {
            out.gauge(name, help, value);
        }
    }
    if let Some(g) = heapprof::sys::glibc::mallinfo2() {
        out.gauge(
            heapprof::wire::metric::GLIBC_ALLOCATED,
            "glibc: Bytes of malloc chunks in use, arenas and mmapped (mallinfo2 uordblks + hblkhd).",
            g.allocated(),
        );
    }
    let process = heapprof::sys::procfs::self_status();
    out.gauge(
        "heapprof_process_resident_memory_bytes",
        "Resident set size of the process (/proc/self/status).",
        process.vm_rss,
    );
    out.gauge(
        "heapprof_process_threads",
        "Threads of the process (/proc/self/status).",
        process.threads,
    );
    out.0
}

#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help, value);
    }

    fn counter(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "counter", help, value);
    }

    fn family(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        let _ = write!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_family_has_help_type_and_a_value() {
        let text = super::render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() % 3, 0, "{text}");
        for family in lines.chunks(3) {
            let name = family[2].split(' ').next().unwrap();
            assert!(name.starts_with("heapprof_"), "{text}");
            assert!(family[0].starts_with(&format!("# HELP {name} ")), "{text}");
            assert!(family[1].starts_with(&format!("# TYPE {name} ")), "{text}");
            let counter = family[1].ends_with(" counter");
            assert_eq!(counter, name.ends_with("_total"), "{name}");
            let value = family[2].split(' ').nth(1).unwrap();
            assert!(value.parse::<f64>().is_ok(), "{name} {value}");
        }
        assert!(text.contains("heapprof_process_resident_memory_bytes "));
        #[cfg(feature = "jemalloc")]
        assert!(text.contains("heapprof_jemalloc_allocated_bytes "));
        #[cfg(feature = "jemalloc")]
        assert!(text.contains("heapprof_jemalloc_tcache_bytes "));
        assert!(text.contains("heapprof_glibc_allocated_bytes "));
        assert!(text.contains("heapprof_inuse_bytes_standard_error "));
    }
}
