//! `/debug/pprof/symbol`: Go's remote symbolization protocol, so
//! `go tool pprof -symbolize=remote` can name addresses.
//!
//! The answer always starts with `num_symbols: 1` (there are symbols);
//! the request's addresses (POST body, or the query of a GET) are
//! `+`-separated numbers, `0x` for hex; each one that resolves adds a line
//! `0xADDR name`. Unresolvable or malformed words are left out, as Go does.

use std::ffi::c_void;
use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::Method;
use axum::response::Response;

use super::{blocking, plain};
use crate::error::Result;

/// Most addresses resolved per request; the rest are ignored.
const MAX_ADDRESSES: usize = 100_000;

/// `GET` or `POST /debug/pprof/symbol`.
pub(crate) async fn symbol(
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let input = if method == Method::POST {
        body
    } else {
        Bytes::from(query.unwrap_or_default())
    };
    let text = blocking(move || resolve_words(&input)).await?;
    Ok(plain(text))
}

pub(crate) fn resolve_words(input: &[u8]) -> String {
    let mut out = String::from("num_symbols: 1\n");
    let words = input
        .split(|&b| b == b'+')
        .filter_map(|w| std::str::from_utf8(w).ok())
        .filter_map(|w| parse_address(w.trim()))
        .filter(|&pc| pc != 0)
        .take(MAX_ADDRESSES);
    for pc in words {
        if let Some(name) = resolve(pc) {
            let _ = writeln!(out, "{pc:#x} {name}");
        }
    }
    out
}

/// `0x1f` (hex) or `31` (decimal), like Go's `strconv.ParseUint(w, 0, 64)`.
fn parse_address(word: &str) -> Option<usize> {
    match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

/// The innermost function at exactly `pc` (Go's `runtime.FuncForPC`),
/// demangled. `backtrace::resolve` treats its argument as a return address
/// and looks up the byte before it, hence `pc + 1`.
fn resolve(pc: usize) -> Option<String> {
    let mut name = None;
    let lookup = std::ptr::with_exposed_provenance_mut::<c_void>(pc.checked_add(1)?);
    backtrace::resolve(lookup, |symbol| {
        if name.is_none() {
            name = symbol.name().map(|n| format!("{n:#}"));
        }
    });
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_known_function() -> u32 {
        std::hint::black_box(7)
    }

    #[test]
    fn resolves_a_function_address_and_skips_junk() {
        let pc = a_known_function as fn() -> u32 as usize;
        let body = format!("{pc:#x}+junk+0x0+{}", pc);
        let out = resolve_words(body.as_bytes());
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("num_symbols: 1"));
        let rest: Vec<_> = lines.collect();
        assert_eq!(rest.len(), 2, "{out}");
        for line in rest {
            assert!(line.starts_with(&format!("{pc:#x} ")), "{out}");
            assert!(line.contains("a_known_function"), "{out}");
        }
    }
}
