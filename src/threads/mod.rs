//! Every OS thread's current stack: the answer to "where are my 328
//! threads parked?", which a heap profile cannot give.
//!
//! [`thread_dump`] lists `/proc/self/task`, sends each thread a signal
//! (`tgkill`), and each thread's signal handler walks its own interrupted
//! stack into memory prepared for it (`signal` explains the protocol and
//! why the handler is async-signal-safe; `unwind` turns registers into
//! return addresses). The caller waits at most [`THREAD_DUMP_TIMEOUT`],
//! then symbolizes outside any handler with the same symbolizer and cache
//! as heap profiles. Threads that cannot answer (they block the signal,
//! exit, or stay stopped) are listed with the reason instead of a stack, so
//! a dump never hangs and never leaves a thread out.
//!
//! The dump encodes as Go's goroutine profile does (`goroutine`/`count`,
//! one sample per thread), so `go tool pprof`, Parca and Pyroscope accept
//! it; as Go's `debug=1` text (identical stacks grouped with a count) and
//! as Go's `debug=2` dump (one block per thread).
//!
//! # Costs and limits
//! A thread spends a few microseconds in the handler. The signal
//! interrupts blocking syscalls; with `SA_RESTART` most resume, and those
//! the kernel never restarts (`epoll_wait`, `nanosleep`) return `EINTR`
//! once, as they do under the CPU profiler's `SIGPROF`. Stacks are walked
//! by frame pointers, with two repairs for the C library functions threads
//! block in, which keep none (`unwind`): the caller of a frameless leaf is
//! found above the stack pointer, and a leaf that reuses the frame-pointer
//! register is bridged through the frame pointer it saved. Functions
//! without frame pointers further up the stack are skipped. The requester holds one slot of `MAX_FRAMES` (128) words
//! per thread while it waits (about 1 KiB a thread).

mod encode;
mod signal;
pub(crate) mod unwind;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::alloc::reentrancy::untracked;
use crate::profile::symbolize::{self, Frame, Kept, Resolved};
use crate::sys::fs::Fs;
use crate::sys::tasks;

pub use signal::DEFAULT_THREAD_DUMP_SIGNAL;
use signal::{Answer, Target};

/// How long [`thread_dump`] waits for threads to answer, in all.
pub const THREAD_DUMP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a thread dump could not capture stacks, or a signal cannot be used.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThreadDumpError {
    /// The signal already has a handler that is not heapprof's.
    #[error(
        "signal {signal} already has a handler that is not heapprof's; choose another \
         with HEAPPROF_THREAD_SIGNAL (e.g. SIGRTMIN+3) or heapprof::set_thread_dump_signal"
    )]
    SignalInUse {
        /// The signal number.
        signal: i32,
    },
    /// heapprof's handler was replaced after it was installed.
    #[error(
        "heapprof's handler for signal {signal} was replaced by another one; choose \
         another signal with HEAPPROF_THREAD_SIGNAL"
    )]
    HandlerReplaced {
        /// The signal number.
        signal: i32,
    },
    /// The signal is one heapprof must not take.
    #[error("signal {signal} cannot be used for thread dumps: {reason}")]
    UnusableSignal {
        /// The signal number.
        signal: i32,
        /// Why.
        reason: &'static str,
    },
    /// `HEAPPROF_THREAD_SIGNAL` names no signal.
    #[error(
        "HEAPPROF_THREAD_SIGNAL={value:?}: expected a number, SIGURG, SIGUSR1, SIGUSR2, \
         SIGWINCH, SIGRTMIN+N or SIGRTMAX-N"
    )]
    BadSignalName {
        /// The value as set.
        value: String,
    },
    /// [`set_thread_dump_signal`] after a dump installed another signal.
    #[error("thread dumps already use signal {installed}; set the signal before the first dump")]
    AlreadyInstalled {
        /// The signal in use.
        installed: i32,
    },
    /// `sigaction` failed.
    #[error("sigaction({signal}): {source}")]
    Sigaction {
        /// The signal number.
        signal: i32,
        /// The operating system's reason.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Not x86_64 or aarch64: no known way to read the interrupted registers.
    #[error("thread dumps need x86_64 or aarch64")]
    UnsupportedArchitecture,
    /// Another dump held the process-wide capture for too long.
    #[error("another thread dump did not finish within {} s", waited.as_secs())]
    Busy {
        /// How long this one waited.
        waited: Duration,
    },
}

