//! Everything the command prints for people: sizes, ages and tables, and
//! the text form of each report (`leaks`, `verify`).

use std::fmt::Write;

pub(crate) mod leaks;
pub(crate) mod verify;

/// `e` and its sources joined with `: `, skipping a source whose text the
/// message already contains (aya's errors often repeat their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Bytes for humans: `12.3 MiB`.
pub fn bytes(n: impl Into<f64>) -> String {
    let n: f64 = n.into();
    let a = n.abs();
    let (v, unit) = if a >= (1u64 << 30) as f64 {
        (n / (1u64 << 30) as f64, "GiB")
    } else if a >= (1 << 20) as f64 {
        (n / (1 << 20) as f64, "MiB")
    } else if a >= 1024.0 {
        (n / 1024.0, "KiB")
    } else {
        return format!("{n} B");
    };
    format!("{v:.1} {unit}")
}

/// A byte change with its sign: `+2.0 MiB`, `-512 B`.
pub fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{}", bytes(n as f64))
    } else {
        bytes(n as f64)
    }
}

/// Bytes in MiB with one decimal, whatever the size: `79.5 MiB`, for
/// parts that are compared side by side.
pub fn mib(b: i64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// [`mib`] with its sign: `+40.0 MiB`, `-0.5 MiB`.
pub fn signed_mib(b: i64) -> String {
    format!("{}{}", if b >= 0 { "+" } else { "" }, mib(b))
}

/// A two-column table: `label  value`, indented by `indent`.
pub fn rows(out: &mut String, indent: usize, rows: &[(&str, String)]) {
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (label, value) in rows {
        let _ = writeln!(out, "{:indent$}{label:<width$}  {value}", "");
    }
}

/// Milliseconds as a short age: 850ms, 12.5s, 3.2m, 1.5h.
pub fn age(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1e3)
    } else if ms < 3_600_000 {
        format!("{:.1}m", ms as f64 / 6e4)
    } else {
        format!("{:.1}h", ms as f64 / 3.6e6)
    }
}

/// A value of sample type `sample`: bytes for `*_space`, a count otherwise.
pub fn sample_value(sample: &str, v: i64) -> String {
    if sample.ends_with("_space") {
        bytes(v as f64)
    } else {
        v.to_string()
    }
}

/// A stack as `leaf < caller < ...`, at most `depth` frames.
pub fn stack_line(stack: &[String], depth: usize) -> String {
    let mut s = stack
        .iter()
        .take(depth)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" < ");
    if stack.len() > depth {
        s.push_str(" < ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ages_and_stacks() {
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1048576.0), "3.0 MiB");
        assert_eq!(signed(2 << 20), "+2.0 MiB");
        assert_eq!(signed(-512), "-512 B");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(90_000), "1.5m");
        let stack: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(stack_line(&stack, 1), "a < ...");
        assert_eq!(stack_line(&stack, 6), "a < b");
    }
}
