//! The reentrancy guard: while a thread is inside the profiler (taking a
//! sample, building a snapshot), its own allocations go to the inner
//! allocator unsampled, so the profiler never recurses into itself.
//!
//! The flag is a const-initialised thread-local without a destructor, so it
//! is usable at any point of a thread's life, including during thread exit.

use core::cell::Cell;

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// RAII guard that marks the current thread as inside the profiler; the flag
/// is cleared on drop, also when unwinding.
pub(crate) struct Reentrancy {
    _not_send: core::marker::PhantomData<*const ()>,
}

impl Reentrancy {
    /// Enters the profiler, or returns `None` when this thread already is
    /// inside it (the caller must then take the unsampled path).
    #[inline]
    pub(crate) fn enter() -> Option<Reentrancy> {
        BUSY.try_with(|busy| {
            if busy.replace(true) {
                None
            } else {
                Some(Reentrancy {
                    _not_send: core::marker::PhantomData,
                })
            }
        })
        .ok()
        .flatten()
    }

    /// Whether the current thread is inside the profiler.
    #[inline]
    pub(crate) fn is_active() -> bool {
        BUSY.try_with(Cell::get).unwrap_or(true)
    }
}

impl Drop for Reentrancy {
    fn drop(&mut self) {
        let _ = BUSY.try_with(|busy| busy.set(false));
    }
}

/// Runs `f` with the current thread's allocations unsampled. Used around
/// snapshot and profile building so the profiler's own work does not appear
/// in the profiles it writes. Nested calls are fine.
///
/// Never inlined: its frame marks every allocation of the profiler's own
/// work for observers outside the process
/// (`symbolize::PROFILER_WORK_FRAME`).
#[inline(never)]
pub(crate) fn untracked<T>(f: impl FnOnce() -> T) -> T {
    let _guard = Reentrancy::enter();
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_is_exclusive_and_resets_on_drop() {
        let outer = Reentrancy::enter().expect("first entry succeeds");
        assert!(Reentrancy::is_active());
        assert!(Reentrancy::enter().is_none());
        drop(outer);
        assert!(!Reentrancy::is_active());
        assert!(Reentrancy::enter().is_some());
    }

    #[test]
    fn guard_resets_when_unwinding() {
        let result = std::panic::catch_unwind(|| {
            let _g = Reentrancy::enter();
            panic!("boom");
        });
        assert!(result.is_err());
        assert!(!Reentrancy::is_active());
    }
}
