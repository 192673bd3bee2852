//! Which allocations are sampled: a Poisson process over allocated bytes.
//!
//! Each thread counts down the bytes left until its next sample point
//! (`bytes_until_sample`). Gaps between sample points are exponentially
//! distributed with mean `rate` bytes, so sample points form a Poisson process
//! over the byte stream, as in Go's `runtime.MemProfileRate` and tcmalloc.
//! An allocation of `s` bytes is sampled when a sample point falls inside it,
//! which happens with probability
//!
//! ```text
//! p(s) = 1 - exp(-s / rate)
//! ```
//!
//! independently of every other allocation (the process is memoryless, so a
//! fresh gap drawn after each sample leaves the distribution unchanged).
//! Each sampled allocation then stands for `1 / p(s)` allocations and
//! `s / p(s)` bytes: [`weight_fx`] computes that per allocation, which is
//! unbiased for every mix of sizes. Go's `scaleHeapSample` applies the same
//! formula once per call site with the site's average size, which is biased
//! when a site allocates mixed sizes; per-allocation weights are not.
//!
//! The fast path is one thread-local subtract and a branch: no lock, no
//! syscall, no allocation. Everything else (seeding, drawing gaps, noticing a
//! rate change, the reentrancy check) is in the `#[cold]` crossing path,
//! which runs once per sample point.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use super::config;
use super::reentrancy::Reentrancy;

/// While sampling is off, threads re-check the rate after this many bytes.
const OFF_RECHECK_BYTES: i64 = 1 << 20;

/// Fixed-point scale of object weights: `weight_fx = weight * 256`.
pub(crate) const WEIGHT_ONE: u64 = 256;

struct ThreadSampler {
    /// Bytes left before the next sample point; `<= 0` means crossed.
    bytes_until_sample: Cell<i64>,
    /// xorshift64* state; 0 means not seeded yet.
    rng: Cell<u64>,
    /// `config::rate_epoch()` when the current gap was drawn.
    epoch: Cell<u32>,
}

thread_local! {
    static SAMPLER: ThreadSampler = const {
        ThreadSampler {
            bytes_until_sample: Cell::new(0),
            rng: Cell::new(0),
            epoch: Cell::new(0),
        }
    };
}

/// Decides whether an allocation of `size` bytes is sampled.
///
/// Returns the sample rate the decision was made with, or 0 for "not
/// sampled": [`crossed`], then [`on_crossing`] if it was.
#[cfg(test)]
fn should_sample(size: usize) -> u64 {
    if crossed(size) { on_crossing(size) } else { 0 }
}

/// Counts an allocation of `size` bytes against the thread's gap to its
/// next sample point; returns whether it reached the point, in which case
/// the caller must ask [`on_crossing`]. A subtract and a branch: the
/// whole unsampled path, which `Profiler` keeps free of calls, so that
/// its callers save no registers for it.
#[inline(always)]
pub(crate) fn crossed(size: usize) -> bool {
    SAMPLER
        .try_with(|s| {
            let left = s.bytes_until_sample.get().wrapping_sub(size as i64);
            s.bytes_until_sample.set(left);
            left <= 0
        })
        .unwrap_or(false)
}

/// The slow path, at a sample point (or on a thread's first allocation):
/// returns the sample rate if the allocation of `size` bytes that
/// [`crossed`] is sampled, else 0.
#[cold]
#[inline(never)]
pub(crate) fn on_crossing(size: usize) -> u64 {
    if Reentrancy::is_active() {
        // The profiler's own allocation: never sampled. The counter stays
        // crossed, so the next allocation of the user's code is sampled.
        return 0;
    }
    SAMPLER
        .try_with(|s| {
            let rate = config::sample_rate();
            if rate == 0 {
                s.bytes_until_sample.set(OFF_RECHECK_BYTES);
                return 0;
            }
            if rate == 1 {
                // Every allocation: keep the counter at the crossing point.
                s.bytes_until_sample.set(0);
                return 1;
            }
            let epoch = config::rate_epoch();
            if s.rng.get() == 0 || s.epoch.get() != epoch {
                // First allocation of this thread, or the rate changed: start
                // a fresh Poisson process and judge this allocation by it.
                if s.rng.get() == 0 {
                    s.rng.set(seed_for_thread(s as *const ThreadSampler as u64));
                }
                s.epoch.set(epoch);
                let left = draw_gap(&s.rng, rate) - size as i64;
                s.bytes_until_sample.set(left);
                if left > 0 {
                    return 0;
                }
            }
            s.bytes_until_sample.set(draw_gap(&s.rng, rate));
            rate
        })
        .unwrap_or(0)
}

