//! Tests of the unwinder policy and of the table unwinder against libgcc.
//!
//! This repository builds with frame pointers, so the Rust frames here
//! mostly have `rbp`-based rules; the C library's frames (`qsort`, signal
//! delivery, thread entry) and the C library built without frame pointers
//! below have `rsp`-based ones. `tests/unwinder.rs` compares whole
//! programs built without frame pointers.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use super::table_walk::{self, Fallback, Registers};
use super::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn agreement_lines_the_stacks_up_at_the_common_caller() {
    // 0x1x return into the caller (capture_checked), 0x9x elsewhere.
    let here = |ip: usize| (0x10..0x20).contains(&ip);
    let dwarf = [0x90, 0x11, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0];
    assert!(agree(&[0x12, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0], &dwarf, here));
    // Losing the outermost frames (libc entry points) is allowed...
    assert!(agree(&[0x12, 0xa0, 0xb0, 0xc0, 0xd0], &dwarf, here));
    assert!(agree(&[0x12, 0xa0, 0xb0, 0xc0, 0x99, 0x98], &dwarf, here));
    // ...skipping a frame in the middle is not, nor stopping early.
    assert!(!agree(&[0x12, 0xa0, 0xc0, 0xd0, 0xe0], &dwarf, here));
    assert!(!agree(&[0x12, 0xa0], &dwarf, here));
    // No common caller: the walk started somewhere else.
    assert!(!agree(&[0x12, 0x30, 0xb0], &dwarf, here));
    // A walk that starts from another function's frame pointer (this
    // code has none) may line up with DWARF further out: still no.
    assert!(!agree(&[0xb0, 0xc0, 0xd0, 0xe0], &dwarf, here));
    assert!(!agree(&[0x95, 0xb0, 0xc0, 0xd0, 0xe0], &dwarf, here));
}

#[test]
fn dwarf_and_frame_pointers_agree_exactly_when_frame_pointers_are_kept() {
    // This repository builds with frame pointers (.cargo/config.toml),
    // unless an explicit RUSTFLAGS replaces them: then `auto` must
    // reject the walk.
    let this = dwarf_and_frame_pointers_agree_exactly_when_frame_pointers_are_kept as fn();
    let kept = frame_pointer::keeps_frame_pointer(this as *const u8);
    let mut walked = [0usize; MAX_DEPTH];
    let mut buf = [0usize; MAX_DEPTH];
    // SAFETY: the unwinder stores only return addresses.
    let n = frame_pointer::walk(unsafe { as_out(&mut walked) }).expect("walkable stack");
    // SAFETY: as above.
    let depth = capture_dwarf(unsafe { as_out(&mut buf) });
    let here = this as usize;
    assert_eq!(
        agree(&walked[..n], &buf[..depth], |ip| enclosing_function(ip)
            == Some(here)),
        kept,
        "frame pointers kept: {kept}\nframe pointers {:x?}\nDWARF {:x?}",
        &walked[..n],
        &buf[..depth]
    );
}

#[test]
fn exact_agreement_allows_only_a_full_buffer_to_be_shorter() {
    let here = |ip: usize| (0x10..0x20).contains(&ip);
    let dwarf = [0x90, 0x11, 0xa0, 0xb0, 0xc0];
    assert!(agree_exactly(&[0x12, 0xa0, 0xb0, 0xc0], &dwarf, here, 8));
    // Unlike frame pointers, the table may not lose the outermost frames...
    assert!(!agree_exactly(&[0x12, 0xa0, 0xb0], &dwarf, here, 8));
    // ...unless its buffer was full; nor add any.
    assert!(agree_exactly(&[0x12, 0xa0, 0xb0], &dwarf, here, 3));
    assert!(!agree_exactly(
        &[0x12, 0xa0, 0xb0, 0xc0, 0xd0],
        &dwarf,
        here,
        8
    ));
    assert!(agree_exactly(
        &[0x12, 0xa0, 0xb0, 0xc0, 0xd0],
        &dwarf,
        here,
        5
    ));
    assert!(!agree_exactly(&[0x12, 0xa0, 0xb1, 0xc0], &dwarf, here, 8));
    assert!(!agree_exactly(&[0x95, 0xa0, 0xb0, 0xc0], &dwarf, here, 8));
}

/// Published tables, built on first use.
fn tables() -> &'static table::Tables {
    builder::wait_for_tables(None, WAIT).expect("unwind tables within 20 s")
}

