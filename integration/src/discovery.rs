//! Finding processes that run the heapprof endpoint.
//!
//! Each such process writes `<dir>/<pid>.json`
//! (`{"pid":N,"addr":"127.0.0.1:PORT","version":"0.1.0","cmdline":[...]}`)
//! where `dir` is `$HEAPPROF_DIR`, else `$XDG_RUNTIME_DIR/heapprof`, else
//! `/tmp/heapprof-$UID`. Files of processes that are gone are ignored.

use std::path::{Path, PathBuf};

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No live discovery file names this pid.
    #[error(
        "process {pid} does not publish a heapprof endpoint (no live {dir}/{pid}.json); \
         pass HOST:PORT instead"
    )]
    NotFound {
        /// The pid looked up.
        pid: u32,
        /// The discovery directory.
        dir: String,
    },
}

/// One discovery file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// The process id.
    pub pid: u32,
    /// `HOST:PORT` of its endpoint.
    pub addr: String,
    /// heapprof version of the process.
    #[serde(default)]
    pub version: String,
    /// Its command line.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// The discovery directory for the current environment.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HEAPPROF_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&d).join("heapprof");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/heapprof-{uid}"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Live endpoints in `dir`, by pid. Unreadable or stale files are skipped.
pub fn list(dir: &Path) -> Vec<Endpoint> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Endpoint> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension()? != "json" {
                return None;
            }
            let text = std::fs::read_to_string(&path).ok()?;
            serde_json::from_str::<Endpoint>(&text).ok()
        })
        .filter(|e| alive(e.pid))
        .collect();
    found.sort_by_key(|e| e.pid);
    found
}

/// The endpoint of `pid`.
pub fn find(dir: &Path, pid: u32) -> Result<Endpoint, DiscoveryError> {
    list(dir)
        .into_iter()
        .find(|e| e.pid == pid)
        .ok_or_else(|| DiscoveryError::NotFound {
            pid,
            dir: dir.display().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_live_and_skips_stale() {
        let dir = std::env::temp_dir().join(format!("heapprof-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let live =
            format!(r#"{{"pid":{me},"addr":"127.0.0.1:1","version":"0.1.0","cmdline":["x"]}}"#);
        std::fs::write(dir.join(format!("{me}.json")), live).unwrap();
        let stale = r#"{"pid":4194303,"addr":"127.0.0.1:2","version":"0.1.0","cmdline":[]}"#;
        std::fs::write(dir.join("4194303.json"), stale).unwrap();
        std::fs::write(dir.join("junk.json"), "not json").unwrap();
        let found = list(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].addr, "127.0.0.1:1");
        assert!(find(&dir, me).is_ok());
        assert!(matches!(
            find(&dir, 4_194_303),
            Err(DiscoveryError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
