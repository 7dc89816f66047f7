//! From events to verdicts: feature windows, standardization, the
//! autoencoder and its calibrated detector, and the rule layer.

pub mod detector;
pub mod features;
pub mod model;
pub mod rules;
pub mod scaler;
