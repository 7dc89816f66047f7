//! Validation of a plaintext update: a pure function of the request, the
//! tenant's limits and the open round's public facts. No lock, no clock, no
//! I/O: the round machine calls it before recording anything, and its unit
//! tests need no TLS.
//!
//! The checks run in a fixed order (schema hash, open round, secure mode,
//! round number, base version, selection, duplicate, delta present, tensor,
//! shape, norm, the other numeric fields), so a request that is wrong in
//! several ways is always refused for the same reason. Each refusal is a
//! [`FedError`] whose [`FedError::label`] is one of a closed set
//! ([`crate::error::REFUSAL_LABELS`] and [`InvalidReason::LABELS`]); only
//! `FedError::Refused` reasons are attributable evidence against the sender.

use fedmesh_crypto::NodeId;
use fedmesh_proto::v1;

use crate::aggregate;
use crate::bounds::{InvalidReason, check_num_samples, check_scaler_stats, check_train_loss};
use crate::config::TenantConfig;
use crate::error::FedError;
use crate::round::{OpenInfo, ValidUpdate};

/// What an update is checked against besides the open round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The model schema hash every update must carry.
    pub schema_hash: [u8; 32],
    /// Parameters of the model (the delta's length).
    pub param_count: usize,
    /// Largest accepted L2 norm of a delta.
    pub max_update_norm: f32,
    /// Largest accepted `num_samples` (and scaler count).
    pub max_samples_per_update: u64,
    /// Features of the model (the scaler sums' length).
    pub input_dim: usize,
}

impl Limits {
    /// The limits of a tenant's configuration for a model of
    /// `param_count` parameters with schema hash `schema_hash`.
    pub fn of(cfg: &TenantConfig, schema_hash: [u8; 32], param_count: usize) -> Self {
        Self {
            schema_hash,
            param_count,
            max_update_norm: cfg.max_update_norm,
            max_samples_per_update: cfg.max_samples_per_update,
            input_dim: cfg.model.input_dim,
        }
    }
}

/// The open round as validation sees it.
#[derive(Debug, Clone, Copy)]
pub struct RoundFacts<'a> {
    /// Public facts of the round.
    pub info: &'a OpenInfo,
    /// The round aggregates securely (plaintext updates are refused).
    pub secure: bool,
    /// The sender already has an update recorded in this round.
    pub submitted: bool,
}

/// Validates a plaintext update from `node` completely; on success the
/// returned [`ValidUpdate`] is what the round records. `version` is the
/// latest committed version (named when no round is open).
pub fn update(
    limits: &Limits,
    version: u64,
    round: Option<RoundFacts<'_>>,
    node: &NodeId,
    req: v1::UpdateRequest,
    wire_bytes: u64,
) -> Result<ValidUpdate, FedError> {
    if req.schema_hash != limits.schema_hash {
        return Err(FedError::Refused(InvalidReason::SchemaHash));
    }
    let round = round.ok_or(FedError::NoOpenRound { version })?;
    check_round(&round, node, &req)?;
    let delta = check_delta(limits, &req).map_err(FedError::Refused)?;
    check_fields(limits, &req).map_err(FedError::Refused)?;
    Ok(ValidUpdate {
        node: node.clone(),
        round: req.round,
        base_version: req.base_version,
        delta,
        num_samples: req.num_samples,
        scaler: req.scaler_stats,
        train_loss: req.train_loss,
        wire_bytes,
    })
}

/// Whether the update belongs to the open round: mode, round number, base
/// version, selection (selected or shadow) and no earlier update.
fn check_round(
    round: &RoundFacts<'_>,
    node: &NodeId,
    req: &v1::UpdateRequest,
) -> Result<(), FedError> {
    let info = round.info;
    if round.secure {
        return Err(FedError::Phase(format!(
            "round {} aggregates securely in buckets: send SecAgg messages, not a plaintext update",
            info.round
        )));
    }
    if req.round != info.round {
        return Err(FedError::WrongRound {
            got: req.round,
            open: info.round,
        });
    }
    if req.base_version != info.base_version {
        return Err(FedError::StaleVersion {
            round: info.round,
            got: req.base_version,
            expected: info.base_version,
        });
    }
    if !info.selected.contains(node) && !info.shadow.contains(node) {
        return Err(FedError::NotSelected {
            node: node.to_string(),
            round: info.round,
        });
    }
    if round.submitted {
        return Err(FedError::Duplicate {
            node: node.to_string(),
            round: info.round,
        });
    }
    Ok(())
}