/// Why a thread of a dump has no stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Missing {
    /// The thread blocks the dump signal (its `SigBlk` mask).
    SignalBlocked,
    /// Signalled, but no answer within [`THREAD_DUMP_TIMEOUT`] (stopped, or
    /// in an uninterruptible sleep).
    NoAnswer,
    /// The thread exited during the dump.
    Exited,
    /// Beyond the per-dump thread limit (8192).
    TooManyThreads,
    /// No stack could be captured at all; see [`ThreadDump::error`].
    NotCaptured,
}

impl Missing {
    /// The synthetic frame shown in place of the stack.
    pub fn frame_name(self, signal: Option<i32>) -> String {
        let signal = signal.map_or_else(|| "?".to_owned(), |s| s.to_string());
        match self {
            Missing::SignalBlocked => {
                format!("[heapprof: no stack: the thread blocks signal {signal}]")
            }
            Missing::NoAnswer => format!(
                "[heapprof: no stack: no answer to signal {signal} within {} ms]",
                THREAD_DUMP_TIMEOUT.as_millis()
            ),
            Missing::Exited => "[heapprof: no stack: the thread exited]".to_owned(),
            Missing::TooManyThreads => format!(
                "[heapprof: no stack: more than {} threads]",
                signal::MAX_THREADS
            ),
            Missing::NotCaptured => "[heapprof: no stack: thread dumps unavailable]".to_owned(),
        }
    }
}

/// One thread of a [`ThreadDump`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ThreadStack {
    /// Thread id (the `TID` of `/proc/self/task/TID`).
    pub tid: u32,
    /// Its name (`comm`), at most 15 bytes.
    pub name: String,
    /// Scheduler state before the dump, e.g. `S (sleeping)`.
    pub state: String,
    /// Why there is no stack, if there is none.
    pub missing: Option<Missing>,
    /// Physical frames kept after trimming, innermost first.
    kept: Vec<Kept>,
}

impl ThreadStack {
    /// Code addresses, innermost first: the interrupted instruction, then
    /// the call instruction of each caller (its return address minus one,
    /// as pprof's `Location.address` holds it).
    pub fn addresses(&self) -> Vec<usize> {
        self.kept.iter().map(|k| k.ip.saturating_sub(1)).collect()
    }
}

/// Every thread's stack at one moment.
#[derive(Clone, Debug)]
pub struct ThreadDump {
    threads: Vec<ThreadStack>,
    resolved: HashMap<usize, Resolved>,
    time: SystemTime,
    signal: Option<i32>,
    error: Option<ThreadDumpError>,
}

impl ThreadDump {
    /// The threads, by id.
    pub fn threads(&self) -> &[ThreadStack] {
        &self.threads
    }

    /// `thread`'s symbolized stack, innermost first, one frame per inlined
    /// function; empty when it has none.
    pub fn frames(&self, thread: &ThreadStack) -> Vec<Frame> {
        thread
            .kept
            .iter()
            .flat_map(|k| self.frames_of(*k).iter().cloned())
            .collect()
    }

    /// When the dump was taken.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The signal sent to the threads; `None` if none could be chosen.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Why no stack could be captured, when none could.
    pub fn error(&self) -> Option<&ThreadDumpError> {
        self.error.as_ref()
    }

    /// Gzipped profile.proto, like Go's `/debug/pprof/goroutine`: sample
    /// type `goroutine`/`count`, one sample per thread with labels
    /// `thread_name` and (numeric) `thread_id`.
    pub fn to_pprof(&self) -> Vec<u8> {
        untracked(|| encode::pprof(self))
    }

    /// Go's `?debug=1` text: identical stacks grouped with a count, frames
    /// as `#\t0xADDR\tfunction+0xOFF\tfile:line`.
    pub fn to_text(&self) -> String {
        untracked(|| encode::grouped(self))
    }

    /// Go's `?debug=2` dump: per thread, `thread TID "name" [state]:` then
    /// `function` and `\tfile:line +0xOFF` per frame.
    pub fn to_text_per_thread(&self) -> String {
        untracked(|| encode::per_thread(self))
    }

    fn frames_of(&self, k: Kept) -> &[Frame] {
        symbolize::frames_of(&self.resolved, k)
    }
}

