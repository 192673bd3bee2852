//! `heapprof leaks`: the leak suspects a process's growth recorder found
//! (`GET /debug/heapprof/leaks`, served by heapprof-http), as a ranking a
//! person reads top-down: the fastest steady grower first.
//!
//! The recorder is opt-in (`heapprof::history::start(interval)` in the
//! service); without it the endpoint answers `"recording": false` and this
//! says how to turn it on.

use std::fmt::Write;

use crate::fetch::{self, FetchError, Source};
use crate::report::bytes;

/// Errors of `leaks`.
#[derive(Debug, thiserror::Error)]
pub enum LeaksError {
    /// The endpoint could not be reached or answered badly.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A file was named: suspects need a live process.
    #[error("{0} is not a process or HOST:PORT: leak suspects come from a live process")]
    NotLive(String),
    /// The answer was not the suspects document.
    #[error("GET http://{addr}/debug/heapprof/leaks: not a leaks document: {source}")]
    Json {
        /// Endpoint address.
        addr: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The document of `/debug/heapprof/leaks`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Leaks {
    /// Whether the growth recorder runs.
    pub recording: bool,
    /// Its interval, seconds.
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    /// Suspects, fastest growing first.
    #[serde(default)]
    pub suspects: Vec<Suspect>,
}

/// One call site whose in-use bytes grow steadily.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Suspect {
    /// The target's site id.
    pub site_id: u32,
    /// Function names, innermost first.
    pub functions: Vec<String>,
    /// `file:line` of each function.
    pub locations: Vec<String>,
    /// Labels of the site (`[key, value]`).
    pub labels: Vec<(String, String)>,
    /// Least-squares slope of in-use bytes.
    pub slope_bytes_per_minute: f64,
    /// Fit of that line (1 = perfectly steady growth).
    pub r_squared: f64,
    /// In-use bytes now.
    pub inuse_bytes: i64,
    /// Growth over the window.
    pub growth_bytes: i64,
    /// History points fitted.
    pub points: usize,
    /// Length of the history fitted, seconds.
    pub window_seconds: f64,
}

/// Fetches the suspects of a pid or `HOST:PORT`; returns the address too.
pub fn fetch(target: &str) -> Result<(String, Leaks), LeaksError> {
    let addr = Source::parse(target)
        .addr()?
        .ok_or_else(|| LeaksError::NotLive(target.to_string()))?;
    let body = fetch::get(&addr, "/debug/heapprof/leaks")?;
    let leaks = serde_json::from_slice(&body).map_err(|source| LeaksError::Json {
        addr: addr.clone(),
        source,
    })?;
    Ok((addr, leaks))
}

/// Frames shown under a suspect's first function.
const MORE_FRAMES: usize = 4;

/// Where the FUNCTION column starts.
const FUNCTION_COLUMN: usize = 63;

/// The suspects as a ranking of at most `n` rows.
pub fn render(addr: &str, l: &Leaks, n: usize) -> String {
    let mut out = String::new();
    if !l.recording {
        let _ = writeln!(
            out,
            "http://{addr} records no growth history: call `heapprof::history::start(interval)` \
             in the service (e.g. at startup), then ask again after a few intervals"
        );
        return out;
    }
    let every = l
        .interval_seconds
        .map_or(String::new(), |s| format!(", a point every {s} s"));
    if l.suspects.is_empty() {
        let _ = writeln!(
            out,
            "no leak suspects at http://{addr} (no site grows steadily yet{every})"
        );
        return out;
    }
    let _ = writeln!(out, "leak suspects at http://{addr}{every}");
    let _ = writeln!(
        out,
        "{:>4}  {:>14}  {:>5}  {:>10}  {:>11}  {:>7}  FUNCTION",
        "RANK", "SLOPE", "R²", "IN-USE", "GROWTH", "WINDOW"
    );
    for (i, s) in l.suspects.iter().take(n).enumerate() {
        let first = s.functions.first().map_or("?", String::as_str);
        let labels = if s.labels.is_empty() {
            String::new()
        } else {
            let kv: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" [{}]", kv.join(" "))
        };
        let _ = writeln!(
            out,
            "{:>4}  {:>14}  {:>5.2}  {:>10}  {:>11}  {:>6.0}s  {first}{labels}",
            i + 1,
            format!(
                "{:+.2} MiB/min",
                s.slope_bytes_per_minute / (1 << 20) as f64
            ),
            s.r_squared,
            bytes(s.inuse_bytes as f64),
            format!(
                "{}{}",
                if s.growth_bytes > 0 { "+" } else { "" },
                bytes(s.growth_bytes as f64)
            ),
            s.window_seconds,
        );
        for f in s.functions.iter().skip(1).take(MORE_FRAMES) {
            let _ = writeln!(out, "{:FUNCTION_COLUMN$}{f}", "");
        }
    }
    if l.suspects.len() > n {
        let _ = writeln!(out, "({} more; -n to show them)", l.suspects.len() - n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suspect(f: &[&str], slope: f64) -> Suspect {
        Suspect {
            site_id: 1,
            functions: f.iter().map(|s| s.to_string()).collect(),
            slope_bytes_per_minute: slope,
            r_squared: 0.993,
            inuse_bytes: 5 << 20,
            growth_bytes: 3 << 20,
            points: 27,
            window_seconds: 6.6,
            ..Suspect::default()
        }
    }

    #[test]
    fn ranking_lines() {
        let json = r#"{"recording":true,"interval_seconds":0.25,"suspects":[
            {"site_id":5,"functions":["a::insert","a::main","f2","f3","f4","f5","f6"],
             "locations":[],"labels":[["component","cache"]],
             "slope_bytes_per_minute":42374228.1,"r_squared":0.9931,
             "inuse_bytes":4941750,"growth_bytes":4875860,"points":27,
             "window_seconds":6.57}]}"#;
        let l: Leaks = serde_json::from_str(json).unwrap();
        let text = render("127.0.0.1:1", &l, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "leak suspects at http://127.0.0.1:1, a point every 0.25 s"
        );
        assert!(lines[1].starts_with("RANK"), "{text}");
        assert_eq!(
            lines[2],
            "   1  +40.41 MiB/min   0.99     4.7 MiB     +4.6 MiB       7s  a::insert [component=cache]"
        );
        // The next four frames, indented under FUNCTION; f5, f6 left out.
        assert_eq!(lines[3].trim(), "a::main");
        assert_eq!(lines[3].find('a'), lines[2].find("a::insert"));
        assert_eq!(lines[6].trim(), "f4");
        assert_eq!(lines.len(), 7, "{text}");
    }

    #[test]
    fn limits_and_empty_states() {
        let l = Leaks {
            recording: true,
            interval_seconds: Some(1.0),
            suspects: vec![suspect(&["a"], 2e6), suspect(&["b"], 1e6)],
        };
        let text = render("x:1", &l, 1);
        assert!(text.contains(" a\n") && !text.contains(" b\n"), "{text}");
        assert!(text.ends_with("(1 more; -n to show them)\n"), "{text}");
        let off = render("x:1", &Leaks::default(), 10);
        assert_eq!(off.lines().count(), 1);
        assert!(off.contains("heapprof::history::start(interval)"), "{off}");
        let none = Leaks {
            recording: true,
            ..Leaks::default()
        };
        assert!(render("x:1", &none, 10).starts_with("no leak suspects"));
    }
}
