//! From events to verdicts: feature windows, standardization, the
//! autoencoder and its calibrated detector, the rule layer and severity.

pub mod detector;
pub mod features;
pub mod incident;
pub mod model;
pub mod rise;
pub mod rules;
pub mod scaler;
pub mod severity;
