//! The federation session: dial out, join, follow the round stream, take
//! part in the rounds this node is selected for, install verified models,
//! reconnect with backoff. Detection never waits for it.

use std::time::Duration;

use fedmesh_proto::v1::{self, round_event::Event as Ev};
use rand::Rng;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::agent::{SharedAgent, lock};
use crate::detection::features::{NUM_FEATURES, feature_schema_hash};
use crate::federation::round::{FederationSettings, SessionError, rpc, sync_model};

/// Runs the federation loop until `shutdown` flips to true.
pub async fn run_federation(
    agent: SharedAgent,
    fs: FederationSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tenant, node) = {
        let a = lock(&agent);
        (a.settings().tenant.clone(), a.settings().node.clone())
    };
    let span = info_span!("node", tenant = %tenant, node = %node);
    async move {
        let mut backoff = Duration::from_millis(200);
        // The last committed participant lists this node checked its
        // bucket against (also kept in its store): the coordinator may
        // send the next as a change to one of them.
        let mut known = lock(&agent).stored_participant_lists();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let result = tokio::select! {
                r = session(&agent, &fs, &mut backoff, &mut known) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(()) => debug!("round stream ended; reconnecting"),
                Err(SessionError::Incompatible(m)) => {
                    warn!(reason = %m, "federation incompatible; retrying later")
                }
                Err(e) => warn!(error = %e, "federation session failed; detection continues"),
            }
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 4);
            let pause = backoff + Duration::from_millis(jitter);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(fs.max_backoff);
        }
    }
    .instrument(span)
    .await
}

async fn session(
    agent: &SharedAgent,
    fs: &FederationSettings,
    backoff: &mut Duration,
    known: &mut Vec<Vec<fedmesh_crypto::NodeId>>,
) -> Result<(), SessionError> {
    let (tenant, node, have) = {
        let a = lock(agent);
        (
            a.settings().tenant.clone(),
            a.settings().node.clone(),
            a.global_version(),
        )
    };
    let mut client = fs.connector.connect().await?;
    let join = client
        .join(v1::JoinRequest {
            tenant: tenant.clone(),
            node: node.clone(),
            feature_schema: feature_schema_hash().to_vec(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(rpc("Join"))?
        .into_inner();
    let spec = join.model_spec.unwrap_or_default();
    let hidden: Vec<usize> = spec.hidden.iter().map(|&h| h as usize).collect();
    if spec.input_dim as usize != NUM_FEATURES
        || join.schema_hash
            != fedmesh_proto::model::model_schema_hash(
                &feature_schema_hash(),
                NUM_FEATURES,
                &hidden,
            )
    {
        return Err(SessionError::Incompatible(
            "model schema differs from this node's".into(),
        ));
    }
    info!(version = join.current_version, have = ?have, "joined federation");
    sync_model(agent, fs, &mut client, 0).await?;
    let have_version = lock(agent).global_version().unwrap_or(0);
    let mut stream = client
        .watch_rounds(v1::WatchRoundsRequest { have_version })
        .await
        .map_err(rpc("WatchRounds"))?
        .into_inner();
    *backoff = Duration::from_millis(200);
    let mut pending: Option<v1::RoundEvent> = None;
    // A secure round announces each phase with a new event; a node takes
    // part once per round (a node that left a round does not rejoin it).
    let mut secure_round: Option<u64> = None;
    loop {
        let ev = match pending.take() {
            Some(ev) => ev,
            None => match stream.message().await.map_err(rpc("WatchRounds"))? {
                Some(ev) => ev,
                None => break,
            },
        };
        match ev.event {
            Some(Ev::Open(o)) if o.secure.is_some() && secure_round == Some(o.round) => {
                debug!(round = o.round, "secure round already handled");
            }
            Some(Ev::Open(o)) if o.selected && o.secure.is_some() => {
                secure_round = Some(o.round);
                let span = info_span!("round", tenant = %tenant, round = o.round, node = %node);
                pending = crate::federation::secure::participate(
                    agent,
                    fs,
                    &mut client,
                    &mut stream,
                    &o,
                    known,
                )
                .instrument(span)
                .await?;
            }
            Some(Ev::Open(o)) if o.selected => {
                let span = info_span!("round", tenant = %tenant, round = o.round, node = %node);
                crate::federation::plain::participate(agent, fs, &mut client, &o)
                    .instrument(span)
                    .await?;
            }
            Some(Ev::Open(o)) => debug!(round = o.round, "round open without this node"),
            Some(Ev::Committed(v1::ModelCommitted { version, .. }))
            | Some(Ev::Idle(v1::Idle {
                current_version: version,
                ..
            })) if lock(agent)
                .global_version()
                .is_none_or(|have| have < version) =>
            {
                sync_model(agent, fs, &mut client, version).await?;
            }
            Some(Ev::Committed(_)) => {}
            Some(Ev::Aborted(a)) => info!(round = a.round, reason = %a.reason, "round aborted"),
            Some(Ev::Idle(i)) => {
                debug!(version = i.current_version, reason = %i.reason, "federation idle")
            }
            None => {}
        }
    }
    Ok(())
}
