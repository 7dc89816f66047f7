//! The coordinator's robust stage under secure aggregation: it sees only
//! [`BucketSum`]s — a type the crypto crate constructs only by successful
//! unmasking — so no individual plaintext update exists on this code path
//! when buckets have more than one member.
//!
//! Per round: (a) the bucket norm gate rejects every bucket whose mean is
//! longer than an honest bucket of clipped updates can be
//! ([`BucketSum::mean_norm_bound`]): some member did not clip; (b) the
//! tenant's robust rule runs over the remaining bucket means, weighted by
//! member count; (c) every member of a rejected bucket, or of a bucket the
//! rule flags as an outlier, gets bucket evidence for reputation
//! (`Evidence::Flagged { bucket_size }`), which the SPRT weighs as weaker
//! than per-node evidence. Reshuffled every round, a persistent attacker's
//! buckets keep landing outside, and only its score keeps rising.

use fedmesh_crypto::secagg::BucketSum;

use crate::aggregate::{AggregateError, RuleConfig};
use crate::reputation::{Evidence, ReputationConfig, plaintext_evidence};

/// Gaussian tail multiplier for the norm gate's DP-noise slack
/// (`exp(−t²/2)` ≈ 1.5·10⁻⁸ false rejections per honest bucket at t = 6).
pub const NORM_GATE_TAILS: f64 = 6.0;

/// Outcome of the robust stage over bucket sums.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketAggregate {
    /// The aggregated delta.
    pub value: Vec<f32>,
    /// Bucket ids whose means went into the rule, ascending.
    pub used: Vec<u32>,
    /// Buckets refused by the norm gate, with the reason.
    pub rejected: Vec<(u32, String)>,
    /// Bucket ids the rule left out (Multi-Krum, Bulyan selections).
    pub excluded: Vec<u32>,
    /// Reputation evidence for every contributor of every bucket.
    pub evidence: Vec<(String, Evidence)>,
}

