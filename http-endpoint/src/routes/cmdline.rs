//! `/debug/pprof/cmdline`: the process's arguments, NUL-separated (Go).

use std::os::unix::ffi::OsStrExt;

use axum::response::Response;

use super::plain;

/// `GET /debug/pprof/cmdline`: argv joined by `\0`, bytes as given.
pub(crate) async fn cmdline() -> Response {
    plain(joined_args())
}

pub(crate) fn joined_args() -> Vec<u8> {
    let mut out = Vec::new();
    for (i, arg) in std::env::args_os().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(arg.as_bytes());
    }
    out
}
