//! Asking every thread for its stack: one signal per thread (`tgkill`), a
//! handler that records the interrupted stack into a slot prepared for it,
//! and a bounded wait.
//!
//! # The protocol
//!
//! The requester (the thread calling `thread_dump`, holding [`CAPTURE`] so
//! that one capture runs at a time, from reading the threads' signal masks
//! to the last answer) allocates a [`Request`]: one [`Slot`]
//! per thread id, sorted, each with room for [`MAX_FRAMES`] addresses, and
//! the readable-writable mappings of the process (stack bounds for the
//! walk). It publishes the request in [`CURRENT`], sends the signal to each
//! thread that does not block it, and polls the slots until every one it
//! signalled is [`DONE`] or the timeout passes. Then it unpublishes the
//! request, waits for handlers still running ([`ACTIVE`]) to leave, copies
//! the finished slots and frees the request.
//!
//! A slot moves `WAITING -> WRITING -> DONE` (a table, as parking_lot writes
//! its state machines):
//!
//! | from      | event                                  | to        | by        |
//! | --------- | -------------------------------------- | --------- | --------- |
//! | `WAITING` | the handler claims it (compare-exchange) | `WRITING` | handler |
//! | `WRITING` | frames and depth written (release)     | `DONE`    | handler   |
//! | `DONE`    | a second delivery finds it taken       | `DONE`    | handler   |
//!
//! The requester reads a slot's frames only after loading `DONE` with
//! acquire ordering, so it sees every frame the handler wrote.
//!
//! # Why the handler is async-signal-safe
//!
//! The handler may interrupt any code, including the allocator holding its
//! locks and libgcc's unwinder holding the loader lock. It therefore:
//! - allocates nothing and takes no lock: it reads two atomics, finds its
//!   slot by binary search in memory the requester allocated beforehand,
//!   and writes plain words into it;
//! - calls only `syscall(2)` (`gettid`, and `rt_sigprocmask` to probe
//!   pages, see `unwind`), which is async-signal-safe, and saves and
//!   restores `errno` around itself;
//! - never unwinds with libgcc; it reads only words of the interrupted
//!   stack and bytes of code, inside mappings listed before the signal was
//!   sent, each page probed readable first (`unwind`);
//! - never panics: no indexing that can fail, no arithmetic that can
//!   overflow, no `unwrap` (and `extern "C"` turns a panic into an abort
//!   rather than unwinding into the interrupted code).
//!
//! The request outlives every handler that can see it: a handler counts
//! itself in [`ACTIVE`] before it loads [`CURRENT`], the requester clears
//! [`CURRENT`] before it waits for [`ACTIVE`] to reach zero, and both use
//! sequentially consistent ordering, so a handler either sees null or is
//! counted. If handlers do not drain within [`DRAIN_LIMIT`] (a thread
//! stopped inside the handler), the request is leaked rather than freed.
//!
//! # Threads that cannot answer
//!
//! A thread that blocks the signal (`SigBlk` in its `/proc` status) is not
//! waited for and is reported as such; one whose signal is already pending
//! (a dump that timed out earlier) is not signalled again. The default
//! signal is a standard one, so at most one instance is ever pending per
//! thread: repeated dumps of a process whose threads block it queue
//! nothing (a real-time signal is not sent to a thread that blocks it). A thread that exits before it answers is reported as exited.

use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::ThreadDumpError;
use super::unwind::{self, Layout};

/// Frames kept per thread.
pub(crate) const MAX_FRAMES: usize = 128;
/// Threads captured in one dump; the rest are reported as not captured.
pub(crate) const MAX_THREADS: usize = 8192;
/// How long the requester waits for running handlers after a timeout.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How long the requester waits, once every other thread answered, for
/// threads that blocked the signal when their status was read.
const BLOCKED_GRACE: Duration = Duration::from_millis(20);
/// How long a dump waits for the one in progress (which takes at most
/// about the 1 s timeout plus the drain).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The default signal: `SIGURG`, as Go's runtime uses for preemption, for
/// the reasons Go gives: its default action is to ignore it, so a stray one
/// is harmless; debuggers pass it through silently (gdb stops on SIGUSR and
/// real-time signals); libc, std, tokio and pprof-rs (`SIGPROF`) do not use
/// it; and as a standard signal it never queues more than once per thread.
pub const DEFAULT_THREAD_DUMP_SIGNAL: i32 = libc::SIGURG;

