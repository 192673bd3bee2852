//! Naming an unsymbolized profile outside the process that took it.
//!
//! A process with too little memory left serves profiles of addresses and
//! mappings with build IDs (`heapprof::admit`). Here each mapping is
//! matched with a file by build ID (the file given with `--binary`, the
//! mapping's own path, or a debug file `.build-id/xx/yyyy.debug` below
//! `/usr/lib/debug` or a `--debug-dir`), its addresses are named with the
//! same resolver and trimming the process would have used
//! (`heapprof::offline`), and the profile is rewritten: lines on each
//! location, plumbing trimmed from the top of each sample, `drop_frames`
//! cleared, and a comment saying where the names came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use heapprof::Frame;
use pprof::protos::{Function, Line, Location, Profile};

/// Errors of naming a profile.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// No file with the main binary's build ID was found.
    #[error(
        "no file matches the build ID {build_id} of {path} (tried: {tried}); \
         pass --binary PATH or --debug-dir DIR"
    )]
    NoBinary {
        /// The mapping's file, as the process saw it.
        path: String,
        /// Its build ID.
        build_id: String,
        /// The files looked at.
        tried: String,
    },
}

/// Whether `p` has locations with an address but no lines.
pub fn is_unsymbolized(p: &Profile) -> bool {
    p.location
        .iter()
        .any(|l| l.address != 0 && l.line.is_empty())
}

/// Names `p`'s unnamed locations from `binaries` and `debug_dirs` (and the
/// files the mappings name), trims each sample and marks the profile.
/// Returns the files used.
pub fn name(
    p: &mut Profile,
    binaries: &[PathBuf],
    debug_dirs: &[PathBuf],
) -> Result<Vec<String>, NameError> {
    let string = |p: &Profile, i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
    let mut used = Vec::new();
    let mut named: HashMap<u64, Vec<Frame>> = HashMap::new();
    for (index, m) in p.mapping.iter().enumerate() {
        let unnamed: Vec<&Location> = p
            .location
            .iter()
            .filter(|l| l.mapping_id == m.id && l.line.is_empty() && l.address != 0)
            .collect();
        if unnamed.is_empty() {
            continue;
        }
        let (path, build_id) = (string(p, m.filename), string(p, m.build_id));
        let Some(file) = find_file(&path, &build_id, binaries, debug_dirs) else {
            if index == 0 {
                return Err(NameError::NoBinary {
                    tried: candidates(&path, &build_id, binaries, debug_dirs)
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    path,
                    build_id,
                });
            }
            continue; // a library without a file here: left unnamed
        };
        let offsets: Vec<u64> = unnamed
            .iter()
            .map(|l| l.address - m.memory_start + m.file_offset)
            .collect();
        let Some(frames) = heapprof::offline::name_file_offsets(&file, &offsets) else {
            continue;
        };
        for (l, frames) in unnamed.iter().zip(frames) {
            named.insert(l.id, frames);
        }
        used.push(file);
    }
    apply(p, &named);
    Ok(used)
}

/// The files that may hold the mapping `path` with `build_id`, in order.
fn candidates(
    path: &str,
    build_id: &str,
    binaries: &[PathBuf],
    debug_dirs: &[PathBuf],
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = binaries.to_vec();
    out.push(PathBuf::from(path));
    if build_id.len() > 2 {
        let rel = format!(".build-id/{}/{}.debug", &build_id[..2], &build_id[2..]);
        for dir in debug_dirs
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/usr/lib/debug")])
        {
            out.push(dir.join(&rel));
        }
    }
    out
}

/// The first candidate whose build ID is `build_id` (any readable one if
/// the mapping has no build ID).
fn find_file(
    path: &str,
    build_id: &str,
    binaries: &[PathBuf],
    debug_dirs: &[PathBuf],
) -> Option<String> {
    candidates(path, build_id, binaries, debug_dirs)
        .into_iter()
        .filter(|c| c.is_file())
        .map(|c| c.display().to_string())
        .find(|c| build_id.is_empty() || heapprof::sys::build_id::build_id(c) == build_id)
}

