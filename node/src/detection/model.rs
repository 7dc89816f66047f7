//! Dense autoencoder with its own forward and backward pass on ndarray.
//!
//! # Architecture
//! The encoder maps `input_dim → hidden[0] → … → hidden[k-1]`; the decoder
//! mirrors it back: `hidden[k-1] → hidden[k-2] → … → hidden[0] → input_dim`.
//! Every layer except the last uses `tanh`; the output layer is linear. The
//! anomaly score of a sample is its mean squared reconstruction error over the
//! (standardized) features.
//!
//! # Flat parameter layout
//! [`Autoencoder::to_flat`] / [`Autoencoder::from_flat`] use one `f32` vector:
//! the layers in forward order (encoder then decoder), each as its weight
//! matrix `W` (`out × in`, row-major) followed by its bias `b` (`out`). The
//! layout is identified by [`ModelSpec::schema_hash`].
//!
//! # Training
//! [`Autoencoder::train`]: Adam (β1 0.9, β2 0.999, ε 1e-8) on shuffled
//! minibatches of the MSE reconstruction loss, plus the FedProx term
//! `(mu/2)·‖w − w_global‖²` when a global model is given, early stopping on a
//! validation split with best-weights restore. Deterministic for a given seed.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detection::features::{NUM_FEATURES, feature_schema_hash};

/// Maximum number of parameters [`ModelSpec::validate`] accepts.
pub const MAX_PARAMS: usize = 50_000_000;

/// Errors of the model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// The spec is unusable.
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// Input width differs from the model's input dimension.
    #[error("input has {got} columns, model expects {expected}")]
    Dim {
        /// Expected width.
        expected: usize,
        /// Width received.
        got: usize,
    },
    /// Parameter vector of the wrong length.
    #[error("parameter vector has {got} values, spec needs {expected}")]
    ParamLength {
        /// Expected length.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// NaN or infinite value in input or parameters.
    #[error("non-finite value in {0}")]
    NonFinite(&'static str),
    /// No rows to train on / score.
    #[error("empty input")]
    EmptyInput,
    /// Unusable training configuration.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// Training produced a non-finite loss.
    #[error("training diverged (non-finite loss)")]
    Diverged,
}

/// Layer sizes of the autoencoder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Width of the input (and of the reconstruction).
    pub input_dim: usize,
    /// Encoder widths, outermost first (the last one is the bottleneck).
    pub hidden: Vec<usize>,
}

impl ModelSpec {
    /// The default spec for the feature schema: `NUM_FEATURES → 32 → 8 → 32 → NUM_FEATURES`.
    pub fn default_for_features() -> Self {
        Self {
            input_dim: NUM_FEATURES,
            hidden: vec![32, 8],
        }
    }

    /// `(in, out)` of every layer in forward order.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut widths = Vec::with_capacity(2 * self.hidden.len() + 1);
        widths.push(self.input_dim);
        widths.extend(self.hidden.iter().copied());
        widths.extend(self.hidden.iter().rev().skip(1).copied());
        widths.push(self.input_dim);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    fn checked_param_count(&self) -> Option<usize> {
        self.layer_dims().iter().try_fold(0usize, |acc, (i, o)| {
            i.checked_mul(*o)?.checked_add(*o)?.checked_add(acc)
        })
    }

    /// Number of parameters (saturates at `usize::MAX` on overflow).
    pub fn param_count(&self) -> usize {
        self.checked_param_count().unwrap_or(usize::MAX)
    }

