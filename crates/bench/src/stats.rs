//! Order statistics of a handful of repetitions.

use serde::Serialize;

/// Summary of one figure over repetitions: extremes, 10th/50th/90th percentiles.
///
/// Percentiles interpolate linearly between order statistics (the usual "type 7" definition),
/// so with 5 values p10 lies between the smallest and the second smallest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// How many values.
    pub n: usize,
    /// The smallest.
    pub min: f64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// The largest.
    pub max: f64,
}

impl Stats {
    /// Summarises `values`; `None` when there are none (NaNs are ignored).
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Stats {
            n: v.len(),
            min: v[0],
            p10: quantile(&v, 0.1),
            median: quantile(&v, 0.5),
            p90: quantile(&v, 0.9),
            max: v[v.len() - 1],
        })
    }

    /// Width of the 10–90 % band.
    pub fn spread(&self) -> f64 {
        self.p90 - self.p10
    }
}

/// Linear interpolation between the order statistics of sorted, non-empty `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let pos = q * (v.len() - 1) as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    #[allow(clippy::cast_precision_loss)]
    let frac = pos - lo as f64;
    v[lo] + (v[hi] - v[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (5, 1.0, 3.0, 5.0));
        assert!((s.p10 - 1.4).abs() < 1e-12);
        assert!((s.p90 - 4.6).abs() < 1e-12);
        assert!((s.spread() - 3.2).abs() < 1e-12);
    }

    #[test]
    fn one_value_and_none() {
        let s = Stats::of(&[7.0]).unwrap();
        assert_eq!(
            (s.min, s.p10, s.median, s.p90, s.max),
            (7.0, 7.0, 7.0, 7.0, 7.0)
        );
        assert_eq!(s.spread(), 0.0);
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
    }
}
