//! The coordinator tenant a scenario runs as, shared by both engines: its
//! configuration (the same `[[tenants]]` table the network engine's
//! coordinator loads and the in-process engine's `RoundMachine` is built
//! from), the identities that connect to it (every online node, and an
//! attacker's Sybils), and the seed each identity's secure-aggregation
//! randomness comes from. Whatever the engine, a round is therefore sampled,
//! validated and committed from the same configuration by the same code.

use std::collections::BTreeSet;

use fedmesh_coordinator::config::TenantConfig;

use super::{EngineError, derive_seed};
use crate::scenario::Scenario;

/// The tenant every simulated node belongs to.
pub const TENANT: &str = "sim";

/// Purpose label of the genesis (and sampling) seed.
pub(crate) const P_GENESIS: u64 = 8;

/// Purpose label of the nodes' secure-aggregation seeds.
const P_SECAGG_NODE: u64 = 10;

/// The multiplier of the round number in a node's secure-aggregation seed
/// (as a node with a seeded simulation hook mixes it).
pub(crate) const ROUND_SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The coordinator's quorum: the scenario's `min_participants`, raised to
/// the smallest number of updates the rule accepts (over ⌊q/k⌋ bucket
/// means with k > 1, so at least one full bucket).
pub fn quorum_for(s: &Scenario) -> Result<usize, EngineError> {
    let k = s.bucket_size.max(1);
    // Every identity: the nodes and the attackers' extra Sybils.
    let sybils = s.attack.as_ref().map_or(1, |a| a.sybils.max(1));
    let most = s.fleet.nodes + s.attacker_count() * (sybils - 1);
    let least = (k..=most)
        .find(|&q| s.rule.check(q / k).is_ok())
        .ok_or_else(|| {
            EngineError::Tenant(format!(
                "the rule {} cannot run with {most} identities in buckets of {k}",
                s.rule.rule.name(),
            ))
        })?;
    Ok(s.min_participants.max(least))
}

/// Participants sampled per round: `max_participants` of the tenant (0 =
/// every connected identity).
pub fn max_participants(s: &Scenario) -> usize {
    if s.fleet.participation < 1.0 {
        s.sampled_per_round()
    } else {
        0
    }
}

/// The round-related keys of the scenario's tenant, as TOML: the keys of
/// the `[[tenants]]` entry, then its sub-tables named `{table}training`,
/// `{table}aggregation`, `{table}reputation` and (k > 1)
/// `{table}secure` — `table` is `"tenants."` inside a coordinator
/// configuration and `""` for a bare [`TenantConfig`]. `min_nodes` and
/// `timeout_ms` (the round deadline and each secure phase's) only matter to
/// a networked coordinator.
pub fn tenant_toml(
    s: &Scenario,
    table: &str,
    min_nodes: usize,
    timeout_ms: u64,
) -> Result<String, EngineError> {
    let text = |e: toml::ser::Error| EngineError::Tenant(e.to_string());
    let rule = toml::to_string(&s.rule).map_err(text)?;
    let reputation = toml::to_string(&s.reputation).map_err(text)?;
    let secure = if s.bucket_size > 1 {
        let mut t = format!(
            "[{table}secure]\nbucket_size = {}\nclip_norm = {:?}\nquant_scale = {:?}\nphase_timeout_ms = {timeout_ms}\n",
            s.bucket_size, s.secagg.clip_norm, s.secagg.scale
        );
        if let Some(z) = s.secagg.noise_multiplier {
            t.push_str(&format!("noise_multiplier = {z:?}\n"));
        }
        if let Some(m) = s.secagg.max_mean_norm {
            t.push_str(&format!("max_bucket_mean_norm = {m:?}\n"));
        }
        t
    } else {
        String::new()
    };
    Ok(format!(
        r#"name = "{TENANT}"
min_nodes = {min_nodes}
quorum = {quorum}
round_timeout_ms = {timeout_ms}
round_interval_ms = 0
max_rounds = 0
max_participants = {max_participants}
seed = "{seed}"
server_lr = {lr:?}
server_momentum = {beta:?}
max_update_norm = 1.0e30
max_param_abs = 1.0e30
weighting = "{weighting}"
[{table}training]
local_epochs = {epochs}
batch_size = {batch}
learning_rate = {tlr:?}
prox_mu = {mu:?}
[{table}aggregation]
{rule}
[{table}reputation]
{reputation}
{secure}
"#,
        quorum = quorum_for(s)?,
        max_participants = max_participants(s),
        seed = derive_seed(s.seed, &[P_GENESIS]),
        lr = s.server.lr,
        beta = s.server.momentum,
        weighting = match s.server.weighting {
            fedmesh_coordinator::aggregate::Weighting::Samples => "samples",
            fedmesh_coordinator::aggregate::Weighting::Equal => "equal",
        },
        epochs = s.training.local_epochs,
        batch = s.training.batch_size,
        tlr = s.training.learning_rate,
        mu = s.training.prox_mu,
    ))
}

