//! `/debug/pprof/block`, `/debug/pprof/mutex` and
//! `/debug/pprof/threadcreate`: Go profiles Rust has no data for, served as
//! valid empty profiles so that scrapers (Parca and Grafana Alloy ask for
//! block and mutex by default) record an empty series instead of a failed
//! scrape.
//!
//! Each has Go's sample and period types (block and mutex:
//! `contentions`/`count` and `delay`/`nanoseconds`; threadcreate:
//! `threadcreate`/`count`), no samples, and a `comment` saying why it is
//! empty. Neither std's nor parking_lot's locks record contention, and
//! threads record no creation stack, so there is no honest source to fill
//! them from; `goroutine` has every thread's current stack instead.

use std::io::Write;

use axum::extract::RawQuery;
use axum::response::Response;
use flate2::Compression;
use flate2::write::GzEncoder;
use pprof::protos::{self, Message};

use super::{attachment, plain};
use crate::error::{Error, Result};

/// A profile Go serves and Rust cannot fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Empty {
    Block,
    Mutex,
    ThreadCreate,
}

impl Empty {
    fn name(self) -> &'static str {
        match self {
            Empty::Block => "block",
            Empty::Mutex => "mutex",
            Empty::ThreadCreate => "threadcreate",
        }
    }

    /// Go's (sample types, period type) for this profile.
    fn types(
        self,
    ) -> (
        &'static [(&'static str, &'static str)],
        (&'static str, &'static str),
    ) {
        match self {
            Empty::Block | Empty::Mutex => (
                &[("contentions", "count"), ("delay", "nanoseconds")],
                ("contentions", "count"),
            ),
            Empty::ThreadCreate => (&[("threadcreate", "count")], ("threadcreate", "count")),
        }
    }

    /// Why it is empty.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Empty::Block | Empty::Mutex => {
                "heapprof: Rust has no blocking or lock-contention profiler (std's and \
                 parking_lot's locks record no contention), so this profile is empty; it is \
                 served so that scrapers get a valid profile. Where threads wait now: \
                 /debug/pprof/goroutine?debug=1"
            }
            Empty::ThreadCreate => {
                "heapprof: Rust threads record no creation stack, so this profile is empty. \
                 Every thread's current stack: /debug/pprof/goroutine?debug=2"
            }
        }
    }

    /// The gzipped profile.proto.
    pub(crate) fn pprof(self) -> Vec<u8> {
        let mut strings = vec![String::new()];
        let mut intern = |s: &str| {
            strings.push(s.to_owned());
            strings.len() as i64 - 1
        };
        let (sample_types, (period_ty, period_unit)) = self.types();
        let sample_type = sample_types
            .iter()
            .map(|(ty, unit)| protos::ValueType {
                ty: intern(ty),
                unit: intern(unit),
            })
            .collect();
        let period_type = Some(protos::ValueType {
            ty: intern(period_ty),
            unit: intern(period_unit),
        });
        let comment = vec![intern(self.reason())];
        let time_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let profile = protos::Profile {
            sample_type,
            period_type,
            period: 1,
            comment,
            time_nanos,
            string_table: strings,
            ..Default::default()
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&profile.encode_to_vec());
        gz.finish().unwrap_or_default()
    }

    /// Go's `debug=1` text for the profile, with nothing in it.
    fn text(self) -> String {
        let head = match self {
            Empty::Block => "--- contention:\ncycles/second=1000000000\n".to_owned(),
            Empty::Mutex => "--- mutex:\ncycles/second=1000000000\nsampling period=0\n".to_owned(),
            Empty::ThreadCreate => "threadcreate profile: total 0\n".to_owned(),
        };
        format!("{head}# {}\n", self.reason())
    }

    async fn serve(self, query: Option<String>) -> Result<Response> {
        let mut text = false;
        for pair in query.as_deref().unwrap_or("").split('&') {
            if let Some(value) = pair.strip_prefix("debug=") {
                text = match value {
                    "0" => false,
                    "1" | "2" => true,
                    _ => return Err(Error::bad_param("debug", value, "expected 0, 1 or 2")),
                };
            }
        }
        Ok(if text {
            plain(self.text())
        } else {
            attachment(self.name(), self.pprof().into())
        })
    }
}

/// `GET /debug/pprof/block`.
pub(crate) async fn block(RawQuery(query): RawQuery) -> Result<Response> {
    Empty::Block.serve(query).await
}

/// `GET /debug/pprof/mutex`.
pub(crate) async fn mutex(RawQuery(query): RawQuery) -> Result<Response> {
    Empty::Mutex.serve(query).await
}

/// `GET /debug/pprof/threadcreate`.
pub(crate) async fn threadcreate(RawQuery(query): RawQuery) -> Result<Response> {
    Empty::ThreadCreate.serve(query).await
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn decode(gz: &[u8]) -> protos::Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        protos::Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn empty_profiles_have_gos_types_and_say_why() {
        for (kind, types) in [
            (Empty::Block, vec!["contentions/count", "delay/nanoseconds"]),
            (Empty::Mutex, vec!["contentions/count", "delay/nanoseconds"]),
            (Empty::ThreadCreate, vec!["threadcreate/count"]),
        ] {
            let p = decode(&kind.pprof());
            let s = |i: i64| p.string_table[i as usize].as_str();
            let got: Vec<String> = p
                .sample_type
                .iter()
                .map(|t| format!("{}/{}", s(t.ty), s(t.unit)))
                .collect();
            assert_eq!(got, types);
            assert!(p.sample.is_empty());
            assert_eq!(p.period, 1);
            assert!(s(p.comment[0]).contains("heapprof: Rust"), "{kind:?}");
            assert!(kind.text().contains(kind.reason()));
        }
    }
}
