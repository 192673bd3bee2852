//! Which bytes of a range of this process's memory are resident, from
//! `mincore(2)`: one byte per page, bit 0 set when the page is in RAM.
//!
//! `mincore` reads page tables only; it never touches the memory, so a
//! range freed (even unmapped) meanwhile is no danger: the call fails
//! with `ENOMEM` and the range counts as not resident. For anonymous
//! memory, a page never written has no page behind it and reads as not
//! resident, which is what RSS counts (a `calloc`ed block nobody touched
//! costs no RSS). A page only read maps the shared zero page and reads as
//! resident although RSS does not count it: the one case where this
//! overstates.

use std::io;

/// Pages asked about per `mincore` call; the answer buffer lives on the
/// stack, so measuring any range takes no heap.
const PAGES_PER_CALL: usize = 4096;

/// The page size of this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

/// Bytes of `[start, start + len)` that lie in resident pages (a partly
/// covered page counts for the part inside the range). `Err` when part of
/// the range is not mapped.
pub fn resident_bytes(start: usize, len: usize) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let page = page_size();
    let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
    let first = start & !(page - 1);
    let pages = (end - first).div_ceil(page);
    let mut answer = [0u8; PAGES_PER_CALL];
    let mut resident = 0u64;
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(PAGES_PER_CALL);
        let at = first + done * page;
        // SAFETY: `at` is page-aligned and `answer` has room for the `n`
        // pages asked about (mincore writes one byte per page). mincore
        // reads page tables only, never the memory at `at`.
        let rc = unsafe { libc::mincore(at as *mut libc::c_void, n * page, answer.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, state) in answer[..n].iter().enumerate() {
            if state & 1 == 1 {
                let lo = (at + i * page).max(start);
                let hi = (at + (i + 1) * page).min(end);
                resident += (hi - lo) as u64;
            }
        }
        done += n;
    }
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_are_resident_untouched_ones_not() {
        let page = page_size();
        let len = 64 * page;
        // SAFETY: an anonymous private mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        assert_eq!(resident_bytes(base, len).unwrap(), 0);
        for i in 0..10 {
            // SAFETY: inside the mapping.
            unsafe { *((base + i * page) as *mut u8) = 1 };
        }
        assert_eq!(resident_bytes(base, len).unwrap(), 10 * page as u64);
        // Part of a page: only the bytes inside the range.
        assert_eq!(resident_bytes(base + 100, 50).unwrap(), 50);
        assert_eq!(
            resident_bytes(base + page / 2, page).unwrap(),
            page as u64,
            "half of page 0 and half of page 1"
        );
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
        assert!(resident_bytes(base, len).is_err(), "unmapped");
    }
}