const WAITING: u8 = 0;
const WRITING: u8 = 1;
const DONE: u8 = 2;

/// One thread's answer.
struct Slot {
    tid: i32,
    state: AtomicU8,
    depth: AtomicUsize,
    frames: UnsafeCell<[usize; MAX_FRAMES]>,
}

/// Everything a handler may touch, allocated by the requester before the
/// first signal is sent.
struct Request {
    /// Sorted by `tid`.
    slots: Box<[Slot]>,
    /// What the handlers may read.
    layout: Layout,
}

// SAFETY: a Request is shared between the requester and signal handlers.
// `tid` and `layout` are written before publication and only read after.
// Each slot's `frames` is written only by the one thread whose id it
// carries, after it moved the slot WAITING -> WRITING with a
// compare-exchange (so once), and read by the requester only after it
// loaded DONE with acquire ordering, which the writer stored with release
// ordering after its last write.
unsafe impl Sync for Request {}

impl Request {
    fn slot(&self, tid: i32) -> Option<&Slot> {
        let i = self.slots.binary_search_by_key(&tid, |s| s.tid).ok()?;
        self.slots.get(i)
    }
}

/// The request handlers answer into; null between captures.
static CURRENT: AtomicPtr<Request> = AtomicPtr::new(core::ptr::null_mut());
/// Handlers between their first and last touch of [`CURRENT`].
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// The signal our handler is installed for; 0 before the first capture.
static INSTALLED: AtomicI32 = AtomicI32::new(0);
/// The signal chosen with `set_thread_dump_signal`; 0 for the default.
static CHOSEN: AtomicI32 = AtomicI32::new(0);
/// One capture at a time, process-wide.
static CAPTURE: Mutex<()> = Mutex::new(());

/// The handler. See the module docs for why each step is allowed here.
extern "C" fn on_signal(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let request = CURRENT.load(Ordering::SeqCst);
    if !request.is_null() {
        // SAFETY: a non-null CURRENT points to a live Request, and this
        // handler is counted in ACTIVE, so the requester does not free it
        // before the decrement below.
        record(unsafe { &*request }, context);
    }
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above; restores what the syscalls may have changed.
    unsafe { *libc::__errno_location() = errno };
}

/// Writes this thread's interrupted stack into its slot, if it has one
/// that is still waiting.
fn record(request: &Request, context: *mut libc::c_void) {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let Some(slot) = request.slot(tid) else {
        return;
    };
    if slot
        .state
        .compare_exchange(WAITING, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // SAFETY: `context` is the third argument of this SA_SIGINFO handler.
    let depth = match unsafe { unwind::registers(context) } {
        Some(regs) => {
            let memory = request.layout.memory_at(regs.sp);
            // SAFETY: this thread claimed the slot above, so it is the only
            // writer, and the requester reads only after DONE.
            let frames = unsafe { &mut *slot.frames.get() };
            unwind::unwind_from_context(regs, memory, frames)
        }
        None => 0,
    };
    slot.depth.store(depth, Ordering::Relaxed);
    slot.state.store(DONE, Ordering::Release);
}

/// Held for a whole capture, from reading the threads' signal masks (a
/// thread inside another dump's handler blocks the signal meanwhile) to the
/// last answer.
pub(crate) struct Turn {
    _guard: std::sync::MutexGuard<'static, ()>,
}

/// This dump's [`Turn`].
pub(crate) fn take_turn() -> Result<Turn, ThreadDumpError> {
    one_at_a_time().map(|guard| Turn { _guard: guard })
}

/// The capture lock, waited for at most [`LOCK_WAIT`]: a dump never hangs,
/// not even in a child forked while another thread held the lock.
fn one_at_a_time() -> Result<std::sync::MutexGuard<'static, ()>, ThreadDumpError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match CAPTURE.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => return Ok(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(ThreadDumpError::Busy { waited: LOCK_WAIT });
            }
        }
    }
}