/// Runs the norm gate and `rule` over bucket means. `center` is the
/// centre for centered clipping (the previous aggregate); `max_mean_norm`
/// is an optional tenant bound on bucket means, stricter than the
/// protocol's bound for clipped updates.
pub fn aggregate_buckets(
    sums: &[BucketSum],
    rule: &RuleConfig,
    reputation: &ReputationConfig,
    center: Option<&[f32]>,
    max_mean_norm: Option<f64>,
) -> Result<BucketAggregate, AggregateError> {
    let mut rejected = Vec::new();
    let mut evidence = Vec::new();
    let mut kept: Vec<&BucketSum> = Vec::new();
    for s in sums {
        let norm = s.mean_l2_norm();
        let bound = match max_mean_norm {
            Some(m) => s.mean_norm_bound(NORM_GATE_TAILS).min(m),
            None => s.mean_norm_bound(NORM_GATE_TAILS),
        };
        if norm.is_finite() && norm <= bound {
            kept.push(s);
        } else {
            let reason = format!(
                "bucket {} mean norm {norm:.4} exceeds the bound {bound:.4} of clipped updates",
                s.bucket()
            );
            for n in s.contributors() {
                evidence.push((
                    n.to_string(),
                    Evidence::Flagged {
                        bucket_size: s.member_count(),
                        reason: reason.clone(),
                    },
                ));
            }
            rejected.push((s.bucket(), reason));
        }
    }
    let means: Vec<Vec<f32>> = kept
        .iter()
        .map(|s| s.mean().into_iter().map(|v| v as f32).collect())
        .collect();
    let rows: Vec<&[f32]> = means.iter().map(Vec::as_slice).collect();
    let weights: Vec<f64> = kept.iter().map(|s| s.member_count() as f64).collect();
    let outcome = rule.aggregate_from(&rows, &weights, center)?;
    let labels: Vec<String> = kept.iter().map(|s| s.bucket().to_string()).collect();
    let per_bucket = plaintext_evidence(
        reputation,
        &labels,
        &rows,
        &outcome.value,
        &outcome.selected,
        &[],
    );
    for (s, (_, ev)) in kept.iter().zip(per_bucket) {
        let size = s.member_count();
        let ev = match ev {
            Evidence::Clean { .. } => Evidence::Clean { bucket_size: size },
            Evidence::Flagged { reason, .. } => Evidence::Flagged {
                bucket_size: size,
                reason: format!("bucket {}: {reason}", s.bucket()),
            },
        };
        for n in s.contributors() {
            evidence.push((n.to_string(), ev.clone()));
        }
    }
    let excluded = kept
        .iter()
        .enumerate()
        .filter(|(i, _)| outcome.selected.binary_search(i).is_err())
        .map(|(_, s)| s.bucket())
        .collect();
    let mut used: Vec<u32> = outcome
        .selected
        .iter()
        .filter_map(|&i| kept.get(i).map(|s| s.bucket()))
        .collect();
    used.sort_unstable();
    evidence.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(BucketAggregate {
        value: outcome.value,
        used,
        rejected,
        excluded,
        evidence,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fedmesh_crypto::identity::{NodeId, TenantId};
    use fedmesh_crypto::secagg::local::{Dropout, run_bucket};
    use fedmesh_crypto::secagg::{AssignmentInput, BucketParams, QuantConfig, assign_buckets};
    use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use time::OffsetDateTime;

    use super::*;
    use crate::aggregate::Rule;
    use crate::reputation::Reputation;

    struct Fleet {
        tenant: TenantId,
        nodes: Vec<NodeId>,
        signers: BTreeMap<NodeId, CertSigner>,
        verifier: CertVerifier,
        now: OffsetDateTime,
    }

    fn fleet(n: usize) -> Fleet {
        let now = OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap();
        let ca = MeshCa::generate("secure CA", now, 30).unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let nodes: Vec<NodeId> = (0..n)
            .map(|i| format!("n{i:02}").parse().unwrap())
            .collect();
        let signers = nodes
            .iter()
            .map(|id| {
                let c = ca.issue_node(&tenant, id, now, 30).unwrap();
                (
                    id.clone(),
                    CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap(),
                )
            })
            .collect();
        Fleet {
            verifier: CertVerifier::new(ca.cert_pem()).unwrap(),
            tenant,
            nodes,
            signers,
            now,
        }
    }

    /// One round: buckets of `k` by the verifiable shuffle, each masked
    /// and unmasked for real; returns the bucket sums.
    fn round(
        f: &Fleet,
        round: u64,
        k: usize,
        updates: &BTreeMap<NodeId, Vec<f32>>,
        clip: f64,
    ) -> Vec<BucketSum> {
        let input = AssignmentInput {
            tenant: &f.tenant,
            round,
            participants: &f.nodes,
            model_digest: [round as u8; 32],
            bucket_size: k,
        };
        let dim = updates.values().next().unwrap().len();
        let quant = QuantConfig::new(clip, 65536.0).unwrap();
        let signers: BTreeMap<NodeId, &CertSigner> =
            f.signers.iter().map(|(n, s)| (n.clone(), s)).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(round);
        assign_buckets(&input)
            .unwrap()
            .buckets
            .iter()
            .map(|b| {
                let params = BucketParams::new(
                    f.tenant.clone(),
                    round,
                    round - 1,
                    b.id,
                    b.members.clone(),
                    None,
                    dim,
                    quant,
                    None,
                )
                .unwrap();
                run_bucket(
                    &params,
                    updates,
                    &signers,
                    &f.verifier,
                    &BTreeMap::<NodeId, Dropout>::new(),
                    f.now,
                    &mut rng,
                )
                .unwrap()
            })
            .collect()
    }

    fn updates(f: &Fleet, bad: &[usize], bad_value: f32) -> BTreeMap<NodeId, Vec<f32>> {
        f.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = if bad.contains(&i) {
                    vec![bad_value; 16]
                } else {
                    (0..16)
                        .map(|j| 0.01 + 0.0005 * ((i + j) % 5) as f32)
                        .collect()
                };
                (n.clone(), v)
            })
            .collect()
    }

    #[test]
    fn median_over_bucket_means_keeps_a_sign_flipper_out() {
        // 20 nodes in buckets of 4, two sign-flipping attackers (clipped,
        // so the norm gate cannot see them): FedAvg over buckets is pulled
        // toward them, the median of bucket means is not.
        let f = fleet(20);
        let ups = updates(&f, &[3, 11], -0.2);
        let sums = round(&f, 1, 4, &ups, 1.0);
        assert_eq!(sums.len(), 5);
        let rep = ReputationConfig::default();
        let honest = 0.011f32;
        let median =
            aggregate_buckets(&sums, &RuleConfig::from(Rule::Median), &rep, None, None).unwrap();
        let fedavg =
            aggregate_buckets(&sums, &RuleConfig::from(Rule::FedAvg), &rep, None, None).unwrap();
        let err = |v: &[f32]| v.iter().map(|x| (x - honest).abs()).fold(0f32, f32::max);
        assert!(err(&median.value) < 0.003, "median {:?}", median.value);
        assert!(err(&fedavg.value) > 0.015, "fedavg {:?}", fedavg.value);
        // The attackers' buckets are flagged; its members get bucket evidence.
        let flagged: Vec<&str> = median
            .evidence
            .iter()
            .filter(|(_, e)| matches!(e, Evidence::Flagged { .. }))
            .map(|(n, _)| n.as_str())
            .collect();
        assert!(
            flagged.contains(&"n03") && flagged.contains(&"n11"),
            "{flagged:?}"
        );
        assert!(median.evidence.iter().all(|(_, e)| matches!(
            e,
            Evidence::Flagged { bucket_size: 4, .. } | Evidence::Clean { bucket_size: 4 }
        )));
    }

    #[test]
    fn norm_gate_rejects_buckets_above_the_tenant_bound() {
        // Clipping happens inside the client (`mask_update`), so an honest
        // bucket never exceeds the protocol bound; the tenant's stricter
        // bound on bucket means is the policy knob tested here: one member
        // sends a legal (C = 16) but long update, its bucket is rejected and
        // every member gets bucket evidence.
        let f = fleet(8);
        let mut ups = updates(&f, &[], 0.0);
        ups.insert(f.nodes[0].clone(), vec![2.0; 16]);
        let sums = round(&f, 2, 4, &ups, 16.0);
        let rep = ReputationConfig::default();
        let fedavg = RuleConfig::from(Rule::FedAvg);
        let loose = aggregate_buckets(&sums, &fedavg, &rep, None, None).unwrap();
        assert!(loose.rejected.is_empty());
        assert_eq!(loose.used, vec![0, 1]);
        let strict = aggregate_buckets(&sums, &fedavg, &rep, None, Some(0.5)).unwrap();
        assert_eq!(strict.rejected.len(), 1, "{:?}", strict.rejected);
        assert!(strict.rejected[0].1.contains("exceeds"));
        assert_eq!(strict.used.len(), 1);
        for v in &strict.value {
            assert!((v - 0.011).abs() < 0.002, "{v}");
        }
        let flagged = strict
            .evidence
            .iter()
            .filter(|(_, e)| matches!(e, Evidence::Flagged { .. }))
            .count();
        assert_eq!(flagged, 4);
        // Every bucket rejected: the rule has nothing to aggregate.
        assert!(aggregate_buckets(&sums, &fedavg, &rep, None, Some(1e-6)).is_err());
    }

    #[test]
    fn persistent_attacker_is_singled_out_across_reshuffled_rounds() {
        // 16 nodes, buckets of 4, one persistent sign flipper; buckets are
        // reshuffled every round. Bucket evidence accumulates on the
        // attacker only; honest bucket-mates are flagged only when they
        // share its bucket, which changes every round.
        let f = fleet(16);
        let ups = updates(&f, &[5], -0.3);
        let mut rep = Reputation::new(ReputationConfig::default());
        let rule = RuleConfig::from(Rule::Median);
        let mut quarantined_at = None;
        for r in 1..=20u64 {
            let sums = round(&f, r, 4, &ups, 1.0);
            let out = aggregate_buckets(&sums, &rule, rep.config(), None, None).unwrap();
            rep.observe_round(r, &out.evidence);
            if rep.is_quarantined("n05") {
                quarantined_at = Some(r);
                break;
            }
        }
        let at = quarantined_at.expect("the attacker was never quarantined");
        assert!(at <= 12, "took {at} rounds");
        assert_eq!(
            rep.quarantined().into_iter().collect::<Vec<_>>(),
            vec!["n05".to_string()]
        );
    }
}
