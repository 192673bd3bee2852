//! A spin lock that never allocates, for the rare writes the sampled path
//! makes (creating a call site). parking_lot and std locks may allocate or
//! park, which is not allowed inside a global allocator.

use core::sync::atomic::{AtomicBool, Ordering};

/// Mutual exclusion by a single atomic flag.
pub(crate) struct SpinLock {
    locked: AtomicBool,
}

/// Releases the lock on drop.
pub(crate) struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl SpinLock {
    pub(crate) const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }

    /// Spins until the lock is free; yields the CPU after a short spin so a
    /// preempted holder can run. Holders never block, allocate or call out.
    pub(crate) fn lock(&self) -> SpinGuard<'_> {
        self.acquire();
        SpinGuard { lock: self }
    }

    pub(crate) fn acquire(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Takes the lock if it is free; never waits.
    pub(crate) fn try_acquire(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases a lock taken with [`SpinLock::acquire`] (used by the fork
    /// handlers, which cannot hold a guard across the fork).
    pub(crate) fn release(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}