/// Captures with the table and with libgcc from this one frame.
#[inline(never)]
fn both(
    table: &mut [usize; MAX_DEPTH],
    dwarf: &mut [usize; MAX_DEPTH],
) -> (Result<usize, Fallback>, usize) {
    // SAFETY: the unwinder stores only return addresses.
    let walked = table_walk::walk(unsafe { as_out(table) });
    // SAFETY: as above.
    let depth = capture_dwarf(unsafe { as_out(dwarf) });
    (walked, depth)
}

/// Whether the two stacks `both` captured are the same frames.
fn same_stack(table: &[usize], dwarf: &[usize]) -> bool {
    let here = both as fn(&mut [usize; MAX_DEPTH], &mut [usize; MAX_DEPTH]) -> _ as usize;
    agree_exactly(
        table,
        dwarf,
        |ip| enclosing_function(ip) == Some(here),
        MAX_DEPTH,
    )
}

/// Captures both ways here and describes any difference.
fn compare_here() -> Result<usize, String> {
    let (mut table, mut dwarf) = ([0; MAX_DEPTH], [0; MAX_DEPTH]);
    let (walked, depth) = both(&mut table, &mut dwarf);
    let n = walked.map_err(|why| format!("table fell back: {why:?}"))?;
    if same_stack(&table[..n], &dwarf[..depth]) {
        Ok(n)
    } else {
        Err(format!(
            "table  {:x?}\nlibgcc {:x?}",
            &table[..n],
            &dwarf[..depth]
        ))
    }
}

/// Frames of three shapes: a plain one, one with a large frame (a CFA
/// offset beyond 4 KiB), and one with inlined callees.
#[inline(never)]
fn descend(depth: usize, check: &dyn Fn() -> Result<usize, String>) -> Result<usize, String> {
    let r = match depth % 3 {
        _ if depth == 0 => check(),
        0 => descend(depth - 1, check),
        1 => with_large_frame(depth, check),
        _ => inlined_outer(depth, check),
    };
    core::hint::black_box(depth);
    r
}

#[inline(never)]
fn with_large_frame(
    depth: usize,
    check: &dyn Fn() -> Result<usize, String>,
) -> Result<usize, String> {
    let mut big = [0u8; 6000];
    core::hint::black_box(&mut big);
    let r = descend(depth - 1, check);
    core::hint::black_box(&big);
    r
}

#[inline(always)]
fn inlined_outer(depth: usize, check: &dyn Fn() -> Result<usize, String>) -> Result<usize, String> {
    let r = inlined_inner(depth, check);
    core::hint::black_box(depth + 1);
    r
}

#[inline(always)]
fn inlined_inner(depth: usize, check: &dyn Fn() -> Result<usize, String>) -> Result<usize, String> {
    let r = descend(depth - 1, check);
    core::hint::black_box(depth + 2);
    r
}

#[test]
fn table_stacks_are_libgcc_stacks_on_this_and_spawned_threads() {
    tables();
    for depth in [0, 1, 5, 20, 100] {
        let n = descend(depth, &compare_here).unwrap_or_else(|e| panic!("depth {depth}:\n{e}"));
        assert!(n >= depth.min(MAX_DEPTH), "{n} frames at depth {depth}");
    }
    let threads: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || descend(3 + t, &compare_here)))
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
}

#[test]
fn table_stacks_are_libgcc_stacks_through_c_library_frames() {
    tables();
    static RESULT: std::sync::Mutex<Option<Result<usize, String>>> = std::sync::Mutex::new(None);
    extern "C" fn compare(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
        let mut result = RESULT.lock().unwrap();
        if result.as_ref().is_none_or(|r| r.is_ok()) {
            *result = Some(compare_here());
        }
        // SAFETY: qsort passes pointers to two elements of the u32 array.
        let (a, b) = unsafe { (*a.cast::<u32>(), *b.cast::<u32>()) };
        a.cmp(&b) as libc::c_int
    }
    let mut values: Vec<u32> = (0..64).rev().collect();
    // SAFETY: sorts our own array of 4-byte elements with a comparator
    // that reads two of them.
    unsafe { libc::qsort(values.as_mut_ptr().cast(), values.len(), 4, Some(compare)) };
    assert!(values.is_sorted());
    RESULT
        .lock()
        .unwrap()
        .take()
        .expect("comparator ran")
        .unwrap();
}

