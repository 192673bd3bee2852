//! The `SIGPROF` side of a CPU profile: the kernel's profiling timer, the
//! handler that records the interrupted stack, and the ring it records into.
//!
//! `setitimer(ITIMER_PROF)` counts the CPU time of the whole process and
//! sends `SIGPROF` to a thread that consumed it each time the interval
//! passes. The handler claims the next slot of a fixed ring, walks the
//! interrupted stack into it (`threads::unwind`, the async-signal-safe walk
//! thread dumps use: registers from the signal context, reads only inside
//! mappings listed beforehand, each page probed readable first) and marks
//! it full; the collector drains the ring. A full ring drops the sample and
//! counts it.
//!
//! A slot moves `FREE -> WRITING -> FULL -> FREE`:
//!
//! | from      | event                                   | to        | by        |
//! | --------- | --------------------------------------- | --------- | --------- |
//! | `FREE`    | the handler claims it (compare-exchange)| `WRITING` | handler   |
//! | `WRITING` | frames and depth written (release)      | `FULL`    | handler   |
//! | `FULL`    | read by the collector (acquire), then   | `FREE`    | collector |
//!
//! The handler allocates nothing, takes no lock, makes no system call but
//! the page probe's `rt_sigprocmask`, saves and restores `errno`, and never
//! panics. The ring and the layout outlive every handler that can see them:
//! a handler counts itself in [`ACTIVE`] before it loads them, and the
//! collector clears them and waits for [`ACTIVE`] to drain before freeing.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::threads::unwind::{self, Layout};

/// Deepest stack recorded per sample.
pub(crate) const MAX_FRAMES: usize = 64;
/// Slots in the ring: at 100 Hz per core, a second of samples on 5 cores.
const RING_SLOTS: usize = 512;

const FREE: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;

struct Slot {
    state: AtomicU8,
    depth: AtomicUsize,
    frames: UnsafeCell<[usize; MAX_FRAMES]>,
}

/// The ring of samples.
pub(crate) struct Ring {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    dropped: AtomicU64,
}

// SAFETY: a slot's `frames` is written only by the handler that moved it
// FREE -> WRITING with a compare-exchange, and read only by the collector
// after it loaded FULL with acquire ordering, which the writer stored with
// release ordering after its last write; the collector frees the slot
// (release) only after its last read.
unsafe impl Sync for Ring {}

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: (0..RING_SLOTS)
                .map(|_| Slot {
                    state: AtomicU8::new(FREE),
                    depth: AtomicUsize::new(0),
                    frames: UnsafeCell::new([0; MAX_FRAMES]),
                })
                .collect(),
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Calls `f` with each full slot's stack (innermost first), then frees
    /// the slot.
    pub fn drain(&self, mut f: impl FnMut(&[usize])) {
        for slot in self.slots.iter() {
            if slot.state.load(Ordering::Acquire) != FULL {
                continue;
            }
            let depth = slot.depth.load(Ordering::Relaxed).min(MAX_FRAMES);
            // SAFETY: FULL was loaded with acquire ordering: the handler's
            // writes are visible and it no longer writes (see `Sync`).
            let frames = unsafe { &*slot.frames.get() };
            f(&frames[..depth]);
            slot.state.store(FREE, Ordering::Release);
        }
    }

    /// Samples dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

static RING: AtomicPtr<Ring> = AtomicPtr::new(core::ptr::null_mut());
static LAYOUT: AtomicPtr<Layout> = AtomicPtr::new(core::ptr::null_mut());
/// Handlers between their first and last touch of [`RING`] and [`LAYOUT`].
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigprof(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let (ring, layout) = (RING.load(Ordering::SeqCst), LAYOUT.load(Ordering::SeqCst));
    if !ring.is_null() && !layout.is_null() {
        // SAFETY: non-null pointers point to the live ring and layout, and
        // this handler is counted in ACTIVE, so they are not freed before
        // the decrement below.
        record(unsafe { &*ring }, unsafe { &*layout }, context);
    }
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above; restores what the page probes may have changed.
    unsafe { *libc::__errno_location() = errno };
}

fn record(ring: &Ring, layout: &Layout, context: *mut libc::c_void) {
    let i = ring.next.fetch_add(1, Ordering::Relaxed) % RING_SLOTS;
    let Some(slot) = ring.slots.get(i) else {
        return;
    };
    if slot
        .state
        .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        ring.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: `context` is the third argument of this SA_SIGINFO handler.
    let depth = match unsafe { unwind::registers(context) } {
        Some(regs) => {
            // SAFETY: this handler claimed the slot above, so it is the
            // only writer, and the collector reads only after FULL.
            let frames = unsafe { &mut *slot.frames.get() };
            unwind::unwind_from_context(regs, layout.memory_at(regs.sp), frames)
        }
        None => 0,
    };
    slot.depth.store(depth, Ordering::Relaxed);
    slot.state.store(FULL, Ordering::Release);
}

