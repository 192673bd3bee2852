//! `fork` and the profiler's locks.
//!
//! A child process starts with one thread: a lock that another thread of
//! the parent held at the moment of `fork` stays held forever in the child.
//! `pthread_atfork` handlers registered here take every lock the allocator
//! path uses before `fork` and release them afterwards in both processes,
//! so the child inherits them unlocked and its allocator and profiler keep
//! working.

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
        libc::pthread_atfork(Some(prepare), Some(release), Some(release));
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

/// Registers `reset` to run in the child after every `fork`, for a lock
/// outside the allocator path (one that may be held across allocations,
/// so it cannot be taken before `fork`): the child resets what the lock
/// guards instead.
pub(crate) fn on_child(reset: extern "C" fn()) {
    // SAFETY: registers a plain function pointer; see `register_handlers`.
    unsafe {
        libc::pthread_atfork(None, None, Some(reset));
    }
}