/// Captures in signal handlers: compared, differing, handed to libgcc.
static SIGNAL_COMPARED: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_DIFFERED: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_FELL_BACK: AtomicUsize = AtomicUsize::new(0);

extern "C" fn compare_in_handler(_: libc::c_int) {
    let (mut table, mut dwarf) = ([0; MAX_DEPTH], [0; MAX_DEPTH]);
    let (walked, depth) = both(&mut table, &mut dwarf);
    let counter = match walked {
        Ok(n) if same_stack(&table[..n], &dwarf[..depth]) => &SIGNAL_COMPARED,
        Ok(_) => &SIGNAL_DIFFERED,
        // An interrupted instruction the table has no rule for (a PLT
        // stub): libgcc answers instead.
        Err(_) => &SIGNAL_FELL_BACK,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
    // function of the right signature.
    unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signal, &action, core::ptr::null_mut()), 0);
    }
}

#[test]
fn table_walks_through_signal_frames_like_libgcc() {
    tables();
    install(libc::SIGUSR1, compare_in_handler, 0);
    // Raised from this thread: the handler's frame sits on top of raise().
    // SAFETY: raise delivers to this thread, whose handler only captures.
    descend(4, &|| Ok(unsafe { libc::raise(libc::SIGUSR1) } as usize)).unwrap();
    assert_eq!(SIGNAL_COMPARED.load(Ordering::Relaxed), 1);
    // Interrupting a thread at arbitrary instructions, prologues and
    // epilogues included.
    let stop = std::sync::Arc::new(core::sync::atomic::AtomicBool::new(false));
    let spinning = stop.clone();
    let spinner = std::thread::spawn(move || {
        while !spinning.load(Ordering::Relaxed) {
            let _ = descend(7, &|| Ok(0));
        }
    });
    let pthread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&spinner);
    for _ in 0..500 {
        // SAFETY: the target thread runs until `stop` is set.
        unsafe { libc::pthread_kill(pthread, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    let (compared, differed, fell_back) = (
        SIGNAL_COMPARED.load(Ordering::Relaxed),
        SIGNAL_DIFFERED.load(Ordering::Relaxed),
        SIGNAL_FELL_BACK.load(Ordering::Relaxed),
    );
    assert_eq!(differed, 0, "{compared} compared");
    assert!(
        compared > 100 && fell_back * 20 < compared,
        "{compared} compared, {fell_back} fell back"
    );
}

static ALTSTACK_FALLBACK: AtomicU8 = AtomicU8::new(u8::MAX);

extern "C" fn walk_on_altstack(_: libc::c_int) {
    let mut buf = [0; MAX_DEPTH];
    // SAFETY: the unwinder stores only return addresses.
    let why = table_walk::walk(unsafe { as_out(&mut buf) })
        .err()
        .map_or(0, |why| why as u8 + 1);
    ALTSTACK_FALLBACK.store(why, Ordering::Relaxed);
}

#[test]
fn table_hands_a_signal_alternate_stack_to_libgcc() {
    tables();
    install(libc::SIGUSR2, walk_on_altstack, libc::SA_ONSTACK);
    std::thread::spawn(|| {
        let mut alt = vec![0u8; 256 * 1024];
        let stack = libc::stack_t {
            ss_sp: alt.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: alt.len(),
        };
        // SAFETY: installs a live buffer as this thread's alternate stack,
        // removed again before the buffer is dropped.
        unsafe {
            assert_eq!(libc::sigaltstack(&stack, core::ptr::null_mut()), 0);
            libc::raise(libc::SIGUSR2);
            let off = libc::stack_t {
                ss_sp: core::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&off, core::ptr::null_mut());
        }
        drop(alt);
    })
    .join()
    .unwrap();
    assert_eq!(
        ALTSTACK_FALLBACK.load(Ordering::Relaxed),
        Fallback::ForeignStack as u8 + 1
    );
}

#[test]
fn walks_from_garbage_registers_end_without_reading_outside_the_stack() {
    let tables = tables();
    let (_, high) = bounds::stack_bounds().expect("stack bounds");
    let marker = 0u64;
    let low = core::hint::black_box(&marker) as *const u64 as u64 & !7;
    let high = high as u64;
    let code: Vec<(u64, u64)> = tables
        .modules
        .iter()
        .map(|m| (m.lo(), m.lo() + 0x10_0000))
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut buf = [0usize; MAX_DEPTH];
    let mut ends = [0usize; 6];
    for i in 0..200_000 {
        let (lo, hi) = code[next() as usize % code.len()];
        let pc = if i % 4 == 0 {
            next()
        } else {
            lo + next() % (hi - lo)
        };
        let in_stack = |r: u64| low + r % (high - low);
        let regs = Registers {
            pc,
            sp: in_stack(next()),
            bp: if i % 8 == 0 { next() } else { in_stack(next()) },
        };
        let sp = regs.sp;
        // SAFETY: the unwinder stores only return addresses.
        let buf = unsafe { as_out(&mut buf) };
        let end = if i % 2 == 0 {
            table_walk::unwind::<false>(tables, regs, sp, high, buf)
        } else {
            table_walk::unwind::<true>(tables, regs, sp, high, buf)
        };
        ends[end.map_or_else(|why| why as usize + 1, |_| 0)] += 1;
    }
    // Garbage mostly ends in a fallback; it must end, whatever it reads.
    assert_eq!(ends.iter().sum::<usize>(), 200_000, "{ends:?}");
}

/// A C library built without frame pointers, calling back `depth` frames
/// down.
const C_LIBRARY: &str = r#"
typedef void (*callback)(void);
__attribute__((noinline)) int heapprof_descend(int depth, callback f) {
    if (depth == 0) { f(); return 0; }
    int r = heapprof_descend(depth - 1, f);
    __asm__ volatile("" ::: "memory");
    return r + depth;
}
"#;

static DLOPEN_RESULT: std::sync::Mutex<Option<Result<usize, Fallback>>> =
    std::sync::Mutex::new(None);

extern "C" fn capture_from_c() {
    let (mut table, mut dwarf) = ([0; MAX_DEPTH], [0; MAX_DEPTH]);
    let (walked, depth) = both(&mut table, &mut dwarf);
    let result = match walked {
        Ok(n) if same_stack(&table[..n], &dwarf[..depth]) => Ok(n),
        Ok(_) => Err(Fallback::BadFrame),
        Err(why) => Err(why),
    };
    *DLOPEN_RESULT.lock().unwrap() = Some(result);
}

#[test]
fn a_library_loaded_later_is_unwound_after_the_rescan_it_asks_for() {
    let before = tables().generation;
    let dir = std::env::temp_dir().join(format!("heapprof-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (source, library) = (dir.join("descend.c"), dir.join("libdescend.so"));
    std::fs::write(&source, C_LIBRARY).unwrap();
    let built = std::process::Command::new("cc")
        .args([
            "-O2",
            "-fPIC",
            "-shared",
            "-fomit-frame-pointer",
            "-fasynchronous-unwind-tables",
            "-o",
        ])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(built.success());
    let path = std::ffi::CString::new(library.to_str().unwrap()).unwrap();
    // SAFETY: loads our own library, whose one function has the declared
    // signature; it stays loaded for the rest of the process.
    let descend: extern "C" fn(libc::c_int, extern "C" fn()) -> libc::c_int = unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        assert!(!handle.is_null(), "dlopen {}", library.display());
        let f = libc::dlsym(handle, c"heapprof_descend".as_ptr());
        assert!(!f.is_null());
        core::mem::transmute::<
            *mut libc::c_void,
            extern "C" fn(libc::c_int, extern "C" fn()) -> libc::c_int,
        >(f)
    };
    let _ = std::fs::remove_dir_all(&dir);
    descend(6, capture_from_c);
    let first = DLOPEN_RESULT.lock().unwrap().take().expect("callback ran");
    match first {
        // The tables were rebuilt already (the once-a-second check).
        Ok(_) => assert_ne!(tables().generation, before, "unwound code no table covered"),
        Err(Fallback::UnknownAddress) => {
            builder::note_fallback(Fallback::UnknownAddress);
            let deadline = std::time::Instant::now() + WAIT;
            while tables().generation == before && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_ne!(
                tables().generation,
                before,
                "no rescan after an unknown address"
            );
        }
        Err(why) => panic!("before the rescan: {why:?}"),
    }
    descend(6, capture_from_c);
    let after = DLOPEN_RESULT.lock().unwrap().take().expect("callback ran");
    assert!(after.is_ok_and(|n| n > 7), "after the rescan: {after:?}");
}
