//! The harness's one hook into the real node code ([`SimulationHook`]):
//! whether a simulated node takes part in a round, what it sends (its
//! update rewritten or poisoned), whether it spoils its shares, and the
//! seed of its secure-aggregation randomness. A node holds a hook only
//! with the `sim` feature (`FederationSettings::sim`); the types here are
//! inert without it.

use crate::agent::LocalUpdate;

/// How a simulated malicious node poisons its update before sending it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tamper {
    /// Model replacement: the update times a factor, and (under secure
    /// aggregation) quantized with a clip norm that factor times larger,
    /// so the round's clip does not neutralize it.
    Scale(f32),
    /// Sign flip: the update times −factor (same clipping bypass).
    SignFlip(f32),
}

impl Tamper {
    /// Applies the poisoning to `delta`.
    pub fn apply(&self, delta: &mut [f32]) {
        let f = match *self {
            Tamper::Scale(f) => f,
            Tamper::SignFlip(f) => -f,
        };
        delta.iter_mut().for_each(|x| *x *= f);
    }

    /// How much larger than the round's clip norm the attacker quantizes.
    pub fn clip_factor(&self) -> f64 {
        match *self {
            Tamper::Scale(f) | Tamper::SignFlip(f) => f64::from(f.abs()).max(1.0),
        }
    }
}

/// How a simulated node behaves in a round it is selected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPresence {
    /// Takes part normally.
    Present,
    /// Drops out before doing anything (k > 1: before advertising keys).
    Dropped,
    /// Misses the deadline: sends nothing in time (k > 1: stops after
    /// sharing its keys, so its pairwise masks must be recovered).
    Straggler,
    /// k > 1: sends its masked update, then stops answering (the
    /// coordinator must recover its self mask from the peers' shares). At
    /// k = 1 the same as `Present`.
    NoUnmask,
}

/// What a simulated node sends after [`SimulationHook::rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimSend {
    /// Sends the (rewritten) update with its scaler statistics.
    Update,
    /// Sends the update without scaler statistics (k = 1; a crafted update
    /// has no data behind it).
    UpdateWithoutStats,
    /// Sends nothing this round.
    Nothing,
}

/// The harness's hook into the real node code: who takes part in a round,
/// and what a (possibly malicious) node sends. Called on a blocking thread,
/// so an implementation may wait — for a bounded time — for other nodes'
/// updates (colluding attackers craft theirs from the honest ones).
pub trait SimulationHook: Send + Sync {
    /// Presence in `round`, decided when the round opens.
    fn presence(&self, round: u64) -> SimPresence;
    /// Rewrites the freshly trained `update` for `round` in place.
    fn rewrite(&self, round: u64, update: &mut LocalUpdate) -> SimSend;
    /// k > 1: whether this node spoils the Shamir shares it sends in
    /// `round` (protocol misbehaviour: its peers cannot decrypt them).
    fn corrupt_shares(&self, _round: u64) -> bool {
        false
    }
    /// Seed for the secure-aggregation randomness (keys, masks, rounding,
    /// DP noise), so that a run replays bit for bit; `None` draws from the
    /// OS.
    fn secagg_seed(&self) -> Option<u64> {
        None
    }
    /// k > 1: how much larger than the round's clip norm this node
    /// quantizes (a poisoning node's clipping bypass, see
    /// [`Tamper::clip_factor`]).
    fn clip_factor(&self) -> f64 {
        1.0
    }
}

/// The hook of a node that always takes part: a fixed secure-aggregation
/// seed and, for an attacker, a poisoning applied to every update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeededNode {
    /// Seed of the secure-aggregation randomness.
    pub secagg_seed: u64,
    /// Poisoning (`None`: an honest node).
    pub tamper: Option<Tamper>,
}

impl SimulationHook for SeededNode {
    fn presence(&self, _round: u64) -> SimPresence {
        SimPresence::Present
    }

    fn rewrite(&self, _round: u64, update: &mut LocalUpdate) -> SimSend {
        if let Some(t) = &self.tamper {
            t.apply(&mut update.delta);
        }
        SimSend::Update
    }

    fn secagg_seed(&self) -> Option<u64> {
        Some(self.secagg_seed)
    }

    fn clip_factor(&self) -> f64 {
        self.tamper.map_or(1.0, |t| t.clip_factor())
    }
}
