//! Discovery files: a process serving the heapprof endpoint writes
//! `<dir>/<pid>.json` so that `heapprof ps` lists it without scanning
//! ports, and `heapprof top <pid>` finds its address.
//!
//! The file is `{"pid":N,"addr":"127.0.0.1:PORT","version":"0.1.0","cmdline":[...]}`.
//! `dir` is `$HEAPPROF_DIR`, else `$XDG_RUNTIME_DIR/heapprof`, else
//! `/tmp/heapprof-<euid>` (empty variables count as unset). Writers and
//! readers trust the directory and the files only as [`super::files`]
//! allows: a directory another user can write to, or a file another user
//! owns, is refused. Readers also skip the files of processes that are
//! gone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{self, FileError};

/// Largest discovery file read, in bytes (a real one is a few hundred).
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No live, trusted discovery file names this pid.
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
    /// The directory or a file in it is not trusted, or cannot be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not a discovery announcement.
    #[error("{}: not a heapprof discovery file: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What a discovery file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The serving process.
    pub pid: u32,
    /// Where the endpoint listens, `IP:PORT`.
    pub addr: String,
    /// heapprof's version.
    #[serde(default)]
    pub version: String,
    /// The process's arguments (lossily UTF-8).
    #[serde(default)]
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

    /// Whether the address is a loopback `IP:PORT` (what a local process
    /// announces by default; anything else needs the reader's consent).
    pub fn is_loopback(&self) -> bool {
        self.addr
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
            || self
                .addr
                .rsplit_once(':')
                .is_some_and(|(host, _)| host == "localhost")
    }
}

/// Where discovery files go for the current environment.
pub fn dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HEAPPROF_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(runtime) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(runtime).join("heapprof");
    }
    PathBuf::from(format!("/tmp/heapprof-{}", files::euid()))
}

/// Writes this process's announcement into `dir` (created private if
/// missing, refused if insecure) and removes the files of processes that
/// are gone. Returns the file's path.
pub fn announce(dir: &Path, addr: SocketAddr) -> Result<PathBuf, DiscoveryError> {
    files::create_private_dir(dir)?;
    remove_stale(dir);
    let announcement = Announcement::this_process(addr);
    let json = serde_json::to_vec(&announcement).expect("an Announcement serializes");
    Ok(files::write_atomically(
        dir,
        &format!("{}.json", announcement.pid),
        &json,
    )?)
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
        if !alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads one discovery file, as a reader with uid `reader` trusts it: a
/// regular file owned by the reader or root, small, whose name is its pid.
pub fn read(path: &Path, reader: u32) -> Result<Announcement, DiscoveryError> {
    let bytes = files::read_trusted(path, reader, MAX_FILE_BYTES)?;
    let format = |reason: String| DiscoveryError::Format {
        path: path.to_owned(),
        reason,
    };
    let a: Announcement = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    let named = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok());
    if named != Some(a.pid) {
        return Err(format(format!("names pid {} in another pid's file", a.pid)));
    }
    if a.addr.parse::<SocketAddr>().is_err()
        && a.addr
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format(format!("{:?} is not HOST:PORT", a.addr)));
    }
    Ok(a)
}

/// The live processes announced in `dir`, by pid, and what was skipped
/// (as one line each). An insecure directory yields nothing but its reason.
pub fn list(dir: &Path) -> (Vec<Announcement>, Vec<String>) {
    let reader = files::euid();
    if let Err(e) = files::check_dir(dir, reader) {
        let missing = matches!(&e, FileError::Dir { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
        return (
            Vec::new(),
            if missing {
                Vec::new()
            } else {
                vec![e.to_string()]
            },
        );
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match read(&path, reader) {
            Ok(a) if alive(a.pid) => found.push(a),
            Ok(_) => {}
            Err(e) => skipped.push(e.to_string()),
        }
    }
    found.sort_by_key(|a| a.pid);
    skipped.sort();
    (found, skipped)
}

/// The announcement of `pid` in `dir`. A directory that is not trusted
/// is an error that says why (not "not found": the reader should learn
/// that someone else controls it).
pub fn find(dir: &Path, pid: u32) -> Result<Announcement, DiscoveryError> {
    let path = dir.join(format!("{pid}.json"));
    let not_found = || DiscoveryError::NotFound {
        pid,
        dir: dir.display().to_string(),
    };
    match files::check_dir(dir, files::euid()) {
        Err(FileError::Dir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found());
        }
        Err(e) => return Err(e.into()),
        Ok(()) => {}
    }
    if !alive(pid) || std::fs::symlink_metadata(&path).is_err() {
        return Err(not_found());
    }
    read(&path, files::euid())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn announces_lists_and_skips_stale_and_junk() {
        let dir = std::env::temp_dir().join(format!("heapprof-disc-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        // A stale file of a pid that cannot exist (above pid_max's limit).
        let stale = dir.join("4294967294.json");
        std::fs::write(&stale, "{}").unwrap();

        let path = announce(&dir, addr).unwrap();
        assert_eq!(path, dir.join(format!("{}.json", std::process::id())));
        assert!(!stale.exists(), "stale file removed");
        let me = Announcement::this_process(addr);
        assert_eq!(read(&path, files::euid()).unwrap(), me);
        assert_eq!(me.version, "0.1.0");
        assert!(me.is_loopback());

        std::fs::write(dir.join("junk.json"), "not json").unwrap();
        let dead = r#"{"pid":4194303,"addr":"127.0.0.1:2","version":"0.1.0","cmdline":[]}"#;
        std::fs::write(dir.join("4194303.json"), dead).unwrap();
        let liar = format!(r#"{{"pid":{},"addr":"127.0.0.1:3"}}"#, std::process::id());
        std::fs::write(dir.join("1.json"), liar).unwrap();
        let (found, skipped) = list(&dir);
        assert_eq!(found, vec![me.clone()]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(find(&dir, std::process::id()).is_ok());
        assert!(matches!(
            find(&dir, 4_194_303),
            Err(DiscoveryError::NotFound { .. })
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = find(&dir, std::process::id()).unwrap_err().to_string();
        assert!(
            err.contains("refusing directory") && err.contains("0777"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            find(&dir, std::process::id()),
            Err(DiscoveryError::NotFound { .. })
        ));
    }

    #[test]
    fn loopback_addresses() {
        let a = |addr: &str| Announcement {
            pid: 1,
            addr: addr.into(),
            version: String::new(),
            cmdline: Vec::new(),
        };
        assert!(a("127.0.0.1:1").is_loopback());
        assert!(a("[::1]:1").is_loopback());
        assert!(a("localhost:6060").is_loopback());
        assert!(!a("10.0.0.1:6060").is_loopback());
        assert!(!a("evil.example:6060").is_loopback());
    }
}