/// Captures every thread's stack, waiting at most [`THREAD_DUMP_TIMEOUT`]
/// for the threads to answer. One dump runs at a time in the process; a
/// second caller waits for the first (at most 5 s, then it reports
/// [`ThreadDumpError::Busy`]).
///
/// Never fails: a thread that cannot answer is listed with a [`Missing`]
/// reason, and when no stack can be captured at all (the signal is taken by
/// another handler, say) every thread is listed as [`Missing::NotCaptured`]
/// and [`ThreadDump::error`] says why.
pub fn thread_dump() -> ThreadDump {
    untracked(|| dump(THREAD_DUMP_TIMEOUT))
}

/// Sets the signal thread dumps send (default [`DEFAULT_THREAD_DUMP_SIGNAL`],
/// `SIGURG`; the environment variable `HEAPPROF_THREAD_SIGNAL` sets it
/// too, as a number or a name such as `SIGRTMIN+3`). Must be called before
/// the first dump, which installs the handler for good.
pub fn set_thread_dump_signal(signal: i32) -> Result<(), ThreadDumpError> {
    signal::choose(signal)
}

#[inline(never)]
fn dump(timeout: Duration) -> ThreadDump {
    let fs = Fs::real();
    let time = SystemTime::now();
    let turn = signal::take_turn();
    let chosen = match &turn {
        Ok(_) => signal::signal(),
        Err(e) => Err(e.clone()),
    };
    let wanted = *chosen.as_ref().unwrap_or(&0);
    let mut threads: Vec<ThreadStack> = Vec::new();
    let mut targets = Vec::new();
    for tid in tasks::list(&fs) {
        let Some(name) = tasks::comm(&fs, tid) else {
            continue;
        };
        let status = tasks::status(&fs, tid).unwrap_or_default();
        targets.push(Target {
            tid,
            blocks_signal: status.blocks(wanted),
            signal_pending: status.has_pending(wanted),
        });
        threads.push(ThreadStack {
            tid,
            name,
            state: status.state,
            missing: None,
            kept: Vec::new(),
        });
    }
    // After the task list: every listed thread's stack is mapped by now.
    let layout = unwind::Layout::current(&fs);
    let me = signal::gettid();

    let captured = match (&turn, chosen) {
        (Ok(turn), Ok(_)) => signal::capture(turn, &targets, layout, timeout),
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(e),
    };
    // Symbolizing needs no turn: the next dump may start.
    drop(turn);
    let (signal, answers, error) = match captured {
        Ok((signal, answers)) => (Some(signal), answers, None),
        Err(e) => (
            chosen_signal(&e),
            vec![Answer::NotCaptured; targets.len()],
            Some(e),
        ),
    };
    let resolved = symbolize::resolve_all(
        answers
            .iter()
            .flat_map(|a| match a {
                Answer::Stack(stack) => stack.as_slice(),
                _ => &[],
            })
            .copied(),
    );
    for (thread, answer) in threads.iter_mut().zip(answers) {
        match answer {
            Answer::Stack(mut stack) => {
                drop_echo_of_the_leaf(&mut stack, &resolved);
                thread.kept = if thread.tid == me {
                    trim_requester(&stack, &resolved)
                } else {
                    symbolize::untrimmed(&stack)
                };
            }
            Answer::Blocked => thread.missing = Some(Missing::SignalBlocked),
            Answer::Silent => thread.missing = Some(Missing::NoAnswer),
            Answer::Exited => thread.missing = Some(Missing::Exited),
            Answer::TooMany => thread.missing = Some(Missing::TooManyThreads),
            Answer::NotCaptured => thread.missing = Some(Missing::NotCaptured),
        }
    }
    ThreadDump {
        threads,
        resolved,
        time,
        signal,
        error,
    }
}

fn chosen_signal(e: &ThreadDumpError) -> Option<i32> {
    match e {
        ThreadDumpError::SignalInUse { signal }
        | ThreadDumpError::HandlerReplaced { signal }
        | ThreadDumpError::UnusableSignal { signal, .. }
        | ThreadDumpError::Sigaction { signal, .. } => Some(*signal),
        ThreadDumpError::AlreadyInstalled { installed } => Some(*installed),
        _ => None,
    }
}