/// Makes the calling thread redraw its gap at its next allocation (used by
/// `set_sample_rate`).
pub(crate) fn reset_current_thread() {
    let _ = SAMPLER.try_with(|s| s.bytes_until_sample.set(0));
}

/// Exponentially distributed gap with mean `rate` bytes, at least 1.
fn draw_gap(rng: &Cell<u64>, rate: u64) -> i64 {
    let k = constants();
    let u = next_unit(rng);
    let gap = minus_ln_unit(u) * as_f64(rate);
    // Cap far from i64 overflow; the cap is ~2^40 times the mean away.
    // (`max` first: it turns a NaN into 1.)
    let gap = gap.max(k.one).min(k.gap_cap);
    // SAFETY: `gap` is finite and in [1, i64::MAX / 4], so it converts
    // exactly after truncation (a checked `as` would read the range from
    // the constant pool).
    unsafe { gap.to_int_unchecked::<i64>() }
}

/// The floating-point constants of the sampled path, together. Left to
/// the compiler they are entries of the binary's constant pool, spread
/// over half a dozen cache lines that are cold at every sample point
/// (cachegrind counted 7 L1 misses a sample in `on_crossing` for them);
/// read through [`constants`] they are three lines, the first two all a
/// gap needs.
#[repr(C, align(64))]
struct Constants {
    /// 1/17, 1/15, ..., 1/3, 1: the odd series of `atanh`.
    odd: [f64; 9],
    one: f64,
    half: f64,
    two: f64,
    sqrt_2: f64,
    ln_2: f64,
    /// 2^-53: a 53-bit integer to (0, 1].
    unit: f64,
    /// Largest gap, bytes.
    gap_cap: f64,
    /// 1/2, 1/6, 1/24, 1/120: the series of `1 - exp(-x)`.
    exp: [f64; 4],
    /// Where that series stops being used: x = 1/16.
    series_below: f64,
    weight_one: f64,
}

static CONSTANTS: Constants = Constants {
    odd: [
        1.0 / 17.0,
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ],
    one: 1.0,
    half: 0.5,
    two: 2.0,
    sqrt_2: core::f64::consts::SQRT_2,
    ln_2: core::f64::consts::LN_2,
    unit: 1.0 / (1u64 << 53) as f64,
    gap_cap: (i64::MAX / 4) as f64,
    exp: [1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0],
    series_below: 1.0 / 16.0,
    weight_one: WEIGHT_ONE as f64,
};

/// [`CONSTANTS`], through a reference the optimiser cannot see into, so
/// that it loads them from there instead of copying them into its pool.
#[inline(always)]
fn constants() -> &'static Constants {
    core::hint::black_box(&CONSTANTS)
}

/// `x` as `f64`, for `x < 2^63`: a signed conversion is one instruction,
/// an unsigned one reads two more pool constants.
#[inline(always)]
fn as_f64(x: u64) -> f64 {
    x as i64 as f64
}

/// `-ln(u)` for `u` in [2^-53, 1], within 1e-14 of `-f64::ln`. The
/// sampler's own, because libm's reads lookup tables that are cold cache
/// lines at every sample point: `u = m * 2^e` with `m` in
/// [sqrt(1/2), sqrt(2)), and `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`,
/// `|s| < 0.172`, by its odd series to s^17 (the next term is below 1e-15).
fn minus_ln_unit(u: f64) -> f64 {
    let k = constants();
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if m > k.sqrt_2 {
        m *= k.half;
        e += 1;
    }
    // Negated terms instead of a negated result: a sign flip of a float
    // reads a mask from the constant pool.
    let minus_s = (k.one - m) / (m + k.one);
    let s2 = minus_s * minus_s;
    let mut odd = k.odd[0];
    for c in &k.odd[1..] {
        odd = c + s2 * odd;
    }
    (-e) as f64 * k.ln_2 + k.two * minus_s * odd
}

