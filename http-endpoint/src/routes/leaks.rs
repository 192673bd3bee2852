//! `GET /debug/heapprof/leaks`: leak suspects from the growth history, as
//! JSON (`heapprof leaks <pid>` reads it).
//!
//! The history is opt-in (`heapprof::history::start`); without it the
//! answer says so (`"recording": false`) and lists nothing.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::blocking;
use crate::error::Result;

/// The JSON document.
#[derive(Serialize)]
pub(crate) struct Leaks {
    /// Whether the growth recorder runs.
    recording: bool,
    /// Its interval, in seconds.
    interval_seconds: Option<f64>,
    /// Suspects, fastest growing first.
    suspects: Vec<Suspect>,
}

/// One suspect.
#[derive(Serialize)]
pub(crate) struct Suspect {
    site_id: u32,
    /// Innermost first, plumbing trimmed.
    functions: Vec<String>,
    /// `file:line` of each function.
    locations: Vec<String>,
    labels: Vec<(String, String)>,
    slope_bytes_per_minute: f64,
    r_squared: f64,
    inuse_bytes: i64,
    growth_bytes: i64,
    points: usize,
    window_seconds: f64,
}

pub(crate) async fn leaks() -> Result<Response> {
    let leaks = blocking(|| {
        let interval = heapprof::history::interval();
        Leaks {
            recording: interval.is_some(),
            interval_seconds: interval.map(|d| d.as_secs_f64()),
            suspects: heapprof::history::leak_suspects()
                .into_iter()
                .map(|s| Suspect {
                    site_id: s.site_id,
                    functions: s.frames.iter().map(|f| f.function.clone()).collect(),
                    locations: s
                        .frames
                        .iter()
                        .map(|f| format!("{}:{}", f.file.as_deref().unwrap_or("?"), f.line))
                        .collect(),
                    labels: s.labels,
                    slope_bytes_per_minute: s.slope_bytes_per_minute,
                    r_squared: s.r_squared,
                    inuse_bytes: s.inuse_bytes,
                    growth_bytes: s.growth_bytes,
                    points: s.points,
                    window_seconds: s.window.as_secs_f64(),
                })
                .collect(),
        }
    })
    .await?;
    Ok(Json(leaks).into_response())
}
