//! CPU profiles: where the process spends its CPU time, the way Go's
//! `/debug/pprof/profile` answers.
//!
//! [`cpu_profile`] samples every thread that runs at [`FREQUENCY_HZ`] per
//! second of CPU time (`sampler`: the kernel's profiling timer and a
//! `SIGPROF` handler that walks the interrupted stack into a fixed ring),
//! drains the ring every [`DRAIN_EVERY`] into counts per distinct stack,
//! and when the window ends stops the timer, symbolizes the stacks with
//! the bounded symbolizer and encodes the profile: sample types
//! `samples`/`count` and `cpu`/`nanoseconds`, period the sampling interval.
//!
//! # Memory
//! While it runs a profile holds the ring (about 270 KiB) and one count per
//! distinct stack, at most [`MAX_STACKS`] (further stacks are counted in
//! one `[heapprof: too many stacks]` sample); afterwards nothing. The
//! `pprof` crate's profiler, used before, keeps a 65 MiB collector for the
//! life of the process after its first profile and cannot be told not to;
//! this one costs a few MiB while it runs and gives them back.
//!
//! One CPU profile runs at a time in the process ([`CpuProfileError::Busy`]
//! says when the running one ends). Each is admitted like any profile build
//! ([`crate::admit`]).

mod sampler;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use pprof::protos;

use crate::alloc::reentrancy::untracked;
use crate::profile::symbolize::{self, Kept};
use crate::profile::writer::Writer;
use crate::{BuildKind, NoRoom};

/// Samples per second of CPU time, as Go's `runtime/pprof`.
pub const FREQUENCY_HZ: u32 = 100;
/// How often the ring is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often the process's mappings are re-read, so new threads' stacks
/// can be walked.
const LAYOUT_EVERY: Duration = Duration::from_secs(1);
/// Distinct stacks counted per profile.
pub const MAX_STACKS: usize = 4096;
const TOO_MANY_STACKS: &str = "[heapprof: too many stacks]";

/// Why a CPU profile was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpuProfileError {
    /// Another CPU profile is running in this process.
    #[error("a CPU profile is already being taken in this process (until about {} s from now)", remaining.as_secs().max(1))]
    Busy {
        /// Until the running one ends, about.
        remaining: Duration,
    },
    /// Not enough memory left for it.
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    /// `SIGPROF` or the profiling timer is in someone else's hands.
    #[error("cannot sample: {0}")]
    Sampling(String),
}

/// The end of the running profile, if one runs.
static RUNNING: Mutex<Option<Instant>> = Mutex::new(None);

/// Profiles the whole process for `duration`, blocking the caller, and
/// returns the gzipped profile.proto.
pub fn cpu_profile(duration: Duration) -> Result<Vec<u8>, CpuProfileError> {
    let _turn = Turn::take(duration)?;
    let admission = crate::admit(BuildKind::Cpu)?;
    let started = SystemTime::now();
    let mut stacks: HashMap<Box<[usize]>, u64> = HashMap::new();
    let mut overflow = 0u64;
    let dropped;
    {
        let mut sampling = untracked(|| sampler::Sampling::start(FREQUENCY_HZ))
            .map_err(|e| CpuProfileError::Sampling(error_chain(&e)))?;
        let end = Instant::now() + duration;
        let mut next_layout = Instant::now() + LAYOUT_EVERY;
        loop {
            let now = Instant::now();
            untracked(|| {
                sampling.ring().drain(|stack| {
                    if let Some(n) = stacks.get_mut(stack) {
                        *n += 1;
                    } else if stacks.len() < MAX_STACKS {
                        stacks.insert(stack.into(), 1);
                    } else {
                        overflow += 1;
                    }
                })
            });
            if now >= end {
                break;
            }
            if now >= next_layout {
                untracked(|| sampling.refresh_layout());
                next_layout = now + LAYOUT_EVERY;
            }
            std::thread::sleep(DRAIN_EVERY.min(end - now));
        }
        dropped = sampling.ring().dropped();
    }
    let profile = untracked(|| {
        encode(
            &stacks,
            overflow,
            dropped,
            started,
            duration,
            admission.symbolize(),
        )
    });
    Ok(profile)
}

/// The process's one CPU profile at a time.
struct Turn;

impl Turn {
    fn take(duration: Duration) -> Result<Turn, CpuProfileError> {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(end) = *running {
            return Err(CpuProfileError::Busy {
                remaining: end.saturating_duration_since(Instant::now()),
            });
        }
        *running = Some(Instant::now() + duration);
        Ok(Turn)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The gzipped profile of `stacks` (counts per stack, innermost first).
fn encode(
    stacks: &HashMap<Box<[usize]>, u64>,
    overflow: u64,
    dropped: u64,
    started: SystemTime,
    duration: Duration,
    symbolize: bool,
) -> Vec<u8> {
    let period = 1_000_000_000 / i64::from(FREQUENCY_HZ);
    let resolved = if symbolize {
        symbolize::resolve_all(stacks.keys().flat_map(|s| s.iter().copied()))
    } else {
        HashMap::new()
    };
    let mut w = Writer::new();
    let samples = w.value_type("samples", "count");
    let cpu = w.value_type("cpu", "nanoseconds");
    let mut comment = Vec::new();
    if dropped > 0 {
        comment.push(w.string(&format!(
            "heapprof: {dropped} samples dropped (the ring was full)"
        )));
    }
    w.emit(protos::Profile {
        sample_type: vec![samples, cpu.clone()],
        period_type: Some(cpu),
        period,
        time_nanos: started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        duration_nanos: duration.as_nanos() as i64,
        comment,
        ..Default::default()
    });
    let sample = |w: &mut Writer, location_id: Vec<u64>, n: u64| {
        w.emit(protos::Profile {
            sample: vec![protos::Sample {
                location_id,
                value: vec![n as i64, n as i64 * period],
                label: Vec::new(),
            }],
            ..Default::default()
        })
    };
    for (stack, &n) in stacks {
        let location_id = stack
            .iter()
            .map(|&ip| {
                let kept = Kept {
                    ip,
                    skip_inlined: 0,
                };
                w.location(kept, symbolize::frames_of(&resolved, kept))
            })
            .collect();
        sample(&mut w, location_id, n);
    }
    if overflow > 0 {
        let location = w.synthetic_location(TOO_MANY_STACKS);
        sample(&mut w, vec![location], overflow);
    }
    w.finish()
}
