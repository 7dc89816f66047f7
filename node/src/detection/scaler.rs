//! Feature standardization with federated mean/variance.
//!
//! [`ScalerStats`] holds sufficient statistics (count, per-feature sum and sum
//! of squares in `f64`) that nodes can merge (or a coordinator can aggregate);
//! [`Scaler`] turns them into a z-score transform. Standard deviations are
//! floored at [`STD_FLOOR`] so constant features do not explode.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

/// Minimum standard deviation used by [`Scaler::from_stats`].
pub const STD_FLOOR: f32 = 1e-3;

/// Errors of the scaler.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScalerError {
    /// Width mismatch.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    Dim {
        /// Expected width.
        expected: usize,
        /// Width received.
        got: usize,
    },
    /// A value was NaN or infinite.
    #[error("non-finite value at column {0}")]
    NonFinite(usize),
    /// No observations to derive a scaler from.
    #[error("no observations")]
    Empty,
    /// Statistics are internally inconsistent (e.g. vectors of different lengths).
    #[error("inconsistent statistics")]
    Inconsistent,
}

/// Sufficient statistics for per-feature mean and variance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalerStats {
    /// Number of rows observed.
    pub count: u64,
    /// Per-feature sum.
    pub sum: Vec<f64>,
    /// Per-feature sum of squares.
    pub sum_sq: Vec<f64>,
}

fn check_row(x: &[f32], dim: usize) -> Result<(), ScalerError> {
    if x.len() != dim {
        return Err(ScalerError::Dim {
            expected: dim,
            got: x.len(),
        });
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(ScalerError::NonFinite(i));
    }
    Ok(())
}

impl ScalerStats {
    /// Empty statistics of width `dim`.
    pub fn new(dim: usize) -> Self {
        Self {
            count: 0,
            sum: vec![0.0; dim],
            sum_sq: vec![0.0; dim],
        }
    }

    /// Width of the statistics.
    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// Adds one row (must have width `dim` and finite values).
    pub fn observe(&mut self, x: &[f32]) -> Result<(), ScalerError> {
        check_row(x, self.dim())?;
        if self.sum_sq.len() != self.sum.len() {
            return Err(ScalerError::Inconsistent);
        }
        for ((s, q), v) in self.sum.iter_mut().zip(self.sum_sq.iter_mut()).zip(x) {
            let v = f64::from(*v);
            *s += v;
            *q += v * v;
        }
        self.count = self.count.saturating_add(1);
        Ok(())
    }

    /// Adds another node's statistics (widths must match).
    pub fn merge(&mut self, other: &ScalerStats) -> Result<(), ScalerError> {
        if other.dim() != self.dim() {
            return Err(ScalerError::Dim {
                expected: self.dim(),
                got: other.dim(),
            });
        }
        if other.sum_sq.len() != other.sum.len() || self.sum_sq.len() != self.sum.len() {
            return Err(ScalerError::Inconsistent);
        }
        if let Some(i) = other
            .sum
            .iter()
            .chain(&other.sum_sq)
            .position(|v| !v.is_finite())
        {
            return Err(ScalerError::NonFinite(i % other.dim().max(1)));
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        self.count = self.count.saturating_add(other.count);
        Ok(())
    }

    /// Statistics of all rows of `rows`.
    pub fn from_rows(rows: ArrayView2<f32>) -> Result<Self, ScalerError> {
        let mut s = Self::new(rows.ncols());
        for r in rows.rows() {
            let v: Vec<f32> = r.iter().copied().collect();
            s.observe(&v)?;
        }
        Ok(s)
    }
}

/// Per-feature z-score transform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation (≥ [`STD_FLOOR`] when built from stats).
    pub std: Vec<f32>,
}

impl Scaler {
    /// Scaler from statistics (population variance, std floored at [`STD_FLOOR`]).
    pub fn from_stats(stats: &ScalerStats) -> Result<Scaler, ScalerError> {
        if stats.count == 0 {
            return Err(ScalerError::Empty);
        }
        if stats.sum.len() != stats.sum_sq.len() {
            return Err(ScalerError::Inconsistent);
        }
        let n = stats.count as f64;
        let mut mean = Vec::with_capacity(stats.dim());
        let mut std = Vec::with_capacity(stats.dim());
        for (i, (s, q)) in stats.sum.iter().zip(&stats.sum_sq).enumerate() {
            let m = s / n;
            let var = (q / n - m * m).max(0.0);
            let sd = var.sqrt() as f32;
            let m = m as f32;
            if !m.is_finite() || !sd.is_finite() {
                return Err(ScalerError::NonFinite(i));
            }
            mean.push(m);
            std.push(sd.max(STD_FLOOR));
        }
        Ok(Scaler { mean, std })
    }

