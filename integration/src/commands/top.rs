//! `heapprof top`: the top call sites of a profile, readable without Go.

use std::io::Write;

use anyhow::Result;

use crate::format::{age, sample_value, stack_line};
use crate::profile;

pub(super) fn run(source: &str, n: usize, sample: &str) -> Result<()> {
    // Live targets are asked for ages (oldest and median live sample).
    let p = profile::load(source, "?ages=1")?;
    let (rows, total) = profile::top(&p, sample, n)?;
    let with_ages = rows.iter().any(|r| r.oldest_age_ms.is_some());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{sample} total {}", sample_value(sample, total))?;
    let age_header = if with_ages {
        format!("{:>8} {:>8} ", "OLDEST", "MEDIAN")
    } else {
        String::new()
    };
    writeln!(
        out,
        "{:>12} {:>6} {:>12} {:>6} {age_header} FUNCTION / HEAVIEST STACK",
        "FLAT", "FLAT%", "CUM", "CUM%"
    )?;
    let pct = |v: i64| {
        if total == 0 {
            0.0
        } else {
            v as f64 * 100.0 / total as f64
        }
    };
    for r in rows {
        let ages = if with_ages {
            let show = |a: Option<i64>| a.map_or_else(|| "-".to_owned(), age);
            format!("{:>8} {:>8} ", show(r.oldest_age_ms), show(r.median_age_ms))
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:>12} {:>5.1}% {:>12} {:>5.1}% {ages} {}",
            sample_value(sample, r.flat),
            pct(r.flat),
            sample_value(sample, r.cum),
            pct(r.cum),
            r.function
        )?;
        if r.stack.len() > 1 {
            let indent = 42 + ages.len();
            writeln!(out, "{:indent$}{}", "", stack_line(&r.stack, 6))?;
        }
    }
    Ok(())
}
