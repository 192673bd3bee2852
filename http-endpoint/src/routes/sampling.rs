//! `GET /debug/heapprof/sampling`: the profiler's estimates with the
//! samples and sampling variance behind them, the allocator's figures next
//! to the profiler's estimate of the same quantity, and on request the
//! live heap's resident bytes, as JSON (`heapprof::wire::SamplingDocument`,
//! shared with `heapprof verify`, which reads it at both ends of its
//! window).
//!
//! Query: `since_ns=T` (a `CLOCK_MONOTONIC` time, from an earlier
//! document's `monotonic_ns`) adds the live bytes of allocations made since
//! `T`; `resident=1` adds the resident measurement (one `mincore` per live
//! sample). No symbolization: the answer costs walks of the profiler's
//! tables and a few KiB of JSON, whatever the heap (with `resident=1`,
//! 0.3 MiB of anonymous RSS and no higher peak in the process of `cargo
//! test --test resident_view -- --nocapture`).

use axum::Json;
use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use heapprof::sampling;
use heapprof::wire::{ResidentDocument, SamplingDocument};

use super::blocking;
use crate::error::{Error, Result};

/// The query of the route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Query {
    since_ns: Option<u64>,
    resident: bool,
}

impl Query {
    /// Parses `since_ns=N` and `resident=0|1`; others are ignored, a
    /// repeated one is a 400.
    fn parse(raw: Option<&str>) -> Result<Query> {
        let mut q = Query::default();
        let mut seen = [false; 2];
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let index = match name {
                "since_ns" => 0,
                "resident" => 1,
                _ => continue,
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(Error::BadRequest(format!(
                    "parameter {name} given more than once; send it once"
                )));
            }
            if index == 0 {
                q.since_ns = Some(value.parse().map_err(|_| {
                    Error::bad_param(
                        "since_ns",
                        value,
                        "expected nanoseconds on CLOCK_MONOTONIC (a monotonic_ns of this route)",
                    )
                })?);
            } else {
                q.resident = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(Error::bad_param("resident", value, "expected 0 or 1")),
                };
            }
        }
        Ok(q)
    }
}

pub(crate) async fn sampling(RawQuery(raw): RawQuery) -> Result<Response> {
    let query = Query::parse(raw.as_deref())?;
    let document = blocking(move || document(query)).await?;
    Ok(Json(document).into_response())
}

/// The document now. The allocator is read first, then the profiler's
/// estimates, so that nothing the profiler holds for this answer is in
/// the allocator's figures.
fn document(query: Query) -> SamplingDocument {
    let monotonic_ns = heapprof::sys::clock::monotonic_ns();
    let allocator = crate::allocator::document();
    SamplingDocument {
        monotonic_ns,
        sample_rate: heapprof::sample_rate(),
        allocated: sampling::alloc_estimate(),
        inuse: sampling::live_estimate(None),
        born_since: query.since_ns.map(|t| sampling::live_estimate(Some(t))),
        allocator,
        resident: query
            .resident
            .then(|| ResidentDocument::from(&sampling::resident_heap())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_query() {
        assert_eq!(Query::parse(None).unwrap(), Query::default());
        assert_eq!(
            Query::parse(Some("since_ns=123&resident=1&x=y")).unwrap(),
            Query {
                since_ns: Some(123),
                resident: true
            }
        );
        for (q, needle) in [
            ("since_ns=-1", "CLOCK_MONOTONIC"),
            ("resident=yes", "expected 0 or 1"),
            ("resident=1&resident=0", "more than once"),
        ] {
            let e = Query::parse(Some(q)).unwrap_err();
            assert_eq!(e.status(), 400, "{q}");
            assert!(e.to_string().contains(needle), "{q}: {e}");
        }
    }

    #[test]
    fn a_document_of_this_process() {
        let d = document(Query {
            since_ns: Some(0),
            resident: true,
        });
        assert!(d.monotonic_ns > 0);
        assert!(d.allocator.is_some());
        let r = d.resident.expect("resident=1");
        assert!(!r.profiler.is_empty(), "the live table's arrays at least");
    }
}
