//! A thread dump in Go's three goroutine-profile formats.
//!
//! - profile.proto, as `runtime/pprof` writes the goroutine profile:
//!   sample and period type `goroutine`/`count`, period 1, one sample of
//!   value 1 per thread, labelled with `thread_name` (string) and
//!   `thread_id` (number: pprof filters on it with `-tagfocus`, and
//!   Pyroscope, which turns string labels into series, does not multiply
//!   series by thread); locations symbolized in process, one Line per
//!   inlining level; the mapping table from `/proc/self/maps`.
//! - `debug=1`: `goroutine profile: total N`, then one record per distinct
//!   stack, `COUNT @ ADDR...` and a `#\tADDR\tfunction+0xOFF\tfile:line`
//!   line per frame, which pprof's legacy parser reads (the header's first
//!   word names the sample type; `#` lines are comments to it).
//! - `debug=2`: Go's goroutine dump, one block per thread.
//!
//! A thread without a stack gets a synthetic frame naming the reason in
//! the profile and in the `debug=2` dump; the `debug=1` text lists them in
//! a comment block, since its records must carry addresses.

use std::collections::HashMap;
use std::fmt::Write as _;

use pprof::protos;

use super::{ThreadDump, ThreadStack};
use crate::profile::symbolize::{Kept, offset_in};
use crate::profile::writer::Writer;

/// Gzipped profile.proto.
pub(super) fn pprof(dump: &ThreadDump) -> Vec<u8> {
    let mut w = Writer::new();
    let goroutine = w.value_type("goroutine", "count");
    let mut comment = vec![w.string(
        "heapprof: one sample per OS thread (Rust has no goroutines): its stack when the \
         dump signal interrupted it, labelled thread_name and thread_id",
    )];
    if let Some(e) = &dump.error {
        comment.push(w.string(&format!("heapprof: no stacks captured: {e}")));
    }
    let time_nanos = dump
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    w.emit(protos::Profile {
        sample_type: vec![goroutine.clone()],
        time_nanos,
        period_type: Some(goroutine),
        period: 1,
        comment,
        ..Default::default()
    });
    let name_key = w.string("thread_name");
    let id_key = w.string("thread_id");
    for thread in &dump.threads {
        let location_id = match synthetic_frame(dump, thread) {
            Some(name) => vec![w.synthetic_location(&name)],
            None => thread
                .kept
                .iter()
                .map(|&k| w.location(k, dump.frames_of(k)))
                .collect(),
        };
        let label = vec![
            protos::Label {
                key: name_key,
                str: w.string(&thread.name),
                ..Default::default()
            },
            protos::Label {
                key: id_key,
                num: i64::from(thread.tid),
                ..Default::default()
            },
        ];
        w.emit(protos::Profile {
            sample: vec![protos::Sample {
                location_id,
                value: vec![1],
                label,
            }],
            ..Default::default()
        });
    }
    w.finish()
}

/// The frame shown for a thread without a stack.
fn synthetic_frame(dump: &ThreadDump, thread: &ThreadStack) -> Option<String> {
    match thread.missing {
        Some(missing) => Some(missing.frame_name(dump.signal)),
        None if thread.kept.is_empty() => Some("[heapprof: empty stack]".to_owned()),
        None => None,
    }
}

/// Go's `debug=1` text.
pub(super) fn grouped(dump: &ThreadDump) -> String {
    // Kept is not Hash; its two fields are.
    let key = |t: &ThreadStack| -> Vec<(usize, usize)> {
        t.kept.iter().map(|k| (k.ip, k.skip_inlined)).collect()
    };
    let mut groups: HashMap<Vec<(usize, usize)>, Vec<&ThreadStack>> = HashMap::new();
    let mut without: Vec<&ThreadStack> = Vec::new();
    for thread in &dump.threads {
        if synthetic_frame(dump, thread).is_some() {
            without.push(thread);
        } else {
            groups.entry(key(thread)).or_default().push(thread);
        }
    }
    let mut groups: Vec<(&[Kept], Vec<&ThreadStack>)> = groups
        .into_values()
        .map(|threads| (threads[0].kept.as_slice(), threads))
        .collect();
    groups.sort_by_key(|(_, threads)| (std::cmp::Reverse(threads.len()), threads[0].tid));

    let mut out = String::new();
    let _ = writeln!(out, "goroutine profile: total {}", dump.threads.len());
    for (kept, threads) in &groups {
        let _ = write!(out, "{} @", threads.len());
        for k in *kept {
            let _ = write!(out, " {:#x}", k.ip);
        }
        out.push('\n');
        let _ = writeln!(out, "# threads: {}", names(threads));
        for &k in *kept {
            let call = k.ip.saturating_sub(1);
            let frames = dump.frames_of(k);
            if frames.is_empty() {
                let _ = writeln!(out, "#\t{call:#x}");
            }
            for f in frames {
                let _ = writeln!(
                    out,
                    "#\t{call:#x}\t{}+{:#x}\t{}:{}",
                    f.function,
                    offset_in(call, f),
                    f.file.as_deref().unwrap_or("?"),
                    f.line
                );
            }
        }
        out.push('\n');
    }
    if !without.is_empty() {
        let _ = writeln!(out, "# {} threads without a stack:", without.len());
        for thread in &without {
            let _ = writeln!(
                out,
                "# thread {} {:?}: {}",
                thread.tid,
                thread.name,
                synthetic_frame(dump, thread).unwrap_or_default()
            );
        }
    }
    if let Some(e) = &dump.error {
        let _ = writeln!(out, "# heapprof: no stacks captured: {e}");
    }
    out
}

/// `name (xN), other` for a group, most common name first.
fn names(threads: &[&ThreadStack]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for t in threads {
        match counts.iter_mut().find(|(n, _)| *n == t.name) {
            Some((_, c)) => *c += 1,
            None => counts.push((&t.name, 1)),
        }
    }
    counts.sort_by_key(|&(n, c)| (std::cmp::Reverse(c), n));
    counts
        .iter()
        .map(|(n, c)| {
            if *c > 1 {
                format!("{n:?} (x{c})")
            } else {
                format!("{n:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `debug=2` dump.
pub(super) fn per_thread(dump: &ThreadDump) -> String {
    let mut out = String::new();
    for thread in &dump.threads {
        let _ = writeln!(
            out,
            "thread {} {:?} [{}]:",
            thread.tid, thread.name, thread.state
        );
        if let Some(name) = synthetic_frame(dump, thread) {
            let _ = writeln!(out, "{name}");
        }
        for &k in &thread.kept {
            let call = k.ip.saturating_sub(1);
            let frames = dump.frames_of(k);
            if frames.is_empty() {
                let _ = writeln!(out, "{call:#x}\n\t?");
            }
            for f in frames {
                let _ = writeln!(
                    out,
                    "{}\n\t{}:{} +{:#x}",
                    f.function,
                    f.file.as_deref().unwrap_or("?"),
                    f.line,
                    offset_in(call, f)
                );
            }
        }
        out.push('\n');
    }
    if let Some(e) = &dump.error {
        let _ = writeln!(out, "heapprof: no stacks captured: {e}");
    }
    out
}
