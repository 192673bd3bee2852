//! Building the unwind tables off the allocation path, and publishing
//! them to the stack walks.
//!
//! # When tables are built
//!
//! On a thread of heapprof's own, `heapprof-unwind`, started by the first
//! capture that wants a table. Building takes milliseconds (0.1-0.2 us a
//! row, 4-7 ms for a small program; `table`) and reads the loader's
//! module list with `dl_iterate_phdr`, which takes the loader's lock, while
//! `dlopen` itself allocates: neither belongs inside `malloc`. Until the
//! first tables are published, captures use libgcc, which is slower but
//! equally right. The thread is created with `pthread_create` rather than
//! `std::thread` (whose spawn reads the environment under std's lock and
//! touches thread-locals with destructors, neither safe inside the
//! allocator), with every signal blocked, and it runs with the reentrancy
//! guard held, so its own allocations are never sampled.
//!
//! It then rescans when asked (a capture met an address outside every
//! table: [`request_rescan`]) and once a second, and rebuilds only if the
//! loader's load and unload counters moved. The once-a-second check
//! catches a `dlclose` followed by a `dlopen` at the same addresses, which
//! no unknown address would reveal. Requests are served at most every
//! [`MIN_RESCAN_INTERVAL_MS`], so code without unwind tables (a JIT) that
//! keeps asking costs one counter check per interval. Modules whose
//! `.eh_frame_hdr` is unchanged keep their tables; only new ones are
//! built.
//!
//! # Publication and retirement
//!
//! A table set is published with one release store to an `AtomicPtr`;
//! captures read it with an acquire load and use it without announcing
//! themselves. So no moment is known when a replaced set is no longer read
//! (a thread may be preempted mid-walk for any time), and replaced sets are
//! never freed: freeing them safely would need every capture to write
//! shared memory (an epoch or hazard pointer) on a path that must stay
//! cheap. What is leaked: one small mapping per published set (a few
//! dozen bytes per module), and the tables of modules unloaded since. All
//! table memory, leaked or not, is bounded by [`MAX_TABLE_BYTES`]; past it
//! nothing new is built and captures in unbuilt modules use libgcc.
//!
//! # Memory
//!
//! A module can be loaded at any time, and building its table maps
//! scratch in proportion to its unwind sections (tens of MiB for a
//! 200 MB library), so a refresh in a process close to its memory
//! cgroup's limit could push it over. Each refresh is therefore limited
//! to the room admission gives tables (`profile::admission`: the
//! cgroup's headroom less its margin and the reservations of profile
//! builds). A module that does not fit is *deferred*: its frames go to
//! libgcc, [`deferred`] counts it, and it is tried again every
//! [`RETRY_DEFERRED_MS`] until it fits. A try that the room cannot
//! satisfy is not made: a deferred module remembers the room it was
//! refused with, less than it needs, and is neither copied nor built
//! again until a refresh has more. A retry that builds nothing publishes
//! nothing (published sets are never freed, see above).
//!
//! # fork
//!
//! A child inherits the published tables but not the thread. The `fork`
//! child handler marks the thread as not started, so the child's first
//! rescan request starts its own, which keeps the inherited module tables.
//! A parent's builder caught inside `dl_iterate_phdr` at the fork leaves
//! no lock behind: glibc reinitialises the loader's list lock in the child.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::modules::{self, Scanned};
use super::table::{ModuleTable, Tables};
use super::table_walk::Fallback;
use crate::alloc::reentrancy::Reentrancy;
use crate::alloc::scratch;

/// Bound on all memory mapped for tables, in bytes.
pub const MAX_TABLE_BYTES: usize = 256 << 20;
/// Least time between two rescans, in milliseconds.
pub const MIN_RESCAN_INTERVAL_MS: u64 = 100;
/// Time between two checks of the loader's counters, in milliseconds.
const CHECK_INTERVAL_MS: u64 = 1000;
/// Time between two attempts at modules deferred for lack of memory, in
/// milliseconds.
pub const RETRY_DEFERRED_MS: u64 = 10_000;

/// The published table set; null until the first build.
static PUBLISHED: AtomicPtr<Tables> = AtomicPtr::new(ptr::null_mut());

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const FAILED: u8 = 2;
/// The builder thread's state.
static STATE: AtomicU8 = AtomicU8::new(NOT_STARTED);
/// 1 once a rescan was requested since the builder's last refresh began
/// (the futex word it sleeps on).
static REQUESTED: AtomicU32 = AtomicU32::new(0);

/// Bytes mapped for tables, sets included.
static TABLE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Time spent building and publishing, in nanoseconds.
static BUILD_NS: AtomicU64 = AtomicU64::new(0);
/// Captures the table handed to libgcc.
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
/// Modules left without a table by the last refresh for lack of memory.
static DEFERRED: AtomicUsize = AtomicUsize::new(0);

/// The published tables; starts the builder if there are none yet.
#[inline]
pub(super) fn published() -> Option<&'static Tables> {
    let tables = PUBLISHED.load(Ordering::Acquire);
    if tables.is_null() {
        ensure_started();
        return None;
    }
    // SAFETY: a non-null PUBLISHED points to a Tables written before its
    // release store, in a mapping that is never freed.
    Some(unsafe { &*tables })
}