    /// SHA-256 over the feature schema hash, `"ae-v1"`, and the widths
    /// (`input_dim`, number of hidden layers, each hidden width; u64 LE).
    pub fn schema_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(feature_schema_hash());
        h.update(b"ae-v1");
        h.update((self.input_dim as u64).to_le_bytes());
        h.update((self.hidden.len() as u64).to_le_bytes());
        for w in &self.hidden {
            h.update((*w as u64).to_le_bytes());
        }
        h.finalize().into()
    }

    /// Checks widths are nonzero, there is a hidden layer, and the parameter
    /// count is at most [`MAX_PARAMS`].
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.input_dim == 0 {
            return Err(ModelError::InvalidSpec("input_dim is zero".into()));
        }
        if self.hidden.is_empty() {
            return Err(ModelError::InvalidSpec("no hidden layer".into()));
        }
        if self.hidden.contains(&0) {
            return Err(ModelError::InvalidSpec("zero hidden width".into()));
        }
        match self.checked_param_count() {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            _ => Err(ModelError::InvalidSpec(format!(
                "more than {MAX_PARAMS} parameters"
            ))),
        }
    }
}

/// One dense layer: `z = a · Wᵀ + b`.
#[derive(Clone, Debug, PartialEq)]
struct Layer {
    w: Array2<f32>,
    b: Array1<f32>,
}

impl Layer {
    fn zeros_like(&self) -> Layer {
        Layer {
            w: Array2::zeros(self.w.raw_dim()),
            b: Array1::zeros(self.b.raw_dim()),
        }
    }
}

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Maximum number of passes over the training split.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f32,
    /// FedProx coefficient `mu` (used only when a global model is given).
    pub prox_mu: f32,
    /// Seed for the split and the shuffles.
    pub seed: u64,
    /// Fraction of rows held out for early stopping, in `[0, 0.9]`
    /// (no split for fewer than 10 rows: the training loss is monitored).
    pub validation_fraction: f32,
    /// Epochs without improvement before stopping; 0 disables early stopping.
    pub patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 32,
            learning_rate: 3e-3,
            prox_mu: 0.01,
            seed: 0,
            validation_fraction: 0.1,
            patience: 3,
        }
    }
}

/// Outcome of [`Autoencoder::train`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Epochs actually run (≤ `epochs`, fewer on early stop).
    pub epochs_run: usize,
    /// Reconstruction MSE on the training split with the final (best) weights.
    pub train_loss: f32,
    /// Best validation MSE (training MSE when there is no validation split).
    pub val_loss: f32,
    /// Number of rows given.
    pub samples: usize,
}

/// Dense autoencoder (see the module docs for architecture and layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Autoencoder {
    spec: ModelSpec,
    layers: Vec<Layer>,
}

fn check_input(x: &ArrayView2<f32>, dim: usize) -> Result<(), ModelError> {
    if x.ncols() != dim {
        return Err(ModelError::Dim {
            expected: dim,
            got: x.ncols(),
        });
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite("input"));
    }
    Ok(())
}

impl Autoencoder {
    /// Random initialization: Xavier/Glorot uniform weights (suited to tanh),
    /// zero biases.
    pub fn new_random(spec: ModelSpec, rng: &mut ChaCha8Rng) -> Result<Self, ModelError> {
        spec.validate()?;
        let layers = spec
            .layer_dims()
            .into_iter()
            .map(|(i, o)| {
                let a = (6.0 / (i + o) as f32).sqrt();
                let w =
                    Array2::from_shape_simple_fn((o, i), || (rng.random::<f32>() * 2.0 - 1.0) * a);
                Layer {
                    w,
                    b: Array1::zeros(o),
                }
            })
            .collect();
        Ok(Self { spec, layers })
    }

    /// Model from a flat parameter vector (length and finiteness checked).
    pub fn from_flat(spec: ModelSpec, params: &[f32]) -> Result<Self, ModelError> {
        spec.validate()?;
        let layers = unflatten(&spec, params)?;
        Ok(Self { spec, layers })
    }

    /// The flat parameter vector (layout in the module docs).
    pub fn to_flat(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.spec.param_count());
        for l in &self.layers {
            out.extend(l.w.iter().copied());
            out.extend(l.b.iter().copied());
        }
        out
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Activations of every layer; `acts[0]` is the input, the last is the output.
    fn forward(&self, x: ArrayView2<f32>) -> Vec<Array2<f32>> {
        let mut acts = Vec::with_capacity(self.layers.len() + 1);
        acts.push(x.to_owned());
        let last = self.layers.len().saturating_sub(1);
        for (k, l) in self.layers.iter().enumerate() {
            let prev = &acts[acts.len() - 1];
            let mut z = prev.dot(&l.w.t());
            z += &l.b;
            if k != last {
                z.mapv_inplace(f32::tanh);
            }
            acts.push(z);
        }
        acts
    }

