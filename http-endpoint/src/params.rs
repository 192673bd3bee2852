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

/// Property tests: any query string, however hostile, is parsed without a
/// panic; what is accepted is within the documented bounds; what is
/// refused is a 400 naming the parameter or the conflict; well-formed
/// queries mean exactly what they say. 256 cases each.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const KNOWN: [&str; 6] = ["debug", "seconds", "gc", "peak", "min_age", "ages"];
    const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);

    fn max_seconds() -> impl Strategy<Value = u64> {
        prop_oneof![1u64..=600, any::<u64>()]
    }

    /// Names (known, unknown, near misses) and values (flags, numbers of
    /// any length, durations, junk) as a hostile client mixes them.
    fn hostile_query() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            prop::sample::select(KNOWN.to_vec()).prop_map(String::from),
            "[a-z_]{0,8}",
            "(debug|seconds|min_age)[ =%]",
        ];
        let value = prop_oneof![
            "[01]",
            "[0-9]{1,25}",
            "-?[0-9]{0,6}(ms|s|m|h|d|us|)",
            "\\PC{0,6}",
        ];
        let pair = (name, any::<bool>(), value)
            .prop_map(|(n, eq, v)| if eq { format!("{n}={v}") } else { n });
        prop::collection::vec(pair, 0..7).prop_map(|pairs| pairs.join("&"))
    }

    /// Checks an answer against the documented contract, whatever the query.
    fn check(query: &str, max: u64) -> std::result::Result<(), TestCaseError> {
        match ProfileParams::parse(Some(query), max) {
            Ok(p) => {
                if let Some(s) = p.seconds {
                    prop_assert!(s.subsec_nanos() == 0, "{query}: {s:?}");
                    prop_assert!((1..=max).contains(&s.as_secs()), "{query}: {s:?}");
                }
                if let Some(age) = p.min_age {
                    prop_assert!(age <= THIRTY_DAYS, "{query}: {age:?}");
                }
                let views = [p.seconds.is_some(), p.peak, p.min_age.is_some()];
                prop_assert!(views.iter().filter(|v| **v).count() <= 1, "{query}");
                let value = |name: &str| {
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v)
                };
                for (name, flag) in [
                    ("debug", p.text),
                    ("gc", p.gc),
                    ("peak", p.peak),
                    ("ages", p.ages),
                ] {
                    prop_assert_eq!(flag, value(name) == Some("1"), "{}: {}", query, name);
                }
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400, "{}: {}", query, e);
                let text = e.to_string();
                let named = KNOWN
                    .iter()
                    .any(|n| text.contains(&format!("invalid query parameter {n}=")));
                prop_assert!(
                    named || text.contains("more than once") || text.contains("send one of them"),
                    "{query}: {text}"
                );
            }
        }
        Ok(())
    }

    /// A well-formed query and what it means: each known parameter at most
    /// once with a valid value, at most one view, unknown parameters
    /// anywhere.
    fn well_formed() -> impl Strategy<Value = (u64, Vec<String>, ProfileParams)> {
        let flag = prop::option::of(any::<bool>());
        let age = prop_oneof![
            (0u64..=2_592_000_000).prop_map(|n| (format!("{n}ms"), n)),
            (0u64..=2_592_000).prop_map(|n| (format!("{n}s"), n * 1_000)),
            (0u64..=2_592_000).prop_map(|n| (n.to_string(), n * 1_000)),
            (0u64..=43_200).prop_map(|n| (format!("{n}m"), n * 60_000)),
            (0u64..=720).prop_map(|n| (format!("{n}h"), n * 3_600_000)),
        ];
        let extra = prop::collection::vec("x[a-z]{0,5}(=[a-z0-9]{0,5})?", 0..3);
        (
            1u64..=600,
            flag.clone(),
            flag.clone(),
            flag,
            0u8..4,
            any::<bool>(),
            age,
            extra,
        )
            .prop_flat_map(
                |(max, debug, gc, ages, view, peak, (age_text, age_ms), extra)| {
                    let seconds = 1..=max;
                    (
                        Just((max, debug, gc, ages, view, peak, age_text, age_ms, extra)),
                        seconds,
                    )
                },
            )
            .prop_flat_map(
                |((max, debug, gc, ages, view, peak, age_text, age_ms, extra), secs)| {
                    let mut pairs = extra;
                    let mut want = ProfileParams::default();
                    let flag = |b: bool| if b { "1" } else { "0" };
                    for (name, value, field) in [
                        ("debug", debug, &mut want.text),
                        ("gc", gc, &mut want.gc),
                        ("ages", ages, &mut want.ages),
                    ] {
                        if let Some(b) = value {
                            pairs.push(format!("{name}={}", flag(b)));
                            *field = b;
                        }
                    }
                    match view {
                        1 => {
                            pairs.push(format!("seconds={secs}"));
                            want.seconds = Some(Duration::from_secs(secs));
                        }
                        2 => {
                            pairs.push(format!("peak={}", flag(peak)));
                            want.peak = peak;
                        }
                        3 => {
                            pairs.push(format!("min_age={age_text}"));
                            want.min_age = Some(Duration::from_millis(age_ms));
                        }
                        _ => {}
                    }
                    (Just(max), Just(pairs).prop_shuffle(), Just(want))
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_is_parsed_without_panic(query in "\\PC{0,40}", max in max_seconds()) {
            check(&query, max)?;
        }

        #[test]
        fn hostile_queries_keep_the_contract(query in hostile_query(), max in max_seconds()) {
            check(&query, max)?;
        }

        #[test]
        fn well_formed_queries_mean_what_they_say((max, pairs, want) in well_formed()) {
            let query = pairs.join("&");
            prop_assert_eq!(ProfileParams::parse(Some(&query), max).ok(), Some(want), "{}", query);
            let edge = |n: u64| ProfileParams::parse(Some(&format!("seconds={n}")), max);
            prop_assert_eq!(edge(max).ok().and_then(|p| p.seconds), Some(Duration::from_secs(max)));
            prop_assert!(edge(max + 1).is_err());
        }

        #[test]
        fn one_bad_value_is_refused_naming_it(
            (max, mut pairs, _) in well_formed(),
            (name, bad) in prop_oneof![
                (prop::sample::select(vec!["debug", "gc", "peak", "ages"]), "[2-9a-z]{0,3}|-1|01"),
                (Just("seconds"), "0|-1|[0-9]{21}|[a-z]{1,3}|1\\.5|"),
                (Just("min_age"), "[0-9]{1,3}d|721h|43201m|2592001s|[a-z]{1,3}|-1s|"),
            ],
        ) {
            pairs.retain(|kv| !KNOWN.iter().any(|k| kv.starts_with(&format!("{k}="))));
            pairs.push(format!("{name}={bad}"));
            let query = pairs.join("&");
            let err = ProfileParams::parse(Some(&query), max).unwrap_err();
            prop_assert_eq!(err.status(), 400);
            let expected = format!("invalid query parameter {name}={bad:?}");
            prop_assert!(err.to_string().contains(&expected), "{}: {}", query, err);
        }
    }
}
