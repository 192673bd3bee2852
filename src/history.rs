//! Growth history and leak suspects.
//!
//! A single profile shows what is big; a leak is what keeps growing and
//! never dies. [`start_history`] runs a background recorder (opt-in) that takes a
//! snapshot (counters only, no symbolization) every `interval` and keeps
//! each site's estimated in-use bytes over a sliding window of
//! `WINDOW_POINTS` points. [`leak_suspects`] fits a line to each site's
//! series (least squares over time) and ranks the sites that grew steadily:
//! slope in bytes per minute, steadiness as R². A site that allocates a lot
//! but frees it all stays flat and is never a suspect.
//!
//! Memory is bounded: at most `MAX_TRACKED_SITES` (2048) sites, the largest
//! at each point, each with at most `WINDOW_POINTS` (120) values.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::Frame;
use crate::alloc::reentrancy::untracked;

/// Points kept per site.
const WINDOW_POINTS: usize = 120;
/// Sites tracked at most.
const MAX_TRACKED_SITES: usize = 2048;
/// A suspect's fit must explain at least this much of the variance.
const MIN_R_SQUARED: f64 = 0.8;

struct Series {
    site: crate::Site,
    /// (seconds since recorder start, in-use bytes)
    points: VecDeque<(f64, f64)>,
}

struct Recorder {
    started: Instant,
    interval: Duration,
    series: HashMap<u32, Series>,
}

static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// Stops the recorder when dropped (or call [`HistoryGuard::stop`]).
pub struct HistoryGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HistoryGuard {
    /// Stops the recorder and waits for its thread; the history is kept.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for HistoryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts recording every `interval` (at least 10 ms) on a background
/// thread named `heapprof-history`. A second call restarts with the new
/// interval and an empty history.
///
/// # Panics
/// If the thread cannot be spawned (`heapprof:` message).
pub fn start_history(interval: Duration) -> HistoryGuard {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn reset_in_child() {
        crate::alloc::fork::reset_mutex(&RECORDER, || None);
    }
    crate::alloc::fork::on_child(&REGISTERED, reset_in_child);
    let interval = interval.max(Duration::from_millis(10));
    *RECORDER.lock() = Some(Recorder {
        started: Instant::now(),
        interval,
        series: HashMap::new(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("heapprof-history".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                record_now();
                std::thread::park_timeout(interval);
            }
        })
        .expect("heapprof: cannot spawn the history thread");
    HistoryGuard {
        stop,
        thread: Some(thread),
    }
}

/// Records one point now (the recorder thread calls this).
fn record_now() {
    untracked(|| {
        let snap = crate::snapshot();
        let mut guard = RECORDER.lock();
        let Some(rec) = guard.as_mut() else { return };
        let t = rec.started.elapsed().as_secs_f64();
        let mut sites: Vec<&crate::Site> = snap.sites().iter().collect();
        sites.sort_by_key(|s| std::cmp::Reverse(s.inuse_bytes));
        for site in sites {
            if !rec.series.contains_key(&site.id()) && rec.series.len() >= MAX_TRACKED_SITES {
                continue;
            }
            let series = rec.series.entry(site.id()).or_insert_with(|| Series {
                site: site.clone(),
                points: VecDeque::with_capacity(WINDOW_POINTS),
            });
            series.site = site.clone();
            if series.points.len() == WINDOW_POINTS {
                series.points.pop_front();
            }
            series.points.push_back((t, site.inuse_bytes as f64));
        }
    });
}

/// A site whose in-use bytes grew steadily over the window.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeakSuspect {
    /// Site id (stable for the process's life).
    pub site_id: u32,
    /// The symbolized, trimmed stack, innermost first.
    pub frames: Vec<Frame>,
    /// The site's labels.
    pub labels: Vec<(String, String)>,
    /// Growth rate of estimated in-use bytes, bytes per minute.
    pub slope_bytes_per_minute: f64,
    /// How well a straight line explains the growth (1 = perfectly steady).
    pub r_squared: f64,
    /// In-use bytes at the last point.
    pub inuse_bytes: i64,
    /// In-use bytes gained between the first and last point of the window.
    pub growth_bytes: i64,
    /// Points in the window.
    pub points: usize,
    /// Time the window covers.
    pub window: Duration,
}

/// Heap bytes the recorder holds, approximately: each tracked site's copy
/// and its points (capacity included). Not sampled (the recorder works
/// under the reentrancy guard).
pub(crate) fn heap_bytes() -> u64 {
    let guard = RECORDER.lock();
    let Some(rec) = guard.as_ref() else { return 0 };
    let per_entry = std::mem::size_of::<(u32, Series)>() + 8;
    rec.series
        .values()
        .map(|s| {
            let labels: usize = s
                .site
                .labels()
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity() + 48)
                .sum();
            per_entry + s.points.capacity() * std::mem::size_of::<(f64, f64)>() + labels
        })
        .sum::<usize>() as u64
}

/// The recorder's interval, if it was started.
pub fn history_interval() -> Option<Duration> {
    RECORDER.lock().as_ref().map(|r| r.interval)
}

/// Sites that grew steadily over the window, fastest first. A site
/// qualifies with at least 4 points, R² ≥ 0.8, and growth
/// above the noise: at least 8 sample periods (`8 × sample rate` bytes),
/// so that a handful of samples cannot make a suspect.
pub fn leak_suspects() -> Vec<LeakSuspect> {
    untracked(|| {
        let noise = 8.0 * crate::sample_rate().max(1) as f64;
        let guard = RECORDER.lock();
        let Some(rec) = guard.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<LeakSuspect> =
            rec.series
                .values()
                .filter_map(|s| {
                    let (slope, r2) = fit(&s.points)?;
                    let first = s.points.front()?;
                    let last = s.points.back()?;
                    let growth = last.1 - first.1;
                    let per_minute = slope * 60.0;
                    (s.points.len() >= 4 && r2 >= MIN_R_SQUARED && growth >= noise && slope > 0.0)
                        .then(|| LeakSuspect {
                            site_id: s.site.id(),
                            frames: s.site.frames(),
                            labels: s.site.labels().to_vec(),
                            slope_bytes_per_minute: per_minute,
                            r_squared: r2,
                            inuse_bytes: last.1 as i64,
                            growth_bytes: growth as i64,
                            points: s.points.len(),
                            window: Duration::from_secs_f64((last.0 - first.0).max(0.0)),
                        })
                })
                .collect();
        out.sort_by(|a, b| {
            b.slope_bytes_per_minute
                .total_cmp(&a.slope_bytes_per_minute)
        });
        out
    })
}

/// Least-squares slope (per second) and R² of `points`; `None` with fewer
/// than 2 points or no spread in time.
pub(crate) fn fit(points: &VecDeque<(f64, f64)>) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if n < 2.0 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in points {
        sxx += (x - mx) * (x - mx);
        sxy += (x - mx) * (y - my);
        syy += (y - my) * (y - my);
    }
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        0.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    Some((slope, r2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_finds_steady_growth_and_rejects_noise() {
        let line: VecDeque<_> = (0..10)
            .map(|i| (i as f64, 100.0 * i as f64 + 5.0))
            .collect();
        let (slope, r2) = fit(&line).unwrap();
        assert!((slope - 100.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9);
        let flat: VecDeque<_> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 10.0 } else { 12.0 }))
            .collect();
        let (_, r2) = fit(&flat).unwrap();
        assert!(r2 < 0.2, "{r2}");
        assert!(fit(&VecDeque::from(vec![(1.0, 1.0)])).is_none());
    }
}
