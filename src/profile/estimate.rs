//! How sure an estimate is: the sampling error of heapprof's estimates,
//! from the samples behind them.
//!
//! # The variance of byte sampling
//!
//! Sample points fall on the allocated bytes as a Poisson process with a
//! mean gap of `R` bytes (the sample rate), so an allocation of `s` bytes
//! is sampled with probability `p = 1 - exp(-s/R)`, independently of every
//! other (`alloc::sampler`), and a sampled one counts `w = 1/p` times its
//! size. An estimate of bytes is `X = Σ I_i w_i s_i` over all allocations
//! `i` it covers (`I_i` = 1 when sampled), and
//!
//! ```text
//! E[X]   = Σ s_i                       (unbiased)
//! Var[X] = Σ s_i² (1 - p_i) / p_i      (independent Bernoulli trials)
//! ```
//!
//! Only the sampled allocations are known, so the variance is itself
//! estimated, without bias, by weighting each sampled term by `1/p_i`
//! again: `V = Σ_sampled s_i² w_i (w_i - 1)`.
//!
//! What that means in practice: an allocation much smaller than the rate
//! has `w ≈ R/s` and adds about `R²`, so `n` samples of small objects give
//! a standard error of `R √n` on an estimate of about `n R` bytes: a
//! relative standard error of `1/√n`. An allocation much larger than the
//! rate is always sampled (`w = 1`) and adds nothing: it is known exactly.
//! [`Estimate::effective_samples`] is `1 / RSE²`, the number of small
//! samples that would be as sure.
//!
//! Estimates that are sums of independent samples add their variances: the
//! bytes allocated over a window (the change of a cumulative sum), the live
//! bytes of allocations made since a moment, the resident part of the live
//! heap (each sample weighing its resident bytes instead of its size).

/// An estimate of bytes with its sampling error.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    /// The estimated bytes (unbiased).
    pub bytes: f64,
    /// Samples behind it.
    pub samples: u64,
    /// The estimated variance of `bytes`, bytes² (see the module docs).
    pub variance: f64,
}

impl Estimate {
    /// Adds one sample that stands for `weight` allocations and counts
    /// `bytes` of each (its size, or its resident bytes).
    pub fn add(&mut self, bytes: u64, weight: f64) {
        let b = bytes as f64;
        self.bytes += weight * b;
        self.samples += 1;
        self.variance += crate::alloc::sampler::variance_of(b, weight);
    }

    /// The standard error of `bytes`.
    pub fn standard_error(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }

    /// The standard error relative to `bytes` (infinite for an estimate of
    /// nothing made of samples, 0 for an exact one).
    pub fn relative_standard_error(&self) -> f64 {
        let se = self.standard_error();
        if se == 0.0 {
            0.0
        } else if self.bytes == 0.0 {
            f64::INFINITY
        } else {
            se / self.bytes.abs()
        }
    }

    /// `1 / RSE²`: how many samples of small objects would make an
    /// estimate this sure (infinite for an exact one).
    pub fn effective_samples(&self) -> f64 {
        let rse = self.relative_standard_error();
        if rse == 0.0 {
            f64::INFINITY
        } else {
            1.0 / (rse * rse)
        }
    }

    /// What a cumulative estimate added since `earlier` (a window).
    pub fn since(&self, earlier: &Estimate) -> Estimate {
        Estimate {
            bytes: self.bytes - earlier.bytes,
            samples: self.samples.saturating_sub(earlier.samples),
            variance: (self.variance - earlier.variance).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's claim, checked by simulation: the variance estimated
    /// from the samples matches the spread of the estimate over many runs,
    /// and the relative standard error of `n` small samples is `1/√n`.
    #[test]
    fn estimated_variance_matches_the_spread_of_estimates() {
        let rate = 4096.0f64;
        let sizes: Vec<u64> = (0..4000).map(|i| 16 + (i % 7) * 40).collect();
        let truth: f64 = sizes.iter().map(|&s| s as f64).sum();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut unit = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        };
        let runs = 2000;
        let (mut sum, mut sum_sq, mut mean_var) = (0.0, 0.0, 0.0);
        for _ in 0..runs {
            let mut e = Estimate::default();
            for &s in &sizes {
                let p = -(-(s as f64) / rate).exp_m1();
                if unit() < p {
                    e.add(s, 1.0 / p);
                }
            }
            sum += e.bytes;
            sum_sq += e.bytes * e.bytes;
            mean_var += e.variance / runs as f64;
        }
        let mean = sum / runs as f64;
        let spread = sum_sq / runs as f64 - mean * mean;
        assert!(
            (mean / truth - 1.0).abs() < 0.01,
            "biased: {mean} vs {truth}"
        );
        assert!(
            (mean_var / spread - 1.0).abs() < 0.1,
            "estimated variance {mean_var} vs observed {spread}"
        );
        // Small objects: RSE ~ 1/sqrt(samples).
        let mut e = Estimate::default();
        for _ in 0..100 {
            e.add(8, rate / 8.0);
        }
        assert!((e.relative_standard_error() - 0.1).abs() < 0.001);
        assert!((e.effective_samples() - 100.0).abs() < 0.5);
    }

    #[test]
    fn exact_and_empty_estimates() {
        let mut e = Estimate::default();
        assert_eq!(e.relative_standard_error(), 0.0);
        e.add(1 << 20, 1.0);
        assert_eq!(e.effective_samples(), f64::INFINITY);
        let later = Estimate {
            bytes: 3.0e6,
            samples: 5,
            variance: 4.0e10,
        };
        let window = later.since(&e);
        assert_eq!(window.samples, 4);
        assert_eq!(window.bytes, 3.0e6 - (1 << 20) as f64);
    }
}
