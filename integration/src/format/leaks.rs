//! `heapprof leaks`: the leak suspects a process's growth recorder found,
//! as a ranking a person reads top-down: the fastest steady grower first.

use std::fmt::Write;

use heapprof::wire::LeaksDocument;

use super::bytes;

/// Frames shown under a suspect's first function.
const MORE_FRAMES: usize = 4;

/// Where the FUNCTION column starts.
const FUNCTION_COLUMN: usize = 63;

/// The suspects as a ranking of at most `n` rows.
pub fn render(addr: &str, l: &LeaksDocument, n: usize) -> String {
    let mut out = String::new();
    if !l.recording {
        let _ = writeln!(
            out,
            "http://{addr} records no growth history: call `heapprof::start_history(interval)` \
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
    use heapprof::wire::SuspectDocument;

    fn suspect(f: &[&str], slope: f64) -> SuspectDocument {
        SuspectDocument {
            site_id: 1,
            functions: f.iter().map(|s| s.to_string()).collect(),
            slope_bytes_per_minute: slope,
            r_squared: 0.993,
            inuse_bytes: 5 << 20,
            growth_bytes: 3 << 20,
            points: 27,
            window_seconds: 6.6,
            ..SuspectDocument::default()
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
        let l: LeaksDocument = serde_json::from_str(json).unwrap();
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
        let l = LeaksDocument {
            recording: true,
            interval_seconds: Some(1.0),
            suspects: vec![suspect(&["a"], 2e6), suspect(&["b"], 1e6)],
        };
        let text = render("x:1", &l, 1);
        assert!(text.contains(" a\n") && !text.contains(" b\n"), "{text}");
        assert!(text.ends_with("(1 more; -n to show them)\n"), "{text}");
        let off = render("x:1", &LeaksDocument::default(), 10);
        assert_eq!(off.lines().count(), 1);
        assert!(off.contains("heapprof::start_history(interval)"), "{off}");
        let none = LeaksDocument {
            recording: true,
            ..LeaksDocument::default()
        };
        assert!(render("x:1", &none, 10).starts_with("no leak suspects"));
    }
}
