#![allow(clippy::needless_range_loop)] // clients, signers and updates are parallel arrays
//! End-to-end runs of the bucket protocol between `ClientRound`s and a
//! `BucketUnmasker`, with and without dropouts, and its refusals.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::identity::NodeId;
use crate::test_util::{ca, now, tenant};
use crate::{CertSigner, CertVerifier, MeshCa};

struct Mesh {
    ca: MeshCa,
    verifier: CertVerifier,
}

impl Mesh {
    fn new() -> Self {
        let ca = ca();
        let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
        Self { ca, verifier }
    }
    fn signer(&self, t: &str, n: &NodeId) -> CertSigner {
        let issued = self.ca.issue_node(&tenant(t), n, now(), 30).unwrap();
        CertSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()
    }
}

fn ids(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| format!("node-{i:02}").parse().unwrap())
        .collect()
}

fn params(n: usize, dim: usize, scale: f64, noise: Option<f64>) -> BucketParams {
    BucketParams::new(
        tenant("acme"),
        5,
        4,
        2,
        ids(n),
        None,
        dim,
        QuantConfig::new(1.0, scale).unwrap(),
        noise,
    )
    .unwrap()
}

/// A bucket mid-protocol: clients after receive_shares, server after close_shares.
struct Bucket {
    params: BucketParams,
    clients: Vec<ClientRound>,
    signers: Vec<CertSigner>,
    server: BucketUnmasker,
}

fn setup(mesh: &Mesh, params: BucketParams, seed: u64) -> Bucket {
    let members = params.members().to_vec();
    let signers: Vec<CertSigner> = members.iter().map(|m| mesh.signer("acme", m)).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut clients: Vec<ClientRound> = members
        .iter()
        .map(|m| ClientRound::new(params.clone(), m.clone(), &mut rng).unwrap())
        .collect();
    let mut server = BucketUnmasker::new(params.clone(), mesh.verifier.clone());
    for (c, s) in clients.iter().zip(&signers) {
        let advert = c.advertise(s).unwrap();
        // Through the wire.
        server
            .accept_advert(KeyAdvert::decode(&advert.encode()).unwrap(), now())
            .unwrap();
    }
    let adverts = server.close_adverts().unwrap();
    for c in &mut clients {
        c.receive_adverts(&adverts, &mesh.verifier, now()).unwrap();
    }
    for (c, m) in clients.iter_mut().zip(&members) {
        let shares = c.share_keys(&mut rng).unwrap();
        let shares = shares
            .iter()
            .map(|s| EncryptedShare::decode(&s.encode()).unwrap())
            .collect();
        server.accept_shares(m, shares).unwrap();
    }
    server.close_shares().unwrap();
    for (c, m) in clients.iter_mut().zip(&members) {
        c.receive_shares(&server.shares_for(m).unwrap()).unwrap();
    }
    Bucket {
        params,
        clients,
        signers,
        server,
    }
}

fn updates(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xfeed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-0.5f32..0.5)).collect())
        .collect()
}

/// Runs rounds 2 and 3 with `dropped` members never sending a masked input.
/// Returns the bucket sum and the survivors' plain quantized sum.
fn finish(
    b: &mut Bucket,
    ups: &[Vec<f32>],
    dropped: &BTreeSet<usize>,
    seed: u64,
) -> (BucketSum, Vec<u32>) {
    let mut plain = vec![0u32; b.params.dim()];
    for (i, (c, s)) in b.clients.iter_mut().zip(&b.signers).enumerate() {
        let mut rng = ChaCha20Rng::seed_from_u64(seed + i as u64);
        let q = b
            .params
            .quant()
            .quantize(&ups[i], &mut rng.clone())
            .unwrap();
        let input = c.mask_update(&ups[i], s, &mut rng).unwrap();
        if dropped.contains(&i) {
            continue;
        }
        for (p, w) in plain.iter_mut().zip(&q) {
            *p = p.wrapping_add(*w);
        }
        b.server
            .accept_masked(MaskedInput::decode(&input.encode()).unwrap(), now())
            .unwrap();
    }
    let request = b.server.unmask_request().unwrap();
    let request = UnmaskRequest::decode(&request.encode()).unwrap();
    for (i, (c, s)) in b.clients.iter_mut().zip(&b.signers).enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        let response = c.unmask(&request, s).unwrap();
        b.server
            .accept_response(UnmaskResponse::decode(&response.encode()).unwrap(), now())
            .unwrap();
    }
    (b.server.finish().unwrap(), plain)
}

