//! What a service says about its own memory (`verify --claims-url URL
//! --claims-key KEY`), read from its metrics endpoint, so that `verify`
//! can hold it against what the kernel and the allocator show (incident 3:
//! dashboards that said healthy).
//!
//! The URL answers Prometheus text exposition (`KEY value` or
//! `KEY{labels} value`, first series wins) or a JSON object (`KEY` is a
//! top-level key whose value is a number or a numeric string).

use crate::fetch::FetchError;
use crate::scrape;

/// Errors reading a claim.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The URL could not be read.
    #[error("--claims-url: {0}")]
    Fetch(#[from] FetchError),
    /// The answer has no such number.
    #[error(
        "{url} has no number named {key} (neither a Prometheus series nor a top-level JSON key)"
    )]
    Missing {
        /// The URL.
        url: String,
        /// The key.
        key: String,
    },
}

/// The claim, as read at the start and the end of the window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ClaimReport {
    /// Where it was read.
    pub url: String,
    /// Which number.
    pub key: String,
    /// Before the window (absent without a window).
    pub at_start: Option<f64>,
    /// After the window.
    pub at_end: f64,
    /// Whether every check of the claim holds.
    pub consistent: bool,
    /// One line saying why.
    pub verdict: String,
}

/// Reads the claim now.
pub fn read(url: &str, key: &str) -> Result<f64, ClaimError> {
    let body = scrape::get_url(url)?;
    scrape::parse_value(&String::from_utf8_lossy(&body), key).ok_or_else(|| ClaimError::Missing {
        url: url.to_string(),
        key: key.to_string(),
    })
}
