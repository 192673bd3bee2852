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

/// After `fork`, in the parent: release them, in reverse order.
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

/// Registers, once per `registered` flag, `reset` to run in the child
/// after every `fork`, for a lock outside the allocator path (one that may
/// be held for long, so `fork` cannot wait for it): the child resets what
/// the lock guards instead, with [`reset_mutex`] or [`reset_rwlock`].
pub(crate) fn on_child(registered: &AtomicBool, reset: extern "C" fn()) {
    if registered.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: registers a plain function pointer; see `register_handlers`.
    unsafe {
        libc::pthread_atfork(None, None, Some(reset));
    }
}

/// In a child right after `fork`: if a thread of the parent held `lock`
/// (that thread does not exist here), unlocks it and replaces what it
/// guards with `fresh()`, leaking the old value, which may be half-updated.
pub(crate) fn reset_mutex<T>(lock: &parking_lot::Mutex<T>, fresh: impl FnOnce() -> T) {
    if !lock.is_locked() {
        return;
    }
    // SAFETY: only called from an atfork child handler: the child has one
    // thread, this one, which does not hold the lock, so its holder is gone
    // for good. The slot is overwritten without reading or dropping the old
    // value.
    unsafe {
        lock.force_unlock();
        core::ptr::write(lock.data_ptr(), fresh());
    }
}

/// [`reset_mutex`] for a read-write lock: readers of the parent are gone
/// too; the value is replaced only if a writer held it.
pub(crate) fn reset_rwlock<T>(lock: &parking_lot::RwLock<T>, fresh: impl FnOnce() -> T) {
    if lock.is_locked_exclusive() {
        // SAFETY: as in `reset_mutex`; a writer may have left the value
        // half-updated, so it is replaced without being dropped.
        unsafe {
            lock.force_unlock_write();
            core::ptr::write(lock.data_ptr(), fresh());
        }
        return;
    }
    while lock.is_locked() {
        // SAFETY: as in `reset_mutex`; each call releases one read lock of
        // a thread that no longer exists. Readers do not modify the value.
        unsafe { lock.force_unlock_read() };
    }
}
