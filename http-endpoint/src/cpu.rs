//! CPU profiles through the `pprof` crate's signal-based sampler.
//!
//! Deadlock with the sampling allocator: the `SIGPROF` handler does not
//! allocate, so it never enters `heapprof::Profiler`; but it unwinds the
//! interrupted thread, and unwinding from inside libc, libgcc's unwinder or
//! pthread code can take a lock that thread already holds (heapprof's own
//! backtrace capture runs in the unwinder). The blocklist makes the
//! handler skip samples that interrupted those libraries, as pprof-rs
//! recommends. Tested under four allocating threads
//! (`tests/cpu_profile.rs`).

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use pprof::protos::Message;

use crate::error::{Error, Result};

/// Sampling frequency, as Go's `runtime/pprof` (100 Hz).
pub(crate) const FREQUENCY_HZ: i32 = 100;

/// Libraries whose frames are never unwound from the signal handler.
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso", "ld-linux"];

/// Profiles the whole process for `window` (blocking the caller), then
/// returns the gzipped profile.proto.
pub(crate) fn profile(window: Duration) -> Result<Vec<u8>> {
    let failed = |e: pprof::Error| Error::CpuProfiler(e.to_string());
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(failed)?;
    std::thread::sleep(window);
    let report = guard.report().build().map_err(failed)?;
    drop(guard);
    let profile = report.pprof().map_err(failed)?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| Error::CpuProfiler(format!("gzip: {e}")))
}
