//! Labels: `component=log-shipper` on the allocations a piece of code makes,
//! so one process's profile splits by component (`go tool pprof -tagfocus`,
//! `-tags`).
//!
//! A label set is interned once, outside the allocator, into a small id; the
//! current set's id sits in a const thread-local without destructor. Only the
//! sampled path reads it (it becomes part of the call-site key), so code that
//! sets no label pays nothing, and code that does pays one thread-local store
//! when entering and leaving the labelled scope.
//!
//! Nesting merges like Go's `pprof.Do`: inner labels add to the outer ones,
//! and a key set again inside overrides the outer value.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::RwLock;

/// One label set, sorted by key; id 0 is the empty set.
pub(crate) type LabelSet = Arc<[(String, String)]>;

thread_local! {
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

struct Interner {
    sets: Vec<LabelSet>,
    ids: HashMap<LabelSet, u32>,
}

static SETS: RwLock<Option<Interner>> = RwLock::new(None);

/// Most distinct label sets; beyond it, new sets are recorded unlabelled
/// (labels are for components, not for per-request values).
pub const MAX_LABEL_SETS: usize = 4096;

fn intern(set: Vec<(String, String)>) -> u32 {
    if set.is_empty() {
        return 0;
    }
    static REGISTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn reset_in_child() {
        crate::alloc::fork::reset_rwlock(&SETS, || None);
    }
    crate::alloc::fork::on_child(&REGISTERED, reset_in_child);
    let set: LabelSet = set.into();
    if let Some(&id) = SETS.read().as_ref().and_then(|i| i.ids.get(&set)) {
        return id;
    }
    let mut guard = SETS.write();
    let interner = guard.get_or_insert_with(|| Interner {
        sets: vec![Arc::from(Vec::new())],
        ids: HashMap::new(),
    });
    if let Some(&id) = interner.ids.get(&set) {
        return id;
    }
    if interner.sets.len() >= MAX_LABEL_SETS {
        return 0;
    }
    let id = interner.sets.len() as u32;
    interner.sets.push(set.clone());
    interner.ids.insert(set, id);
    id
}

/// The labels of set `id` (empty for 0 or unknown ids).
pub(crate) fn resolve(id: u32) -> LabelSet {
    SETS.read()
        .as_ref()
        .and_then(|i| i.sets.get(id as usize).cloned())
        .unwrap_or_else(|| Arc::from(Vec::new()))
}

/// Id of the calling thread's current label set; read on the sampled path.
#[inline]
pub(crate) fn current_id() -> u32 {
    CURRENT.try_with(Cell::get).unwrap_or(0)
}

fn merged_with_current(labels: &[(&str, &str)]) -> u32 {
    let mut set: Vec<(String, String)> = resolve(current_id()).to_vec();
    for (k, v) in labels {
        match set.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = (*v).to_owned(),
            None => set.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    set.sort();
    intern(set)
}

/// Restores the previous label set when dropped. Not `Send`: labels belong
/// to the thread that set them.
#[must_use = "the labels are removed when the guard is dropped"]
pub struct LabelGuard {
    previous: u32,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.previous));
    }
}

/// Adds `labels` to the calling thread's allocations until the guard drops.
///
/// ```
/// let _guard = heapprof::set_labels(&[("component", "log-shipper")]);
/// let record = vec![0u8; 1024]; // sampled allocations carry the label
/// # drop(record);
/// ```
pub fn set_labels(labels: &[(&str, &str)]) -> LabelGuard {
    let id = merged_with_current(labels);
    let previous = CURRENT.try_with(|c| c.replace(id)).unwrap_or(0);
    LabelGuard {
        previous,
        _not_send: std::marker::PhantomData,
    }
}

/// Runs `f` with `labels` added to the calling thread's allocations.
pub fn with_labels<T>(labels: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _guard = set_labels(labels);
    f()
}

/// A future that carries a label set across polls, whichever thread polls
/// it. Made by [`LabelsExt::with_labels`].
pub struct WithLabels<F> {
    inner: F,
    labels: u32,
}

impl<F: Future> Future for WithLabels<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let labels = self.labels;
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self`, and WithLabels has no Drop impl or Unpin impl of its own
        // that could move it.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        let previous = CURRENT.try_with(|c| c.replace(labels)).unwrap_or(0);
        let _restore = LabelGuard {
            previous,
            _not_send: std::marker::PhantomData,
        };
        inner.poll(cx)
    }
}

/// Labels for futures: `task.with_labels(&[("component", "ingest")])`.
pub trait LabelsExt: Future + Sized {
    /// Wraps the future so its polls run with `labels` (merged with the
    /// labels current where this is called).
    fn with_labels(self, labels: &[(&str, &str)]) -> WithLabels<Self> {
        WithLabels {
            inner: self,
            labels: merged_with_current(labels),
        }
    }
}

impl<F: Future> LabelsExt for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_merges_and_restores() {
        assert_eq!(current_id(), 0);
        with_labels(&[("component", "a"), ("tier", "x")], || {
            let outer = current_id();
            assert_ne!(outer, 0);
            with_labels(&[("component", "b")], || {
                let set = resolve(current_id());
                assert_eq!(
                    &set[..],
                    &[
                        ("component".into(), "b".into()),
                        ("tier".into(), "x".into())
                    ]
                );
            });
            assert_eq!(current_id(), outer);
        });
        assert_eq!(current_id(), 0);
    }

    #[test]
    fn the_same_set_interns_to_the_same_id() {
        let a = with_labels(&[("k", "v"), ("a", "b")], current_id);
        let b = with_labels(&[("a", "b"), ("k", "v")], current_id);
        assert_eq!(a, b);
    }

    #[test]
    fn futures_carry_their_labels_across_polls() {
        use std::task::{RawWaker, RawWakerVTable, Waker};
        fn noop(_: *const ()) {}
        fn clone(p: *const ()) -> RawWaker {
            RawWaker::new(p, &VTABLE)
        }
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
        // SAFETY: the vtable's functions do nothing and ignore the pointer.
        let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let fut = std::future::poll_fn(move |_| {
            polls += 1;
            let set = resolve(current_id());
            assert_eq!(&set[..], &[("component".into(), "ingest".into())]);
            if polls < 3 {
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        })
        .with_labels(&[("component", "ingest")]);
        let mut fut = std::pin::pin!(fut);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(current_id(), 0, "labels do not leak out of a poll");
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(3));
    }
}
