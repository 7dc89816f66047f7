//! The whole per-bucket protocol run in one process, message by message
//! through the same [`ClientRound`] and [`BucketUnmasker`] state machines a
//! networked coordinator and its nodes use, with every message encoded and
//! decoded on the way. For simulations (real masking, real dropouts) and
//! tests of the coordinator's robust stage.

use std::collections::{BTreeMap, BTreeSet};

use rand::{CryptoRng, RngCore};
use time::OffsetDateTime;

use super::messages::{EncryptedShare, KeyAdvert, MaskedInput, UnmaskResponse};
use super::{BucketParams, BucketSum, BucketUnmasker, ClientRound, SecAggError};
use crate::identity::NodeId;
use crate::{CertSigner, CertVerifier};

/// When a member stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropout {
    /// Never sends its key advertisement (not part of the bucket at all).
    BeforeAdvert,
    /// Shares its keys, then never sends its masked update (its masks are
    /// removed with the survivors' shares of its mask key).
    AfterShares,
    /// Sends its masked update but never answers the unmask request.
    AfterMasked,
}

/// Runs one bucket: `updates` maps each member to its (unclipped) update;
/// `signers` holds each member's long-term signing key; `dropouts` says
/// who stops when. Returns the bucket sum, or the protocol's error (for
/// example fewer survivors than the threshold).
pub fn run_bucket<R: RngCore + CryptoRng>(
    params: &BucketParams,
    updates: &BTreeMap<NodeId, Vec<f32>>,
    signers: &BTreeMap<NodeId, &CertSigner>,
    verifier: &CertVerifier,
    dropouts: &BTreeMap<NodeId, Dropout>,
    now: OffsetDateTime,
    rng: &mut R,
) -> Result<BucketSum, SecAggError> {
    run_bucket_with_extra(
        params,
        updates,
        &BTreeMap::new(),
        signers,
        verifier,
        dropouts,
        now,
        rng,
    )
}

