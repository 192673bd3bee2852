//! Reading one number from a metrics endpoint: Prometheus text exposition
//! (`KEY value` or `KEY{labels} value`, first series wins) or a JSON object
//! (`KEY` is a top-level key whose value is a number or a numeric string).
//! `verify` reads the endpoint's own metrics and a service's claims this way.

use crate::fetch::{self, FetchError};

/// `(HOST:PORT, /PATH?QUERY)` of an `http://` URL.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!host.is_empty()).then(|| (host.to_string(), path.to_string()))
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

/// `GET url` (an `http://HOST:PORT/PATH` URL); the body of a 200.
pub fn get_url(url: &str) -> Result<Vec<u8>, FetchError> {
    let (addr, path) = split_url(url).ok_or_else(|| FetchError::Url(url.to_string()))?;
    fetch::get(&addr, &path)
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
        let metrics = "# HELP x\nheapprof_jemalloc_allocated_bytes 1234\nheapprof_jemalloc_resident_bytes 5e3\n";
        assert_eq!(
            parse_value(metrics, "heapprof_jemalloc_allocated_bytes"),
            Some(1234.0)
        );
        assert_eq!(
            parse_value(metrics, "heapprof_jemalloc_resident_bytes"),
            Some(5000.0)
        );
        assert_eq!(parse_value(metrics, "nope"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/app-metrics?x=1").unwrap(),
            ("127.0.0.1:8080".into(), "/app-metrics?x=1".into())
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1".into(), "/".into()));
        assert!(split_url("https://h:1/x").is_none());
        assert!(split_url("http:///x").is_none());
    }
}
