//! Query parameters of the profile routes, parsed strictly: anything the
//! route would have to guess at is a 400 naming the accepted values.
//!
//! Parsed by hand from the raw query so that each rejection carries our
//! own reason (axum's `Query` rejection would not say what to send).

use std::time::Duration;

use crate::error::{Error, Result};

/// Go's heap-profile parameters: `debug`, `seconds`, `gc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProfileParams {
    /// `debug=1`: Go's text format instead of gzipped protobuf.
    pub text: bool,
    /// `seconds=N`: a delta (heap) or sampling window (CPU).
    pub seconds: Option<Duration>,
    /// `gc=1`: give memory back to the OS before the snapshot.
    pub gc: bool,
    /// `peak=1`: the profile at the high-water mark (heapprof extension).
    pub peak: bool,
    /// `min_age=60s`: in-use values from live allocations at least this
    /// old (heapprof extension).
    pub min_age: Option<Duration>,
    /// `ages=1`: oldest and median live-sample age as sample labels
    /// (heapprof extension; `heapprof top` asks for it).
    pub ages: bool,
    /// `resident=1`: the resident view, a `resident_space` sample type
    /// that partitions the whole RSS (heapprof extension).
    pub resident: bool,
}

impl ProfileParams {
    /// Parses `query` (without `?`); `max_seconds` bounds `seconds`.
    /// Unknown parameters are ignored, as Go does; a repeated parameter is
    /// a 400 (which one was meant?).
    pub fn parse(query: Option<&str>, max_seconds: u64) -> Result<Self> {
        let mut params = ProfileParams::default();
        let mut seen = [false; 7];
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let index = match name {
                "debug" => 0,
                "seconds" => 1,
                "gc" => 2,
                "peak" => 3,
                "min_age" => 4,
                "ages" => 5,
                "resident" => 6,
                _ => continue,
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(Error::BadRequest(format!(
                    "parameter {name} given more than once; send it once"
                )));
            }
            match index {
                0 => params.text = parse_flag("debug", value)?,
                1 => params.seconds = Some(parse_seconds(value, max_seconds)?),
                2 => params.gc = parse_flag("gc", value)?,
                3 => params.peak = parse_flag("peak", value)?,
                4 => params.min_age = Some(parse_age(value)?),
                5 => params.ages = parse_flag("ages", value)?,
                _ => params.resident = parse_flag("resident", value)?,
            }
        }
        let views = [
            params.seconds.is_some(),
            params.peak,
            params.min_age.is_some(),
            params.resident,
        ];
        if views.iter().filter(|v| **v).count() > 1 {
            return Err(Error::BadRequest(
                "seconds, peak, min_age and resident select different views of the heap; \
                 send one of them"
                    .into(),
            ));
        }
        if params.resident && params.text {
            return Err(Error::BadRequest(
                "resident=1 is served as protobuf only (its resident_space sample type has \
                 no place in the debug=1 text format); drop debug=1"
                    .into(),
            ));
        }
        Ok(params)
    }
}

fn parse_flag(name: &'static str, value: &str) -> Result<bool> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Error::bad_param(name, value, "expected 0 or 1")),
    }
}

/// `min_age`: a whole number with a unit (`500ms`, `60s`, `5m`, `2h`) or
/// plain seconds, up to 30 days.
fn parse_age(value: &str) -> Result<Duration> {
    let reason = "expected a duration like 500ms, 60s, 5m or 2h (at most 30 days)";
    let bad = || Error::bad_param("min_age", value, reason);
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .filter(|ms| *ms <= 30 * 24 * 3_600_000)
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(millis))
}

fn parse_seconds(value: &str, max: u64) -> Result<Duration> {
    let reason = || format!("expected a whole number of seconds from 1 to {max}");
    let n: u64 = value
        .parse()
        .map_err(|_| Error::bad_param("seconds", value, reason()))?;
    if n == 0 || n > max {
        return Err(Error::bad_param("seconds", value, reason()));
    }
    Ok(Duration::from_secs(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ProfileParams> {
        ProfileParams::parse(Some(q), 300)
    }

    #[test]
    fn accepts_go_parameters() {
        let p = parse("debug=1&seconds=5&gc=1&other=x").unwrap();
        assert_eq!(
            p,
            ProfileParams {
                text: true,
                seconds: Some(Duration::from_secs(5)),
                gc: true,
                ..Default::default()
            }
        );
        assert_eq!(
            ProfileParams::parse(None, 300).unwrap(),
            ProfileParams::default()
        );
        assert_eq!(
            parse("seconds=300").unwrap().seconds,
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn accepts_heapprof_extensions() {
        assert!(parse("peak=1").unwrap().peak);
        assert!(parse("resident=1").unwrap().resident);
        assert!(parse("ages=1").unwrap().ages);
        assert_eq!(
            parse("min_age=60s").unwrap().min_age,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse("min_age=90").unwrap().min_age,
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse("min_age=250ms").unwrap().min_age,
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse("min_age=2h").unwrap().min_age,
            Some(Duration::from_secs(7200))
        );
    }

    #[test]
    fn rejects_with_reason() {
        for (q, needle) in [
            ("seconds=abc", "from 1 to 300"),
            ("seconds=-1", "from 1 to 300"),
            ("seconds=0", "from 1 to 300"),
            ("seconds=301", "from 1 to 300"),
            ("seconds=", "from 1 to 300"),
            ("debug=7", "expected 0 or 1"),
            ("debug=", "expected 0 or 1"),
            ("gc=x", "expected 0 or 1"),
            ("gc=1&gc=0", "more than once"),
            ("peak=yes", "expected 0 or 1"),
            ("ages=2", "expected 0 or 1"),
            ("min_age=ten", "like 500ms"),
            ("min_age=5d", "like 500ms"),
            ("min_age=99999h", "like 500ms"),
            ("peak=1&min_age=1s", "send one of them"),
            ("seconds=5&peak=1", "send one of them"),
            ("resident=1&peak=1", "send one of them"),
            ("resident=1&debug=1", "protobuf only"),
            ("resident=2", "expected 0 or 1"),
        ] {
            let err = parse(q).unwrap_err();
            assert_eq!(err.status(), 400, "{q}");
            assert!(err.to_string().contains(needle), "{q}: {err}");
        }
    }
}
