//! `Error`: everything the endpoint can refuse or fail at, and the HTTP
//! answer for each (status plus a reason the client can act on).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request was refused or a server could not start.
///
/// Cheap to clone (I/O errors are shared), so one failed build can answer
/// every request waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A query parameter has a value the route does not accept (400).
    #[error("invalid query parameter {name}={value:?}: {reason}")]
    BadParam {
        /// The parameter, e.g. `seconds`.
        name: &'static str,
        /// The value as sent.
        value: String,
        /// What is accepted instead.
        reason: String,
    },
    /// The request is larger than the endpoint accepts (413).
    #[error("request too large: {0}")]
    TooLarge(String),
    /// Parameters that are fine alone but not together (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Missing or wrong `Authorization: Bearer` token (401).
    #[error(
        "missing or wrong bearer token: send `Authorization: Bearer <token>` \
         with the token the process was started with (HEAPPROF_TOKEN)"
    )]
    Unauthorized,
    /// The profile is process-wide and already being taken (409 with
    /// `Retry-After`).
    #[error("{what}; retry after {} s", retry_after.as_secs().max(1))]
    Conflict {
        /// What is taken, and until when.
        what: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// Too many profile requests at once (429 with `Retry-After`).
    #[error("{what}; retry after {} s", retry_after.as_secs().max(1))]
    Busy {
        /// What is busy and why, e.g. `2 profile builds already running`.
        what: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The process has too little memory left for this profile (503 with
    /// `Retry-After`); see `heapprof::admit`.
    #[error("{0}")]
    NoRoom(#[from] heapprof::NoRoom),
    /// The CPU profiler could not start or report (500).
    #[error("CPU profiler failed: {0}")]
    CpuProfiler(String),
    /// Building a profile failed unexpectedly (500).
    #[error("profile build failed: {0}")]
    Build(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The operating system's reason.
        #[source]
        source: Arc<io::Error>,
    },
    /// A file (discovery announcement, gops port file) could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: Arc<io::Error>,
    },
    /// Starting would expose the process without the authentication the
    /// configuration asks for.
    #[error("refusing to start: {0}")]
    Insecure(String),
    /// The server thread or its runtime could not be started.
    #[error("cannot start the heapprof-http server thread: {0}")]
    Start(#[source] Arc<io::Error>),
}

impl Error {
    /// A [`Error::BadParam`].
    pub(crate) fn bad_param(name: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Error::BadParam {
            name,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadParam { .. } | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::NoRoom(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::CpuProfiler(_)
            | Error::Build(_)
            | Error::Bind { .. }
            | Error::Write { .. }
            | Error::Insecure(_)
            | Error::Start(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    /// The status of [`Error::status`], a `text/plain` body with the reason,
    /// `Retry-After` (seconds) on 429 and `WWW-Authenticate` on 401.
    fn into_response(self) -> Response {
        let mut response = crate::routes::plain(format!("{self}\n"));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        match &self {
            Error::Busy { retry_after, .. } | Error::Conflict { retry_after, .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
            }
            Error::NoRoom(e) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(e.retry_after().as_secs().max(1)),
                );
            }
            Error::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"heapprof\""),
                );
            }
            _ => {}
        }
        response
    }
}
