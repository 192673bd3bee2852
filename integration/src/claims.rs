//! What a service says about its own memory (`verify --claims-url URL
//! --claims-key KEY`), read from its metrics endpoint, so that `verify`
//! can hold it against what the kernel and the allocator show (incident 3:
//! dashboards that said healthy).
//!
//! The URL answers Prometheus text exposition (`KEY value` or
//! `KEY{labels} value`, first series wins) or a JSON object (`KEY` is a
//! top-level key whose value is a number or a numeric string).

use crate::fetch::{self, FetchError};

/// Errors reading a claim.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("--claims-url {0}: expected http://HOST:PORT/PATH")]
    Url(String),
    /// Fetching failed.
    #[error(transparent)]
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

/// `(HOST:PORT, /PATH?QUERY)` of an `http://` URL.
pub fn split_url(url: &str) -> Result<(String, String), ClaimError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClaimError::Url(url.to_string()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(ClaimError::Url(url.to_string()));
    }
    Ok((host.to_string(), path.to_string()))
}

/// The number `key` in `body` (JSON object or Prometheus text).
pub fn parse_value(body: &str, key: &str) -> Option<f64> {
    if body.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let v = v.get(key)?;
        return v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
    }
    body.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let rest = line.strip_prefix(key)?;
        let rest = match rest.chars().next()? {
            '{' => &rest[rest.find('}')? + 1..],
            ' ' | '\t' => rest,
            _ => return None, // a longer name with this prefix
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Reads the claim now.
pub fn read(url: &str, key: &str) -> Result<f64, ClaimError> {
    let (addr, path) = split_url(url)?;
    let body = fetch::get(&addr, &path)?;
    parse_value(&String::from_utf8_lossy(&body), key).ok_or_else(|| ClaimError::Missing {
        url: url.to_string(),
        key: key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_and_json_values() {
        let text = "# HELP app_memory_bytes x\n# TYPE app_memory_bytes gauge\n\
                    app_memory_bytes_total 7\napp_memory_bytes 50331648\napp_healthy 1\n";
        assert_eq!(parse_value(text, "app_memory_bytes"), Some(50331648.0));
        assert_eq!(parse_value(text, "app_memory_bytes_total"), Some(7.0));
        assert_eq!(parse_value(text, "app_memory"), None);
        let labelled = "mem{area=\"heap\",pod=\"a b\"} 1.5e6 1700000000\n";
        assert_eq!(parse_value(labelled, "mem"), Some(1.5e6));
        let json = r#"{"memory_bytes": 1024, "as_text": " 2048 ", "nested": {"x": 1}}"#;
        assert_eq!(parse_value(json, "memory_bytes"), Some(1024.0));
        assert_eq!(parse_value(json, "as_text"), Some(2048.0));
        assert_eq!(parse_value(json, "nested"), None);
        assert_eq!(parse_value(json, "x"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/app-metrics?x=1").unwrap(),
            ("127.0.0.1:8080".into(), "/app-metrics?x=1".into())
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1".into(), "/".into()));
        assert!(split_url("https://h:1/x").is_err());
        assert!(split_url("http:///x").is_err());
    }
}