/// A return address the unwinder found above the stack pointer of a
/// frameless leaf can lie in the leaf function itself (a call the leaf made
/// earlier, its return address still on the stack): the stack would show
/// the leaf twice. Drop the second when both name the same function (which
/// also hides one level of a leaf calling itself directly).
fn drop_echo_of_the_leaf(stack: &mut Vec<usize>, resolved: &HashMap<usize, Resolved>) {
    let function = |ip: &usize| {
        resolved
            .get(ip)
            .and_then(|r| r.last())
            .map(|f| f.function.as_str())
    };
    if let [leaf, caller, ..] = stack.as_slice()
        && function(leaf).is_some()
        && function(leaf) == function(caller)
    {
        stack.remove(1);
    }
}

/// The dumping thread's own stack starts inside the dump machinery (the
/// signal reached it in `tgkill`): cut through the outermost frame of
/// [`thread_dump`], keeping the caller's frames that share a physical frame
/// with it (when it was inlined). Without symbols nothing is cut.
fn trim_requester(stack: &[usize], resolved: &HashMap<usize, Resolved>) -> Vec<Kept> {
    const ENTRY: &str = "heapprof::threads::thread_dump";
    let mut start = (0, 0);
    for (i, ip) in stack.iter().enumerate() {
        let frames = resolved.get(ip).map_or(&[][..], |r| &r[..]);
        if let Some(j) = frames.iter().rposition(|f| f.function == ENTRY) {
            start = if j + 1 < frames.len() {
                (i, j + 1)
            } else {
                (i + 1, 0)
            };
        }
    }
    stack
        .iter()
        .enumerate()
        .skip(start.0)
        .map(|(i, &ip)| Kept {
            ip,
            skip_inlined: if i == start.0 { start.1 } else { 0 },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[inline(never)]
    fn parked_in_threads_unit_test(rx: mpsc::Receiver<()>) {
        let _ = rx.recv();
        std::hint::black_box(());
    }

    #[inline(never)]
    fn requester_in_threads_unit_test() -> ThreadDump {
        let dump = thread_dump();
        std::hint::black_box(());
        dump
    }

    #[test]
    fn concurrent_dumps_take_turns_and_all_answer() {
        let dumps: Vec<_> = (0..4).map(|_| std::thread::spawn(thread_dump)).collect();
        for d in dumps {
            let dump = d.join().unwrap();
            assert!(dump.error().is_none(), "{:?}", dump.error());
            assert!(
                dump.threads().iter().all(|t| t.missing.is_none()),
                "{}",
                dump.to_text()
            );
        }
    }

    #[test]
    fn every_thread_answers_with_its_stack() {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..3 {
            let (tx, rx) = mpsc::channel();
            senders.push(tx);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("hp-unit-park-{i}"))
                    .spawn(move || parked_in_threads_unit_test(rx))
                    .unwrap(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let dump = requester_in_threads_unit_test();
        assert!(dump.error().is_none(), "{:?}", dump.error());
        let parked: Vec<&ThreadStack> = dump
            .threads()
            .iter()
            .filter(|t| t.name.starts_with("hp-unit-park-"))
            .collect();
        assert_eq!(parked.len(), 3, "{:#?}", dump.threads());
        let text = dump.to_text_per_thread();
        for t in &parked {
            assert_eq!(t.missing, None);
            let names: Vec<String> = dump.frames(t).into_iter().map(|f| f.function).collect();
            assert!(
                names
                    .iter()
                    .any(|n| n.ends_with("parked_in_threads_unit_test")),
                "{names:#?}\n{text}"
            );
        }
        // The requester's own stack starts at its caller, not in heapprof.
        let me = dump
            .threads()
            .iter()
            .find(|t| t.tid == signal::gettid())
            .unwrap();
        let first = dump.frames(me).into_iter().next().unwrap().function;
        assert!(
            first.ends_with("requester_in_threads_unit_test"),
            "{first}\n{text}"
        );
        let grouped = dump.to_text();
        assert!(
            grouped.starts_with(&format!(
                "goroutine profile: total {}\n",
                dump.threads().len()
            )),
            "{grouped}"
        );
        assert!(grouped.contains("3 @ 0x"), "{grouped}");
        assert!(grouped.contains("\"hp-unit-park-"), "{grouped}");
        for tx in senders {
            tx.send(()).unwrap();
        }
        for h in handles {
            h.join().unwrap();
        }
    }
}