/// The delta: present, a well-formed f32 tensor of exactly the model's
/// length and shape, finite, within the norm bound.
fn check_delta(limits: &Limits, req: &v1::UpdateRequest) -> Result<Vec<f32>, InvalidReason> {
    let tensor = req.delta.as_ref().ok_or(InvalidReason::MissingDelta)?;
    let delta =
        fedmesh_proto::decode_f32(tensor, limits.param_count).map_err(InvalidReason::Tensor)?;
    if delta.len() != limits.param_count || tensor.shape != [limits.param_count as u64] {
        return Err(InvalidReason::Shape {
            got: fedmesh_proto::ShapeSummary::of(&tensor.shape),
            expected: limits.param_count,
        });
    }
    let norm = aggregate::l2_norm(&delta);
    if norm > f64::from(limits.max_update_norm) {
        return Err(InvalidReason::Norm {
            norm,
            bound: limits.max_update_norm,
        });
    }
    Ok(delta)
}

/// The numeric fields besides the delta (see [`crate::bounds`]):
/// `num_samples` in `1..=max_samples_per_update`, `train_loss` finite in
/// `[0, 10⁶]`, and the scaler statistics, when present.
fn check_fields(limits: &Limits, req: &v1::UpdateRequest) -> Result<(), InvalidReason> {
    check_num_samples(req.num_samples, limits.max_samples_per_update)?;
    check_train_loss(req.train_loss)?;
    if let Some(s) = &req.scaler_stats {
        check_scaler_stats(s, limits.input_dim, limits.max_samples_per_update)
            .map_err(InvalidReason::Scaler)?;
    }
    Ok(())
}

