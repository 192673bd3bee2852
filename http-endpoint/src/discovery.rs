//! Discovery: a process serving the endpoint writes `<dir>/<pid>.json`
//! so `heapprof ps` can list it without scanning ports.
//!
//! The file is `{"pid":N,"addr":"127.0.0.1:PORT","version":"0.1.0","cmdline":[...]}`,
//! written to a temporary name and renamed (readers never see half a file),
//! and removed when the [`AnnounceGuard`] drops. A process that dies
//! without dropping it leaves a stale file; announcing removes the stale
//! files of processes that no longer exist, and readers should check the
//! pid too.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a discovery file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The serving process.
    pub pid: u32,
    /// Where the endpoint listens, `IP:PORT`.
    pub addr: String,
    /// heapprof-http's version.
    pub version: String,
    /// The process's arguments (lossily UTF-8).
    pub cmdline: Vec<String>,
}

impl Announcement {
    /// This process, listening on `addr`.
    pub fn this_process(addr: SocketAddr) -> Self {
        Announcement {
            pid: std::process::id(),
            addr: addr.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cmdline: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }
}

/// Where discovery files go: `$HEAPPROF_DIR`, else
/// `$XDG_RUNTIME_DIR/heapprof`, else `/tmp/heapprof-$UID` (empty variables
/// count as unset).
pub fn discovery_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HEAPPROF_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(runtime) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(runtime).join("heapprof");
    }
    // The owner of /proc/self is the process's effective uid; no libc call
    // (this crate forbids unsafe).
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|_| "unknown".into());
    PathBuf::from(format!("/tmp/heapprof-{uid}"))
}

/// Writes this process's discovery file to [`discovery_dir`]; for a
/// service that mounts [`crate::router`] on its own server.
pub fn announce(addr: SocketAddr) -> Result<AnnounceGuard> {
    announce_in(&discovery_dir(), addr)
}

/// An [`Error::Write`] for `path`, from an I/O error.
pub(crate) fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |e| Error::Write {
        path,
        source: Arc::new(e),
    }
}

/// Creates `dir` and its parents, private to this user (mode 0700).
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_error(dir))
}

/// [`announce`] into `dir` (created with mode 0700 if missing).
pub fn announce_in(dir: &Path, addr: SocketAddr) -> Result<AnnounceGuard> {
    let failed = write_error;
    create_private_dir(dir)?;
    remove_stale(dir);
    let announcement = Announcement::this_process(addr);
    let path = dir.join(format!("{}.json", announcement.pid));
    let tmp = dir.join(format!(".{}.json.tmp", announcement.pid));
    let json = serde_json::to_vec(&announcement).expect("an Announcement serializes");
    std::fs::write(&tmp, json).map_err(failed(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(failed(&path))?;
    Ok(AnnounceGuard { path })
}

/// Removes `<pid>.json` files of processes that no longer exist.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_and_removes() {
        let dir = std::env::temp_dir().join(format!("heapprof-disc-unit-{}", std::process::id()));
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        // A stale file of a pid that cannot exist (above pid_max's limit).
        std::fs::create_dir_all(&dir).unwrap();
        let stale = dir.join("4294967294.json");
        std::fs::write(&stale, "{}").unwrap();

        let guard = announce_in(&dir, addr).unwrap();
        assert_eq!(
            guard.path(),
            dir.join(format!("{}.json", std::process::id()))
        );
        let read: Announcement =
            serde_json::from_slice(&std::fs::read(guard.path()).unwrap()).unwrap();
        assert_eq!(read, Announcement::this_process(addr));
        assert_eq!(read.version, "0.1.0");
        assert!(!stale.exists(), "stale file removed");

        let path = guard.path().to_owned();
        drop(guard);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
