//! A container against its own recent windows: does it now use more CPU,
//! throttling, memory and processes, together, than in every one of its
//! recent normal windows?
//!
//! The fleet model judges a window against what containers of every kind
//! do. A miner started in a container that is already busy near its CPU
//! limit moves that score little: a busy container is normal for the fleet.
//! Against the container's own recent past the same miner stands out: its
//! CPU, throttling, memory and process count rise together beyond anything
//! the container did in the last minutes.
//!
//! [`OwnHistory`] keeps, per container, its last `capacity` normal windows'
//! [`RISE_FEATURES`] and an EWMA of the container's mean and variance (each
//! window's deviation clipped at [`SCALE_CLIP`] standard deviations, so a
//! rise widens the scale it is judged on only a little). A window's
//! **rise** is, over the recent windows, the smallest sum of its per-feature
//! excess above that window, each in the container's own standard
//! deviations (at least [`RISE_FLOORS`]). It is 0 when some recent window
//! used at least as much of everything. So a workload that alternates
//! between idle and bursts is judged against its own bursts, and only a
//! combination it has not shown recently rises.
//!
//! The incident tracker turns a rise into evidence
//! (`ln(rise / rise_bar)`, at most half the open bound plus the slack per
//! window, so one window never opens an incident alone) and decides what
//! the history keeps: every window but those whose rise counts as
//! evidence, until that rise is recorded in an open incident, so a lasting
//! change becomes the container's own normal once it has been reported and
//! is not reported again.
//!
//! Pure and deterministic; bounded by `capacity`.

use std::collections::VecDeque;

use crate::detection::features::{FEATURE_NAMES, NUM_FEATURES, idx};

/// Features judged against the container's own history.
pub const RISE_FEATURES: [usize; RISE_DIM] =
    [idx::CPU_CORES, idx::THROTTLE_RATIO, idx::MEMORY, idx::PIDS];

/// Number of [`RISE_FEATURES`].
pub const RISE_DIM: usize = 4;

/// Least own standard deviation per rise feature, in the feature's units:
/// 0.02 cores, 0.01 of the periods throttled, 2 % of memory, 2 % of
/// processes. A container that was perfectly steady is not judged on
/// measurement noise.
pub const RISE_FLOORS: [f32; RISE_DIM] = [0.02, 0.01, 0.02, 0.02];

/// Recent windows a container needs before its rise is judged.
pub const MIN_HISTORY: usize = 12;

/// EWMA weight of one window in the own mean and variance (about the last
/// 20 windows; `1/n` before that).
const ALPHA: f32 = 0.05;

/// A window moves the own mean and variance by at most this many own
/// standard deviations.
pub const SCALE_CLIP: f32 = 6.0;

/// Largest history a configuration may ask for.
pub const MAX_HISTORY: usize = 1024;

/// How far a window rises above the container's recent windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rise {
    /// The smallest sum, over the recent windows, of the per-feature excess
    /// above that window in own standard deviations.
    pub total: f32,
    /// Per rise feature ([`RISE_FEATURES`] order), its excess above the
    /// recent window that gave `total`.
    pub excess: [f32; RISE_DIM],
}

impl Rise {
    /// The features that rose, with their excess, largest first.
    pub fn features(&self) -> Vec<(String, f32)> {
        let mut f: Vec<(String, f32)> = RISE_FEATURES
            .iter()
            .zip(self.excess)
            .filter(|(_, v)| *v > 0.0)
            .map(|(&i, v)| (FEATURE_NAMES[i].to_string(), v))
            .collect();
        f.sort_by(|a, b| b.1.total_cmp(&a.1));
        f
    }
}

/// One container's recent normal windows (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnHistory {
    recent: VecDeque<[f32; RISE_DIM]>,
    mean: [f32; RISE_DIM],
    var: [f32; RISE_DIM],
    n: u32,
}

