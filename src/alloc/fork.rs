//! `fork` and the profiler's locks.
//!
//! A child process starts with one thread: a lock that another thread of
//! the parent held at the moment of `fork` stays held forever in the child.
//! `pthread_atfork` handlers registered here take every lock the allocator
//! path uses before `fork` and release them afterwards in both processes,
//! so the child inherits them unlocked and its allocator and profiler keep
//! working. The child also learns that the unwind-table builder thread
//! did not come along (`stack::after_fork_in_child`).

use core::sync::atomic::{AtomicBool, Ordering};

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers the handlers, once per process (the first site creation does).
pub(crate) fn register_handlers() {
    if REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handlers are plain functions that touch only static
    // locks; pthread_atfork copies the pointers. A failure (ENOMEM) leaves
    // fork as it was without the handlers, which we can only accept.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(release), Some(release_in_child));
    }
}

/// Before `fork`: take the locks, in one fixed order.
extern "C" fn prepare() {
    super::site_table::fork_prepare();
    super::peak::fork_prepare();
}

/// After `fork`, in parent and child: release them, in reverse order.
extern "C" fn release() {
    super::peak::fork_release();
    super::site_table::fork_release();
}

/// After `fork`, in the child: release the locks; the child has no
/// threads but this one.
extern "C" fn release_in_child() {
    release();
    super::stack::after_fork_in_child();
}
