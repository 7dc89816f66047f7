//! Secure aggregation in buckets over real mTLS: hand-driven nodes speak the
//! `SecAgg` RPC phase by phase against an in-process coordinator, so each
//! test controls exactly who sends what, when, and who drops out.

use anyhow::{Context, Result, anyhow};
use fedmesh_crypto::CertSigner;
use fedmesh_crypto::secagg::{
    AssignmentInput, BucketParams, ClientRound, EncryptedShare, KeyAdvert, QuantConfig,
    UnmaskRequest, verify_own_bucket,
};
use fedmesh_proto::v1::{self, SecAggPhase, round_event::Event, sec_agg_request::Message as M};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tonic::{Code, Streaming};

use super::protocol::{
    Client, Mesh, WAIT, assert_status, get_model, join, next_event, now, params, wait_committed,
    watch,
};

/// A tenant aggregating in buckets of `k`, clip norm 1, one round, 4 s
/// phase and round deadlines, a 202-parameter model.
fn secure_tenant(name: &str, nodes: usize, k: usize) -> String {
    format!(
        "[[tenants]]\nname = \"{name}\"\nmin_nodes = {nodes}\nquorum = {k}\n\
         round_timeout_ms = 4000\nround_interval_ms = 50\nmax_rounds = 1\n\
         max_update_norm = 1.0\n[tenants.model]\nhidden = [4]\n\
         [tenants.secure]\nbucket_size = {k}\nclip_norm = 1.0\nphase_timeout_ms = 4000\n"
    )
}

/// One hand-driven node.
pub(crate) struct Member {
    name: String,
    pub(crate) client: Client,
    pub(crate) stream: Streaming<v1::RoundEvent>,
    pub(crate) signer: CertSigner,
    verifier: fedmesh_crypto::CertVerifier,
    round: Option<ClientRound>,
    rng: ChaCha20Rng,
    /// The last committed list this member checked its bucket against.
    known: Vec<Vec<fedmesh_crypto::NodeId>>,
}

impl Member {
    pub(crate) async fn new(mesh: &Mesh, tenant: &str, name: &str, seed: u64) -> Result<Self> {
        let mut client = mesh.node(tenant, name).await?;
        join(&mut client, tenant, name).await?;
        let stream = watch(&mut client).await?;
        let c = mesh
            .ca
            .issue_node(&tenant.parse()?, &name.parse()?, now(), 30)?;
        Ok(Self {
            name: name.into(),
            client,
            stream,
            signer: CertSigner::from_pem(&c.cert_pem, &c.key_pem)?,
            verifier: fedmesh_crypto::CertVerifier::new(mesh.ca_pem())?,
            round: None,
            rng: ChaCha20Rng::seed_from_u64(seed),
            known: Vec::new(),
        })
    }

    /// Reads events until the open round reaches `phase` (bounded).
    pub(crate) async fn wait_phase(&mut self, phase: SecAggPhase) -> Result<v1::RoundOpen> {
        tokio::time::timeout(WAIT * 2, async {
            loop {
                match next_event(&mut self.stream).await? {
                    Event::Open(o)
                        if o.secure.as_ref().is_some_and(|s| s.phase >= phase as i32) =>
                    {
                        return Ok(o);
                    }
                    Event::Aborted(a) => return Err(anyhow!("round aborted: {a:?}")),
                    _ => {}
                }
            }
        })
        .await
        .with_context(|| format!("{} did not see phase {phase:?}", self.name))?
    }

    pub(crate) async fn send(
        &mut self,
        open: &v1::RoundOpen,
        message: M,
    ) -> Result<tonic::Response<v1::SecAggAck>, tonic::Status> {
        let bucket = open
            .secure
            .as_ref()
            .and_then(|s| s.bucket.as_ref())
            .map_or(0, |b| b.id);
        self.client
            .sec_agg(v1::SecAggRequest {
                tenant: "acme".into(),
                node: self.name.clone(),
                round: open.round,
                bucket,
                message: Some(message),
            })
            .await
    }