/// Checks the numeric fields of an update besides its delta against the
/// tenant's bounds (see [`crate::bounds`]): `num_samples` in
/// `1..=max_samples_per_update`, `train_loss` finite in `[0, 10⁶]`, and the
/// scaler statistics, when present.
pub fn validate_fields(req: &v1::UpdateRequest, cfg: &TenantConfig) -> Result<(), InvalidReason> {
    check_fields(&Limits::of(cfg, [0; 32], 0), req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const PARAMS: usize = 4;

    fn limits() -> Limits {
        Limits {
            schema_hash: [7; 32],
            param_count: PARAMS,
            max_update_norm: 1.0,
            max_samples_per_update: 1000,
            input_dim: 2,
        }
    }

    fn node(n: &str) -> NodeId {
        n.parse().unwrap()
    }

    fn info() -> OpenInfo {
        OpenInfo {
            round: 5,
            base_version: 3,
            selected: ["a", "b"].iter().map(|n| node(n)).collect(),
            shadow: BTreeSet::from([node("q")]),
            deadline_unix_ms: 0,
            training: v1::TrainingParams::default(),
            secure: None,
        }
    }

    fn request(delta: &[f32]) -> v1::UpdateRequest {
        v1::UpdateRequest {
            tenant: "acme".into(),
            node: "a".into(),
            round: 5,
            base_version: 3,
            schema_hash: vec![7; 32],
            delta: Some(fedmesh_proto::encode_f32(delta, &[delta.len() as u64])),
            num_samples: 10,
            scaler_stats: Some(v1::ScalerStats {
                count: 10,
                sum: vec![1.0; 2],
                sum_sq: vec![2.0; 2],
            }),
            train_loss: 0.5,
        }
    }

    fn check(
        facts: Option<RoundFacts<'_>>,
        who: &str,
        req: v1::UpdateRequest,
    ) -> Result<ValidUpdate, FedError> {
        update(&limits(), 3, facts, &node(who), req, 99)
    }

    fn open(info: &OpenInfo) -> Option<RoundFacts<'_>> {
        Some(RoundFacts {
            info,
            secure: false,
            submitted: false,
        })
    }

    #[test]
    fn a_valid_update_is_returned_whole() {
        let i = info();
        let u = check(open(&i), "a", request(&[0.1, 0.2, 0.0, -0.1])).unwrap();
        assert_eq!(u.node, node("a"));
        assert_eq!((u.round, u.base_version, u.num_samples), (5, 3, 10));
        assert_eq!(u.delta, vec![0.1, 0.2, 0.0, -0.1]);
        assert_eq!(u.wire_bytes, 99);
        // A shadow (quarantined) node's update is validated like any other.
        assert!(check(open(&i), "q", request(&[0.0; PARAMS])).is_ok());
    }

    #[test]
    fn the_schema_hash_is_checked_first_even_without_an_open_round() {
        let mut r = request(&[f32::NAN; PARAMS]);
        r.schema_hash = vec![0; 32];
        let e = check(None, "a", r).unwrap_err();
        assert_eq!(e.label(), "invalid_schema_hash");
        assert!(e.invalid_reason().is_some());
        let e = check(None, "a", request(&[0.0; PARAMS])).unwrap_err();
        assert!(matches!(e, FedError::NoOpenRound { version: 3 }), "{e:?}");
        assert!(e.invalid_reason().is_none());
    }

    #[test]
    fn round_membership_refusals_come_in_order_and_are_not_evidence() {
        let i = info();
        let secure = Some(RoundFacts {
            info: &i,
            secure: true,
            submitted: false,
        });
        let mut wrong_round = request(&[0.0; PARAMS]);
        wrong_round.round = 4;
        assert_eq!(
            check(secure, "a", wrong_round.clone()).unwrap_err().label(),
            "wrong_phase"
        );
        assert_eq!(
            check(open(&i), "a", wrong_round).unwrap_err().label(),
            "wrong_round"
        );
        let mut stale = request(&[0.0; PARAMS]);
        stale.base_version = 2;
        // A stranger with a stale base is refused for the base first.
        assert_eq!(
            check(open(&i), "zed", stale).unwrap_err().label(),
            "stale_version"
        );
        let e = check(open(&i), "zed", request(&[0.0; PARAMS])).unwrap_err();
        assert_eq!(e.label(), "not_selected");
        let again = Some(RoundFacts {
            info: &i,
            secure: false,
            submitted: true,
        });
        let e = check(again, "a", request(&[f32::NAN; PARAMS])).unwrap_err();
        assert_eq!(e.label(), "duplicate");
        assert!(e.invalid_reason().is_none());
    }

    #[test]
    fn every_numeric_field_has_a_typed_reason() {
        let i = info();
        let label = |r: v1::UpdateRequest| {
            let e = check(open(&i), "a", r).unwrap_err();
            assert!(e.invalid_reason().is_some(), "{e:?}");
            assert!(InvalidReason::LABELS.contains(&e.label()));
            e.label()
        };
        let mut r = request(&[0.0; PARAMS]);
        r.delta = None;
        assert_eq!(label(r), "invalid_missing_delta");
        assert_eq!(label(request(&[0.0, f32::NAN, 0.0, 0.0])), "invalid_tensor");
        assert_eq!(label(request(&[0.0; PARAMS + 1])), "invalid_tensor");
        let mut r = request(&[0.0; PARAMS]);
        if let Some(t) = r.delta.as_mut() {
            t.shape = vec![2, 2];
        }
        assert_eq!(label(r), "invalid_shape");
        assert_eq!(label(request(&[1.0, 1.0, 0.0, 0.0])), "invalid_norm");
        let mut r = request(&[0.0; PARAMS]);
        r.num_samples = 0;
        assert_eq!(label(r), "invalid_num_samples");
        let mut r = request(&[0.0; PARAMS]);
        r.num_samples = 1001;
        assert_eq!(label(r), "invalid_num_samples");
        let mut r = request(&[0.0; PARAMS]);
        r.train_loss = f32::INFINITY;
        assert_eq!(label(r), "invalid_train_loss");
        let mut r = request(&[0.0; PARAMS]);
        r.scaler_stats = Some(v1::ScalerStats {
            count: 10,
            sum: vec![1.0; 3],
            sum_sq: vec![2.0; 3],
        });
        assert_eq!(label(r), "invalid_scaler");
        // Without scaler sums the update is fine.
        let mut r = request(&[0.0; PARAMS]);
        r.scaler_stats = None;
        assert!(check(open(&i), "a", r).is_ok());
    }
}
