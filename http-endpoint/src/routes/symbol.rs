//! `/debug/pprof/symbol`: Go's remote symbolization protocol, so
//! `go tool pprof -symbolize=remote` can name addresses.
//!
//! The answer always starts with `num_symbols: 1` (there are symbols);
//! the request's addresses (POST body, or the query of a GET) are
//! `+`-separated numbers, `0x` for hex; each one that resolves adds a line
//! `0xADDR name`. Unresolvable or malformed words are left out, as Go does.
//!
//! The work is bounded like a profile build: at most [`MAX_ADDRESSES`] a
//! request (more is a 413 that says so), a body of at most
//! [`MAX_BODY_BYTES`], and the symbolization runs on a build slot off the
//! request threads, with the same admission as a heap profile.

use std::fmt::Write;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::Method;
use axum::response::Response;

use super::{blocking, plain};
use crate::error::{Error, Result};
use crate::state::AppState;

/// Most addresses named per request.
pub(crate) const MAX_ADDRESSES: usize = 20_000;
/// Largest request body: [`MAX_ADDRESSES`] words of up to 18 bytes and a
/// separator each, rounded up.
pub(crate) const MAX_BODY_BYTES: usize = 512 * 1024;

/// `GET` or `POST /debug/pprof/symbol`.
pub(crate) async fn symbol(
    State(state): State<AppState>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let input = if method == Method::POST {
        body
    } else {
        Bytes::from(query.unwrap_or_default())
    };
    let addresses = parse_words(&input)?;
    if addresses.is_empty() {
        return Ok(plain("num_symbols: 1\n"));
    }
    let _permit = state.build_permit().await?;
    let text = blocking(move || {
        let _admission = heapprof::admit(heapprof::BuildKind::Heap)?;
        Ok::<_, Error>(answer(&addresses, &heapprof::function_names(&addresses)))
    })
    .await??;
    Ok(plain(text))
}

/// The non-zero addresses of a request, at most [`MAX_ADDRESSES`].
fn parse_words(input: &[u8]) -> Result<Vec<usize>> {
    let words = input
        .split(|&b| b == b'+')
        .filter_map(|w| std::str::from_utf8(w).ok())
        .filter_map(|w| parse_address(w.trim()))
        .filter(|&pc| pc != 0);
    let mut out = Vec::new();
    for pc in words {
        if out.len() == MAX_ADDRESSES {
            return Err(Error::TooLarge(format!(
                "more than {MAX_ADDRESSES} addresses in one request; split them"
            )));
        }
        out.push(pc);
    }
    Ok(out)
}

fn answer(addresses: &[usize], names: &[Option<String>]) -> String {
    let mut out = String::from("num_symbols: 1\n");
    for (pc, name) in addresses.iter().zip(names) {
        if let Some(name) = name {
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
        let addresses = parse_words(body.as_bytes()).unwrap();
        let out = answer(&addresses, &heapprof::function_names(&addresses));
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("num_symbols: 1"));
        let rest: Vec<_> = lines.collect();
        assert_eq!(rest.len(), 2, "{out}");
        for line in rest {
            assert!(line.starts_with(&format!("{pc:#x} ")), "{out}");
            assert!(line.contains("a_known_function"), "{out}");
        }
    }

    #[test]
    fn too_many_addresses_are_refused_with_the_bound() {
        let body = vec!["0x10"; MAX_ADDRESSES + 1].join("+");
        let err = parse_words(body.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 413);
        assert!(err.to_string().contains("20000"), "{err}");
        assert_eq!(
            parse_words(vec!["0x10"; MAX_ADDRESSES].join("+").as_bytes())
                .unwrap()
                .len(),
            MAX_ADDRESSES
        );
    }
}