    /// Checks the announced bucket against the recomputed assignment and
    /// starts the client state machine; `clip` is the clip norm this node
    /// uses (an attacker may ignore the round's).
    pub(crate) fn start(
        &mut self,
        open: &v1::RoundOpen,
        genesis: &[f32],
        clip: f64,
    ) -> Result<Vec<u8>> {
        let sr = open
            .secure
            .as_ref()
            .ok_or_else(|| anyhow!("not a secure round"))?;
        let bv = sr.bucket.as_ref().ok_or_else(|| anyhow!("no bucket"))?;
        let tenant = "acme".parse()?;
        let me = self.name.parse()?;
        let participants = fedmesh_node::federation::secure::committed_list(sr, &self.known)
            .map_err(anyhow::Error::msg)?;
        let announced =
            fedmesh_node::federation::secure::announced_bucket(bv).map_err(anyhow::Error::msg)?;
        let mine = verify_own_bucket(
            &AssignmentInput {
                tenant: &tenant,
                round: open.round,
                participants: &participants,
                model_digest: fedmesh_proto::secure::model_digest(open.base_version, genesis),
                bucket_size: sr.bucket_size as usize,
            },
            &me,
            &announced,
            sr.min_bucket_size as usize,
        )?;
        fedmesh_node::federation::secure::remember_list(&mut self.known, participants);
        let params = BucketParams::new(
            tenant,
            open.round,
            open.base_version,
            mine.id,
            mine.members,
            None,
            genesis.len(),
            QuantConfig::new(clip, sr.quant_scale)?,
            None,
        )?
        .with_extra_words(sr.extra_words as usize)?;
        assert_eq!(params.threshold(), bv.threshold as usize);
        let c = ClientRound::new(params, me, &mut self.rng)?;
        let advert = c.advertise(&self.signer)?.encode();
        self.round = Some(c);
        Ok(advert)
    }

    pub(crate) fn shares(&mut self, open: &v1::RoundOpen) -> Result<v1::ShareBundle> {
        let bv = bucket(open)?;
        let adverts = bv
            .adverts
            .iter()
            .map(|a| KeyAdvert::decode(a))
            .collect::<Result<Vec<_>, _>>()?;
        let c = self.round.as_mut().ok_or_else(|| anyhow!("not started"))?;
        c.receive_adverts(&adverts, &self.verifier, now())?;
        let shares = c.share_keys(&mut self.rng)?;
        Ok(v1::ShareBundle {
            shares: shares.iter().map(|s| s.encode()).collect(),
        })
    }

    pub(crate) fn masked(
        &mut self,
        open: &v1::RoundOpen,
        update: &[f32],
        extra: &[u32],
    ) -> Result<Vec<u8>> {
        let bv = bucket(open)?;
        let shares = bv
            .shares
            .iter()
            .map(|s| EncryptedShare::decode(s))
            .collect::<Result<Vec<_>, _>>()?;
        let c = self.round.as_mut().ok_or_else(|| anyhow!("not started"))?;
        c.receive_shares(&shares)?;
        Ok(
            c.mask_update_with_extra(update, extra, &self.signer, &mut self.rng)?
                .encode(),
        )
    }

    pub(crate) fn unmask(&mut self, open: &v1::RoundOpen) -> Result<Vec<u8>> {
        let request = UnmaskRequest::decode(&bucket(open)?.unmask_request)?;
        let c = self.round.as_mut().ok_or_else(|| anyhow!("not started"))?;
        Ok(c.unmask(&request, &self.signer)?.encode())
    }
}

pub(crate) fn bucket(open: &v1::RoundOpen) -> Result<&v1::BucketView> {
    open.secure
        .as_ref()
        .and_then(|s| s.bucket.as_ref())
        .ok_or_else(|| anyhow!("no bucket in the event"))
}

pub(crate) async fn members(mesh: &Mesh, n: usize) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Member::new(mesh, "acme", &format!("n{i}"), 100 + i as u64).await?);
    }
    Ok(out)
}

