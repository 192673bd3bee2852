//! This thread's stack, as `[low, high)` in bytes of address space: the
//! memory both stack walkers (`frame_pointer`, `table_walk`) may read.
//!
//! Between the walker's own frame and `high`, every byte is mapped and
//! readable while the walker runs, so a read checked to lie there can
//! never fault. A walk that starts anywhere else (a signal handler on a
//! `sigaltstack`, a coroutine's stack) has no such guarantee and is not
//! made.

use core::cell::Cell;

/// `(0, 0)` until looked up, `(0, 1)` if it could not be.
struct Bounds {
    low: Cell<usize>,
    high: Cell<usize>,
}

thread_local! {
    // Const-initialised, no destructor: safe to touch from the allocator,
    // even while the thread is exiting.
    static BOUNDS: Bounds = const {
        Bounds {
            low: Cell::new(0),
            high: Cell::new(0),
        }
    };
}

/// This thread's stack bounds `(low, high)`, looked up once per thread.
///
/// `None` when they are unknown or the thread-local is gone (thread exit).
/// The first call on each thread asks `pthread_getattr_np`, which may
/// allocate and, on the main thread, reads `/proc/self/maps`: callers hold
/// the reentrancy guard.
pub(super) fn stack_bounds() -> Option<(usize, usize)> {
    BOUNDS
        .try_with(|b| {
            if b.high.get() == 0 {
                let (low, high) = lookup_bounds().unwrap_or((0, 1));
                b.low.set(low);
                b.high.set(high);
            }
            (b.low.get(), b.high.get())
        })
        .ok()
        .filter(|&(_, high)| high > 1)
}

#[cold]
fn lookup_bounds() -> Option<(usize, usize)> {
    let mut attr = core::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread
    // when it returns 0; only then is it read and destroyed.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if got != 0 || addr.is_null() || size == 0 {
            return None;
        }
        let low = addr as usize;
        Some((low, low.checked_add(size)?))
    }
}