/// What one signalled thread answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Its stack, in the return-address convention of `unwind`.
    Stack(Vec<usize>),
    /// It blocks the signal.
    Blocked,
    /// Signalled (or already pending) but no answer within the timeout.
    Silent,
    /// It exited before it could be signalled.
    Exited,
    /// Beyond [`MAX_THREADS`].
    TooMany,
    /// Nothing was captured (the capture failed as a whole).
    NotCaptured,
}

/// The calling thread's id.
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// A thread to capture and what its `/proc` status said.
pub(crate) struct Target {
    pub tid: u32,
    pub blocks_signal: bool,
    pub signal_pending: bool,
}

/// Sets the signal used from the first dump on. Fails once a dump has
/// installed the handler for another signal.
pub(crate) fn choose(signal: i32) -> Result<(), ThreadDumpError> {
    check_usable(signal)?;
    let _one = one_at_a_time()?;
    match INSTALLED.load(Ordering::Relaxed) {
        0 => {
            CHOSEN.store(signal, Ordering::Relaxed);
            Ok(())
        }
        installed if installed == signal => Ok(()),
        installed => Err(ThreadDumpError::AlreadyInstalled { installed }),
    }
}

/// The signal dumps use: the installed one, else the chosen one, else
/// `HEAPPROF_THREAD_SIGNAL`, else [`DEFAULT_THREAD_DUMP_SIGNAL`].
pub(crate) fn signal() -> Result<i32, ThreadDumpError> {
    match (
        INSTALLED.load(Ordering::Relaxed),
        CHOSEN.load(Ordering::Relaxed),
    ) {
        (0, 0) => match std::env::var("HEAPPROF_THREAD_SIGNAL") {
            Ok(value) if !value.is_empty() => parse_signal(&value),
            _ => Ok(DEFAULT_THREAD_DUMP_SIGNAL),
        },
        (0, chosen) => Ok(chosen),
        (installed, _) => Ok(installed),
    }
}

/// Signals that must never be taken: faults std and the runtime handle,
/// signals that cannot be caught, job control, and SIGPROF (pprof-rs).
fn check_usable(signal: i32) -> Result<(), ThreadDumpError> {
    let reason = match signal {
        libc::SIGKILL | libc::SIGSTOP => "it cannot be caught",
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP => {
            "it reports faults (Rust's stack-overflow handler uses SIGSEGV and SIGBUS)"
        }
        libc::SIGPROF => "the CPU profiler (pprof-rs) uses it",
        libc::SIGPIPE
        | libc::SIGCHLD
        | libc::SIGTSTP
        | libc::SIGTTIN
        | libc::SIGTTOU
        | libc::SIGCONT => "the process relies on its default meaning",
        s if !(1..=libc::SIGRTMAX()).contains(&s) => "it is not a signal number",
        s if (32..libc::SIGRTMIN()).contains(&s) => "the C library reserves it",
        _ => return Ok(()),
    };
    Err(ThreadDumpError::UnusableSignal { signal, reason })
}

/// `SIGURG`, `SIGUSR1`, `SIGUSR2`, `SIGWINCH`, `SIGRTMIN+N`, `SIGRTMAX-N` or
/// a number.
pub(crate) fn parse_signal(value: &str) -> Result<i32, ThreadDumpError> {
    let bad = || ThreadDumpError::BadSignalName {
        value: value.to_owned(),
    };
    let name = value.trim();
    let name = name.strip_prefix("SIG").unwrap_or(name);
    let offset = |rest: &str| -> Result<i32, ThreadDumpError> {
        if rest.is_empty() {
            Ok(0)
        } else {
            rest.parse::<i32>().map_err(|_| bad())
        }
    };
    let signal = match name {
        "URG" => libc::SIGURG,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => {
            if let Some(rest) = name.strip_prefix("RTMIN") {
                libc::SIGRTMIN() + offset(rest.strip_prefix('+').unwrap_or(rest))?
            } else if let Some(rest) = name.strip_prefix("RTMAX") {
                libc::SIGRTMAX() + offset(rest)?
            } else {
                name.parse().map_err(|_| bad())?
            }
        }
    };
    check_usable(signal)?;
    Ok(signal)
}

