//! Property tests of the profile decoder (`heapprof_cli::profile`), which
//! reads whatever a file or a server hands it: arbitrary bytes, gzipped or
//! not, and well-formed protobuf that is not a consistent profile, never
//! make it panic; whatever it accepts is consistent; valid profiles keep
//! their totals. 256 cases each (CI-sized; `PROPTEST_CASES` does not
//! change it).

use std::io::Write;

use heapprof_cli::profile::{self, HeapProfile, ProfileError};
use pprof::protos::{
    Function, Label, Line, Location, Mapping, Message, Profile, Sample, ValueType,
};
use proptest::prelude::*;

const CASES: u32 = 256;
const LIMIT: u64 = 1 << 20;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Uses every reader of a decoded profile: what must not panic on
/// anything the decoder accepted.
fn exercise(h: &HeapProfile) {
    for name in &h.sample_types {
        let _ = h.total(name).unwrap();
        let _ = profile::top(h, name, 5).unwrap();
        let same = profile::diff(h, h, name).unwrap();
        assert!(same.is_empty(), "a profile differs from itself: {same:?}");
    }
    assert!(h.total("no such type").is_err());
}

/// What an accepted profile promises its readers.
fn assert_consistent(h: &HeapProfile) {
    for (stack, values) in &h.samples {
        assert_eq!(values.len(), h.sample_types.len(), "{stack:?}");
    }
    assert_eq!(h.ages.len(), h.samples.len());
}

/// An index into a string table of up to 8 entries, sometimes out of it.
fn index() -> impl Strategy<Value = i64> {
    -2i64..10
}

