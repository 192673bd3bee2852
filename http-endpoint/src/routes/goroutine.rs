//! `/debug/pprof/goroutine`: every OS thread's current stack
//! (`heapprof::thread_dump`), in the three forms Go serves its goroutines:
//! gzipped pprof (default), `?debug=1` (identical stacks grouped with a
//! count) and `?debug=2` (one block per thread with its name and state).
//!
//! A dump is process-wide, so concurrent requests for the same form share
//! one (single flight, across routers), and a dump takes a build slot like
//! a heap profile. `seconds` is refused: a thread dump is one moment, not a
//! window.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::{attachment, blocking, plain};
use crate::error::{Error, Result};
use crate::single_flight::SingleFlight;
use crate::state::AppState;

/// The three forms of the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Form {
    /// Gzipped profile.proto.
    Pprof,
    /// `debug=1`.
    Grouped,
    /// `debug=2`.
    PerThread,
}

impl Form {
    /// `debug` as Go reads it for this route: 0, 1 or 2; `seconds` is a 400.
    pub(crate) fn parse(query: Option<&str>) -> Result<Form> {
        let mut form = Form::Pprof;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "debug" => {
                    form = match value {
                        "0" => Form::Pprof,
                        "1" => Form::Grouped,
                        "2" => Form::PerThread,
                        _ => return Err(Error::bad_param("debug", value, "expected 0, 1 or 2")),
                    }
                }
                "seconds" => {
                    return Err(Error::bad_param(
                        "seconds",
                        value,
                        "a thread dump is one moment, not a window; drop seconds",
                    ));
                }
                _ => {}
            }
        }
        Ok(form)
    }

    fn encode(self, dump: &heapprof::ThreadDump) -> Bytes {
        match self {
            Form::Pprof => dump.to_pprof().into(),
            Form::Grouped => dump.to_text().into(),
            Form::PerThread => dump.to_text_per_thread().into(),
        }
    }
}

fn flights() -> &'static Arc<SingleFlight<Form>> {
    static FLIGHTS: OnceLock<Arc<SingleFlight<Form>>> = OnceLock::new();
    FLIGHTS.get_or_init(SingleFlight::new)
}

/// `GET /debug/pprof/goroutine`.
pub(crate) async fn goroutine(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let form = Form::parse(query.as_deref())?;
    let (outcome, _started) = flights()
        .run(form, move || async move {
            let _permit = state.build_permit().await?;
            blocking(move || {
                let _admission = heapprof::admit(heapprof::BuildKind::Threads)?;
                Ok(form.encode(&heapprof::thread_dump()))
            })
            .await?
        })
        .await;
    let body = outcome?;
    Ok(match form {
        Form::Pprof => attachment("goroutine", body),
        Form::Grouped | Form::PerThread => plain(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_levels_like_go() {
        assert_eq!(Form::parse(None).unwrap(), Form::Pprof);
        assert_eq!(Form::parse(Some("debug=1")).unwrap(), Form::Grouped);
        assert_eq!(Form::parse(Some("debug=2&x=y")).unwrap(), Form::PerThread);
        for (q, reason) in [
            ("debug=3", "expected 0, 1 or 2"),
            ("seconds=5", "one moment"),
        ] {
            let e = Form::parse(Some(q)).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(reason), "{e}");
        }
    }
}