/// Installs the handler for `signal` unless it is already ours; refuses a
/// signal that has someone else's handler, and notices when ours was
/// replaced.
fn ensure_installed(signal: i32) -> Result<(), ThreadDumpError> {
    let ours = on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
        as libc::sighandler_t;
    let current = query(signal)?;
    match INSTALLED.load(Ordering::Relaxed) {
        0 => {}
        installed if current == ours => {
            debug_assert_eq!(installed, signal);
            return Ok(());
        }
        _ => return Err(ThreadDumpError::HandlerReplaced { signal }),
    }
    if current != libc::SIG_DFL && current != libc::SIG_IGN && current != ours {
        return Err(ThreadDumpError::SignalInUse { signal });
    }
    // SAFETY: a zeroed sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
    action.sa_sigaction = ours;
    // SA_ONSTACK: the handler runs on the thread's alternate stack (Rust
    // gives every thread one), so a thread close to its stack limit is not
    // killed by a dump. SA_RESTART: interrupted syscalls resume.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t to initialise; sigaction reads a
    // fully initialised struct and writes nothing (null old action).
    let installed = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, core::ptr::null_mut())
    };
    if installed != 0 {
        return Err(ThreadDumpError::Sigaction {
            signal,
            source: std::sync::Arc::new(std::io::Error::last_os_error()),
        });
    }
    INSTALLED.store(signal, Ordering::Relaxed);
    Ok(())
}

/// The current disposition of `signal`.
fn query(signal: i32) -> Result<libc::sighandler_t, ThreadDumpError> {
    // SAFETY: a zeroed sigaction is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: a null new action only reads the disposition into `old`.
    if unsafe { libc::sigaction(signal, core::ptr::null(), &mut old) } != 0 {
        return Err(ThreadDumpError::Sigaction {
            signal,
            source: std::sync::Arc::new(std::io::Error::last_os_error()),
        });
    }
    Ok(old.sa_sigaction)
}

