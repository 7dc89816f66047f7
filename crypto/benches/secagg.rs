#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark binary
//! Secure-aggregation benchmarks: mask expansion throughput, one node's CPU
//! time for a full round (d = 10^5, k = 8), the coordinator's unmasking of
//! a bucket with and without a dropout, and bytes on the wire.
//!
//! `cargo bench -p fedmesh-crypto --bench secagg`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fedmesh_crypto::identity::{NodeId, TenantId};
use fedmesh_crypto::secagg::prg::{Sign, apply_mask};
use fedmesh_crypto::secagg::{
    BucketParams, BucketUnmasker, ClientRound, DiscreteGaussian, EncryptedShare, KeyAdvert,
    QuantConfig, UnmaskRequest,
};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use time::OffsetDateTime;

const D: usize = 100_000;
const K: usize = 8;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
}

struct Setup {
    params: BucketParams,
    signers: Vec<CertSigner>,
    verifier: CertVerifier,
    update: Vec<f32>,
}

fn setup() -> Setup {
    let ca = MeshCa::generate("bench CA", now(), 365).unwrap();
    let verifier = CertVerifier::new(ca.cert_pem()).unwrap();
    let tenant: TenantId = "acme".parse().unwrap();
    let members: Vec<NodeId> = (0..K)
        .map(|i| format!("node-{i}").parse().unwrap())
        .collect();
    let signers = members
        .iter()
        .map(|m| {
            let c = ca.issue_node(&tenant, m, now(), 30).unwrap();
            CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap()
        })
        .collect();
    let params = BucketParams::new(
        tenant,
        1,
        1,
        0,
        members,
        None,
        D,
        QuantConfig::new(1.0, 65536.0).unwrap(),
        None,
    )
    .unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let update = (0..D).map(|_| rng.random_range(-0.003f32..0.003)).collect();
    Setup {
        params,
        signers,
        verifier,
        update,
    }
}

fn client_rng(i: usize) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(100 + i as u64)
}

/// Runs the whole bucket; returns the unmasker after `unmask_request` and
/// the messages node 0 receives.
struct Run {
    adverts: Vec<KeyAdvert>,
    shares_to_0: Vec<EncryptedShare>,
    request: UnmaskRequest,
    server: BucketUnmasker,
    bytes: [usize; 4],
}

