//! `/debug/pprof/profile?seconds=N`: a CPU profile (default 30 s).

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::{attachment, blocking};
use crate::error::{Error, Result};
use crate::params::ProfileParams;
use crate::state::AppState;

/// Go's default window.
const DEFAULT_SECONDS: u64 = 30;

/// `GET /debug/pprof/profile`: samples every thread's stack at
/// `heapprof`'s 100 Hz for `seconds` and answers gzipped pprof; while
/// another CPU profile runs in the process (this route's or the gops
/// agent's), 409 with `Retry-After`.
pub(crate) async fn profile(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let max = state.config().max_seconds;
    let params = ProfileParams::parse(query.as_deref(), max)?;
    if params.text {
        return Err(Error::BadRequest(
            "CPU profiles are served as gzipped protobuf only; drop debug=1".into(),
        ));
    }
    let window = params
        .seconds
        .unwrap_or(Duration::from_secs(DEFAULT_SECONDS.min(max)));
    let _window = state.window_permit()?;
    let body = blocking(move || crate::cpu::profile(window)).await??;
    Ok(attachment("profile", body.into()))
}