/// Extra words of a node: loss 0.5, feature means `1 + i/10`, mean squares
/// `mean² + 0.25`.
pub(crate) fn extras(i: usize) -> (Vec<f64>, Vec<f64>, Vec<u32>) {
    let d = fedmesh_proto::model::FEATURE_SCHEMA_V1_DIM;
    let mean = vec![1.0 + i as f64 / 10.0; d];
    let sq: Vec<f64> = mean.iter().map(|m| m * m + 0.25).collect();
    let words = fedmesh_proto::secure::encode_extra(0.5, &mean, &sq);
    (mean, sq, words)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_round_commits_the_mean_of_bucket_sums_despite_a_dropout() -> Result<()> {
    let mesh = Mesh::start(&[secure_tenant("acme", 6, 3)], 64 << 20).await?;
    let mut ms = members(&mesh, 6).await?;
    let (_, v0) = get_model(&mut ms[0].client, 0).await?;
    let genesis = params(&v0)?;

    // Advertise: every node checks its bucket and sends signed keys.
    let mut opens = Vec::new();
    for m in ms.iter_mut() {
        let o = m.wait_phase(SecAggPhase::Advertise).await?;
        let sr = o
            .secure
            .as_ref()
            .ok_or_else(|| anyhow!("k > 1 must announce a secure round"))?;
        assert_eq!(
            sr.participants,
            (0..6).map(|i| format!("n{i}")).collect::<Vec<_>>()
        );
        assert_eq!((sr.bucket_size, bucket(&o)?.members.len()), (3, 3));
        assert_eq!(
            sr.extra_words as usize,
            fedmesh_proto::secure::extra_words(22)
        );
        opens.push(o);
    }
    // A plaintext update has no place in a secure round.
    let p = genesis.len();
    let plain = v1::UpdateRequest {
        tenant: "acme".into(),
        node: "n0".into(),
        round: opens[0].round,
        base_version: 0,
        delta: Some(fedmesh_proto::encode_f32(&vec![0.0; p], &[p as u64])),
        num_samples: 1,
        scaler_stats: None,
        train_loss: 0.1,
        schema_hash: v0.schema_hash.clone(),
    };
    assert_status(
        ms[0].client.submit_update(plain).await,
        Code::FailedPrecondition,
        "securely",
    );
    let mut adverts: Vec<Vec<u8>> = Vec::new();
    for (i, o) in opens.iter().enumerate() {
        let a = ms[i].start(o, &genesis, 1.0)?;
        if i == 1 {
            // n1 relays n0's signed advert as its own: refused, changes nothing.
            assert_status(
                ms[1].send(o, M::Advert(adverts[0].clone())).await,
                Code::InvalidArgument,
                "claims node n0",
            );
            // n0 replays its advert while the phase is open: refused.
            assert_status(
                ms[0].send(&opens[0], M::Advert(adverts[0].clone())).await,
                Code::AlreadyExists,
                "already",
            );
        }
        ms[i].send(o, M::Advert(a.clone())).await?;
        adverts.push(a);
    }
    // Once every advert is in, the phase has moved on: a late advert is out of phase.
    assert_status(
        ms[0].send(&opens[0], M::Advert(adverts[0].clone())).await,
        Code::FailedPrecondition,
        "share phase",
    );

    // Shares.
    for m in ms.iter_mut() {
        let o = m.wait_phase(SecAggPhase::Share).await?;
        assert_eq!(bucket(&o)?.adverts.len(), 3);
        let bundle = m.shares(&o)?;
        m.send(&o, M::Shares(bundle)).await?;
    }
    // Masked updates: n5 shares its keys, then vanishes.
    let value = |i: usize| 0.001 * (i + 1) as f32;
    let mut masked_early = None;
    for (i, m) in ms.iter_mut().enumerate() {
        let o = m.wait_phase(SecAggPhase::Mask).await?;
        assert_eq!(
            bucket(&o)?.shares.len(),
            2,
            "one share from each bucket peer"
        );
        let y = m.masked(&o, &vec![value(i); p], &extras(i).2)?;
        if i == 5 {
            continue;
        }
        m.send(&o, M::Masked(y.clone())).await?;
        if i == 0 {
            masked_early = Some((o, y));
        }
    }
    // A repeated masked input is a replay.
    let (o0, y0) = masked_early.ok_or_else(|| anyhow!("n0 masked nothing"))?;
    assert_status(
        ms[0].send(&o0, M::Masked(y0)).await,
        Code::AlreadyExists,
        "already",
    );

    // Unmasking (the mask phase ends at its deadline, without n5).
    for m in ms.iter_mut().take(5) {
        let o = m.wait_phase(SecAggPhase::Unmask).await?;
        let r = m.unmask(&o)?;
        m.send(&o, M::UnmaskResponse(r)).await?;
    }
    let c = wait_committed(&mut ms[0].stream).await?;
    assert_eq!(c.version, 1);

    // The model moved by the mean of the five contributors' updates.
    let (_, v1m) = get_model(&mut ms[1].client, 1).await?;
    let mean = (0..5).map(value).sum::<f32>() / 5.0;
    for (w, g) in params(&v1m)?.iter().zip(&genesis) {
        assert!((w - (g + mean)).abs() < 1e-4, "{w} vs {g} + {mean}");
    }
    assert_eq!(v1m.participants, 5);
    // The scaler comes from the bucket sums of the nodes' moments.
    let scaler = v1m.scaler.clone().ok_or_else(|| anyhow!("no scaler"))?;
    let means: Vec<f64> = (0..5).map(|i| extras(i).0[0]).collect();
    let sqs: Vec<f64> = (0..5).map(|i| extras(i).1[0]).collect();
    let m = means.iter().sum::<f64>() / 5.0;
    let std = (sqs.iter().sum::<f64>() / 5.0 - m * m).sqrt();
    assert!((f64::from(scaler.mean[0]) - m).abs() < 1e-3, "{scaler:?}");
    assert!((f64::from(scaler.std[0]) - std).abs() < 1e-3, "{scaler:?}");

    // The audit log says who took part, who dropped out, and how.
    let log = mesh.fed("acme").audit_log()?;
    let e = log.last().ok_or_else(|| anyhow!("empty audit log"))?;
    assert_eq!(
        e.participants,
        (0..5).map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    assert!(
        e.excluded
            .iter()
            .any(|(n, why)| n == "n5" && why.contains("mask")),
        "{:?}",
        e.excluded
    );
    let s = e.secure.clone().ok_or_else(|| anyhow!("no secure audit"))?;
    assert_eq!(
        (s.bucket_size, s.buckets, s.dropped, s.rejected),
        (3, 2, 0, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclipped_update_gets_its_bucket_rejected_not_the_round() -> Result<()> {
    let mesh = Mesh::start(&[secure_tenant("acme", 4, 2)], 64 << 20).await?;
    let mut ms = members(&mesh, 4).await?;
    let (_, v0) = get_model(&mut ms[0].client, 0).await?;
    let genesis = params(&v0)?;
    let p = genesis.len();
    // n3 ignores the round's clip norm and sends a huge update.
    let mut opens = Vec::new();
    for (i, m) in ms.iter_mut().enumerate() {
        let o = m.wait_phase(SecAggPhase::Advertise).await?;
        let clip = if i == 3 { 1000.0 } else { 1.0 };
        let a = m.start(&o, &genesis, clip)?;
        m.send(&o, M::Advert(a)).await?;
        opens.push(o);
    }
    for m in ms.iter_mut() {
        let o = m.wait_phase(SecAggPhase::Share).await?;
        let b = m.shares(&o)?;
        m.send(&o, M::Shares(b)).await?;
    }
    for (i, m) in ms.iter_mut().enumerate() {
        let o = m.wait_phase(SecAggPhase::Mask).await?;
        let v = if i == 3 { 5.0 } else { 0.002 };
        let y = m.masked(&o, &vec![v; p], &extras(i).2)?;
        m.send(&o, M::Masked(y)).await?;
    }
    for m in ms.iter_mut() {
        let o = m.wait_phase(SecAggPhase::Unmask).await?;
        let r = m.unmask(&o)?;
        m.send(&o, M::UnmaskResponse(r)).await?;
    }
    assert_eq!(wait_committed(&mut ms[0].stream).await?.version, 1);
    let (_, v1m) = get_model(&mut ms[0].client, 1).await?;
    for (w, g) in params(&v1m)?.iter().zip(&genesis) {
        assert!(
            (w - (g + 0.002)).abs() < 1e-4,
            "{w} vs {g} + 0.002: the poisoned bucket leaked"
        );
    }
    let attacker_bucket = bucket(&opens[3])?.members.clone();
    let log = mesh.fed("acme").audit_log()?;
    let e = log.last().ok_or_else(|| anyhow!("empty audit log"))?;
    for n in &attacker_bucket {
        assert!(
            e.excluded
                .iter()
                .any(|(x, why)| x == n && why.contains("exceeds the bound")),
            "{n} not excluded: {:?}",
            e.excluded
        );
        assert!(!e.participants.contains(n));
    }
    assert_eq!(e.secure.as_ref().map(|s| s.rejected), Some(1));
    Ok(())
}