    /// Reconstruction of `x`.
    pub fn reconstruct(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, ModelError> {
        check_input(&x, self.spec.input_dim)?;
        let mut acts = self.forward(x);
        acts.pop().ok_or(ModelError::EmptyInput)
    }

    /// Per-sample, per-feature squared reconstruction error.
    pub fn reconstruction_errors(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, ModelError> {
        let y = self.reconstruct(x)?;
        let mut e = y - x;
        e.mapv_inplace(|v| v * v);
        Ok(e)
    }

    /// Per-sample anomaly score: mean squared reconstruction error.
    pub fn scores(&self, x: ArrayView2<f32>) -> Result<Vec<f32>, ModelError> {
        let e = self.reconstruction_errors(x)?;
        Ok(e.mean_axis(Axis(1))
            .map(|m| m.to_vec())
            .unwrap_or_else(|| vec![0.0; e.nrows()]))
    }

    fn mse(&self, x: ArrayView2<f32>) -> f32 {
        if x.nrows() == 0 {
            return 0.0;
        }
        let y = self.forward(x);
        match y.last() {
            Some(out) => {
                let d = out - &x;
                d.mapv(|v| v * v).mean().unwrap_or(0.0)
            }
            None => 0.0,
        }
    }

    /// Loss (MSE + optional prox term) and gradients per layer.
    fn loss_and_grads(
        &self,
        x: ArrayView2<f32>,
        prox: Option<(&[Layer], f32)>,
    ) -> (f32, Vec<Layer>) {
        let acts = self.forward(x);
        let n_el = (x.nrows() * x.ncols()).max(1) as f32;
        let mut grads: Vec<Layer> = self.layers.iter().map(Layer::zeros_like).collect();
        let Some(out) = acts.last() else {
            return (0.0, grads);
        };
        let diff = out - &x;
        let mut loss = diff.mapv(|v| v * v).sum() / n_el;
        let mut delta = diff * (2.0 / n_el);
        for k in (0..self.layers.len()).rev() {
            let a_prev = &acts[k];
            grads[k].w = delta.t().dot(a_prev);
            grads[k].b = delta.sum_axis(Axis(0));
            if k > 0 {
                let mut d_prev = delta.dot(&self.layers[k].w);
                Zip::from(&mut d_prev)
                    .and(a_prev)
                    .for_each(|d, a| *d *= 1.0 - a * a);
                delta = d_prev;
            }
        }
        if let Some((global, mu)) = prox
            && mu > 0.0
        {
            for ((g, l), gl) in grads.iter_mut().zip(&self.layers).zip(global) {
                Zip::from(&mut g.w)
                    .and(&l.w)
                    .and(&gl.w)
                    .for_each(|g, w, w0| {
                        let d = w - w0;
                        loss += 0.5 * mu * d * d;
                        *g += mu * d;
                    });
                Zip::from(&mut g.b)
                    .and(&l.b)
                    .and(&gl.b)
                    .for_each(|g, w, w0| {
                        let d = w - w0;
                        loss += 0.5 * mu * d * d;
                        *g += mu * d;
                    });
            }
        }
        (loss, grads)
    }

    /// Trains on the rows of `x` (already standardized). See the module docs.
    pub fn train(
        &mut self,
        x: ArrayView2<f32>,
        cfg: &TrainConfig,
        global: Option<&[f32]>,
    ) -> Result<TrainReport, ModelError> {
        check_input(&x, self.spec.input_dim)?;
        let n = x.nrows();
        if n == 0 {
            return Err(ModelError::EmptyInput);
        }
        if cfg.batch_size == 0 {
            return Err(ModelError::InvalidConfig("batch_size is zero".into()));
        }
        if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
            return Err(ModelError::InvalidConfig(
                "learning_rate must be > 0".into(),
            ));
        }
        if !(cfg.prox_mu.is_finite() && cfg.prox_mu >= 0.0) {
            return Err(ModelError::InvalidConfig("prox_mu must be >= 0".into()));
        }
        if !(0.0..=0.9).contains(&cfg.validation_fraction) {
            return Err(ModelError::InvalidConfig(
                "validation_fraction must be in [0, 0.9]".into(),
            ));
        }
        let global_layers = match global {
            Some(g) => Some(unflatten(&self.spec, g)?),
            None => None,
        };
        let prox = global_layers.as_deref().map(|g| (g, cfg.prox_mu));

        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut rng);
        let n_val = if n >= 10 {
            ((n as f32 * cfg.validation_fraction).floor() as usize).min(n - 1)
        } else {
            0
        };
        let x_val = x.select(Axis(0), &idx[..n_val]);
        let x_train = x.select(Axis(0), &idx[n_val..]);
        let mut order: Vec<usize> = (0..x_train.nrows()).collect();

        let mut m: Vec<Layer> = self.layers.iter().map(Layer::zeros_like).collect();
        let mut v: Vec<Layer> = self.layers.iter().map(Layer::zeros_like).collect();
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut step: i32 = 0;
        let lr = cfg.learning_rate;

        let monitor = |model: &Autoencoder| {
            if n_val > 0 {
                model.mse(x_val.view())
            } else {
                model.mse(x_train.view())
            }
        };
        let mut best_loss = monitor(self);
        let mut best_layers = self.layers.clone();
        let mut since_best = 0usize;
        let mut epochs_run = 0usize;

        for _ in 0..cfg.epochs {
            epochs_run += 1;
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.batch_size) {
                let xb = x_train.select(Axis(0), chunk);
                let (loss, grads) = self.loss_and_grads(xb.view(), prox);
                if !loss.is_finite() {
                    return Err(ModelError::Diverged);
                }
                step = step.saturating_add(1);
                let c1 = 1.0 - b1.powi(step);
                let c2 = 1.0 - b2.powi(step);
                for ((l, g), (mk, vk)) in self
                    .layers
                    .iter_mut()
                    .zip(&grads)
                    .zip(m.iter_mut().zip(v.iter_mut()))
                {
                    let upd = |p: &mut f32, g: &f32, m: &mut f32, v: &mut f32| {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                    };
                    Zip::from(&mut l.w)
                        .and(&g.w)
                        .and(&mut mk.w)
                        .and(&mut vk.w)
                        .for_each(upd);
                    Zip::from(&mut l.b)
                        .and(&g.b)
                        .and(&mut mk.b)
                        .and(&mut vk.b)
                        .for_each(upd);
                }
            }
            let cur = monitor(self);
            if !cur.is_finite() {
                return Err(ModelError::Diverged);
            }
            if cur < best_loss {
                best_loss = cur;
                best_layers = self.layers.clone();
                since_best = 0;
            } else {
                since_best += 1;
                if cfg.patience > 0 && since_best >= cfg.patience {
                    break;
                }
            }
        }
        self.layers = best_layers;
        let train_loss = self.mse(x_train.view());
        Ok(TrainReport {
            epochs_run,
            train_loss,
            val_loss: best_loss,
            samples: n,
        })
    }
}

