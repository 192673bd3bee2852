//! Heap profiles (profile.proto, gzipped or not): decoding, `top` and `diff`.
//!
//! Sites are keyed by their stack of function names (innermost first,
//! every inlining level), so profiles from two runs of a binary — whose
//! addresses differ — can be compared.

use std::collections::HashMap;
use std::io::Read;

use pprof::protos::{Message, Profile};

/// Largest decompressed profile [`decode`] accepts, bytes (the command's
/// `--max-bytes` sets it for [`decode_limited`]).
pub const DEFAULT_MAX_BYTES: u64 = 128 << 20;

/// Errors of reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// gzip stream broken.
    #[error("profile is not valid gzip: {0}")]
    Gzip(#[source] std::io::Error),
    /// The profile inflates beyond the limit.
    #[error("profile inflates to more than {} MiB (raise with --max-bytes)", .0 >> 20)]
    TooLarge(u64),
    /// protobuf broken.
    #[error("profile is not a valid profile.proto: {0}")]
    Decode(String),
    /// Well-formed protobuf, but not a consistent profile (what
    /// `go tool pprof` would refuse too).
    #[error("malformed profile: {0}")]
    Invalid(String),
    /// The requested sample type is not in the profile.
    #[error("sample type {wanted} not in profile (has: {has})")]
    NoSampleType {
        /// Requested.
        wanted: String,
        /// Present, comma-separated.
        has: String,
    },
}

/// (oldest, median) live-sample age, milliseconds.
pub type Ages = (i64, i64);

/// A decoded profile, flattened to stacks of names.
#[derive(Clone, Debug, Default)]
pub struct HeapProfile {
    /// Sample type names, in order.
    pub sample_types: Vec<String>,
    /// Stacks of function names, innermost first, with their values (one
    /// per sample type).
    pub samples: Vec<(Vec<String>, Vec<i64>)>,
    /// Per sample (same order), the (oldest, median) live-sample age in
    /// milliseconds, when the profile carries heapprof's age labels
    /// (`/debug/pprof/heap?ages=1`).
    pub ages: Vec<Option<Ages>>,
}

/// Loads the heap profile of `source` (a pid, `HOST:PORT` or a file, see
/// [`crate::fetch::Source`]); `query` is sent to live targets.
pub(crate) fn load(source: &str, query: &str) -> anyhow::Result<HeapProfile> {
    use anyhow::Context;
    let body = crate::fetch::Source::parse(source).heap_profile(query)?;
    decode_limited(&body, crate::fetch::settings().max_bytes)
        .with_context(|| format!("reading {source}"))
}

/// Decodes a profile (gunzipping if needed) of at most
/// [`DEFAULT_MAX_BYTES`].
pub fn decode(bytes: &[u8]) -> Result<HeapProfile, ProfileError> {
    decode_limited(bytes, DEFAULT_MAX_BYTES)
}

/// Decodes a profile that inflates to at most `max_bytes`.
pub fn decode_limited(bytes: &[u8], max_bytes: u64) -> Result<HeapProfile, ProfileError> {
    let p = read_proto(bytes, max_bytes)?;
    Ok(flatten(&p))
}

/// The profile.proto message in `bytes` (gzipped or not), inflated to at
/// most `max_bytes`, and checked as `go tool pprof` checks it.
pub fn read_proto(bytes: &[u8], max_bytes: u64) -> Result<Profile, ProfileError> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(ProfileError::Gzip)?;
        if out.len() as u64 > max_bytes {
            return Err(ProfileError::TooLarge(max_bytes));
        }
        out
    } else {
        if bytes.len() as u64 > max_bytes {
            return Err(ProfileError::TooLarge(max_bytes));
        }
        bytes.to_vec()
    };
    let p = Profile::decode(raw.as_slice()).map_err(|e| ProfileError::Decode(e.to_string()))?;
    validate(&p)?;
    Ok(p)
}