/// Captures the stacks of `targets`, waiting at most `timeout` for answers.
/// `stacks` are the readable-writable mappings and `code` the executable
/// ones. Returns the signal used and one answer per target, in order.
pub(crate) fn capture(
    _turn: &Turn,
    targets: &[Target],
    layout: Layout,
    timeout: Duration,
) -> Result<(i32, Vec<Answer>), ThreadDumpError> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(ThreadDumpError::UnsupportedArchitecture);
    }
    let signal = signal()?;
    ensure_installed(signal)?;

    let mut order: Vec<usize> = (0..targets.len().min(MAX_THREADS)).collect();
    order.sort_by_key(|&i| targets[i].tid);
    let slots: Box<[Slot]> = order
        .iter()
        .map(|&i| Slot {
            tid: targets[i].tid as i32,
            state: AtomicU8::new(WAITING),
            depth: AtomicUsize::new(0),
            frames: UnsafeCell::new([0; MAX_FRAMES]),
        })
        .collect();
    let request = Box::into_raw(Box::new(Request { slots, layout }));
    CURRENT.store(request, Ordering::SeqCst);
    // SAFETY: `request` stays allocated until the end of this function
    // (or forever, if handlers do not drain); shared reads only.
    let shared = unsafe { &*request };

    let pid = std::process::id() as libc::pid_t;
    let mut answers = vec![Answer::Silent; targets.len()];
    let mut awaited = Vec::with_capacity(order.len());
    // A thread that blocks the signal is not waited for. A standard signal
    // is sent to it all the same (it stays pending, at most once, and is
    // answered if the thread unblocks in time); a real-time one is not,
    // since each send would queue another.
    let realtime = signal >= libc::SIGRTMIN();
    for &i in &order {
        let t = &targets[i];
        if t.blocks_signal {
            answers[i] = Answer::Blocked;
            if !realtime && !t.signal_pending {
                // SAFETY: tgkill with scalar arguments; the worst outcome is
                // an error code, which changes nothing here.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, t.tid as libc::pid_t, signal) };
            }
            continue;
        }
        if !t.signal_pending {
            // SAFETY: tgkill with scalar arguments; the worst outcome is an
            // error code.
            let sent =
                unsafe { libc::syscall(libc::SYS_tgkill, pid, t.tid as libc::pid_t, signal) };
            if sent != 0 {
                // SAFETY: __errno_location returns this thread's errno slot.
                let errno = unsafe { *libc::__errno_location() };
                answers[i] = if errno == libc::ESRCH {
                    Answer::Exited
                } else {
                    Answer::Silent
                };
                continue;
            }
        }
        awaited.push(i);
    }
    for answer in answers.iter_mut().skip(order.len()) {
        *answer = Answer::TooMany;
    }

    let done = |tid: u32| {
        shared
            .slot(tid as i32)
            .is_some_and(|s| s.state.load(Ordering::Acquire) == DONE)
    };
    let deadline = Instant::now() + timeout;
    let wait = |awaited: &[usize], deadline: Instant| {
        let mut pause = Duration::from_micros(50);
        while !awaited.iter().all(|&i| done(targets[i].tid)) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    };
    wait(&awaited, deadline);
    // Threads that blocked the signal when their status was read get a
    // short grace: a thread being created runs with every signal blocked
    // for a moment, then answers.
    let blocked: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| targets[i].blocks_signal && !realtime)
        .collect();
    wait(&blocked, deadline.min(Instant::now() + BLOCKED_GRACE));

    CURRENT.store(core::ptr::null_mut(), Ordering::SeqCst);
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    let mut drained = false;
    while Instant::now() < drain_deadline {
        if ACTIVE.load(Ordering::SeqCst) == 0 {
            drained = true;
            break;
        }
        std::thread::yield_now();
    }

    for &i in &order {
        if let Some(slot) = shared.slot(targets[i].tid as i32)
            && slot.state.load(Ordering::Acquire) == DONE
        {
            let depth = slot.depth.load(Ordering::Relaxed).min(MAX_FRAMES);
            // SAFETY: DONE was loaded with acquire ordering: the handler
            // has finished writing and will not write again.
            let frames = unsafe { &*slot.frames.get() };
            answers[i] = Answer::Stack(frames[..depth].to_vec());
        }
    }
    if drained {
        // SAFETY: made by Box::into_raw above, unpublished, and no handler
        // holds a reference (ACTIVE was zero after CURRENT was cleared).
        drop(unsafe { Box::from_raw(request) });
    }
    Ok((signal, answers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::unwind::StackRange;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGURG").unwrap(), libc::SIGURG);
        assert_eq!(parse_signal("USR2").unwrap(), libc::SIGUSR2);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), libc::SIGRTMIN() + 3);
        assert_eq!(parse_signal("SIGRTMAX-2").unwrap(), libc::SIGRTMAX() - 2);
        assert_eq!(parse_signal("SIGRTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse_signal("10").unwrap(), 10);
        for bad in ["SIGFOO", "RTMIN+x", ""] {
            assert!(
                matches!(
                    parse_signal(bad),
                    Err(ThreadDumpError::BadSignalName { .. })
                ),
                "{bad}"
            );
        }
        for unusable in ["11", "27", "9", "0", "33", "SIGRTMAX+1"] {
            assert!(
                matches!(
                    parse_signal(unusable),
                    Err(ThreadDumpError::UnusableSignal { .. })
                ),
                "{unusable}"
            );
        }
    }

    #[test]
    fn finds_slots_and_stacks() {
        let request = Request {
            slots: [3, 7, 11]
                .into_iter()
                .map(|tid| Slot {
                    tid,
                    state: AtomicU8::new(WAITING),
                    depth: AtomicUsize::new(0),
                    frames: UnsafeCell::new([0; MAX_FRAMES]),
                })
                .collect(),
            layout: Layout {
                stacks: vec![
                    StackRange {
                        low: 100,
                        high: 200,
                    },
                    StackRange {
                        low: 300,
                        high: 400,
                    },
                ]
                .into(),
                code: Box::new([]),
            },
        };
        assert_eq!(request.slot(7).map(|s| s.tid), Some(7));
        assert!(request.slot(8).is_none());
        let stack = |sp| request.layout.memory_at(sp).stack;
        assert_eq!(
            stack(150),
            StackRange {
                low: 100,
                high: 200
            }
        );
        assert_eq!(
            stack(300),
            StackRange {
                low: 300,
                high: 400
            }
        );
        // Outside every mapping: an empty range at the stack pointer.
        assert_eq!(
            stack(200),
            StackRange {
                low: 200,
                high: 200
            }
        );
        assert_eq!(stack(50), StackRange { low: 50, high: 50 });
        assert_eq!(
            stack(400),
            StackRange {
                low: 400,
                high: 400
            }
        );
    }
}