/// Profiles whose every field is well-formed protobuf but whose
/// references, ids and value counts are drawn at random: mostly not
/// consistent.
fn loose_profile() -> impl Strategy<Value = Profile> {
    let strings = (any::<bool>(), prop::collection::vec("[a-z_]{0,8}", 0..8));
    let types = prop::collection::vec((index(), index()), 0..4);
    let mappings = prop::collection::vec((0u64..4, index(), index()), 0..3);
    let functions = prop::collection::vec((0u64..6, index(), index()), 0..6);
    let locations = prop::collection::vec(
        (
            0u64..7,
            0u64..4,
            prop::collection::vec(0u64..7, 0..3),
            any::<u64>(),
        ),
        0..7,
    );
    let labels = prop::collection::vec((index(), index(), any::<i64>(), index()), 0..3);
    let samples = prop::collection::vec(
        (
            prop::collection::vec(0u64..8, 0..4),
            prop::collection::vec(any::<i64>(), 0..5),
            labels,
        ),
        0..8,
    );
    let fields = (
        index(),
        index(),
        index(),
        prop::collection::vec(index(), 0..2),
    );
    (
        strings, types, mappings, functions, locations, samples, fields,
    )
        .prop_map(
            |(
                (empty_first, strings),
                types,
                mappings,
                functions,
                locations,
                samples,
                (drop_frames, keep_frames, default_sample_type, comment),
            )| {
                let mut string_table = strings;
                if empty_first {
                    string_table.insert(0, String::new());
                }
                Profile {
                    string_table,
                    sample_type: types
                        .into_iter()
                        .map(|(ty, unit)| ValueType { ty, unit })
                        .collect(),
                    mapping: mappings
                        .into_iter()
                        .map(|(id, filename, build_id)| Mapping {
                            id,
                            filename,
                            build_id,
                            ..Default::default()
                        })
                        .collect(),
                    function: functions
                        .into_iter()
                        .map(|(id, name, filename)| Function {
                            id,
                            name,
                            filename,
                            ..Default::default()
                        })
                        .collect(),
                    location: locations
                        .into_iter()
                        .map(|(id, mapping_id, lines, address)| Location {
                            id,
                            mapping_id,
                            address,
                            line: lines
                                .into_iter()
                                .map(|function_id| Line {
                                    function_id,
                                    line: 1,
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    sample: samples
                        .into_iter()
                        .map(|(location_id, value, labels)| Sample {
                            location_id,
                            value,
                            label: labels
                                .into_iter()
                                .map(|(key, str, num, num_unit)| Label {
                                    key,
                                    str,
                                    num,
                                    num_unit,
                                })
                                .collect(),
                        })
                        .collect(),
                    drop_frames,
                    keep_frames,
                    default_sample_type,
                    comment,
                    ..Default::default()
                }
            },
        )
}

const TYPES: [&str; 4] = [
    "alloc_objects",
    "alloc_space",
    "inuse_objects",
    "inuse_space",
];

/// A consistent profile: `types` sample types, `functions` named
/// functions, and samples given as (stack of function indices, values).
fn valid_profile(types: usize, functions: usize, samples: &[PartSample]) -> Profile {
    let mut string_table = vec![String::new(), "bytes".into()];
    string_table.extend(TYPES[..types].iter().map(|t| t.to_string()));
    let first_name = string_table.len();
    string_table.extend((0..functions).map(|f| format!("f{f}")));
    Profile {
        sample_type: (0..types)
            .map(|t| ValueType {
                ty: 2 + t as i64,
                unit: 1,
            })
            .collect(),
        function: (0..functions)
            .map(|f| Function {
                id: f as u64 + 1,
                name: (first_name + f) as i64,
                ..Default::default()
            })
            .collect(),
        location: (0..functions)
            .map(|f| Location {
                id: f as u64 + 1,
                line: vec![Line {
                    function_id: f as u64 + 1,
                    line: 7,
                }],
                ..Default::default()
            })
            .collect(),
        sample: samples
            .iter()
            .map(|(stack, values)| Sample {
                location_id: stack.iter().map(|&f| f as u64 + 1).collect(),
                value: values.clone(),
                label: vec![],
            })
            .collect(),
        string_table,
        ..Default::default()
    }
}

/// A sample for [`valid_profile`]: a stack of function indices, values.
type PartSample = (Vec<usize>, Vec<i64>);
/// [`valid_profile`]'s arguments: sample types, functions, samples.
type Parts = (usize, usize, Vec<PartSample>);

/// [`Parts`] with values drawn from `values`.
fn parts_with(values: impl Strategy<Value = i64> + Clone) -> impl Strategy<Value = Parts> {
    (1usize..=4, 1usize..=6).prop_flat_map(move |(types, functions)| {
        let sample = (
            prop::collection::vec(0..functions, 1..5),
            prop::collection::vec(values.clone(), types),
        );
        (
            Just(types),
            Just(functions),
            prop::collection::vec(sample, 0..24),
        )
    })
}

/// [`parts_with`] values small enough that no sum overflows.
fn valid_parts() -> impl Strategy<Value = Parts> {
    parts_with(-(1i64 << 40)..(1i64 << 40))
}

/// A consistent profile with values anywhere in `i64`, then up to three
/// of the defects `go tool pprof` refuses: a sample with a value too many
/// or too few, an unknown location, function or mapping, a zero or
/// repeated id, a string index out of the table, a first string that is
/// not empty.
fn flawed_profile() -> impl Strategy<Value = Profile> {
    let flaw = (0u8..9, any::<prop::sample::Index>(), index());
    (parts_with(any::<i64>()), prop::collection::vec(flaw, 0..3)).prop_map(
        |((types, functions, samples), flaws)| {
            let mut p = valid_profile(types, functions, &samples);
            for (kind, at, i) in flaws {
                let n = p.sample.len().max(1);
                let sample = p.sample.get_mut(at.index(n));
                match (kind, sample) {
                    (0, Some(s)) => s.value.push(i),
                    (1, Some(s)) => {
                        s.value.pop();
                    }
                    (2, Some(s)) => s.location_id.push(99),
                    (3, _) => p.location[at.index(functions)].line[0].function_id = 42,
                    (4, _) => p.location[at.index(functions)].mapping_id = 7,
                    (5, _) => p.function[at.index(functions)].id = 0,
                    (6, _) => p.function.push(p.function[at.index(functions)].clone()),
                    (7, _) => {
                        p.function[at.index(functions)].name = i + p.string_table.len() as i64
                    }
                    (8, _) => p.string_table[0] = "x".into(),
                    _ => {}
                }
            }
            p
        },
    )
}

proptest! {
    // No regression files: an integration test has no source root for them.
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes, raw or behind a gzip header, never panic; a
    /// gzipped copy decodes as the bytes themselves do; and inflation
    /// stops at the limit.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let raw = profile::read_proto(&bytes, LIMIT);
        let mut fake_gzip = vec![0x1f, 0x8b];
        fake_gzip.extend_from_slice(&bytes);
        let _ = profile::read_proto(&fake_gzip, LIMIT);
        if let Ok(h) = profile::decode_limited(&bytes, LIMIT) {
            assert_consistent(&h);
            exercise(&h);
        }
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            let zipped = profile::read_proto(&gzip(&bytes), LIMIT);
            prop_assert_eq!(raw.is_ok(), zipped.is_ok());
            if let (Ok(a), Ok(b)) = (&raw, &zipped) {
                prop_assert_eq!(a, b);
            }
            if !bytes.is_empty() {
                let small = bytes.len() as u64 - 1;
                let too_large = |r| matches!(r, Err(ProfileError::TooLarge(n)) if n == small);
                prop_assert!(too_large(profile::read_proto(&bytes, small)));
                prop_assert!(too_large(profile::read_proto(&gzip(&bytes), small)));
            }
        }
    }

    /// Well-formed protobuf with random references, ids, value counts and
    /// values (any i64), or a consistent profile with a few defects, never
    /// panics the decoder or its readers; what is accepted is consistent.
    #[test]
    fn inconsistent_profiles_never_panic(
        p in prop_oneof![loose_profile(), flawed_profile()],
        zipped in any::<bool>(),
    ) {
        let mut bytes = p.encode_to_vec();
        if zipped {
            bytes = gzip(&bytes);
        }
        match profile::decode_limited(&bytes, LIMIT) {
            Ok(h) => {
                prop_assert_eq!(h.sample_types.len(), p.sample_type.len());
                prop_assert_eq!(h.samples.len(), p.sample.len());
                assert_consistent(&h);
                exercise(&h);
            }
            Err(e) => prop_assert!(
                matches!(e, ProfileError::Invalid(_) | ProfileError::Decode(_)),
                "{e}"
            ),
        }
    }

    /// A consistent profile, gzipped or not, decodes to its own sample
    /// types, stacks and values; its totals, `top`'s total and a diff
    /// against nothing add up to the exact sums.
    #[test]
    fn valid_profiles_round_trip_their_totals(
        (types, functions, samples) in valid_parts(),
        zipped in any::<bool>(),
    ) {
        let p = valid_profile(types, functions, &samples);
        let mut bytes = p.encode_to_vec();
        if zipped {
            bytes = gzip(&bytes);
        }
        let h = profile::decode_limited(&bytes, LIMIT).unwrap();
        prop_assert_eq!(&h.sample_types, &TYPES[..types].to_vec());
        prop_assert_eq!(h.samples.len(), samples.len());
        for ((stack, values), (want_stack, want_values)) in h.samples.iter().zip(&samples) {
            let names: Vec<String> = want_stack.iter().map(|f| format!("f{f}")).collect();
            prop_assert_eq!(stack, &names);
            prop_assert_eq!(values, want_values);
        }
        let nothing = valid_profile(types, functions, &[]);
        let nothing = profile::decode(&nothing.encode_to_vec()).unwrap();
        for (i, name) in TYPES[..types].iter().enumerate() {
            let exact: i128 = samples.iter().map(|(_, v)| i128::from(v[i])).sum();
            prop_assert_eq!(i128::from(h.total(name).unwrap()), exact);
            let (_, top_total) = profile::top(&h, name, 3).unwrap();
            prop_assert_eq!(i128::from(top_total), exact);
            let grown: i128 = profile::diff(&nothing, &h, name)
                .unwrap()
                .iter()
                .map(|r| i128::from(r.delta))
                .sum();
            prop_assert_eq!(grown, exact);
        }
    }
}