/// The consistency checks of pprof's `Profile.CheckValid` and string-table
/// decoding: every reference resolves, every sample has one value per
/// sample type, ids are non-zero and unique.
pub fn validate(p: &Profile) -> Result<(), ProfileError> {
    let bad = |m: String| Err(ProfileError::Invalid(m));
    let strings = p.string_table.len() as i64;
    if p.string_table.first().is_none_or(|s| !s.is_empty()) {
        return bad("string table does not start with the empty string".into());
    }
    let string = |what: &str, i: i64| {
        if (0..strings).contains(&i) {
            Ok(())
        } else {
            Err(ProfileError::Invalid(format!(
                "{what} refers to string {i} of {strings}"
            )))
        }
    };
    if p.sample_type.is_empty() && !p.sample.is_empty() {
        return bad("samples without sample types".into());
    }
    for t in p.sample_type.iter().chain(&p.period_type) {
        string("sample type", t.ty)?;
        string("sample type unit", t.unit)?;
    }
    for i in [p.drop_frames, p.keep_frames, p.default_sample_type] {
        string("profile field", i)?;
    }
    for c in &p.comment {
        string("comment", *c)?;
    }
    let unique = |what: &str, ids: &mut dyn Iterator<Item = u64>| {
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if id == 0 || !seen.insert(id) {
                return Err(ProfileError::Invalid(format!(
                    "{what} id {id} is zero or repeated"
                )));
            }
        }
        Ok(seen)
    };
    let mappings = unique("mapping", &mut p.mapping.iter().map(|m| m.id))?;
    let functions = unique("function", &mut p.function.iter().map(|f| f.id))?;
    let locations = unique("location", &mut p.location.iter().map(|l| l.id))?;
    for m in &p.mapping {
        string("mapping filename", m.filename)?;
        string("mapping build id", m.build_id)?;
    }
    for f in &p.function {
        string("function name", f.name)?;
        string("function system name", f.system_name)?;
        string("function file", f.filename)?;
    }
    for l in &p.location {
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return bad(format!(
                "location {} has unknown mapping {}",
                l.id, l.mapping_id
            ));
        }
        if let Some(line) = l
            .line
            .iter()
            .find(|ln| !functions.contains(&ln.function_id))
        {
            return bad(format!(
                "location {} has unknown function {}",
                l.id, line.function_id
            ));
        }
    }
    for (n, s) in p.sample.iter().enumerate() {
        if s.value.len() != p.sample_type.len() {
            return bad(format!(
                "sample {n} has {} values for {} sample types",
                s.value.len(),
                p.sample_type.len()
            ));
        }
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return bad(format!("sample {n} has unknown location {id}"));
        }
        for l in &s.label {
            string("label key", l.key)?;
            string("label value", l.str)?;
            string("label unit", l.num_unit)?;
        }
    }
    Ok(())
}