/// The rise features of a window's feature vector; `None` when one is not
/// finite.
pub fn rise_features(features: &[f32; NUM_FEATURES]) -> Option<[f32; RISE_DIM]> {
    let mut x = [0.0f32; RISE_DIM];
    for (v, &i) in x.iter_mut().zip(&RISE_FEATURES) {
        *v = features[i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

impl OwnHistory {
    /// Recent windows held.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// True before the first learned window.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// The own standard deviations, each at least its [`RISE_FLOORS`].
    fn scale(&self) -> [f32; RISE_DIM] {
        std::array::from_fn(|j| self.var[j].sqrt().max(RISE_FLOORS[j]))
    }

    /// How far `x` rises above every recent window; `None` while fewer than
    /// [`MIN_HISTORY`] windows are held.
    pub fn judge(&self, x: &[f32; RISE_DIM]) -> Option<Rise> {
        if self.recent.len() < MIN_HISTORY {
            return None;
        }
        let sd = self.scale();
        let excess = |past: &[f32; RISE_DIM]| -> [f32; RISE_DIM] {
            std::array::from_fn(|j| ((x[j] - past[j]) / sd[j]).max(0.0))
        };
        let mut best: Option<(f32, [f32; RISE_DIM])> = None;
        for past in &self.recent {
            let e = excess(past);
            let total: f32 = e.iter().sum();
            if best.as_ref().is_none_or(|(b, _)| total < *b) {
                best = Some((total, e));
            }
        }
        best.map(|(total, excess)| Rise { total, excess })
    }

    /// Updates the own mean and variance with `x`, its deviation clipped at
    /// [`SCALE_CLIP`] own standard deviations (so a rise widens the scale
    /// it is judged on only a little, and leaving rises out does not
    /// shrink it), and keeps `x` among the recent windows (at most
    /// `capacity`) when `keep`. Nothing when `capacity` is 0.
    pub fn learn(&mut self, x: &[f32; RISE_DIM], keep: bool, capacity: usize) {
        if capacity == 0 {
            return;
        }
        self.n = self.n.saturating_add(1);
        let a = ALPHA.max(1.0 / self.n as f32);
        if self.n == 1 {
            self.mean = *x;
        } else {
            let sd = self.scale();
            for (((m, v), xj), sdj) in self.mean.iter_mut().zip(&mut self.var).zip(x).zip(sd) {
                let lim = SCALE_CLIP * sdj;
                let d = (xj - *m).clamp(-lim, lim);
                *m += a * d;
                *v = (1.0 - a) * (*v + a * d * d);
            }
        }
        if keep {
            while self.recent.len() >= capacity {
                self.recent.pop_front();
            }
            self.recent.push_back(*x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn steady(h: &mut OwnHistory, x: [f32; RISE_DIM], n: usize) {
        for i in 0..n {
            // A little noise on every feature.
            let w = (i % 3) as f32 - 1.0;
            let v = [x[0] + 0.01 * w, x[1], x[2] + 0.005 * w, x[3]];
            let keep = h.judge(&v).is_none_or(|r| r.total < 3.0);
            h.learn(&v, keep, 32);
        }
    }

    #[test]
    fn nothing_is_judged_before_enough_history() {
        let mut h = OwnHistory::default();
        steady(&mut h, [1.0, 0.0, 5.0, 3.0], MIN_HISTORY - 1);
        assert!(h.judge(&[4.0, 1.0, 6.0, 4.0]).is_none());
        steady(&mut h, [1.0, 0.0, 5.0, 3.0], 1);
        assert!(h.judge(&[4.0, 1.0, 6.0, 4.0]).is_some());
    }

    #[test]
    fn a_joint_rise_beyond_every_recent_window_is_measured() {
        let mut h = OwnHistory::default();
        steady(&mut h, [3.0, 0.5, 8.5, 3.7], 40);
        // A miner: the CPU to the limit, throttling, memory and processes up.
        let r = h.judge(&[3.9, 0.95, 8.55, 3.8]).unwrap();
        assert!(r.total > 10.0, "{r:?}");
        let names: Vec<String> = r.features().into_iter().map(|(n, _)| n).collect();
        assert!(names.iter().any(|n| n == "cpu_cores") && names.iter().any(|n| n == "log1p_pids"));
        // The same window as before does not rise.
        assert_eq!(h.judge(&[3.0, 0.5, 8.5, 3.7]).unwrap().total, 0.0);
    }

    #[test]
    fn a_workload_is_judged_against_its_own_bursts() {
        let mut h = OwnHistory::default();
        // Idle, then a burst every eighth window.
        for i in 0..64 {
            let burst = i % 8 < 2;
            let x = if burst {
                [1.8, 0.2, 7.0, 3.5]
            } else {
                [0.02, 0.0, 6.5, 1.8]
            };
            h.learn(&x, true, 32);
        }
        assert_eq!(h.judge(&[1.7, 0.15, 6.9, 3.4]).unwrap().total, 0.0);
        // A burst's CPU with more memory than any burst rises.
        assert!(h.judge(&[1.8, 0.2, 8.0, 3.5]).unwrap().total > 0.0);
    }

    #[test]
    fn the_history_is_bounded_and_capacity_zero_learns_nothing() {
        let mut h = OwnHistory::default();
        for _ in 0..100 {
            h.learn(&[1.0, 0.0, 5.0, 3.0], true, 16);
        }
        assert_eq!(h.len(), 16);
        let before = h.judge(&[9.0, 1.0, 9.0, 9.0]).unwrap().total;
        assert!(before > 0.0);
        h.learn(&[9.0, 1.0, 9.0, 9.0], true, 0);
        assert_eq!(h.judge(&[9.0, 1.0, 9.0, 9.0]).unwrap().total, before);
        // Left out of the history, it moves the scale by at most 3 sd.
        h.learn(&[9.0, 1.0, 9.0, 9.0], false, 16);
        let after = h.judge(&[9.0, 1.0, 9.0, 9.0]).unwrap().total;
        assert!(after > 0.5 * before, "{after} vs {before}");
        h.learn(&[9.0, 1.0, 9.0, 9.0], true, 16);
        assert_eq!(h.len(), 16);
        assert_eq!(h.judge(&[9.0, 1.0, 9.0, 9.0]).unwrap().total, 0.0);
    }

    #[test]
    fn non_finite_features_are_refused() {
        let mut f = [0.0f32; NUM_FEATURES];
        assert!(rise_features(&f).is_some());
        f[idx::PIDS] = f32::NAN;
        assert!(rise_features(&f).is_none());
        f[idx::PIDS] = 1.0;
        f[idx::CPU_CORES] = f32::INFINITY;
        assert!(rise_features(&f).is_none());
    }

    proptest! {
        #[test]
        fn any_finite_windows_give_a_finite_rise_and_a_bounded_history(
            xs in prop::collection::vec(prop::array::uniform4(-1e6f32..1e6), 1..200),
            cap in 1usize..64,
        ) {
            let mut h = OwnHistory::default();
            for x in &xs {
                if let Some(r) = h.judge(x) {
                    prop_assert!(r.total.is_finite() && r.total >= 0.0);
                    prop_assert!(r.features().iter().all(|(_, v)| v.is_finite() && *v > 0.0));
                }
                h.learn(x, true, cap);
                prop_assert!(h.len() <= cap);
            }
        }
    }
}
