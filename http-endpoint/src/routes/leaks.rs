//! `GET /debug/heapprof/leaks`: leak suspects from the growth history, as
//! JSON (`heapprof leaks <pid>` reads it). The document's format is
//! `heapprof::wire::LeaksDocument`, shared with the command.
//!
//! The history is opt-in (`heapprof::start_history`); without it the
//! answer says so (`"recording": false`) and lists nothing.

use axum::Json;
use axum::response::{IntoResponse, Response};

use super::blocking;
use crate::error::Result;

pub(crate) async fn leaks() -> Result<Response> {
    let leaks = blocking(heapprof::wire::LeaksDocument::current).await?;
    Ok(Json(leaks).into_response())
}