/// Why sampling could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// `SIGPROF` already has another handler (another CPU profiler).
    #[error("SIGPROF already has a handler that is not heapprof's (another CPU profiler?)")]
    SignalInUse,
    /// A system call failed.
    #[error("{call}")]
    Sys {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Sampling in progress; stops (timer, handler, ring) when dropped.
pub(crate) struct Sampling {
    ring: *mut Ring,
    /// Layouts replaced during the profile, freed at the end.
    retired: Vec<*mut Layout>,
}

impl Sampling {
    /// Installs the handler and starts the timer at `hz` samples per second
    /// of CPU time.
    pub fn start(hz: u32) -> Result<Sampling, StartError> {
        let ours = on_sigprof as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        // SAFETY: zeroed sigaction structs are valid values to fill in.
        let (mut action, mut old): (libc::sigaction, libc::sigaction) =
            unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
        // SAFETY: a null new action only reads the disposition into `old`.
        if unsafe { libc::sigaction(libc::SIGPROF, core::ptr::null(), &mut old) } != 0 {
            return Err(sys("sigaction(SIGPROF)"));
        }
        if ![libc::SIG_DFL, libc::SIG_IGN, ours].contains(&old.sa_sigaction) {
            return Err(StartError::SignalInUse);
        }
        let ring = Box::into_raw(Box::new(Ring::new()));
        let layout = Box::into_raw(Box::new(Layout::current(&crate::sys::fs::Fs::real())));
        RING.store(ring, Ordering::SeqCst);
        LAYOUT.store(layout, Ordering::SeqCst);
        let sampling = Sampling {
            ring,
            retired: vec![layout],
        };
        action.sa_sigaction = ours;
        // SA_ONSTACK: a thread near its stack limit is not killed by a
        // sample; SA_RESTART: interrupted syscalls resume.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: sa_mask is a valid sigset_t to initialise; sigaction reads
        // a fully initialised struct and writes nothing (null old action).
        let installed = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGPROF, &action, core::ptr::null_mut())
        };
        if installed != 0 {
            return Err(sys("sigaction(SIGPROF)"));
        }
        let interval = 1_000_000 / i64::from(hz.clamp(1, 1000));
        set_timer(interval).map_err(|source| StartError::Sys {
            call: "setitimer(ITIMER_PROF)",
            source,
        })?;
        Ok(sampling)
    }

    /// The ring the handler fills.
    pub fn ring(&self) -> &Ring {
        // SAFETY: the ring lives until this value is dropped.
        unsafe { &*self.ring }
    }

    /// Publishes a fresh layout, so threads created since the start are
    /// walked too. The old one is freed at the end.
    pub fn refresh_layout(&mut self) {
        let layout = Box::into_raw(Box::new(Layout::current(&crate::sys::fs::Fs::real())));
        LAYOUT.store(layout, Ordering::SeqCst);
        self.retired.push(layout);
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        let _ = set_timer(0);
        // SAFETY: replaces our handler with SIG_IGN: a SIGPROF still in
        // flight is ignored rather than terminating the process (SIGPROF's
        // default action), and our handler is no longer entered.
        unsafe {
            libc::signal(libc::SIGPROF, libc::SIG_IGN);
        }
        RING.store(core::ptr::null_mut(), Ordering::SeqCst);
        LAYOUT.store(core::ptr::null_mut(), Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(1);
        while ACTIVE.load(Ordering::SeqCst) != 0 {
            if Instant::now() > deadline {
                // A handler that never returns (a stopped thread): leak
                // rather than free what it may still read.
                return;
            }
            std::thread::yield_now();
        }
        // SAFETY: unpublished above and no handler is running, so nothing
        // else refers to them; each was created by Box::into_raw once.
        unsafe {
            drop(Box::from_raw(self.ring));
            for layout in self.retired.drain(..) {
                drop(Box::from_raw(layout));
            }
        }
    }
}

fn set_timer(interval_us: i64) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: interval_us / 1_000_000,
        tv_usec: interval_us % 1_000_000,
    };
    let timer = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer reads a valid itimerval and writes nothing.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, core::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn sys(call: &'static str) -> StartError {
    StartError::Sys {
        call,
        source: std::io::Error::last_os_error(),
    }
}