/// Records that a capture fell back to libgcc, and why.
#[cold]
pub(super) fn note_fallback(why: Fallback) {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    if why == Fallback::UnknownAddress {
        request_rescan();
    }
}

/// Asks the builder to look for new modules. At most one system call (a
/// futex wake) per served request.
fn request_rescan() {
    ensure_started();
    if REQUESTED.swap(1, Ordering::AcqRel) == 0 {
        futex_wake(&REQUESTED);
    }
}

/// Starts the builder thread once per process (and once per `fork`
/// child). A failure leaves every capture to libgcc.
fn ensure_started() {
    if STATE.load(Ordering::Relaxed) != NOT_STARTED
        || STATE
            .compare_exchange(NOT_STARTED, RUNNING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    crate::alloc::fork::register_handlers();
    if !spawn() {
        STATE.store(FAILED, Ordering::Release);
    }
}

/// After `fork`, in the child: the builder thread did not survive.
pub(crate) fn after_fork_in_child() {
    if STATE.load(Ordering::Relaxed) == RUNNING {
        STATE.store(NOT_STARTED, Ordering::Relaxed);
    }
    REQUESTED.store(0, Ordering::Relaxed);
}

/// Whether the builder thread could not be started or gave up: no table
/// will be published.
pub(super) fn failed() -> bool {
    STATE.load(Ordering::Relaxed) == FAILED
}

/// Bytes mapped for tables.
pub(super) fn table_bytes() -> usize {
    TABLE_BYTES.load(Ordering::Relaxed)
}

/// Captures the table handed to libgcc so far.
pub(super) fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Modules whose table waits for memory (see "Memory" above).
pub(super) fn deferred() -> usize {
    DEFERRED.load(Ordering::Relaxed)
}

/// Nanoseconds spent building and publishing tables.
pub(super) fn build_ns() -> u64 {
    BUILD_NS.load(Ordering::Relaxed)
}

/// Waits up to `timeout` for a table set newer than `after` (any set if
/// `None`), starting the builder (tests and benchmarks).
pub(super) fn wait_for_tables(after: Option<u32>, timeout: Duration) -> Option<&'static Tables> {
    let deadline = Instant::now() + timeout;
    if after.is_some() {
        request_rescan();
    }
    loop {
        if let Some(t) = published()
            && after.is_none_or(|g| t.generation != g)
        {
            return Some(t);
        }
        if Instant::now() >= deadline || STATE.load(Ordering::Acquire) == FAILED {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spawn() -> bool {
    // SAFETY: plain pthread calls on local, initialised objects. The new
    // thread starts with every signal blocked (the mask is inherited from
    // this thread at creation), then this thread's mask is restored. The
    // entry point takes no argument and never unwinds.
    unsafe {
        let mut attr = core::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        if libc::pthread_attr_init(attr.as_mut_ptr()) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(attr.as_mut_ptr(), libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(attr.as_mut_ptr(), 1 << 20);
        let mut all = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        let mut thread: libc::pthread_t = 0;
        let created = libc::pthread_create(&mut thread, attr.as_ptr(), run, ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), ptr::null_mut());
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        created == 0
    }
}

/// The builder thread.
extern "C" fn run(_: *mut libc::c_void) -> *mut libc::c_void {
    let _untracked = Reentrancy::enter();
    // SAFETY: names the calling thread; the name is NUL-terminated and
    // fits the 16-byte limit.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), c"heapprof-unwind".as_ptr()) };
    // Thread dumps signal every thread: answer the default dump signal
    // like the others (its handler is async-signal-safe), so the dump shows
    // this thread's stack instead of "blocks the signal".
    // SAFETY: unblocks one signal of the calling thread's mask, from a
    // local, initialised set.
    unsafe {
        let mut set = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), crate::threads::DEFAULT_THREAD_DUMP_SIGNAL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), ptr::null_mut());
    }
    if std::panic::catch_unwind(serve).is_err() {
        STATE.store(FAILED, Ordering::Release);
    }
    ptr::null_mut()
}

/// The builder thread's loop: refresh, then sleep until asked or until the
/// next check. A request made during a refresh or the pause after it
/// finds the word at 1 again, so the wait after the pause returns at once.
fn serve() {
    let mut builder = Builder::inheriting(PUBLISHED.load(Ordering::Acquire));
    loop {
        REQUESTED.store(0, Ordering::Release);
        builder.refresh();
        std::thread::sleep(Duration::from_millis(MIN_RESCAN_INTERVAL_MS));
        futex_wait(&REQUESTED, Duration::from_millis(CHECK_INTERVAL_MS));
    }
}

/// The builder thread's state: every module table it knows, by identity.
struct Builder {
    known: Vec<ModuleTable>,
    /// Identities whose table could not be built (not retried).
    failed: Vec<modules::Identity>,
    /// The loader's counters at the last scan.
    generation: Option<u64>,
    /// When to try the modules deferred for lack of memory again.
    retry_at: Option<Instant>,
    /// The modules deferred, each with bytes it needs more than.
    deferred: Vec<(modules::Identity, usize)>,
    next_set: u32,
}