fn run(s: &Setup, dropped: usize) -> Run {
    let members = s.params.members().to_vec();
    let mut rngs: Vec<ChaCha20Rng> = (0..K).map(client_rng).collect();
    let mut clients: Vec<ClientRound> = members
        .iter()
        .zip(&mut rngs)
        .map(|(m, r)| ClientRound::new(s.params.clone(), m.clone(), r).unwrap())
        .collect();
    let mut server = BucketUnmasker::new(s.params.clone(), s.verifier.clone());
    let mut bytes = [0usize; 4];
    for (c, sg) in clients.iter().zip(&s.signers) {
        let a = c.advertise(sg).unwrap();
        bytes[0] = a.encode().len();
        server.accept_advert(a, now()).unwrap();
    }
    let adverts = server.close_adverts().unwrap();
    for c in &mut clients {
        c.receive_adverts(&adverts, &s.verifier, now()).unwrap();
    }
    for ((c, m), r) in clients.iter_mut().zip(&members).zip(&mut rngs) {
        let shares = c.share_keys(r).unwrap();
        bytes[1] = shares.iter().map(|x| x.encode().len()).sum();
        server.accept_shares(m, shares).unwrap();
    }
    server.close_shares().unwrap();
    for (c, m) in clients.iter_mut().zip(&members) {
        c.receive_shares(&server.shares_for(m).unwrap()).unwrap();
    }
    let shares_to_0 = server.shares_for(&members[0]).unwrap();
    let mut masked = Vec::new();
    for ((c, sg), r) in clients.iter_mut().zip(&s.signers).zip(&mut rngs) {
        masked.push(c.mask_update(&s.update, sg, r).unwrap());
    }
    for input in masked.into_iter().take(K - dropped) {
        bytes[2] = input.encode().len();
        server.accept_masked(input, now()).unwrap();
    }
    let request = server.unmask_request().unwrap();
    for (c, sg) in clients.iter_mut().zip(&s.signers).take(K - dropped) {
        let r = c.unmask(&request, sg).unwrap();
        bytes[3] = r.encode().len();
        server.accept_response(r, now()).unwrap();
    }
    Run {
        adverts,
        shares_to_0,
        request,
        server,
        bytes,
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("secagg");
    g.sample_size(20);

    let words = 1_000_000usize;
    let mut acc = vec![0u32; words];
    g.throughput(Throughput::Bytes(4 * words as u64));
    g.bench_function("mask_expansion_1e6_words", |b| {
        b.iter(|| apply_mask(black_box(&[7u8; 32]), Sign::Add, &mut acc))
    });
    g.throughput(Throughput::Elements(1));

    let s = setup();
    let full = run(&s, 0);
    let [advert, shares, masked, response] = full.bytes;
    let total = advert + shares + masked + response;
    eprintln!(
        "wire bytes per node (d = {D}, k = {K}): advert {advert}, shares {shares}, masked input {masked}, \
         unmask response {response}; masked input {:.4} B/parameter, whole round {:.4} B/parameter",
        masked as f64 / D as f64,
        total as f64 / D as f64
    );

    // One node's CPU for a full round: keys, advert, verifying 8 adverts,
    // sharing, decrypting 7 shares, quantize + mask + sign, unmask answer.
    let me = s.params.members()[0].clone();
    g.bench_function("client_round_d1e5_k8", |b| {
        b.iter(|| {
            let mut rng = client_rng(0);
            let mut c = ClientRound::new(s.params.clone(), me.clone(), &mut rng).unwrap();
            let a = c.advertise(&s.signers[0]).unwrap();
            c.receive_adverts(&full.adverts, &s.verifier, now())
                .unwrap();
            let sh = c.share_keys(&mut rng).unwrap();
            c.receive_shares(&full.shares_to_0).unwrap();
            let y = c.mask_update(&s.update, &s.signers[0], &mut rng).unwrap();
            let r = c.unmask(&full.request, &s.signers[0]).unwrap();
            black_box((a, sh, y, r))
        })
    });

    // Clip, scale and stochastically round one update (part of client_round).
    let quant = *s.params.quant();
    g.bench_function("quantize_d1e5", |b| {
        let mut rng = client_rng(1);
        b.iter(|| black_box(quant.quantize(black_box(&s.update), &mut rng).unwrap()))
    });

    g.bench_function("server_unmask_d1e5_k8_no_dropout", |b| {
        b.iter(|| black_box(full.server.finish().unwrap()))
    });
    let one_drop = run(&s, 1);
    g.bench_function("server_unmask_d1e5_k8_one_dropout", |b| {
        b.iter(|| black_box(one_drop.server.finish().unwrap()))
    });
    // Verifying one masked input's signature (400 kB message) on the coordinator.
    g.bench_function("server_verify_masked_input_d1e5", |b| {
        b.iter_batched(
            || {
                let mut rng = client_rng(0);
                let mut c = ClientRound::new(s.params.clone(), me.clone(), &mut rng).unwrap();
                c.receive_adverts(&full.adverts, &s.verifier, now())
                    .unwrap();
                c.share_keys(&mut rng).unwrap();
                c.receive_shares(&full.shares_to_0).unwrap();
                c.mask_update(&s.update, &s.signers[0], &mut rng).unwrap()
            },
            |y| {
                y.verify(&s.verifier, s.signers[0].cert_der(), now())
                    .unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    // One node's distributed-DP noise share for d = 10^5 (σ_local = 2^16 / √8
    // quantized units, i.e. z = 1 at C = 1, scale 2^16, k = 8).
    let gauss = DiscreteGaussian::from_variance(f64::powi(65536.0, 2) / K as f64).unwrap();
    g.bench_function("discrete_gaussian_noise_d1e5", |b| {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut words = vec![0u32; D];
        b.iter(|| gauss.add_noise(&mut words, &mut rng).unwrap())
    });
    g.finish();
}

criterion_group!(secagg, benches);
criterion_main!(secagg);
