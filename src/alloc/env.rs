//! Reading the environment and writing warnings from inside the allocator:
//! `getenv` returns a pointer into `environ` and never allocates (where
//! `std::env::var` would allocate a `String`), numbers are parsed by hand,
//! and warnings go to stderr with one `write(2)`.

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
pub(crate) fn env_u64(name: &core::ffi::CStr) -> Option<u64> {
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