    /// The same transform with `std[i]` raised to at least `floors[i]`
    /// (features beyond `floors` keep theirs; a non-finite or non-positive
    /// floor is ignored).
    pub fn with_floors(mut self, floors: &[f32]) -> Self {
        for (s, f) in self.std.iter_mut().zip(floors) {
            if f.is_finite() && *f > 0.0 && *s < *f {
                *s = *f;
            }
        }
        self
    }

    /// The identity transform of width `dim`.
    pub fn identity(dim: usize) -> Self {
        Self {
            mean: vec![0.0; dim],
            std: vec![1.0; dim],
        }
    }

    /// Width of the transform.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    fn check_self(&self) -> Result<(), ScalerError> {
        if self.std.len() != self.mean.len() {
            return Err(ScalerError::Inconsistent);
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(ScalerError::Inconsistent);
        }
        Ok(())
    }

    /// Standardizes every row of `x`.
    pub fn transform(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, ScalerError> {
        self.check_self()?;
        if x.ncols() != self.dim() {
            return Err(ScalerError::Dim {
                expected: self.dim(),
                got: x.ncols(),
            });
        }
        let mut out = x.to_owned();
        for mut row in out.rows_mut() {
            for (j, v) in row.iter_mut().enumerate() {
                if !v.is_finite() {
                    return Err(ScalerError::NonFinite(j));
                }
                *v = (*v - self.mean[j]) / self.std[j];
            }
        }
        Ok(out)
    }

    /// Standardizes one row.
    pub fn transform_row(&self, x: &[f32]) -> Result<Vec<f32>, ScalerError> {
        self.check_self()?;
        check_row(x, self.dim())?;
        Ok(x.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(v, (m, s))| (v - m) / s)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn mean_std_and_merge() {
        let x = array![[1.0f32, 5.0], [3.0, 5.0], [5.0, 5.0], [7.0, 5.0]];
        let all = ScalerStats::from_rows(x.view()).unwrap();
        let (top, bottom) = x.view().split_at(ndarray::Axis(0), 2);
        let mut a = ScalerStats::from_rows(top).unwrap();
        let b = ScalerStats::from_rows(bottom).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a, all);
        let s = Scaler::from_stats(&all).unwrap();
        assert!((s.mean[0] - 4.0).abs() < 1e-6);
        assert!((s.std[0] - 5f32.sqrt()).abs() < 1e-5);
        assert_eq!(s.std[1], STD_FLOOR);
        let t = s.transform(x.view()).unwrap();
        assert!((t.column(0).sum()).abs() < 1e-5);
        assert_eq!(t.column(1).sum(), 0.0);
        assert_eq!(s.transform_row(&[4.0, 5.0]).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn floors_raise_only_smaller_deviations() {
        let s = Scaler {
            mean: vec![0.0, 1.0, 2.0],
            std: vec![0.001, 0.5, f32::MIN_POSITIVE],
        };
        let f = s.clone().with_floors(&[0.01, 0.01]);
        assert_eq!(f.mean, s.mean);
        assert_eq!(f.std, vec![0.01, 0.5, f32::MIN_POSITIVE]);
        let g = s.clone().with_floors(&[f32::NAN, -1.0, 0.0]);
        assert_eq!(g, s);
    }

    #[test]
    fn validation_errors() {
        let mut st = ScalerStats::new(2);
        assert!(matches!(st.observe(&[1.0]), Err(ScalerError::Dim { .. })));
        assert_eq!(st.observe(&[1.0, f32::NAN]), Err(ScalerError::NonFinite(1)));
        assert_eq!(Scaler::from_stats(&st), Err(ScalerError::Empty));
        assert!(st.merge(&ScalerStats::new(3)).is_err());
        let s = Scaler::identity(2);
        assert!(s.transform_row(&[1.0, 2.0, 3.0]).is_err());
        assert!(s.transform(array![[1.0f32, f32::INFINITY]].view()).is_err());
        assert!(s.transform(array![[1.0f32]].view()).is_err());
    }
}