/// Writes `named` (location id -> frames, innermost first) into `p`, trims
/// every sample and marks the profile as named.
fn apply(p: &mut Profile, named: &HashMap<u64, Vec<Frame>>) {
    let mut strings: HashMap<String, i64> = p
        .string_table
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i as i64))
        .collect();
    let mut functions: HashMap<(i64, i64, i64), u64> = p
        .function
        .iter()
        .map(|f| ((f.name, f.system_name, f.filename), f.id))
        .collect();
    let mut next_function = p.function.iter().map(|f| f.id).max().unwrap_or(0) + 1;
    for loc in p.location.iter_mut().filter(|l| named.contains_key(&l.id)) {
        let mut lines = Vec::new();
        for f in &named[&loc.id] {
            let key = (
                intern_in(&mut p.string_table, &mut strings, &f.function),
                intern_in(
                    &mut p.string_table,
                    &mut strings,
                    f.system_name.as_deref().unwrap_or(&f.function),
                ),
                intern_in(
                    &mut p.string_table,
                    &mut strings,
                    f.file.as_deref().unwrap_or(""),
                ),
            );
            let id = *functions.entry(key).or_insert_with(|| {
                let id = next_function;
                next_function += 1;
                p.function.push(Function {
                    id,
                    name: key.0,
                    system_name: key.1,
                    filename: key.2,
                    start_line: 0,
                });
                id
            });
            lines.push(Line {
                function_id: id,
                line: i64::from(f.line),
            });
        }
        loc.line = lines;
    }
    trim_samples(p);
    for m in &mut p.mapping {
        let located = p.location.iter().filter(|l| l.mapping_id == m.id);
        let all_named = located.clone().all(|l| !l.line.is_empty());
        m.has_functions = all_named;
        m.has_filenames = all_named;
        m.has_line_numbers = all_named;
        m.has_inline_frames = all_named;
    }
    p.drop_frames = 0;
    let note = "heapprof: named outside the process by `heapprof pprof-heap`";
    let note = intern_in(&mut p.string_table, &mut strings, note);
    let unsymbolized: Vec<i64> = p
        .comment
        .iter()
        .copied()
        .filter(|&c| {
            p.string_table
                .get(c as usize)
                .is_some_and(|s| s.contains("unsymbolized"))
        })
        .collect();
    p.comment.retain(|c| !unsymbolized.contains(c));
    p.comment.push(note);
}

fn intern_in(table: &mut Vec<String>, strings: &mut HashMap<String, i64>, s: &str) -> i64 {
    *strings.entry(s.to_owned()).or_insert_with(|| {
        table.push(s.to_owned());
        table.len() as i64 - 1
    })
}

/// Trims the profiler's frames and the allocation plumbing from the top of
/// every sample, as a profile named in process is trimmed.
fn trim_samples(p: &mut Profile) {
    let string = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
    let functions: HashMap<u64, (String, String)> = p
        .function
        .iter()
        .map(|f| (f.id, (string(f.name), string(f.filename))))
        .collect();
    let frames: HashMap<u64, Vec<Frame>> = p
        .location
        .iter()
        .map(|l| {
            let frames = l
                .line
                .iter()
                .filter_map(|line| functions.get(&line.function_id))
                .map(|(name, file)| frame(name, file))
                .collect();
            (l.id, frames)
        })
        .collect();
    let mut next_location = p.location.iter().map(|l| l.id).max().unwrap_or(0) + 1;
    let mut partial: HashMap<(u64, usize), u64> = HashMap::new();
    let mut added = Vec::new();
    for sample in &mut p.sample {
        let ids = &sample.location_id;
        let (first, skip) = heapprof::offline::trim_point(ids.len(), |i| {
            frames.get(&ids[i]).map(Vec::as_slice).unwrap_or(&[])
        });
        if first >= ids.len() {
            continue;
        }
        let mut kept = ids[first..].to_vec();
        if skip > 0 {
            let id = *partial.entry((kept[0], skip)).or_insert_with(|| {
                let original = p.location.iter().find(|l| l.id == kept[0]);
                let mut l = original.cloned().unwrap_or_default();
                l.id = next_location;
                l.line = l.line.split_off(skip.min(l.line.len()));
                next_location += 1;
                added.push(l);
                next_location - 1
            });
            kept[0] = id;
        }
        sample.location_id = kept;
    }
    p.location.extend(added);
}

/// A frame for trimming: only the name and file matter.
fn frame(function: &str, file: &str) -> Frame {
    heapprof::offline::frame(function, (!file.is_empty()).then_some(file))
}