fn unflatten(spec: &ModelSpec, params: &[f32]) -> Result<Vec<Layer>, ModelError> {
    let expected = spec.param_count();
    if params.len() != expected {
        return Err(ModelError::ParamLength {
            expected,
            got: params.len(),
        });
    }
    if params.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite("parameters"));
    }
    let mut off = 0usize;
    let mut layers = Vec::new();
    for (i, o) in spec.layer_dims() {
        let wn = i * o;
        let w = Array2::from_shape_vec((o, i), params[off..off + wn].to_vec())
            .map_err(|e| ModelError::InvalidSpec(e.to_string()))?;
        off += wn;
        let b = Array1::from_vec(params[off..off + o].to_vec());
        off += o;
        layers.push(Layer { w, b });
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn flat_grads(g: &[Layer]) -> Vec<f32> {
        g.iter()
            .flat_map(|l| l.w.iter().chain(l.b.iter()).copied().collect::<Vec<_>>())
            .collect()
    }

    /// Structured data: 16-dim rows living on a 3-dim nonlinear manifold.
    fn structured(n: usize, seed: u64) -> Array2<f32> {
        let mut r = rng(seed);
        let mut x = Array2::zeros((n, 16));
        for mut row in x.rows_mut() {
            let z: [f32; 3] = [r.random(), r.random(), r.random()];
            for (j, v) in row.iter_mut().enumerate() {
                let a = z[j % 3] * 2.0 - 1.0;
                let b = z[(j + 1) % 3] * 2.0 - 1.0;
                *v = a * (1.0 + j as f32 / 16.0) + 0.3 * (a * b) + 0.02 * r.random::<f32>();
            }
        }
        x
    }

    #[test]
    fn spec_layout_and_hash() {
        let s = ModelSpec::default_for_features();
        assert_eq!(s.layer_dims(), vec![(22, 32), (32, 8), (8, 32), (32, 22)]);
        assert_eq!(
            s.param_count(),
            22 * 32 + 32 + 32 * 8 + 8 + 8 * 32 + 32 + 32 * 22 + 22
        );
        let mut other = s.clone();
        other.hidden = vec![32, 4];
        assert_ne!(s.schema_hash(), other.schema_hash());
        assert!(s.validate().is_ok());
        assert!(
            ModelSpec {
                input_dim: 3,
                hidden: vec![]
            }
            .validate()
            .is_err()
        );
        assert!(
            ModelSpec {
                input_dim: 3,
                hidden: vec![0]
            }
            .validate()
            .is_err()
        );
        assert!(
            ModelSpec {
                input_dim: 0,
                hidden: vec![2]
            }
            .validate()
            .is_err()
        );
        assert!(
            ModelSpec {
                input_dim: 10_000,
                hidden: vec![10_000]
            }
            .validate()
            .is_err()
        );
        assert!(
            ModelSpec {
                input_dim: usize::MAX,
                hidden: vec![usize::MAX]
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn flat_round_trip_and_validation() {
        let s = ModelSpec {
            input_dim: 5,
            hidden: vec![4, 2],
        };
        let m = Autoencoder::new_random(s.clone(), &mut rng(1)).unwrap();
        let flat = m.to_flat();
        assert_eq!(flat.len(), s.param_count());
        let m2 = Autoencoder::from_flat(s.clone(), &flat).unwrap();
        assert_eq!(m, m2);
        // Layout: first layer W is row-major out x in.
        assert_eq!(flat[1], m.layers[0].w[[0, 1]]);
        assert_eq!(flat[5], m.layers[0].w[[1, 0]]);
        assert_eq!(flat[20], m.layers[0].b[0]);
        assert!(matches!(
            Autoencoder::from_flat(s.clone(), &flat[1..]),
            Err(ModelError::ParamLength { .. })
        ));
        let mut bad = flat.clone();
        bad[3] = f32::NAN;
        assert!(Autoencoder::from_flat(s, &bad).is_err());
        let x = Array2::<f32>::zeros((2, 4));
        assert!(m.scores(x.view()).is_err());
        let mut x = Array2::<f32>::zeros((2, 5));
        x[[1, 1]] = f32::INFINITY;
        assert!(m.scores(x.view()).is_err());
    }

    #[test]
    fn gradient_check() {
        let s = ModelSpec {
            input_dim: 4,
            hidden: vec![5, 2],
        };
        let mut r = rng(3);
        let m = Autoencoder::new_random(s.clone(), &mut r).unwrap();
        let x = Array2::from_shape_simple_fn((6, 4), || r.random::<f32>() * 2.0 - 1.0);
        let global: Vec<f32> = m.to_flat().iter().map(|v| v + 0.3).collect();
        let gl = unflatten(&s, &global).unwrap();
        let mu = 0.5;
        let (_, grads) = m.loss_and_grads(x.view(), Some((&gl, mu)));
        let analytic = flat_grads(&grads);
        let base = m.to_flat();
        let h = 1e-2f32;
        let mut max_err = 0.0f32;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += h;
            let lp = Autoencoder::from_flat(s.clone(), &p)
                .unwrap()
                .loss_and_grads(x.view(), Some((&gl, mu)))
                .0;
            p[i] -= 2.0 * h;
            let lm = Autoencoder::from_flat(s.clone(), &p)
                .unwrap()
                .loss_and_grads(x.view(), Some((&gl, mu)))
                .0;
            let numeric = (lp - lm) / (2.0 * h);
            let err = (numeric - analytic[i]).abs() / (1e-2 + numeric.abs().max(analytic[i].abs()));
            max_err = max_err.max(err);
        }
        assert!(max_err < 2e-2, "max relative gradient error {max_err}");
    }

    #[test]
    fn training_reduces_loss_and_is_deterministic() {
        let x = structured(600, 5);
        let s = ModelSpec {
            input_dim: 16,
            hidden: vec![12, 3],
        };
        let m0 = Autoencoder::new_random(s.clone(), &mut rng(9)).unwrap();
        let before = m0.mse(x.view());
        let cfg = TrainConfig {
            epochs: 30,
            patience: 5,
            seed: 4,
            ..TrainConfig::default()
        };
        let mut a = m0.clone();
        let rep = a.train(x.view(), &cfg, None).unwrap();
        let after = a.mse(x.view());
        assert!(after < before * 0.2, "loss {before} -> {after}");
        assert_eq!(rep.samples, 600);
        assert!(rep.epochs_run >= 1 && rep.epochs_run <= 30);
        let mut b = m0.clone();
        let rep_b = b.train(x.view(), &cfg, None).unwrap();
        assert_eq!(a.to_flat(), b.to_flat());
        assert_eq!(rep, rep_b);
        // FedProx with a huge mu keeps the weights close to the global model.
        let global = m0.to_flat();
        let mut c = m0.clone();
        let prox_cfg = TrainConfig {
            prox_mu: 100.0,
            ..cfg.clone()
        };
        c.train(x.view(), &prox_cfg, Some(&global)).unwrap();
        let dist = |m: &Autoencoder| -> f32 {
            m.to_flat()
                .iter()
                .zip(&global)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt()
        };
        assert!(dist(&c) < dist(&a) * 0.5, "{} vs {}", dist(&c), dist(&a));
    }

    #[test]
    fn train_errors() {
        let s = ModelSpec {
            input_dim: 3,
            hidden: vec![2],
        };
        let mut m = Autoencoder::new_random(s, &mut rng(1)).unwrap();
        let cfg = TrainConfig::default();
        assert_eq!(
            m.train(Array2::<f32>::zeros((0, 3)).view(), &cfg, None),
            Err(ModelError::EmptyInput)
        );
        assert!(
            m.train(Array2::<f32>::zeros((4, 2)).view(), &cfg, None)
                .is_err()
        );
        assert!(
            m.train(Array2::<f32>::zeros((4, 3)).view(), &cfg, Some(&[0.0]))
                .is_err()
        );
        let bad = TrainConfig {
            batch_size: 0,
            ..cfg.clone()
        };
        assert!(
            m.train(Array2::<f32>::zeros((4, 3)).view(), &bad, None)
                .is_err()
        );
        // Tiny input without a validation split still works.
        let rep = m
            .train(Array2::<f32>::ones((3, 3)).view(), &cfg, None)
            .unwrap();
        assert_eq!(rep.samples, 3);
    }
}