/// Uniform in (0, 1], from xorshift64*.
fn next_unit(rng: &Cell<u64>) -> f64 {
    let mut x = rng.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng.set(x);
    let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    as_f64((r >> 11) + 1) * constants().unit
}

static THREAD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A non-zero seed, different per thread. With `HEAPPROF_SEED` set, threads
/// get seeds that depend only on it and on their creation order.
fn seed_for_thread(addr: u64) -> u64 {
    let n = THREAD_COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = match config::seed() {
        Some(seed) => seed,
        None => addr ^ super::clock::monotonic_ns().rotate_left(29),
    };
    let seed = splitmix64(base ^ splitmix64(n));
    if seed == 0 {
        0x9e37_79b9_7f4a_7c15
    } else {
        seed
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many allocations a sampled one of `size` bytes stands for, times
/// [`WEIGHT_ONE`]: `1 / (1 - exp(-size / rate))`, exactly 1 at rate 1.
///
/// Most sampled allocations are far smaller than the rate; for those
/// (`x = size / rate < 1/16`) the probability comes from its Taylor series
/// to x^5 (relative error below 2e-9, a hundred times finer than the
/// fixed point), without libm's `expm1` and its cold tables.
pub(crate) fn weight_fx(size: usize, rate: u64) -> u64 {
    if rate <= 1 {
        return WEIGHT_ONE;
    }
    let k = constants();
    let x = as_f64(size as u64) / as_f64(rate);
    let [c2, c6, c24, c120] = k.exp;
    let p = if x < k.series_below {
        x * (k.one - x * (c2 - x * (c6 - x * (c24 - x * c120))))
    } else {
        -(-x).exp_m1()
    };
    if p <= 0.0 {
        return WEIGHT_ONE * rate;
    }
    // Rounded to nearest; the weight is positive, so +0.5 and truncation
    // do it without a call to libm's `round`.
    (k.weight_one / p + k.half).max(k.weight_one) as u64
}

/// The variance one sample of `size` bytes with weight `weight_fx` adds to
/// an estimate of bytes, estimated from the sample itself: `size² · w ·
/// (w - 1)` with `w = 1 / p(size)` (see `profile::estimate`). 0 at rate 1.
pub(crate) fn sample_variance(size: u64, weight_fx: u64) -> f64 {
    variance_of(as_f64(size), as_f64(weight_fx) / constants().weight_one)
}

/// [`sample_variance`] for a sample that counts `bytes` (its size, or a
/// part of it such as its resident bytes) and stands for `weight`
/// allocations.
pub(crate) fn variance_of(bytes: f64, weight: f64) -> f64 {
    bytes * bytes * weight * (weight - constants().one).max(0.0)
}

/// Estimated bytes a sampled allocation of `size` stands for, given its
/// weight. The same inputs always give the same result, so the free of a
/// sample subtracts exactly what its allocation added.
pub(crate) fn weighted_bytes(weight_fx: u64, size: usize) -> u64 {
    let product = u128::from(weight_fx) * size as u128;
    ((product + u128::from(WEIGHT_ONE / 2)) / u128::from(WEIGHT_ONE)).min(u128::from(u64::MAX))
        as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_reads_two_cache_lines_of_constants() {
        assert_eq!(core::mem::align_of::<Constants>(), 64);
        assert_eq!(core::mem::offset_of!(Constants, exp), 128);
    }

    #[test]
    fn gaps_are_exponential_with_the_rate_as_mean() {
        let rng = Cell::new(12345);
        let rate = 4096u64;
        let n = 200_000;
        let mut sum = 0f64;
        let mut below_mean = 0;
        for _ in 0..n {
            let g = draw_gap(&rng, rate) as f64;
            sum += g;
            if g < rate as f64 {
                below_mean += 1;
            }
        }
        let mean = sum / n as f64;
        // Standard error of the mean is rate/sqrt(n) ~ 0.22% of the rate.
        assert!((mean / rate as f64 - 1.0).abs() < 0.015, "mean gap {mean}");
        // P(X < mean) = 1 - 1/e for an exponential distribution.
        let frac = below_mean as f64 / n as f64;
        assert!(
            (frac - (1.0 - (-1f64).exp())).abs() < 0.01,
            "fraction {frac}"
        );
    }

    #[test]
    fn the_logarithm_matches_libm() {
        let rng = Cell::new(99);
        let mut worst = 0f64;
        for u in (0..200_000).map(|_| next_unit(&rng)).chain([
            1.0,
            0.5,
            f64::EPSILON / 2.0,
            // Either side of the range reduction's boundary.
            core::f64::consts::FRAC_1_SQRT_2,
            core::f64::consts::FRAC_1_SQRT_2.next_down(),
        ]) {
            let (ours, libm) = (-minus_ln_unit(u), u.ln());
            worst = worst.max((ours - libm).abs() / libm.abs().max(1e-300));
            assert!(
                (ours - libm).abs() <= 1e-14 * libm.abs().max(1e-2),
                "ln({u}) = {ours}, libm {libm}"
            );
        }
        assert!(worst < 1e-12, "{worst}");
    }

    #[test]
    fn the_series_weight_matches_expm1() {
        let rate = 512 * 1024u64;
        for size in [1usize, 16, 100, 4096, 32_767, 32_768, 32_769, 100_000] {
            let exact = WEIGHT_ONE as f64 / -(-(size as f64) / rate as f64).exp_m1();
            let got = weight_fx(size, rate) as f64;
            assert!(
                (got - exact).abs() <= 0.5 + exact * 1e-9,
                "{size}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn weights_unbias_by_size() {
        assert_eq!(weight_fx(1, 1), WEIGHT_ONE);
        assert_eq!(weight_fx(100, 0), WEIGHT_ONE);
        // A huge allocation is always sampled: weight 1.
        assert_eq!(weight_fx(1 << 30, 4096), WEIGHT_ONE);
        // size == rate: p = 1 - 1/e, weight ~ 1.582.
        let w = weight_fx(4096, 4096) as f64 / WEIGHT_ONE as f64;
        assert!((w - 1.0 / (1.0 - (-1f64).exp())).abs() < 0.01, "{w}");
        // A tiny allocation stands for about rate/size allocations.
        let w = weight_fx(16, 512 * 1024) as f64 / WEIGHT_ONE as f64;
        assert!((w - 32768.5).abs() < 1.0, "{w}");
        assert_eq!(weighted_bytes(WEIGHT_ONE, 4096), 4096);
        assert_eq!(weighted_bytes(WEIGHT_ONE * 3 / 2, 10), 15);
    }

    #[test]
    fn a_small_sample_adds_about_the_rate_squared() {
        let rate = 512 * 1024u64;
        let v = sample_variance(16, weight_fx(16, rate));
        let r = rate as f64;
        assert!((v / (r * r) - 1.0).abs() < 0.01, "{v}");
        assert_eq!(sample_variance(1 << 30, weight_fx(1 << 30, rate)), 0.0);
        assert_eq!(sample_variance(100, weight_fx(100, 1)), 0.0);
    }

    #[test]
    fn sampled_fraction_matches_the_poisson_probability() {
        // Drive the real thread-local sampler through the public decision.
        config::set_sample_rate(1024);
        let size = 512usize;
        let n = 100_000;
        let sampled = (0..n).filter(|_| should_sample(size) != 0).count();
        let expected = 1.0 - (-(size as f64) / 1024.0).exp();
        let frac = sampled as f64 / n as f64;
        assert!((frac - expected).abs() < 0.01, "{frac} vs {expected}");
    }
}