/// The scenario's tenant as the coordinator would load it.
pub fn tenant_config(s: &Scenario) -> Result<TenantConfig, EngineError> {
    let text = tenant_toml(s, "", 1, 60_000)?;
    toml::from_str(&text).map_err(|e| EngineError::Tenant(e.to_string()))
}

/// The tenant's model as the coordinator sees it: the schema hash every
/// update carries and the parameter count (as `Federation::open` derives
/// them from the configuration); the nodes' detector must be that model.
pub fn model_of(cfg: &TenantConfig) -> Result<([u8; 32], usize), EngineError> {
    let bad = |m: &str| EngineError::Tenant(m.to_string());
    let digest = fedmesh_coordinator::config::decode_digest(&cfg.model.feature_schema_digest)
        .ok_or_else(|| bad("feature_schema_digest is not 64 hex characters"))?;
    let spec = fedmesh_node::detection::model::ModelSpec::default_for_features();
    if digest != fedmesh_node::detection::features::feature_schema_hash()
        || cfg.model.input_dim != spec.input_dim
        || cfg.model.hidden != spec.hidden
    {
        return Err(bad("the tenant's model is not the nodes' detector"));
    }
    let schema_hash =
        fedmesh_proto::model::model_schema_hash(&digest, cfg.model.input_dim, &cfg.model.hidden);
    let params = fedmesh_proto::model::param_count(cfg.model.input_dim, &cfg.model.hidden)
        .ok_or_else(|| bad("model size overflows"))?;
    Ok((schema_hash, params))
}

/// One identity that connects to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its name (the node id in its certificate).
    pub name: String,
    /// The node (index) it belongs to.
    pub node: usize,
    /// 0 for the node's own identity, j for its j-th Sybil.
    pub sybil: usize,
}

/// Every identity that connects: each online node's own and, for an
/// attacker node, its Sybils (connected from the start; they take part
/// while the attack is active). Offline nodes never connect. In node
/// order, then Sybil order.
pub fn identities(s: &Scenario, names: &[String], attackers: &BTreeSet<usize>) -> Vec<Identity> {
    let offline: BTreeSet<usize> = s.dropout.always_offline.iter().copied().collect();
    let sybils = s
        .attack
        .as_ref()
        .filter(|a| a.fraction > 0.0)
        .map_or(1, |a| a.sybils.max(1));
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| !offline.contains(i))
        .flat_map(|(i, name)| {
            let k = if attackers.contains(&i) { sybils } else { 1 };
            identities_of(name, k)
                .into_iter()
                .enumerate()
                .map(move |(j, id)| Identity {
                    name: id,
                    node: i,
                    sybil: j,
                })
        })
        .collect()
}