fn float_sum(b: &Bucket, ups: &[Vec<f32>], dropped: &BTreeSet<usize>) -> Vec<f64> {
    let mut sum = vec![0f64; b.params.dim()];
    for (i, u) in ups.iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        let (clipped, _) = b.params.quant().clip(u).unwrap();
        for (s, v) in sum.iter_mut().zip(clipped) {
            *s += v;
        }
    }
    sum
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn unmasked_sum_is_exact_with_dropouts(
        n in 1usize..9,
        dim in 1usize..300,
        seed in any::<u64>(),
        drop_pick in any::<u64>(),
    ) {
        let mesh = Mesh::new();
        let p = params(n, dim, 4096.0, None);
        let max_drop = n - p.threshold();
        let mut pick = ChaCha20Rng::seed_from_u64(drop_pick);
        let ndrop = if max_drop == 0 { 0 } else { pick.random_range(0..=max_drop) };
        let mut dropped = BTreeSet::new();
        while dropped.len() < ndrop {
            dropped.insert(pick.random_range(0..n));
        }
        let mut b = setup(&mesh, p, seed);
        let ups = updates(n, dim, seed);
        let (sum, plain) = finish(&mut b, &ups, &dropped, seed);
        prop_assert_eq!(sum.raw(), &plain[..]);
        prop_assert_eq!(sum.member_count(), n - ndrop);
        let float = float_sum(&b, &ups, &dropped);
        let bound = b.params.quant().max_sum_error(n - ndrop);
        for (got, want) in sum.sum().iter().zip(&float) {
            prop_assert!((got - want).abs() < bound, "{} vs {}", got, want);
        }
    }
}

