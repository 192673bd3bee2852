//! A read-only view of part of a loaded library's file, mapped again from
//! the file itself: what a table build reads instead of a copy of the
//! library's unwind sections.
//!
//! A library can be unloaded (`dlclose`) while its table is being built,
//! so the build cannot read the loader's mapping once the loader's lock
//! is released. A copy is safe, but it is anonymous memory: 8.7 MB for
//! libLLVM's sections, charged to the process while the build runs. A
//! mapping of the same range of the same file is backed by the page cache
//! (the pages the loader's mapping already uses), and stays valid whatever
//! the loader does. It is used only if its bytes are exactly the loaded
//! ones, so a file replaced or changed on disk since the load is never
//! read in their place.

use core::ffi::CStr;
use core::ops::Deref;

use crate::sys::mapped_file::MappedRange;

/// Largest view, in bytes: bounds what a file can make the builder map.
const MAX_VIEW: usize = 1 << 30;

/// A read-only mapping of a range of a module's file, holding exactly the
/// bytes loaded from there; unmapped when dropped.
pub(super) struct FileView(MappedRange);

impl FileView {
    /// `loaded`, a range of a module that the loader mapped from `path`
    /// and that starts `file_offset` bytes into the file, mapped again
    /// from the file. `None` if the file is not a regular file, cannot be
    /// opened or mapped, is too short, or holds other bytes there.
    pub(super) fn of(path: &CStr, file_offset: u64, loaded: &[u8]) -> Option<FileView> {
        if loaded.is_empty() || loaded.len() > MAX_VIEW {
            return None;
        }
        let end = file_offset.checked_add(loaded.len() as u64)?;
        // SAFETY: opens a NUL-terminated path read-only; O_NONBLOCK so that
        // a FIFO put in a library's place cannot block the builder.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return None;
        }
        let view = holds(fd, end)
            .then(|| MappedRange::new(fd, file_offset, loaded.len()))
            .flatten();
        // SAFETY: closes the descriptor opened above; a mapping outlives it.
        unsafe { libc::close(fd) };
        // Compared in place: both sides are the same page-cache pages when
        // the file is the one loaded.
        view.filter(|v| v.bytes() == loaded).map(FileView)
    }
}

/// Whether the open file `fd` is a regular file of at least `end` bytes.
fn holds(fd: libc::c_int, end: u64) -> bool {
    let mut stat = core::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat for an open descriptor into room for
    // one; it is read only on success.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    stat.st_mode & libc::S_IFMT == libc::S_IFREG && stat.st_size as u64 >= end
}

impl Deref for FileView {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_used_only_when_the_file_holds_the_loaded_bytes() {
        let dir = std::env::temp_dir().join(format!("heapprof-file-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lib.so");
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let view = FileView::of(&path, 5000, &bytes[5000..12_000]).expect("same bytes");
        assert_eq!(*view, bytes[5000..12_000]);
        let mut other = bytes[5000..12_000].to_vec();
        other[100] ^= 1;
        assert!(FileView::of(&path, 5000, &other).is_none(), "other bytes");
        assert!(
            FileView::of(&path, 15_000, &bytes[..6000]).is_none(),
            "past the end of the file"
        );
        assert!(FileView::of(c"/nonexistent/lib.so", 0, &bytes[..10]).is_none());
        let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: creates a FIFO at a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(
            FileView::of(&fifo, 0, &bytes[..10]).is_none(),
            "a FIFO is refused, without blocking"
        );
        drop(view);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
