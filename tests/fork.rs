//! A child created by fork() while other threads allocate (and take
//! samples) and build profiles (holding the symbol cache, label and
//! build-ID locks) can allocate and write a profile: no lock the profiler
//! owns stays held in the child.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

#[inline(never)]
fn allocate_in_child(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 1000 + i]).collect()
}

#[inline(never)]
fn busy_allocator(stop: Arc<AtomicBool>, salt: usize) {
    let mut i = salt;
    while !stop.load(Ordering::Relaxed) {
        // Distinct stacks keep creating sites, so the site lock is busy.
        let v = vec![0u8; 16 + i % 4096];
        black_box(&v);
        i = i.wrapping_add(97);
    }
}

/// Builds labelled profiles in a loop: the profile side's locks are held
/// much of the time.
#[inline(never)]
fn busy_profiler(stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let profile = heapprof::with_labels(&[("component", "profiler")], || {
            heapprof::snapshot().to_pprof()
        });
        black_box(profile);
        black_box(heapprof::snapshot().to_text());
    }
}

#[test]
fn child_after_fork_allocates_and_writes_a_profile() {
    heapprof::set_sample_rate(256);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || busy_allocator(stop, t))
        })
        .collect();
    let profiler = {
        let stop = stop.clone();
        std::thread::spawn(move || busy_profiler(stop))
    };
    std::thread::sleep(std::time::Duration::from_millis(50));

    let dir = std::env::temp_dir();
    for round in 0..30 {
        let path = dir.join(format!(
            "heapprof-fork-{}-{round}.pb.gz",
            std::process::id()
        ));
        let path_c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: fork in a multi-threaded process; the child only runs code
        // that is the subject of this test, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // A deadlock in the child ends it with SIGALRM instead of
            // hanging the test.
            // SAFETY: alarm has no preconditions.
            unsafe { libc::alarm(20) };
            let kept = allocate_in_child(2000);
            let profile = heapprof::snapshot().to_pprof();
            let ok = std::fs::write(path_c.to_str().unwrap(), &profile).is_ok() && !kept.is_empty();
            // SAFETY: terminate the child without running the parent's
            // atexit handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x} (killed or deadlocked?)"
        );
        let profile = std::fs::read(&path).expect("child wrote a profile");
        assert!(
            profile.len() > 100 && profile[..2] == [0x1f, 0x8b],
            "gzip profile"
        );
        std::fs::remove_file(&path).ok();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    profiler.join().unwrap();
}
