//! The routes' handlers, one file per route family, and what they share.

pub(crate) mod cmdline;
pub(crate) mod empty;
pub(crate) mod goroutine;
pub(crate) mod heap;
pub(crate) mod index;
pub(crate) mod leaks;
pub(crate) mod profile;
pub(crate) mod sampling;
pub(crate) mod symbol;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Result};

/// Runs CPU-heavy or blocking work (snapshot, symbolization, encoding) off
/// the async workers; a panic in it becomes a 500, not a dead server.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Build(format!("the build task failed: {e}")))
}

/// A binary download the way Go's `net/http/pprof` sends it.
pub(crate) fn attachment(filename: &str, body: Bytes) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A `text/plain; charset=utf-8` answer.
pub(crate) fn plain(body: impl Into<Bytes>) -> Response {
    let mut response = body.into().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