impl Builder {
    /// Starts from the published set, if any (inherited across `fork`).
    fn inheriting(published: *mut Tables) -> Builder {
        // SAFETY: as in `published`: null or a never-freed Tables.
        let set = unsafe { published.as_ref() };
        Builder {
            known: set.map(|s| s.modules.to_vec()).unwrap_or_default(),
            failed: Vec::new(),
            generation: None,
            retry_at: None,
            deferred: Vec::new(),
            next_set: set.map_or(0, |s| s.generation.wrapping_add(1)),
        }
    }

    /// Rescans and publishes a new set if modules were loaded or unloaded
    /// since the last scan (or nothing was published yet), or if deferred
    /// modules are due for another try.
    fn refresh(&mut self) {
        let current = modules::loader_generation();
        let loader_unchanged = current.is_some() && current == self.generation;
        let retry_due = self.retry_at.is_some_and(|at| Instant::now() >= at);
        if loader_unchanged && !retry_due {
            return;
        }
        let started = Instant::now();
        let room = crate::profile::admission::room_for_tables()
            .map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX));
        let (set, _) = scratch::within(room, || self.build_set(room.unwrap_or(usize::MAX)));
        DEFERRED.store(self.deferred.len(), Ordering::Relaxed);
        self.retry_at = (!self.deferred.is_empty())
            .then(|| Instant::now() + Duration::from_millis(RETRY_DEFERRED_MS));
        // A retry (the loader's counters unchanged) that built nothing
        // publishes nothing: every published set stays mapped for good.
        if loader_unchanged && self.unchanged(&set) {
            return;
        }
        self.publish(set, current, started);
    }

    /// Whether `set` holds the modules of the published set.
    fn unchanged(&self, set: &[ModuleTable]) -> bool {
        // SAFETY: as in `published`: null or a never-freed Tables.
        let current = unsafe { PUBLISHED.load(Ordering::Acquire).as_ref() };
        current.is_some_and(|c| {
            c.modules.len() == set.len()
                && c.modules
                    .iter()
                    .all(|m| set.iter().any(|s| s.identity == m.identity))
        })
    }

    /// The tables of the modules loaded now, building those not known yet
    /// (and not deferred with more `room` than there is now); updates
    /// the deferred modules.
    fn build_set(&mut self, room: usize) -> Vec<ModuleTable> {
        let scan = modules::scan(&|id| {
            self.known.iter().any(|t| t.identity == *id)
                || self.failed.contains(id)
                || self
                    .deferred
                    .iter()
                    .any(|(d, needs)| d == id && room <= *needs)
        });
        let mut set = Vec::with_capacity(scan.modules.len());
        let mut deferred = Vec::new();
        for module in scan.modules {
            match module {
                Scanned::Known(id) => match self.known.iter().find(|t| t.identity == id) {
                    Some(table) => set.push(*table),
                    None => deferred.extend(self.deferred.iter().find(|(d, _)| *d == id)),
                },
                Scanned::Uncopied(id, copies) => deferred.push((id, copies)),
                Scanned::New(module) => {
                    let max_bytes = MAX_TABLE_BYTES.saturating_sub(table_bytes());
                    let (identity, had) = (
                        module.identity,
                        module.copied_bytes().saturating_add(scratch::left()),
                    );
                    match scratch::watch(|| ModuleTable::build(module, max_bytes)) {
                        (Some(table), _) => {
                            TABLE_BYTES.fetch_add(table.bytes, Ordering::Relaxed);
                            self.known.push(table);
                            set.push(table);
                        }
                        (None, true) => deferred.push((identity, had)),
                        (None, false) => self.failed.push(identity),
                    }
                }
            }
        }
        self.deferred = deferred;
        set
    }

    /// Publishes `set` as the tables for the loader's `generation`.
    fn publish(&mut self, mut set: Vec<ModuleTable>, generation: Option<u64>, started: Instant) {
        set.sort_unstable_by_key(ModuleTable::lo);
        let set_bytes = core::mem::size_of_val(set.as_slice()) + core::mem::size_of::<Tables>();
        if table_bytes() + set_bytes > MAX_TABLE_BYTES {
            return;
        }
        let Some(tables) = Tables::leak(self.next_set, &set) else {
            return;
        };
        TABLE_BYTES.fetch_add(set_bytes, Ordering::Relaxed);
        self.next_set = self.next_set.wrapping_add(1);
        self.generation = generation;
        PUBLISHED.store(ptr::from_ref(tables).cast_mut(), Ordering::Release);
        BUILD_NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

fn futex_wait(word: &AtomicU32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned 32-bit word of this process,
    // with a valid relative timeout; returns at a wake, a timeout, a
    // signal, or at once if the word is no longer 0.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            0u32,
            ptr::from_ref(&timeout),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned 32-bit word; wakes at most one
    // waiter, touches no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1u32,
        );
    }
}
