//! A root directory for everything read from the kernel's pseudo-filesystems.
//!
//! Production code reads `/proc` and `/sys` through [`Fs::real`]; unit tests
//! point an [`Fs`] at a fixture directory holding captured copies of the same
//! files (the idea of aya's `sys/fake.rs`, applied to files instead of
//! syscalls). Parsers take `&str` contents and never touch the filesystem.

use std::io;
use std::path::{Path, PathBuf};

/// Reads kernel files below a root: `/` in production, a fixture in tests.
#[derive(Clone, Debug)]
pub struct Fs {
    root: PathBuf,
}

impl Fs {
    /// The real filesystem.
    pub fn real() -> Self {
        Self { root: "/".into() }
    }

    /// Files below `root`: `Fs::at(dir).read("/proc/1/status")` reads
    /// `dir/proc/1/status`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The real path of the absolute path `path` under this root.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The contents of `path`.
    pub fn read(&self, path: impl AsRef<Path>) -> io::Result<String> {
        std::fs::read_to_string(self.path(path))
    }

    /// Whether `path` exists.
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.path(path).exists()
    }

    /// Names of the entries of the directory `path`, sorted.
    pub fn list(&self, path: impl AsRef<Path>) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.path(path))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Names of the subdirectories of `path`, sorted.
    pub fn subdirs(&self, path: impl AsRef<Path>) -> io::Result<Vec<String>> {
        let path = path.as_ref();
        let mut dirs = Vec::new();
        for name in self.list(path)? {
            if self.path(path.join(&name)).is_dir() {
                dirs.push(name);
            }
        }
        Ok(dirs)
    }
}