/// Identities of node `name` with `sybils` identities: its name, plus
/// `name-sybilJ` for j ≥ 1.
pub fn identities_of(name: &str, sybils: usize) -> Vec<String> {
    (0..sybils.max(1))
        .map(|j| {
            if j == 0 {
                name.to_string()
            } else {
                format!("{name}-sybil{j}")
            }
        })
        .collect()
}

/// The seed of identity (`node`, `sybil`)'s secure-aggregation randomness
/// (keys, masks, stochastic rounding, DP noise); in round r it draws from
/// `ChaCha20Rng::seed_from_u64(seed ^ r · ROUND_SEED_MIX)`, in both engines.
pub fn secagg_seed(s: &Scenario, node: usize, sybil: usize) -> u64 {
    derive_seed(s.seed, &[P_SECAGG_NODE, node as u64, sybil as u64])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Scenario {
        Scenario::from_toml(&format!(
            r#"
name = "t"
seed = 3
rounds = 1
{extra}
[fleet]
nodes = 6
containers_per_node = 2
windows = 16
mixes = [{{ web = 1 }}]
[rule]
rule = "trimmed_mean"
f = 1
[attack]
fraction = 0.34
sybils = 2
kind = "ipm"
[dropout]
always_offline = [4]
"#
        ))
        .unwrap()
    }

    #[test]
    fn the_tenant_is_the_scenarios_and_loads_as_the_coordinator_loads_it() {
        let s = scenario("bucket_size = 2\nmin_participants = 2");
        let cfg = tenant_config(&s).unwrap();
        assert_eq!(cfg.name, TENANT);
        assert_eq!(cfg.seed, derive_seed(3, &[P_GENESIS]));
        // Trimmed mean with f = 1 needs 3 bucket means: 6 updates in buckets of 2.
        assert_eq!(cfg.quorum, 6);
        assert_eq!(cfg.max_participants, 0);
        assert_eq!(cfg.aggregation, s.rule);
        assert_eq!(cfg.reputation, s.reputation);
        assert_eq!(cfg.secure.bucket_size, 2);
        assert_eq!(cfg.training.local_epochs, s.training.local_epochs);
        // The model is the nodes' default detector over the v1 features.
        let spec = fedmesh_node::detection::model::ModelSpec::default_for_features();
        assert_eq!(
            (cfg.model.input_dim, cfg.model.hidden.clone()),
            (spec.input_dim, spec.hidden)
        );
        assert_eq!(
            fedmesh_coordinator::config::decode_digest(&cfg.model.feature_schema_digest),
            Some(fedmesh_node::detection::features::feature_schema_hash())
        );
        let mut p = s.clone();
        p.fleet.participation = 0.5;
        assert_eq!(tenant_config(&p).unwrap().max_participants, 3);
        // The two attackers' Sybils count: trimmed mean with f = 3 needs 7
        // of the 8 identities.
        let mut t = scenario("");
        t.rule = toml::from_str("rule = \"trimmed_mean\"\nf = 3").unwrap();
        assert_eq!(tenant_config(&t).unwrap().quorum, 7);
        t.rule = toml::from_str("rule = \"trimmed_mean\"\nf = 4").unwrap();
        assert!(tenant_config(&t).is_err());
    }

    #[test]
    fn offline_nodes_never_connect_and_attackers_bring_their_sybils() {
        let s = scenario("");
        let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
        let ids = identities(&s, &names, &BTreeSet::from([1, 4]));
        let got: Vec<(&str, usize, usize)> = ids
            .iter()
            .map(|i| (i.name.as_str(), i.node, i.sybil))
            .collect();
        assert_eq!(
            got,
            [
                ("n0", 0, 0),
                ("n1", 1, 0),
                ("n1-sybil1", 1, 1),
                ("n2", 2, 0),
                ("n3", 3, 0),
                ("n5", 5, 0)
            ]
        );
        assert_ne!(secagg_seed(&s, 1, 0), secagg_seed(&s, 1, 1));
    }
}
