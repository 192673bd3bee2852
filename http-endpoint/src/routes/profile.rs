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
/// [`crate::cpu::FREQUENCY_HZ`] for `seconds` and answers gzipped pprof.
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
    let _cpu = state.cpu_permit(window)?;
    let _window = state.window_permit()?;
    let body = blocking(move || crate::cpu::profile(window)).await??;
    Ok(attachment("profile", body.into()))
}