/// The profile's samples as stacks of names (checked by [`validate`]).
fn flatten(p: &Profile) -> HeapProfile {
    let s = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
    let functions: HashMap<u64, String> = p.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, Vec<String>> = p
        .location
        .iter()
        .map(|l| {
            let names = if l.line.is_empty() {
                vec![format!("{:#x}", l.address)]
            } else {
                l.line
                    .iter()
                    .map(|line| {
                        functions
                            .get(&line.function_id)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect()
            };
            (l.id, names)
        })
        .collect();
    let samples = p
        .sample
        .iter()
        .map(|smp| {
            let stack = smp
                .location_id
                .iter()
                .flat_map(|id| locations.get(id).cloned().unwrap_or_default())
                .collect();
            (stack, smp.value.clone())
        })
        .collect();
    let label = |smp: &pprof::protos::Sample, key: &str| {
        smp.label
            .iter()
            .find(|l| s(l.key) == key && s(l.num_unit) == "ms")
            .map(|l| l.num)
    };
    let ages = p
        .sample
        .iter()
        .map(|smp| Some((label(smp, "oldest_age")?, label(smp, "median_age")?)))
        .collect();
    HeapProfile {
        sample_types: p.sample_type.iter().map(|t| s(t.ty)).collect(),
        samples,
        ages,
    }
}

impl HeapProfile {
    /// Index of sample type `name`.
    pub fn index(&self, name: &str) -> Result<usize, ProfileError> {
        self.sample_types
            .iter()
            .position(|t| t == name)
            .ok_or_else(|| ProfileError::NoSampleType {
                wanted: name.to_string(),
                has: self.sample_types.join(", "),
            })
    }

    /// Sum of sample type `name` over all samples.
    pub fn total(&self, name: &str) -> Result<i64, ProfileError> {
        let i = self.index(name)?;
        Ok(self
            .samples
            .iter()
            .fold(0i64, |t, (_, v)| t.saturating_add(v[i])))
    }

    /// Values of sample type `i` summed per stack.
    fn by_stack(&self, i: usize) -> HashMap<&[String], i64> {
        self.by_stack_with_ages(i)
            .into_iter()
            .map(|(stack, (value, _))| (stack, value))
            .collect()
    }

    /// Values of sample type `i` summed per stack, with the stack's ages
    /// (the oldest of its samples', and the largest median).
    fn by_stack_with_ages(&self, i: usize) -> HashMap<&[String], (i64, Option<Ages>)> {
        let mut m: HashMap<&[String], (i64, Option<Ages>)> = HashMap::new();
        for (k, (stack, values)) in self.samples.iter().enumerate() {
            let entry = m.entry(stack.as_slice()).or_default();
            entry.0 = entry.0.saturating_add(values[i]);
            if let Some((oldest, median)) = self.ages.get(k).copied().flatten() {
                entry.1 = Some(
                    entry
                        .1
                        .map_or((oldest, median), |(o, m)| (o.max(oldest), m.max(median))),
                );
            }
        }
        m
    }
}

/// One row of `top`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TopRow {
    /// The function.
    pub function: String,
    /// Value where it is the leaf.
    pub flat: i64,
    /// Value of every stack it appears in.
    pub cum: i64,
    /// The heaviest stack with this leaf, innermost first.
    pub stack: Vec<String>,
    /// Age of the oldest live sample where it is the leaf, milliseconds.
    pub oldest_age_ms: Option<i64>,
    /// Median live-sample age of its heaviest stack, milliseconds.
    pub median_age_ms: Option<i64>,
}

/// The top `n` functions by flat value of sample type `name`.
pub fn top(p: &HeapProfile, name: &str, n: usize) -> Result<(Vec<TopRow>, i64), ProfileError> {
    let i = p.index(name)?;
    let mut rows: HashMap<&str, TopRow> = HashMap::new();
    let mut heaviest: HashMap<&str, i64> = HashMap::new();
    let mut total: i64 = 0;
    for (stack, (value, age)) in p.by_stack_with_ages(i) {
        total = total.saturating_add(value);
        let mut seen = std::collections::HashSet::new();
        for (depth, f) in stack.iter().enumerate() {
            if !seen.insert(f.as_str()) {
                continue;
            }
            let row = rows.entry(f).or_insert_with(|| TopRow {
                function: f.clone(),
                flat: 0,
                cum: 0,
                stack: Vec::new(),
                oldest_age_ms: None,
                median_age_ms: None,
            });
            row.cum = row.cum.saturating_add(value);
            if depth == 0 {
                row.flat = row.flat.saturating_add(value);
                let best = heaviest.entry(f).or_insert(i64::MIN);
                if value > *best {
                    *best = value;
                    row.stack = stack.to_vec();
                    row.median_age_ms = age.map(|a| a.1);
                }
                if let Some((oldest, _)) = age {
                    row.oldest_age_ms = Some(row.oldest_age_ms.map_or(oldest, |o| o.max(oldest)));
                }
            }
        }
    }
    let mut rows: Vec<TopRow> = rows.into_values().collect();
    rows.sort_by(|a, b| (b.flat, b.cum, &a.function).cmp(&(a.flat, a.cum, &b.function)));
    rows.truncate(n);
    Ok((rows, total))
}

/// One row of `diff`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiffRow {
    /// The site, innermost first.
    pub stack: Vec<String>,
    /// Value in the old profile.
    pub old: i64,
    /// Value in the new profile.
    pub new: i64,
    /// `new - old`.
    pub delta: i64,
}

