//! `heapprof diff`: per-site growth between two profiles, largest first.

use std::io::Write;

use anyhow::Result;

use crate::format::{sample_value, stack_line};
use crate::profile;

pub(super) fn run(old: &str, new: &str, n: usize, sample: &str) -> Result<()> {
    let rows = profile::diff(&profile::load(old, "")?, &profile::load(new, "")?, sample)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>12} {:>12} {:>12}  SITE ({sample})",
        "DELTA", "OLD", "NEW"
    )?;
    for r in rows.iter().take(n) {
        let sign = if r.delta > 0 { "+" } else { "" };
        writeln!(
            out,
            "{:>12} {:>12} {:>12}  {}",
            format!("{sign}{}", sample_value(sample, r.delta)),
            sample_value(sample, r.old),
            sample_value(sample, r.new),
            stack_line(&r.stack, 6)
        )?;
    }
    Ok(())
}
