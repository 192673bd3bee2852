//! Process-wide settings read by the allocator path: the sample rate, the
//! site-table bound and the sampler seed.
//!
//! The environment is read once, lazily, from inside the allocator, so it is
//! read with `libc::getenv` (which returns a pointer into `environ` and never
//! allocates) and parsed by hand. `std::env::var` would allocate a `String`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Go's `runtime.MemProfileRate`: one sample per 512 KiB allocated, on average.
pub const DEFAULT_SAMPLE_RATE: u64 = 512 * 1024;

/// Default bound on distinct call sites (`HEAPPROF_MAX_SITES` overrides it).
pub const DEFAULT_MAX_SITES: usize = 32 * 1024;

/// Largest accepted `HEAPPROF_MAX_SITES`.
pub const MAX_SITES_LIMIT: usize = 1 << 20;

const UNSET: u64 = u64::MAX;

static SAMPLE_RATE: AtomicU64 = AtomicU64::new(UNSET);
/// Bumped by every rate change so each thread redraws its sampling gap.
static RATE_EPOCH: AtomicU32 = AtomicU32::new(0);

/// Current sample rate in bytes (0 = off, 1 = every allocation).
///
/// The first call reads `HEAPPROF_SAMPLE_RATE`; it never allocates.
#[inline]
pub fn sample_rate() -> u64 {
    let rate = SAMPLE_RATE.load(Ordering::Relaxed);
    if rate != UNSET {
        return rate;
    }
    init_rate_from_env()
}

#[cold]
fn init_rate_from_env() -> u64 {
    let rate = env_u64(c"HEAPPROF_SAMPLE_RATE").unwrap_or(DEFAULT_SAMPLE_RATE);
    // Another thread (or `set_sample_rate`) may have won; keep its value.
    match SAMPLE_RATE.compare_exchange(UNSET, rate, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => rate,
        Err(current) => current,
    }
}

/// Sets the mean number of bytes between samples, at run time.
///
/// `0` turns sampling off, `1` samples every allocation. The calling thread
/// uses the new rate from its next allocation; other threads pick it up at
/// their next sample point (for a thread that had sampling off: within 1 MiB
/// of allocation), as Go does with `MemProfileRate`. Set it early.
pub fn set_sample_rate(bytes: u64) {
    let bytes = if bytes == UNSET { UNSET - 1 } else { bytes };
    SAMPLE_RATE.store(bytes, Ordering::Relaxed);
    RATE_EPOCH.fetch_add(1, Ordering::Release);
    crate::sampler::reset_current_thread();
}

/// Generation number of the sample rate, compared by each thread's sampler.
#[inline]
pub(crate) fn rate_epoch() -> u32 {
    RATE_EPOCH.load(Ordering::Acquire)
}

/// Bound on distinct call sites, from `HEAPPROF_MAX_SITES` (read once).
pub(crate) fn max_sites() -> usize {
    env_u64(c"HEAPPROF_MAX_SITES")
        .map(|n| (n as usize).clamp(16, MAX_SITES_LIMIT))
        .unwrap_or(DEFAULT_MAX_SITES)
}

/// Seed for the samplers' random numbers, from `HEAPPROF_SEED` if set
/// (reproducible runs, used by the accuracy benchmark).
pub(crate) fn seed() -> Option<u64> {
    env_u64(c"HEAPPROF_SEED")
}

/// The bytes of an environment variable, without allocating (`getenv`).
pub(crate) fn env_bytes(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv takes a NUL-terminated name and returns NULL or a pointer
    // to a NUL-terminated string owned by the environment, which lives until
    // a setenv of the same name; Rust code reaches setenv only through the
    // `unsafe` std::env::set_var, whose contract rules out concurrent readers.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null getenv results point to a NUL-terminated string.
    Some(unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes())
}

/// Reads a decimal environment variable without allocating. A value that is
/// not a plain decimal number is reported once on stderr and ignored.
fn env_u64(name: &core::ffi::CStr) -> Option<u64> {
    let bytes = env_bytes(name)?;
    match parse_u64(bytes) {
        Some(n) => Some(n),
        None => {
            warn(b"heapprof: ignoring an environment variable that is not a decimal number of bytes: ");
            warn(name.to_bytes());
            warn(b"\n");
            None
        }
    }
}

/// Parses an unsigned decimal number; `None` for empty, non-digit or overflow.
pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Writes to stderr without allocating (used where `eprintln!` could recurse
/// into the allocator).
pub(crate) fn warn(msg: &[u8]) {
    // SAFETY: write(2) with a valid buffer and length; the result is ignored
    // because there is nothing better to do with a failed warning.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals_only() {
        assert_eq!(parse_u64(b"524288"), Some(524_288));
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"4k"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }
}