/// Per-site change of sample type `name`, largest growth first.
pub fn diff(
    old: &HeapProfile,
    new: &HeapProfile,
    name: &str,
) -> Result<Vec<DiffRow>, ProfileError> {
    let (o, n) = (
        old.by_stack(old.index(name)?),
        new.by_stack(new.index(name)?),
    );
    let mut keys: Vec<&[String]> = o.keys().chain(n.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<DiffRow> = keys
        .into_iter()
        .map(|k| {
            let (old, new) = (
                o.get(k).copied().unwrap_or(0),
                n.get(k).copied().unwrap_or(0),
            );
            DiffRow {
                stack: k.to_vec(),
                old,
                new,
                delta: new.saturating_sub(old),
            }
        })
        .filter(|r| r.delta != 0)
        .collect();
    rows.sort_by(|a, b| b.delta.cmp(&a.delta).then_with(|| a.stack.cmp(&b.stack)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(samples: &[(&[&str], i64)]) -> HeapProfile {
        HeapProfile {
            ages: Vec::new(),
            sample_types: vec!["inuse_space".into()],
            samples: samples
                .iter()
                .map(|(s, v)| (s.iter().map(|f| f.to_string()).collect(), vec![*v]))
                .collect(),
        }
    }

    #[test]
    fn top_flat_and_cum() {
        let p = profile(&[
            (&["leak", "handler", "main"], 100),
            (&["leak", "other", "main"], 10),
            (&["small", "handler", "main"], 5),
        ]);
        let (rows, total) = top(&p, "inuse_space", 10).unwrap();
        assert_eq!(total, 115);
        assert_eq!(rows[0].function, "leak");
        assert_eq!((rows[0].flat, rows[0].cum), (110, 110));
        assert_eq!(rows[0].stack, vec!["leak", "handler", "main"]);
        let main = rows.iter().find(|r| r.function == "main").unwrap();
        assert_eq!((main.flat, main.cum), (0, 115));
        assert!(top(&p, "alloc_space", 1).is_err());
    }

    #[test]
    fn diff_orders_by_growth() {
        let old = profile(&[(&["a", "main"], 10), (&["b", "main"], 50)]);
        let new = profile(&[(&["a", "main"], 500), (&["b", "main"], 40), (&["c"], 1)]);
        let rows = diff(&old, &new, "inuse_space").unwrap();
        let deltas: Vec<i64> = rows.iter().map(|r| r.delta).collect();
        assert_eq!(deltas, vec![490, 1, -10]);
        assert_eq!(rows[0].stack, vec!["a", "main"]);
    }

    #[test]
    fn decodes_encoded_profiles() {
        let mut p = Profile {
            string_table: vec!["".into(), "inuse_space".into(), "bytes".into(), "f".into()],
            ..Profile::default()
        };
        p.sample_type
            .push(pprof::protos::ValueType { ty: 1, unit: 2 });
        p.function.push(pprof::protos::Function {
            id: 1,
            name: 3,
            ..Default::default()
        });
        p.location.push(pprof::protos::Location {
            id: 1,
            line: vec![pprof::protos::Line {
                function_id: 1,
                line: 0,
            }],
            ..Default::default()
        });
        p.sample.push(pprof::protos::Sample {
            location_id: vec![1],
            value: vec![42],
            label: vec![],
        });
        let raw = p.encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        for bytes in [raw.clone(), gz.finish().unwrap()] {
            let h = decode(&bytes).unwrap();
            assert_eq!(h.total("inuse_space").unwrap(), 42);
            assert_eq!(h.samples[0].0, vec!["f"]);
        }
        assert!(decode(b"\x1f\x8bxx").is_err());
    }

    fn one_sample_profile(values: Vec<i64>) -> Profile {
        Profile {
            string_table: vec!["".into(), "inuse_space".into(), "bytes".into(), "f".into()],
            sample_type: vec![
                pprof::protos::ValueType { ty: 1, unit: 2 },
                pprof::protos::ValueType { ty: 1, unit: 2 },
            ],
            function: vec![pprof::protos::Function {
                id: 1,
                name: 3,
                ..Default::default()
            }],
            location: vec![pprof::protos::Location {
                id: 1,
                line: vec![pprof::protos::Line {
                    function_id: 1,
                    line: 0,
                }],
                ..Default::default()
            }],
            sample: vec![pprof::protos::Sample {
                location_id: vec![1],
                value: values,
                label: vec![],
            }],
            ..Profile::default()
        }
    }

    #[test]
    fn malformed_profiles_are_errors_not_panics() {
        let short = one_sample_profile(vec![1]).encode_to_vec();
        let err = decode(&short).unwrap_err().to_string();
        assert!(err.contains("1 values for 2 sample types"), "{err}");
        let mut p = one_sample_profile(vec![1, 2]);
        p.sample[0].location_id = vec![9];
        assert!(
            decode(&p.encode_to_vec())
                .unwrap_err()
                .to_string()
                .contains("unknown location 9")
        );
        let mut p = one_sample_profile(vec![1, 2]);
        p.function[0].name = 99;
        assert!(
            decode(&p.encode_to_vec())
                .unwrap_err()
                .to_string()
                .contains("string 99")
        );
        let mut p = one_sample_profile(vec![1, 2]);
        p.location[0].line[0].function_id = 7;
        assert!(decode(&p.encode_to_vec()).is_err());
        let mut p = one_sample_profile(vec![1, 2]);
        p.string_table[0] = "x".into();
        assert!(decode(&p.encode_to_vec()).is_err());
    }

    #[test]
    fn inflation_is_bounded() {
        let raw = vec![0u8; 4 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        let err = decode_limited(&bomb, 1 << 20).unwrap_err();
        assert!(matches!(err, ProfileError::TooLarge(_)), "{err}");
    }

    #[test]
    fn totals_saturate_instead_of_wrapping() {
        let mut p = one_sample_profile(vec![i64::MAX, 1]);
        p.sample.push(p.sample[0].clone());
        let h = decode(&p.encode_to_vec()).unwrap();
        assert_eq!(h.total("inuse_space").unwrap(), i64::MAX);
        let (rows, total) = top(&h, "inuse_space", 5).unwrap();
        assert_eq!(total, i64::MAX);
        assert_eq!(rows[0].flat, i64::MAX);
        let rows = diff(&profile(&[(&["f"], i64::MIN)]), &h, "inuse_space").unwrap();
        assert_eq!(rows[0].delta, i64::MAX);
    }
}