#[test]
fn masked_words_look_uniform() {
    // A zero update masked in a bucket of 4: the top byte of 2^16 words must
    // pass a chi-square test with 255 degrees of freedom at the 10^-6 level
    // (critical value 377.2 by the Wilson–Hilferty approximation), i.e. a
    // correct implementation fails this with probability 10^-6 per seed; the
    // seed is fixed, so the test is deterministic.
    let mesh = Mesh::new();
    let dim = 1 << 16;
    let mut b = setup(&mesh, params(4, dim, 1024.0, None), 77);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let input = b.clients[0]
        .mask_update(&vec![0.0; dim], &b.signers[0], &mut rng)
        .unwrap();
    let mut bins = [0u32; 256];
    for w in &input.words {
        bins[(w >> 24) as usize] += 1;
    }
    let expected = dim as f64 / 256.0;
    let chi2: f64 = bins
        .iter()
        .map(|&o| (f64::from(o) - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 377.2, "chi-square {chi2}");
    // Unmasked, the same update is all zeros: the test can fail.
    assert!(input.words.iter().filter(|w| **w == 0).count() < 10);
}

#[test]
fn too_few_survivors_drop_the_bucket_not_the_round() {
    let mesh = Mesh::new();
    let p = params(4, 8, 1024.0, None); // t = 3
    let mut b = setup(&mesh, p, 3);
    let ups = updates(4, 8, 3);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for i in 0..2 {
        let input = b.clients[i]
            .mask_update(&ups[i], &b.signers[i], &mut rng)
            .unwrap();
        b.server.accept_masked(input, now()).unwrap();
    }
    let e = b.server.unmask_request().unwrap_err();
    assert!(
        matches!(
            e,
            SecAggError::BucketDropped {
                bucket: 2,
                survivors: 2,
                threshold: 3
            }
        ),
        "{e}"
    );
}

#[test]
fn never_both_secrets_of_one_node() {
    let mesh = Mesh::new();
    let p = params(4, 8, 1024.0, None);
    let mut b = setup(&mesh, p, 4);
    let ups = updates(4, 8, 4);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut inputs = Vec::new();
    for i in 0..4 {
        inputs.push(
            b.clients[i]
                .mask_update(&ups[i], &b.signers[i], &mut rng)
                .unwrap(),
        );
    }
    let members = b.params.members().to_vec();
    let first = UnmaskRequest {
        tenant: tenant("acme"),
        round: 5,
        bucket: 2,
        survivors: members[..3].to_vec(),
        dropped: vec![members[3].clone()],
    };
    let r1 = b.clients[0].unmask(&first, &b.signers[0]).unwrap();
    // Repeating the same request is fine and gives the same answer.
    assert_eq!(b.clients[0].unmask(&first, &b.signers[0]).unwrap(), r1);
    // A second request claiming node 2 dropped (after its seed share went out) is refused.
    let second = UnmaskRequest {
        survivors: vec![members[0].clone(), members[1].clone(), members[3].clone()],
        dropped: vec![members[2].clone()],
        ..first.clone()
    };
    let e = b.clients[0].unmask(&second, &b.signers[0]).unwrap_err();
    // Node 3's key share went out before; node 2's seed share too: either is reported.
    assert!(
        matches!(&e, SecAggError::BothSecrets(n) if *n == members[3] || *n == members[2]),
        "{e}"
    );
    // A request naming a node both ways is refused.
    let both = UnmaskRequest {
        survivors: members.clone(),
        dropped: vec![members[3].clone()],
        ..first.clone()
    };
    assert!(matches!(
        b.clients[1].unmask(&both, &b.signers[1]),
        Err(SecAggError::BothSecrets(_))
    ));
    // Server side: every node survived, so a response carrying a mask-key
    // share of a survivor is a hard error.
    for input in inputs {
        b.server.accept_masked(input, now()).unwrap();
    }
    let request = b.server.unmask_request().unwrap();
    assert!(request.dropped.is_empty());
    let mut response = b.clients[1].unmask(&request, &b.signers[1]).unwrap();
    response.key_shares.push((members[0].clone(), [7; 32]));
    let e = b.server.accept_response(response, now()).unwrap_err();
    assert!(
        matches!(&e, SecAggError::BothSecrets(n) if *n == members[0]),
        "{e}"
    );
    // A client that answered with seed shares refuses to reveal the key share.
    let later = UnmaskRequest {
        survivors: members[1..].to_vec(),
        dropped: vec![members[0].clone()],
        ..request.clone()
    };
    assert!(matches!(
        b.clients[1].unmask(&later, &b.signers[1]),
        Err(SecAggError::BothSecrets(_))
    ));
}

#[test]
fn replayed_and_forged_messages_are_refused() {
    let mesh = Mesh::new();
    let p = params(3, 8, 1024.0, None);
    let mut b = setup(&mesh, p, 5);
    let ups = updates(3, 8, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let input = b.clients[0]
        .mask_update(&ups[0], &b.signers[0], &mut rng)
        .unwrap();
    // Stale model version (re-signed so only the binding is wrong).
    let mut stale = input.clone();
    stale.model_version = 3;
    let stale = stale.sign(&b.signers[0]).unwrap();
    assert!(matches!(
        b.server.accept_masked(stale, now()),
        Err(SecAggError::Binding(_))
    ));
    // Replay from another round.
    let mut old = input.clone();
    old.round = 4;
    let old = old.sign(&b.signers[0]).unwrap();
    assert!(matches!(
        b.server.accept_masked(old, now()),
        Err(SecAggError::Binding(_))
    ));
    // Tampered words: the signature fails and names the node.
    let mut tampered = input.clone();
    tampered.words[0] ^= 1;
    let e = b.server.accept_masked(tampered, now()).unwrap_err();
    assert!(
        matches!(&e, SecAggError::Signature { node, .. } if *node == b.params.members()[0]),
        "{e}"
    );
    // Node 1 signing an input that claims to be node 0.
    let mut forged = input.clone();
    forged.words[0] ^= 1;
    let forged = forged.sign(&b.signers[1]).unwrap();
    assert!(b.server.accept_masked(forged, now()).is_err());
    // The genuine one is accepted once.
    b.server.accept_masked(input.clone(), now()).unwrap();
    assert!(matches!(
        b.server.accept_masked(input, now()),
        Err(SecAggError::Protocol { .. })
    ));
    // Out-of-order client call.
    assert!(matches!(
        b.clients[0].share_keys(&mut rng),
        Err(SecAggError::State { .. })
    ));
}

#[test]
fn key_substitution_and_share_tampering_are_detected() {
    let mesh = Mesh::new();
    let p = params(3, 4, 1024.0, None);
    let members = p.members().to_vec();
    let signers: Vec<CertSigner> = members.iter().map(|m| mesh.signer("acme", m)).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut clients: Vec<ClientRound> = members
        .iter()
        .map(|m| ClientRound::new(p.clone(), m.clone(), &mut rng).unwrap())
        .collect();
    let adverts: Vec<KeyAdvert> = clients
        .iter()
        .zip(&signers)
        .map(|(c, s)| c.advertise(s).unwrap())
        .collect();
    // A coordinator swapping node 1's mask key breaks its signature.
    let mut swapped = adverts.clone();
    swapped[1].mask_public = [9; 32];
    let e = clients[0]
        .receive_adverts(&swapped, &mesh.verifier, now())
        .unwrap_err();
    assert!(
        matches!(&e, SecAggError::Signature { node, .. } if *node == members[1]),
        "{e}"
    );
    // An advert from another tenant's node, or of another round, is refused.
    let outsider = mesh.signer("other", &members[1]);
    let foreign = ClientRound::new(
        BucketParams::new(
            tenant("other"),
            5,
            4,
            2,
            members.clone(),
            None,
            4,
            *p.quant(),
            None,
        )
        .unwrap(),
        members[1].clone(),
        &mut rng,
    )
    .unwrap()
    .advertise(&outsider)
    .unwrap();
    let mut mixed = adverts.clone();
    mixed[1] = foreign;
    assert!(matches!(
        clients[0].receive_adverts(&mixed, &mesh.verifier, now()),
        Err(SecAggError::Binding(_))
    ));
    // A signer for another node cannot advertise as this one.
    assert!(matches!(
        clients[0].advertise(&signers[1]),
        Err(SecAggError::WrongSigner { .. })
    ));
    for c in &mut clients {
        c.receive_adverts(&adverts, &mesh.verifier, now()).unwrap();
    }
    let from0 = clients[0].share_keys(&mut rng).unwrap();
    let _ = clients[1].share_keys(&mut rng).unwrap();
    let to1 = from0.iter().find(|s| s.dst == members[1]).unwrap().clone();
    let mut bad = to1.clone();
    bad.ciphertext[5] ^= 1;
    let e = clients[1].receive_shares(&[bad]).unwrap_err();
    assert!(
        matches!(&e, SecAggError::ShareDecrypt { sender, .. } if *sender == members[0]),
        "{e}"
    );
    // Re-labelled binding (another bucket) fails authentication.
    let mut moved = to1.clone();
    moved.bucket = 2;
    moved.round = 5;
    moved.dst = members[2].clone();
    assert!(clients[1].receive_shares(&[moved]).is_err());
    // The genuine share is accepted.
    let from2 = clients[2].share_keys(&mut rng).unwrap();
    let to1_from2 = from2.iter().find(|s| s.dst == members[1]).unwrap().clone();
    clients[1].receive_shares(&[to1, to1_from2]).unwrap();
}

#[test]
fn wrong_shares_fail_reconstruction_checks() {
    let mesh = Mesh::new();
    let p = params(4, 8, 1024.0, None);
    let mut b = setup(&mesh, p, 8);
    let ups = updates(4, 8, 8);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for i in 0..3 {
        let input = b.clients[i]
            .mask_update(&ups[i], &b.signers[i], &mut rng)
            .unwrap();
        b.server.accept_masked(input, now()).unwrap();
    }
    let request = b.server.unmask_request().unwrap();
    assert_eq!(request.dropped, vec![b.params.members()[3].clone()]);
    for i in 0..3 {
        let mut r = b.clients[i].unmask(&request, &b.signers[i]).unwrap();
        if i == 1 {
            // A lying responder (re-signs its corrupted response).
            r.seed_shares[0].1[0] ^= 1;
            r = r.sign(&b.signers[1]).unwrap();
        }
        b.server.accept_response(r, now()).unwrap();
    }
    let e = b.server.finish().unwrap_err();
    assert!(
        matches!(
            e,
            SecAggError::Reconstruction {
                what: "self-mask seed",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn one_member_bucket_is_not_masked() {
    let mesh = Mesh::new();
    let mut b = setup(&mesh, params(1, 16, 1024.0, None), 10);
    let ups = updates(1, 16, 10);
    let (sum, plain) = finish(&mut b, &ups, &BTreeSet::new(), 10);
    assert_eq!(sum.raw(), &plain[..]);
    assert_eq!(sum.member_count(), 1);
}

#[test]
fn distributed_noise_reaches_the_sum() {
    let mesh = Mesh::new();
    let dim = 4000;
    // z = 0.01, C = 1, scale 1024: σ = 10.24 quantized units on the sum.
    let mut b = setup(&mesh, params(4, dim, 1024.0, Some(0.01)), 11);
    let ups = updates(4, dim, 11);
    let (sum, plain) = finish(&mut b, &ups, &BTreeSet::new(), 11);
    let noise: Vec<f64> = sum
        .raw()
        .iter()
        .zip(&plain)
        .map(|(s, p)| f64::from(s.wrapping_sub(*p) as i32))
        .collect();
    let var = noise.iter().map(|x| x * x).sum::<f64>() / dim as f64;
    // Sum of 4 discrete Gaussians of variance σ²/4 = 26.2; estimate within ±10% (≈ 4.5 sd).
    assert!((var / (10.24f64 * 10.24) - 1.0).abs() < 0.1, "{var}");
    assert!(sum.mean_l2_norm() < sum.mean_norm_bound(10.0));
}

#[test]
fn bucket_sum_helpers() {
    let mesh = Mesh::new();
    let mut b = setup(&mesh, params(3, 2, 1024.0, None), 12);
    let ups = vec![vec![0.5f32, 0.0], vec![0.25, 0.0], vec![0.75, 0.5]];
    let (sum, _) = finish(&mut b, &ups, &BTreeSet::new(), 12);
    assert_eq!(sum.sum(), vec![1.5, 0.5]);
    assert_eq!(sum.mean(), vec![0.5, 0.5 / 3.0]);
    assert!((sum.sum_l2_norm() - (2.5f64).sqrt()).abs() < 1e-12);
    assert!((sum.mean_l2_norm() - (2.5f64).sqrt() / 3.0).abs() < 1e-12);
    assert_eq!(sum.bucket(), 2);
    assert_eq!(sum.contributors(), b.params.members());
}

/// Masks expanded ahead of time (while a node trains) give the masked input
/// of masking in place, bit for bit, DP noise included; a mask expanded for
/// another node is refused and changes nothing.
#[test]
fn masks_expanded_ahead_give_the_same_masked_input() {
    let mesh = Mesh::new();
    let (n, dim) = (4, 3000);
    let p = params(n, dim, 1024.0, Some(0.01));
    // Same seed: the same per-round secrets in both buckets.
    let mut in_place = setup(&mesh, p.clone(), 13);
    let mut ahead = setup(&mesh, p, 13);
    let ups = updates(n, dim, 13);
    let masks: Vec<MaskVector> = ahead
        .clients
        .iter()
        .map(|c| c.mask_plan().unwrap().expand())
        .collect();
    assert!(format!("{:?}", masks[0]).contains("words: 3000"));
    for i in 0..n {
        let other = &masks[(i + 1) % n];
        let mut rng = ChaCha20Rng::seed_from_u64(70 + i as u64);
        let refused = ahead.clients[i].mask_update_with_mask(
            &ups[i],
            &[],
            other,
            &ahead.signers[i],
            &mut rng,
        );
        assert!(
            matches!(refused, Err(SecAggError::Binding(_))),
            "{refused:?}"
        );
        let mut rng = ChaCha20Rng::seed_from_u64(7 + i as u64);
        let direct = in_place.clients[i]
            .mask_update(&ups[i], &in_place.signers[i], &mut rng)
            .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(7 + i as u64);
        let y = ahead.clients[i]
            .mask_update_with_mask(&ups[i], &[], &masks[i], &ahead.signers[i], &mut rng)
            .unwrap();
        assert_eq!(y.words, direct.words);
        y.verify(&mesh.verifier, ahead.signers[i].cert_der(), now())
            .unwrap();
        ahead
            .server
            .accept_masked(MaskedInput::decode(&y.encode()).unwrap(), now())
            .unwrap();
        // The plan is gone with the masked stage.
        assert!(ahead.clients[i].mask_plan().is_err());
    }
}

/// Rounds 2 and 3 like [`finish`], letting `tamper` rewrite (and re-sign)
/// member `i`'s unmask response; returns `finish_attributed`'s result and
/// the honest plain sum of the survivors.
#[allow(clippy::type_complexity)]
fn finish_tampered(
    b: &mut Bucket,
    ups: &[Vec<f32>],
    dropped: &BTreeSet<usize>,
    seed: u64,
    tamper: impl Fn(usize, &mut UnmaskResponse),
) -> (Result<(BucketSum, Vec<ShareFault>), SecAggError>, Vec<u32>) {
    let mut plain = vec![0u32; b.params.dim()];
    for (i, (c, s)) in b.clients.iter_mut().zip(&b.signers).enumerate() {
        let mut rng = ChaCha20Rng::seed_from_u64(seed + i as u64);
        let q = b
            .params
            .quant()
            .quantize(&ups[i], &mut rng.clone())
            .unwrap();
        let input = c.mask_update(&ups[i], s, &mut rng).unwrap();
        if dropped.contains(&i) {
            continue;
        }
        for (p, w) in plain.iter_mut().zip(&q) {
            *p = p.wrapping_add(*w);
        }
        b.server.accept_masked(input, now()).unwrap();
    }
    let request = b.server.unmask_request().unwrap();
    for (i, (c, s)) in b.clients.iter_mut().zip(&b.signers).enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        let mut r = c.unmask(&request, s).unwrap();
        tamper(i, &mut r);
        let r = r.sign(s).unwrap();
        b.server
            .accept_response(UnmaskResponse::decode(&r.encode()).unwrap(), now())
            .unwrap();
    }
    (b.server.finish_attributed(), plain)
}

fn garbage(r: &mut UnmaskResponse, salt: u8) {
    for (k, (_, y)) in r
        .seed_shares
        .iter_mut()
        .chain(&mut r.key_shares)
        .enumerate()
    {
        for (j, v) in y.iter_mut().enumerate() {
            *v ^= salt.wrapping_add((k * 31 + j * 7) as u8) | 1;
        }
    }
}

#[test]
fn a_lying_responder_is_outvoted_and_named() {
    // (members, liars, dropped): t = ⌈2n/3⌉. 5 of 5 leaves one spare share
    // (subset search), 9 of 9 with one liar decodes by Berlekamp–Welch,
    // two liars in 9 need the subset search again, and a dropout makes the
    // coordinator reconstruct a mask key too.
    let cases: [(usize, &[usize], &[usize]); 5] = [
        (5, &[3], &[]),
        (9, &[4], &[]),
        (9, &[2, 6], &[]),
        (9, &[5], &[1]),
        (12, &[1, 7], &[]),
    ];
    let mesh = Mesh::new();
    for (n, liars, gone) in cases {
        let p = params(n, 16, 1024.0, None);
        let members = p.members().to_vec();
        let t = p.threshold();
        assert!(n - gone.len() - liars.len() >= t, "case {n} {liars:?}");
        let mut b = setup(&mesh, p, 40 + n as u64);
        let ups = updates(n, 16, 41);
        let dropped: BTreeSet<usize> = gone.iter().copied().collect();
        let (result, plain) = finish_tampered(&mut b, &ups, &dropped, 42, |i, r| {
            if liars.contains(&i) {
                garbage(r, i as u8);
            }
        });
        let (sum, faults) = result.unwrap_or_else(|e| panic!("n = {n}, liars {liars:?}: {e}"));
        assert_eq!(sum.raw(), &plain[..], "n = {n}");
        assert_eq!(sum.member_count(), n - gone.len());
        let named: Vec<NodeId> = faults.iter().map(|f| f.responder.clone()).collect();
        let want: Vec<NodeId> = liars.iter().map(|&i| members[i].clone()).collect();
        assert_eq!(named, want, "n = {n}");
        // Never the first-sorted node, unless it lied.
        assert!(!named.contains(&members[0]));
    }
}

#[test]
fn one_wrong_share_of_another_owner_is_outvoted_without_blame() {
    // Indistinguishable from that owner dealing a wrong share to the
    // responder, so nobody is named; the sum is still exact.
    let mesh = Mesh::new();
    let p = params(6, 8, 1024.0, None);
    let mut b = setup(&mesh, p, 50);
    let ups = updates(6, 8, 50);
    let (result, plain) = finish_tampered(&mut b, &ups, &BTreeSet::new(), 51, |i, r| {
        if i == 2 {
            r.seed_shares[4].1[3] ^= 0x40;
        }
    });
    let (sum, faults) = result.unwrap();
    assert_eq!(sum.raw(), &plain[..]);
    assert!(faults.is_empty(), "{faults:?}");
}

#[test]
fn too_many_liars_drop_the_bucket() {
    // 6 members, t = 4: three liars leave three honest shares.
    let mesh = Mesh::new();
    let p = params(6, 8, 1024.0, None);
    let mut b = setup(&mesh, p, 52);
    let ups = updates(6, 8, 52);
    let (result, _) = finish_tampered(&mut b, &ups, &BTreeSet::new(), 53, |i, r| {
        if i % 2 == 1 {
            garbage(r, 9);
        }
    });
    assert!(
        matches!(result, Err(SecAggError::Reconstruction { .. })),
        "{result:?}"
    );
}

#[test]
fn a_low_order_key_makes_its_sender_a_dropout_not_the_bucket() {
    let mesh = Mesh::new();
    let n = 5;
    let p = params(n, 16, 1024.0, None);
    let members = p.members().to_vec();
    let signers: Vec<CertSigner> = members.iter().map(|m| mesh.signer("acme", m)).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(60);
    let mut clients: Vec<ClientRound> = members
        .iter()
        .map(|m| ClientRound::new(p.clone(), m.clone(), &mut rng).unwrap())
        .collect();
    let mut server = BucketUnmasker::new(p.clone(), mesh.verifier.clone());
    let bad = 2;
    let mut weak_adverts = Vec::new();
    for (i, (c, s)) in clients.iter().zip(&signers).enumerate() {
        let advert = c.advertise(s).unwrap();
        if i != bad {
            server.accept_advert(advert, now()).unwrap();
            continue;
        }
        for point in super::keys::tests::low_order_points() {
            for (mask, enc) in [(true, false), (false, true)] {
                let mut weak = advert.clone();
                if mask {
                    weak.mask_public = point;
                }
                if enc {
                    weak.enc_public = point;
                }
                // Correctly signed by its (authenticated) sender.
                let weak = weak.sign(s).unwrap();
                let e = server.accept_advert(weak.clone(), now()).unwrap_err();
                assert!(
                    matches!(&e, SecAggError::WeakKey(node) if *node == members[bad]),
                    "{e}"
                );
                weak_adverts.push(weak);
            }
        }
    }
    let adverts = server.close_adverts().unwrap();
    assert_eq!(adverts.len(), n - 1);
    // A client offered the weak key anyway (by a coordinator that did not
    // check) refuses that peer, not the bucket.
    let mut probe = ClientRound::new(p.clone(), members[0].clone(), &mut rng).unwrap();
    let mut own = adverts.clone();
    own[0] = probe.advertise(&signers[0]).unwrap();
    own.push(weak_adverts[0].clone());
    probe.receive_adverts(&own, &mesh.verifier, now()).unwrap();
    let probe_shares = probe.share_keys(&mut rng).unwrap();
    assert!(probe_shares.iter().all(|s| s.dst != members[bad]));
    assert_eq!(probe_shares.len(), n - 2);
    // The honest members go on and the bucket sums their updates.
    let honest: Vec<usize> = (0..n).filter(|&i| i != bad).collect();
    for &i in &honest {
        clients[i]
            .receive_adverts(&adverts, &mesh.verifier, now())
            .unwrap();
    }
    for &i in &honest {
        let shares = clients[i].share_keys(&mut rng).unwrap();
        server.accept_shares(&members[i], shares).unwrap();
    }
    server.close_shares().unwrap();
    for &i in &honest {
        clients[i]
            .receive_shares(&server.shares_for(&members[i]).unwrap())
            .unwrap();
    }
    let ups = updates(n, 16, 61);
    let mut plain = [0u32; 16];
    for &i in &honest {
        let mut r = ChaCha20Rng::seed_from_u64(70 + i as u64);
        let q = p.quant().quantize(&ups[i], &mut r.clone()).unwrap();
        for (s, w) in plain.iter_mut().zip(&q) {
            *s = s.wrapping_add(*w);
        }
        let input = clients[i]
            .mask_update(&ups[i], &signers[i], &mut r)
            .unwrap();
        server.accept_masked(input, now()).unwrap();
    }
    let request = server.unmask_request().unwrap();
    assert!(request.dropped.is_empty());
    for &i in &honest {
        let r = clients[i].unmask(&request, &signers[i]).unwrap();
        server.accept_response(r, now()).unwrap();
    }
    let sum = server.finish().unwrap();
    assert_eq!(sum.raw(), &plain[..]);
    assert_eq!(sum.member_count(), n - 1);
}
