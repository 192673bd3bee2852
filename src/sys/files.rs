//! Files that processes of one user leave for each other (discovery
//! files, gops port files, profile dumps), written and read so that
//! another local user cannot redirect, replace or read them.
//!
//! Writing: the directory is created with mode 0700 when missing, and used
//! only if it is a real directory (not a symlink) owned by this user and
//! not writable by group or others, the check ssh and gpg-agent make of
//! their directories. A file is written under a temporary name opened with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600, then renamed into place,
//! so a planted symlink is never followed and readers never see half a
//! file.
//!
//! Reading: a file is opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot
//! block the reader), and read only if it is a regular file owned by the
//! reader or by root, and at most a given size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a directory or file is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The directory could not be created or inspected.
    #[error("cannot use directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The directory exists but another user could change what is in it.
    #[error("refusing directory {}: {reason}", path.display())]
    Insecure {
        /// The directory.
        path: PathBuf,
        /// What is wrong, e.g. `owned by uid 1001, not 1000`.
        reason: String,
    },
    /// A file could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A file is not one this reader trusts.
    #[error("refusing {}: {reason}", path.display())]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `not a regular file`.
        reason: String,
    },
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist,
/// then checks it with [`check_dir`].
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| FileError::Dir {
                path: dir.to_owned(),
                source,
            })?;
    }
    check_dir(dir, euid())
}

/// Checks that `dir` is a directory, not a symlink, owned by `owner` and
/// not writable by group or others.
pub fn check_dir(dir: &Path, owner: u32) -> Result<(), FileError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| FileError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let insecure = |reason: String| {
        Err(FileError::Insecure {
            path: dir.to_owned(),
            reason,
        })
    };
    if meta.file_type().is_symlink() {
        return insecure("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return insecure("it is not a directory".into());
    }
    if meta.uid() != owner {
        return insecure(format!("owned by uid {}, not {owner}", meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return insecure(format!(
            "mode {mode:04o} lets group or others write to it (chmod go-w, or remove it)"
        ));
    }
    Ok(())
}

/// Writes `bytes` to `dir/name` (mode 0600) through a temporary file
/// created with `O_EXCL | O_NOFOLLOW`, then renamed into place. `dir` must
/// pass [`check_dir`] for this user. A leftover temporary file (or a
/// planted link in its place) is removed, never followed.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, FileError> {
    check_dir(dir, euid())?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FileError::Io { path, source }
    };
    let mut file = match create_new(&tmp) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // unlink(2) removes a symlink itself, not its target.
            std::fs::remove_file(&tmp).map_err(io(&tmp))?;
            create_new(&tmp).map_err(io(&tmp))?
        }
        other => other.map_err(io(&tmp))?,
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_data());
    drop(file);
    if let Err(source) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::Io { path, source });
    }
    Ok(path)
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Reads `path` if it is a regular file (not a symlink, FIFO or device)
/// owned by `owner` or root and at most `max_bytes` long.
pub fn read_trusted(path: &Path, owner: u32, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    let untrusted = |reason: String| FileError::Untrusted {
        path: path.to_owned(),
        reason,
    };
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                untrusted("it is a symbolic link".into())
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(untrusted(format!(
            "owned by uid {}, not {owner} or root",
            meta.uid()
        )));
    }
    if meta.len() > max_bytes {
        return Err(untrusted(format!(
            "{} bytes, more than the {max_bytes} expected",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after fstat: never read past the bound.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(untrusted(format!("more than {max_bytes} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("heapprof-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_private_files_and_never_follows_a_planted_link() {
        let dir = temp_dir("write");
        create_private_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let victim = dir.join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".42.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("42.json")).unwrap();
        let path = write_atomically(&dir, "42.json", b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "the link was replaced, not followed");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_trusted(&path, euid(), 16).unwrap(), b"{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_insecure_directories() {
        let dir = temp_dir("insecure");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("mode 0777"), "{err}");
        assert!(write_atomically(&dir, "1.json", b"x").is_err());
        let link = temp_dir("link");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = create_private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(check_dir(&dir, euid() + 1).is_err(), "wrong owner");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_only_small_regular_files() {
        let dir = temp_dir("read");
        create_private_dir(&dir).unwrap();
        let fifo = dir.join("a.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_trusted(&fifo, euid(), 1024).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let zero = dir.join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read_trusted(&zero, euid(), 1024).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let err = read_trusted(&big, euid(), 1024).unwrap_err().to_string();
        assert!(err.contains("more than the 1024"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