/// [`run_bucket`] for buckets with extra raw words
/// ([`BucketParams::with_extra_words`]): `extras` holds each member's words
/// (members without an entry send zeros).
#[allow(clippy::too_many_arguments)]
pub fn run_bucket_with_extra<R: RngCore + CryptoRng>(
    params: &BucketParams,
    updates: &BTreeMap<NodeId, Vec<f32>>,
    extras: &BTreeMap<NodeId, Vec<u32>>,
    signers: &BTreeMap<NodeId, &CertSigner>,
    verifier: &CertVerifier,
    dropouts: &BTreeMap<NodeId, Dropout>,
    now: OffsetDateTime,
    rng: &mut R,
) -> Result<BucketSum, SecAggError> {
    let zeros = vec![0u32; params.extra_words()];
    let missing = |n: &NodeId| SecAggError::Config(format!("no update or signer for {n}"));
    let stops = |n: &NodeId, at: Dropout| dropouts.get(n) == Some(&at);
    let mut server = BucketUnmasker::new(params.clone(), verifier.clone());
    let mut clients: BTreeMap<NodeId, ClientRound> = BTreeMap::new();
    for m in params.members() {
        if stops(m, Dropout::BeforeAdvert) {
            continue;
        }
        let signer = signers.get(m).ok_or_else(|| missing(m))?;
        let c = ClientRound::new(params.clone(), m.clone(), rng)?;
        let advert = KeyAdvert::decode(&c.advertise(signer)?.encode())?;
        server.accept_advert(advert, now)?;
        clients.insert(m.clone(), c);
    }
    let adverts = server.close_adverts()?;
    for (m, c) in &mut clients {
        c.receive_adverts(&adverts, verifier, now)?;
        let shares = c
            .share_keys(rng)?
            .iter()
            .map(|s| EncryptedShare::decode(&s.encode()))
            .collect::<Result<Vec<_>, _>>()?;
        server.accept_shares(m, shares)?;
    }
    server.close_shares()?;
    let mut masked: BTreeSet<NodeId> = BTreeSet::new();
    for (m, c) in &mut clients {
        c.receive_shares(&server.shares_for(m)?)?;
        let signer = signers.get(m).ok_or_else(|| missing(m))?;
        let update = updates.get(m).ok_or_else(|| missing(m))?;
        let extra = extras.get(m).unwrap_or(&zeros);
        let y = c.mask_update_with_extra(update, extra, signer, rng)?;
        if !stops(m, Dropout::AfterShares) {
            server.accept_masked(MaskedInput::decode(&y.encode())?, now)?;
            masked.insert(m.clone());
        }
    }
    let request = server.unmask_request()?;
    for (m, c) in &mut clients {
        if !masked.contains(m) || stops(m, Dropout::AfterMasked) {
            continue;
        }
        let signer = signers.get(m).ok_or_else(|| missing(m))?;
        let r = c.unmask(&request, signer)?;
        server.accept_response(UnmaskResponse::decode(&r.encode())?, now)?;
    }
    server.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshCa;
    use crate::identity::TenantId;
    use crate::secagg::QuantConfig;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn bucket_with_each_kind_of_dropout_sums_the_survivors() {
        let now = OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap();
        let ca = MeshCa::generate("local CA", now, 30).unwrap();
        let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
        let tenant: TenantId = "acme".parse().unwrap();
        let members: Vec<NodeId> = (0..10).map(|i| format!("m{i}").parse().unwrap()).collect();
        let owned: BTreeMap<NodeId, CertSigner> = members
            .iter()
            .map(|n| {
                let c = ca.issue_node(&tenant, n, now, 30).unwrap();
                (
                    n.clone(),
                    CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap(),
                )
            })
            .collect();
        let signers: BTreeMap<NodeId, &CertSigner> =
            owned.iter().map(|(n, s)| (n.clone(), s)).collect();
        let updates: BTreeMap<NodeId, Vec<f32>> = members
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), vec![0.01 * i as f32, -0.02, 0.003 * i as f32]))
            .collect();
        let quant = QuantConfig::new(1.0, 65536.0).unwrap();
        let params =
            BucketParams::new(tenant, 3, 2, 0, members.clone(), None, 3, quant, None).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        // 10 members, t = 7: one drops before advertising, one after
        // sharing; one that does not answer unmasking still counts (its
        // masked update arrived and the others' shares remove its masks).
        let dropouts: BTreeMap<NodeId, Dropout> = [
            (members[1].clone(), Dropout::BeforeAdvert),
            (members[4].clone(), Dropout::AfterShares),
            (members[6].clone(), Dropout::AfterMasked),
        ]
        .into_iter()
        .collect();
        let sum = run_bucket(
            &params, &updates, &signers, &verifier, &dropouts, now, &mut rng,
        )
        .unwrap();
        let expect: Vec<&NodeId> = members
            .iter()
            .filter(|m| **m != members[1] && **m != members[4])
            .collect();
        assert_eq!(sum.contributors().iter().collect::<Vec<_>>(), expect);
        for (j, got) in sum.sum().iter().enumerate() {
            let want: f64 = expect.iter().map(|n| f64::from(updates[*n][j])).sum();
            assert!((got - want).abs() < 5.0 / 65536.0, "{got} vs {want}");
        }
        // Extra raw words are masked and summed exactly, after the update.
        let extra_params = params.clone().with_extra_words(2).unwrap();
        let extras: BTreeMap<NodeId, Vec<u32>> = members
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), vec![i as u32, 1000 + i as u32]))
            .collect();
        let with_extra = run_bucket_with_extra(
            &extra_params,
            &updates,
            &extras,
            &signers,
            &verifier,
            &dropouts,
            now,
            &mut rng,
        )
        .unwrap();
        let idx: Vec<u32> = (0..10u32).filter(|i| *i != 1 && *i != 4).collect();
        assert_eq!(
            with_extra.extra(),
            &[
                idx.iter().sum::<u32>(),
                idx.iter().map(|i| 1000 + i).sum::<u32>()
            ]
        );
        assert_eq!(with_extra.raw().len(), 3);
        for (j, got) in with_extra.sum().iter().enumerate() {
            let want: f64 = expect.iter().map(|n| f64::from(updates[*n][j])).sum();
            assert!((got - want).abs() < 5.0 / 65536.0, "{got} vs {want}");
        }
        // Too many dropouts: the bucket is refused, with an error.
        let many: BTreeMap<NodeId, Dropout> = members[..4]
            .iter()
            .map(|m| (m.clone(), Dropout::AfterShares))
            .collect();
        assert!(run_bucket(&params, &updates, &signers, &verifier, &many, now, &mut rng).is_err());
    }
}
