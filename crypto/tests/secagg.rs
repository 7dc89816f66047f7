//! Secure aggregation through the public API only: the flow a coordinator
//! and its nodes will run (assignment → per-bucket protocol → bucket sums),
//! and the test vectors in `tests/vectors/secagg.txt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test binary

use std::collections::BTreeMap;

use fedmesh_crypto::identity::{NodeId, TenantId};
use fedmesh_crypto::secagg::prg::expand;
use fedmesh_crypto::secagg::shamir::{Share, reconstruct};
use fedmesh_crypto::secagg::{
    AssignmentInput, BucketParams, BucketSum, BucketUnmasker, ClientRound, QuantConfig,
    assign_buckets, verify_own_bucket,
};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
}

#[test]
fn round_of_three_buckets_with_a_dropout() {
    let ca = MeshCa::generate("it CA", now(), 365).unwrap();
    let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let participants: Vec<NodeId> = (0..13).map(|i| format!("n{i}").parse().unwrap()).collect();
    let signers: BTreeMap<NodeId, CertSigner> = participants
        .iter()
        .map(|n| {
            let c = ca.issue_node(&tenant, n, now(), 30).unwrap();
            (
                n.clone(),
                CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap(),
            )
        })
        .collect();
    let input = AssignmentInput {
        tenant: &tenant,
        round: 42,
        participants: &participants,
        model_digest: [3; 32],
        bucket_size: 4,
    };
    let assignment = assign_buckets(&input).unwrap();
    assert_eq!(assignment.buckets.len(), 3);
    let dim = 64;
    let quant = QuantConfig::new(1.0, 65536.0).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let updates: BTreeMap<NodeId, Vec<f32>> = participants
        .iter()
        .map(|n| {
            (
                n.clone(),
                (0..dim).map(|_| rng.random_range(-0.1f32..0.1)).collect(),
            )
        })
        .collect();
    // The first member of bucket 0 drops after sharing its keys.
    let dropout = assignment.buckets[0].members[0].clone();

    let mut sums: Vec<BucketSum> = Vec::new();
    for bucket in &assignment.buckets {
        let params = BucketParams::new(
            tenant.clone(),
            42,
            7,
            bucket.id,
            bucket.members.clone(),
            None,
            dim,
            quant,
            None,
        )
        .unwrap();
        let mut server = BucketUnmasker::new(params.clone(), verifier.clone());
        let mut clients: BTreeMap<NodeId, ClientRound> = BTreeMap::new();
        for m in &bucket.members {
            // Each node checks the announced bucket before taking part.
            verify_own_bucket(&input, m, bucket, 4).unwrap();
            let c = ClientRound::new(params.clone(), m.clone(), &mut rng).unwrap();
            server
                .accept_advert(c.advertise(&signers[m]).unwrap(), now())
                .unwrap();
            clients.insert(m.clone(), c);
        }
        let adverts = server.close_adverts().unwrap();
        for (m, c) in &mut clients {
            c.receive_adverts(&adverts, &verifier, now()).unwrap();
            let shares = c.share_keys(&mut rng).unwrap();
            server.accept_shares(m, shares).unwrap();
        }
        server.close_shares().unwrap();
        for (m, c) in &mut clients {
            c.receive_shares(&server.shares_for(m).unwrap()).unwrap();
            let y = c.mask_update(&updates[m], &signers[m], &mut rng).unwrap();
            if *m != dropout {
                server.accept_masked(y, now()).unwrap();
            }
        }
        let request = server.unmask_request().unwrap();
        for (m, c) in &mut clients {
            if *m != dropout {
                server
                    .accept_response(c.unmask(&request, &signers[m]).unwrap(), now())
                    .unwrap();
            }
        }
        sums.push(server.finish().unwrap());
    }
    assert_eq!(
        sums.iter().map(BucketSum::member_count).collect::<Vec<_>>(),
        vec![3, 4, 4 + 13 % 4]
    );
    // Every bucket mean is within the quantization error of the plain mean
    // of its contributors' (unclipped: all norms < 1) updates.
    for s in &sums {
        let mean = s.mean();
        for (j, got) in mean.iter().enumerate() {
            let want: f64 = s
                .contributors()
                .iter()
                .map(|n| f64::from(updates[n][j]))
                .sum::<f64>()
                / s.member_count() as f64;
            assert!(
                (got - want).abs() < 1.0 / f64::from(1 << 16),
                "{got} vs {want}"
            );
        }
        assert!(!s.contributors().contains(&dropout) || s.bucket() != 0);
        assert!(s.mean_l2_norm() <= s.mean_norm_bound(6.0));
    }
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn test_vectors() {
    let text = include_str!("vectors/secagg.txt");
    let mut checked = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[0] {
            "prg" => {
                let offset: usize = f[2].parse().unwrap();
                let want = hex::decode(f[3]).unwrap();
                let words = expand(&hex32(f[1]), offset + want.len() / 4);
                let got: Vec<u8> = words[offset..]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                assert_eq!(hex::encode(got), f[3], "{line}");
            }
            "shamir" => {
                let t: usize = f[1].parse().unwrap();
                let shares: Vec<Share> = f[3..]
                    .iter()
                    .map(|s| {
                        let (x, y) = s.split_once(':').unwrap();
                        Share {
                            x: x.parse().unwrap(),
                            y: hex::decode(y).unwrap(),
                        }
                    })
                    .collect();
                for start in 0..=shares.len() - t {
                    let got = reconstruct(&shares[start..start + t], t).unwrap();
                    assert_eq!(hex::encode(got), f[2], "{line}");
                }
                assert!(reconstruct(&shares[..t - 1], t).is_err());
            }
            "dequant" => {
                let q = QuantConfig::new(f[1].parse().unwrap(), f[2].parse().unwrap()).unwrap();
                let words: Vec<u32> = f[3].split(',').map(|w| w.parse().unwrap()).collect();
                let want: Vec<f64> = f[4].split(',').map(|w| w.parse().unwrap()).collect();
                assert_eq!(q.dequantize(&words), want, "{line}");
            }
            other => panic!("unknown vector kind {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 5);
}
