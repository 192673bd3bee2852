//! Discovery: a process serving the endpoint announces itself in
//! `<dir>/<pid>.json` so `heapprof ps` can list it without scanning ports.
//!
//! The format, the directory and the rules for trusting both live in
//! `heapprof::sys::discovery`, shared with the `heapprof` command: the
//! directory is created private (0700) and refused when another user could
//! write to it, and the file is written without following symlinks and
//! renamed into place. The file is removed when the [`AnnounceGuard`]
//! drops; announcing removes the files of processes that are gone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use heapprof::sys::discovery::Announcement;

use crate::error::{Error, Result};

/// Where discovery files go: `$HEAPPROF_DIR`, else `heapprof` in the
/// user's runtime directory (XDG), else `/tmp/heapprof-$EUID`; the
/// directory `heapprof ps` reads.
pub fn discovery_dir() -> PathBuf {
    heapprof::sys::discovery::dir()
}

/// Writes this process's discovery file to [`discovery_dir`]; for a
/// service that mounts [`crate::router`] on its own server.
pub fn announce(addr: SocketAddr) -> Result<AnnounceGuard> {
    announce_in(&discovery_dir(), addr)
}

/// [`announce`] into `dir` (created with mode 0700 if missing; refused if
/// it is a symlink, belongs to another user or is writable by others).
pub fn announce_in(dir: &Path, addr: SocketAddr) -> Result<AnnounceGuard> {
    heapprof::sys::discovery::announce(dir, addr)
        .map(|path| AnnounceGuard { path })
        .map_err(|e| Error::Write {
            path: dir.to_owned(),
            source: Arc::new(std::io::Error::other(e)),
        })
}

/// Keeps the discovery file; dropping it removes the file.
#[derive(Debug)]
#[must_use = "dropping the guard removes the discovery file at once"]
pub struct AnnounceGuard {
    path: PathBuf,
}

impl AnnounceGuard {
    /// The discovery file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AnnounceGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
