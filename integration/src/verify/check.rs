//! `Check`: one verdict of `verify`, a measurement held against a more
//! exact one.

use crate::format::bytes;

/// One comparison of two independent measurements.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Check {
    /// Short name, stable for scripts.
    pub name: String,
    /// What is compared with what.
    pub what: String,
    /// The reference value (the more exact source).
    pub expected: f64,
    /// The value checked against it.
    pub observed: f64,
    /// `|observed - expected| / expected`, percent (0 when both are 0).
    pub diff_pct: f64,
    /// Whether `diff_pct` is within the tolerance.
    pub ok: bool,
    /// The verdict line.
    pub verdict: String,
}

impl Check {
    /// Compares `observed` with `expected` within `tolerance_pct`.
    pub fn new(name: &str, what: &str, expected: f64, observed: f64, tolerance_pct: f64) -> Self {
        let diff_pct = if expected == observed {
            0.0
        } else if expected == 0.0 {
            100.0
        } else {
            (observed - expected).abs() / expected.abs() * 100.0
        };
        let ok = diff_pct <= tolerance_pct;
        let verdict = if ok {
            format!("agrees within {tolerance_pct}% ({diff_pct:.1}%)")
        } else {
            format!("disagrees by {diff_pct:.1}% (tolerance {tolerance_pct}%)")
        };
        Self {
            name: name.into(),
            what: what.into(),
            expected,
            observed,
            diff_pct,
            ok,
            verdict,
        }
    }
}

impl Check {
    /// A service's claim checked against a measured reality: it holds when
    /// `actual` does not exceed `claimed` by more than `slack` (a claim may
    /// overstate; it may not hide). `expected` is the reality.
    pub fn claim(name: &str, what: &str, claimed: f64, actual: f64, slack: f64) -> Self {
        let over = actual - claimed;
        let ok = over <= slack;
        let diff_pct = if actual == 0.0 {
            0.0
        } else {
            (claimed - actual).abs() / actual.abs() * 100.0
        };
        let verdict = if ok {
            format!(
                "claim holds (reality {} vs claim {})",
                bytes(actual),
                bytes(claimed)
            )
        } else {
            format!(
                "claim false: reality exceeds it by {} (allowed {})",
                bytes(over),
                bytes(slack)
            )
        };
        Self {
            name: name.into(),
            what: what.into(),
            expected: actual,
            observed: claimed,
            diff_pct,
            ok,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let c = Check::new("x", "a vs b", 100.0, 105.0, 10.0);
        assert!(c.ok);
        assert_eq!(c.verdict, "agrees within 10% (5.0%)");
        let c = Check::new("x", "a vs b", 100.0, 150.0, 10.0);
        assert!(!c.ok);
        assert_eq!(c.verdict, "disagrees by 50.0% (tolerance 10%)");
        assert!(Check::new("x", "", 0.0, 0.0, 1.0).ok);
        assert!(!Check::new("x", "", 0.0, 1.0, 1.0).ok);
    }
}
