//! Verifiable random bucket assignment.
//!
//! The coordinator commits to the sorted participant list of a round; only
//! then is the shuffle seed fixed:
//!
//! ```text
//! list_digest = SHA-256("fedmesh/secagg/v1/participants" ‖ n:u32 ‖ (len:u32 ‖ id)*)
//! seed        = SHA-256("fedmesh/secagg/v1/bucket-seed" ‖ len:u32 ‖ tenant ‖ round:u64
//!                        ‖ list_digest ‖ global_model_digest)
//! ```
//!
//! (integers big-endian). The sorted list is shuffled by Fisher–Yates driven
//! by `ChaCha20Rng::from_seed(seed)` (indices drawn by rejection sampling on
//! `next_u64`, so the permutation does not depend on a library's shuffle
//! implementation), then cut into consecutive buckets of `k` members.
//!
//! **Remainder rule:** with `n = q·k + r`, `0 ≤ r < k`, there are `q`
//! buckets; the `r` leftover members join the *last* bucket, which then has
//! `k + r < 2k` members. No bucket is ever smaller than `k`; `n < k` is an
//! error. `k = 1` gives one bucket per node, i.e. no masking.
//!
//! Every node recomputes the assignment from the same public inputs and
//! refuses a bucket that differs, is smaller than its configured minimum or
//! names identities outside the committed list.

use std::collections::BTreeSet;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::SecAggError;
use crate::identity::{NodeId, TenantId};

const LIST_DOMAIN: &[u8] = b"fedmesh/secagg/v1/participants";
const SEED_DOMAIN: &[u8] = b"fedmesh/secagg/v1/bucket-seed";

/// One bucket of a round: its index and its members in sorted order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Bucket index within the round (0-based).
    pub id: u32,
    /// Members, sorted by node id (this order defines mask signs).
    pub members: Vec<NodeId>,
}

/// The public inputs of a round's bucket assignment.
#[derive(Clone, Debug)]
pub struct AssignmentInput<'a> {
    /// Tenant of the round.
    pub tenant: &'a TenantId,
    /// Round number.
    pub round: u64,
    /// The committed participant list (any order; it is sorted here; duplicates are an error).
    pub participants: &'a [NodeId],
    /// SHA-256 of the global model the round starts from.
    pub model_digest: [u8; 32],
    /// Bucket size `k` (≥ 1).
    pub bucket_size: usize,
}

/// A computed bucket assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Digest of the committed sorted participant list.
    pub list_digest: [u8; 32],
    /// The shuffle seed.
    pub seed: [u8; 32],
    /// The buckets, in order.
    pub buckets: Vec<Bucket>,
}

impl Assignment {
    /// The bucket containing `node`, if any.
    pub fn bucket_of(&self, node: &NodeId) -> Option<&Bucket> {
        self.buckets
            .iter()
            .find(|b| b.members.binary_search(node).is_ok())
    }
}

fn sorted_unique(participants: &[NodeId]) -> Result<Vec<NodeId>, SecAggError> {
    let mut sorted = participants.to_vec();
    sorted.sort();
    for pair in sorted.windows(2) {
        if pair[0] == pair[1] {
            return Err(SecAggError::Config(format!(
                "participant {} listed twice",
                pair[0]
            )));
        }
    }
    Ok(sorted)
}

fn put_len_prefixed(h: &mut Vec<u8>, bytes: &[u8]) {
    // Names are at most 63 bytes, so the cast cannot truncate.
    h.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    h.extend_from_slice(bytes);
}

/// A committed participant list as a change to an earlier one: what a node
/// that kept the earlier list needs instead of the whole list (which grows
/// with the fleet and goes to every node, n² names a round).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDelta {
    /// [`participant_list_digest`] of the earlier list.
    pub base_digest: [u8; 32],
    /// In the new list and not the earlier one, sorted.
    pub added: Vec<NodeId>,
    /// In the earlier list and not the new one, sorted.
    pub removed: Vec<NodeId>,
}

impl ListDelta {
    /// Names it carries.
    pub fn len(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// Whether both lists are the same.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The change from `base` to `new` (each sorted here; duplicates are an
/// error).
pub fn list_delta(base: &[NodeId], new: &[NodeId]) -> Result<ListDelta, SecAggError> {
    let base = sorted_unique(base)?;
    let new = sorted_unique(new)?;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < base.len() || j < new.len() {
        match (base.get(i), new.get(j)) {
            (Some(b), Some(n)) if b == n => {
                i += 1;
                j += 1;
            }
            (Some(b), Some(n)) if b < n => {
                removed.push(b.clone());
                i += 1;
            }
            (Some(b), None) => {
                removed.push(b.clone());
                i += 1;
            }
            (_, Some(n)) => {
                added.push(n.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    Ok(ListDelta {
        base_digest: digest_sorted(&base),
        added,
        removed,
    })
}

/// The list `delta` describes, from the `base` it was computed against
/// (sorted). Refused: a base whose digest is not the delta's, an added
/// name already in the base, a removed name not in it, or a name given
/// twice.
pub fn apply_list_delta(base: &[NodeId], delta: &ListDelta) -> Result<Vec<NodeId>, SecAggError> {
    let base = sorted_unique(base)?;
    if digest_sorted(&base) != delta.base_digest {
        return Err(SecAggError::Assignment(
            "participant list change refers to a list this node does not hold".into(),
        ));
    }
    let added = sorted_unique(&delta.added)?;
    let removed = sorted_unique(&delta.removed)?;
    let mut kept = Vec::with_capacity(base.len() + added.len());
    let mut gone = 0;
    for id in base {
        if removed.binary_search(&id).is_ok() {
            gone += 1;
        } else {
            kept.push(id);
        }
    }
    if gone != delta.removed.len() {
        return Err(SecAggError::Assignment(
            "participant list change removes a name the list does not hold".into(),
        ));
    }
    kept.extend(added);
    kept.sort();
    if kept.windows(2).any(|p| p[0] == p[1]) {
        return Err(SecAggError::Assignment(
            "participant list change adds a name the list already holds".into(),
        ));
    }
    Ok(kept)
}

/// Digest of a participant list (sorted here; duplicates are an error).
pub fn participant_list_digest(participants: &[NodeId]) -> Result<[u8; 32], SecAggError> {
    let sorted = sorted_unique(participants)?;
    Ok(digest_sorted(&sorted))
}

fn digest_sorted(sorted: &[NodeId]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(LIST_DOMAIN.len() + 4 + sorted.len() * 24);
    buf.extend_from_slice(LIST_DOMAIN);
    buf.extend_from_slice(&(sorted.len() as u32).to_be_bytes());
    for id in sorted {
        put_len_prefixed(&mut buf, id.as_str().as_bytes());
    }
    crate::sha256(&buf)
}

/// The shuffle seed for `(tenant, round, list digest, model digest)`.
pub fn bucket_seed(
    tenant: &TenantId,
    round: u64,
    list_digest: &[u8; 32],
    model_digest: &[u8; 32],
) -> [u8; 32] {
    let mut buf = Vec::with_capacity(SEED_DOMAIN.len() + 4 + 63 + 8 + 64);
    buf.extend_from_slice(SEED_DOMAIN);
    put_len_prefixed(&mut buf, tenant.as_str().as_bytes());
    buf.extend_from_slice(&round.to_be_bytes());
    buf.extend_from_slice(list_digest);
    buf.extend_from_slice(model_digest);
    crate::sha256(&buf)
}

/// Uniform index in `0..bound` (`bound ≥ 1`) by rejection sampling.
fn uniform_index(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    // Largest multiple of `bound` that fits: values at or above it are redrawn.
    let zone = u64::MAX - (u64::MAX % bound + 1) % bound;
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return v % bound;
        }
    }
}

/// Computes the bucket assignment (see the module docs for the rule).
pub fn assign_buckets(input: &AssignmentInput<'_>) -> Result<Assignment, SecAggError> {
    let k = input.bucket_size;
    if k == 0 {
        return Err(SecAggError::Config("bucket size must be at least 1".into()));
    }
    let sorted = sorted_unique(input.participants)?;
    let n = sorted.len();
    if n < k {
        return Err(SecAggError::Config(format!(
            "{n} participants cannot fill one bucket of {k}"
        )));
    }
    let list_digest = digest_sorted(&sorted);
    let seed = bucket_seed(input.tenant, input.round, &list_digest, &input.model_digest);
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut order = sorted;
    for i in (1..n).rev() {
        let j = uniform_index(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let count = n / k;
    let mut buckets = Vec::with_capacity(count);
    for b in 0..count {
        let end = if b + 1 == count { n } else { (b + 1) * k };
        let mut members = order[b * k..end].to_vec();
        members.sort();
        buckets.push(Bucket {
            id: b as u32,
            members,
        });
    }
    Ok(Assignment {
        list_digest,
        seed,
        buckets,
    })
}

/// Node-side check of a bucket the coordinator announced: recomputes the
/// assignment from the public inputs and returns the node's own bucket.
/// Refuses if `me` is not a participant, if the announced bucket differs
/// from the recomputed one, if it is smaller than `min_size`, or if it names
/// identities outside the committed list.
pub fn verify_own_bucket(
    input: &AssignmentInput<'_>,
    me: &NodeId,
    announced: &Bucket,
    min_size: usize,
) -> Result<Bucket, SecAggError> {
    let committed: BTreeSet<&NodeId> = input.participants.iter().collect();
    if let Some(stranger) = announced.members.iter().find(|m| !committed.contains(m)) {
        return Err(SecAggError::Assignment(format!(
            "bucket {} lists {stranger}, who is not in the committed participant list",
            announced.id
        )));
    }
    if announced.members.len() < min_size {
        return Err(SecAggError::Assignment(format!(
            "bucket {} has {} members, the minimum is {min_size}",
            announced.id,
            announced.members.len()
        )));
    }
    let assignment = assign_buckets(input)?;
    let mine = assignment.bucket_of(me).ok_or_else(|| {
        SecAggError::Assignment(format!("{me} is not in the committed participant list"))
    })?;
    let mut announced_sorted = announced.members.clone();
    announced_sorted.sort();
    if mine.id != announced.id || mine.members != announced_sorted {
        return Err(SecAggError::Assignment(format!(
            "announced bucket {} does not match the recomputed bucket {} of {me}",
            announced.id, mine.id
        )));
    }
    Ok(mine.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| format!("n{i:03}").parse().unwrap())
            .collect()
    }

    fn input<'a>(t: &'a TenantId, p: &'a [NodeId], k: usize) -> AssignmentInput<'a> {
        AssignmentInput {
            tenant: t,
            round: 7,
            participants: p,
            model_digest: [9; 32],
            bucket_size: k,
        }
    }

    #[test]
    fn remainder_joins_last_bucket() {
        let t: TenantId = "acme".parse().unwrap();
        let p = ids(11);
        let a = assign_buckets(&input(&t, &p, 4)).unwrap();
        let sizes: Vec<usize> = a.buckets.iter().map(|b| b.members.len()).collect();
        assert_eq!(sizes, vec![4, 7]);
        let a = assign_buckets(&input(&t, &p, 1)).unwrap();
        assert_eq!(a.buckets.len(), 11);
        assert!(assign_buckets(&input(&t, &p, 12)).is_err());
        assert!(assign_buckets(&input(&t, &p, 0)).is_err());
    }

    #[test]
    fn seed_binds_every_input() {
        let t: TenantId = "acme".parse().unwrap();
        let u: TenantId = "acme2".parse().unwrap();
        let p = ids(16);
        let base = assign_buckets(&input(&t, &p, 4)).unwrap();
        let mut other = input(&t, &p, 4);
        other.round = 8;
        assert_ne!(assign_buckets(&other).unwrap().seed, base.seed);
        let mut other = input(&t, &p, 4);
        other.model_digest = [8; 32];
        assert_ne!(assign_buckets(&other).unwrap().seed, base.seed);
        assert_ne!(assign_buckets(&input(&u, &p, 4)).unwrap().seed, base.seed);
        let fewer = &p[..15];
        assert_ne!(
            assign_buckets(&input(&t, fewer, 4)).unwrap().list_digest,
            base.list_digest
        );
        // Order of the input list does not matter.
        let mut rev = p.clone();
        rev.reverse();
        assert_eq!(assign_buckets(&input(&t, &rev, 4)).unwrap(), base);
        // Duplicates are refused.
        let mut dup = p.clone();
        dup.push(p[0].clone());
        assert!(assign_buckets(&input(&t, &dup, 4)).is_err());
    }

    #[test]
    fn fixed_vector() {
        // Pinned so that an accidental change of the encoding or shuffle is noticed.
        let t: TenantId = "acme".parse().unwrap();
        let p = ids(6);
        let a = assign_buckets(&input(&t, &p, 3)).unwrap();
        let got: Vec<Vec<&str>> = a
            .buckets
            .iter()
            .map(|b| b.members.iter().map(|m| m.as_str()).collect())
            .collect();
        assert_eq!(
            hex::encode(a.seed),
            hex::encode(bucket_seed(
                &t,
                7,
                &participant_list_digest(&p).unwrap(),
                &[9; 32]
            ))
        );
        assert_eq!(got, crate::secagg::test_vectors::BUCKET_VECTOR.to_vec());
    }

    #[test]
    fn node_side_check() {
        let t: TenantId = "acme".parse().unwrap();
        let p = ids(9);
        let inp = input(&t, &p, 3);
        let a = assign_buckets(&inp).unwrap();
        let me = a.buckets[1].members[0].clone();
        let mine = verify_own_bucket(&inp, &me, &a.buckets[1], 3).unwrap();
        assert_eq!(mine, a.buckets[1]);
        // Wrong bucket for me.
        let e = verify_own_bucket(&inp, &me, &a.buckets[0], 3).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        // Too small.
        let e = verify_own_bucket(&inp, &me, &a.buckets[1], 4).unwrap_err();
        assert!(e.to_string().contains("minimum"), "{e}");
        // Stranger in the bucket.
        let mut forged = a.buckets[1].clone();
        forged.members[2] = "sybil".parse().unwrap();
        let e = verify_own_bucket(&inp, &me, &forged, 3).unwrap_err();
        assert!(e.to_string().contains("sybil"), "{e}");
        // Not a participant at all.
        let outsider: NodeId = "zzz".parse().unwrap();
        assert!(verify_own_bucket(&inp, &outsider, &a.buckets[1], 3).is_err());
    }

    proptest! {
        #[test]
        fn partition_and_sizes(n in 1usize..80, k in 1usize..12, round in 0u64..1000) {
            prop_assume!(n >= k);
            let t: TenantId = "acme".parse().unwrap();
            let p = ids(n);
            let mut inp = input(&t, &p, k);
            inp.round = round;
            let a = assign_buckets(&inp).unwrap();
            prop_assert_eq!(a.buckets.len(), n / k);
            let mut all: Vec<NodeId> = a.buckets.iter().flat_map(|b| b.members.clone()).collect();
            all.sort();
            prop_assert_eq!(&all, &p);
            for b in &a.buckets {
                prop_assert!(b.members.len() >= k && b.members.len() < 2 * k);
                prop_assert!(b.members.windows(2).all(|w| w[0] < w[1]));
            }
            prop_assert_eq!(assign_buckets(&inp).unwrap(), a);
        }

        #[test]
        fn a_delta_rebuilds_the_new_list_and_nothing_else(
            base in proptest::collection::btree_set(0usize..60, 0..40),
            new in proptest::collection::btree_set(0usize..60, 0..40),
            other in proptest::collection::btree_set(0usize..60, 0..40),
        ) {
            let names = |s: &std::collections::BTreeSet<usize>| -> Vec<NodeId> {
                s.iter().map(|i| format!("n{i:03}").parse().unwrap()).collect()
            };
            let (base, new, other) = (names(&base), names(&new), names(&other));
            let d = list_delta(&base, &new).unwrap();
            prop_assert_eq!(d.base_digest, participant_list_digest(&base).unwrap());
            prop_assert!(d.added.iter().all(|a| !base.contains(a) && new.contains(a)));
            prop_assert!(d.removed.iter().all(|r| base.contains(r) && !new.contains(r)));
            prop_assert_eq!(apply_list_delta(&base, &d).unwrap(), new.clone());
            prop_assert_eq!(d.is_empty(), base == new);
            // Against another list: refused unless it is the same list.
            match apply_list_delta(&other, &d) {
                Ok(l) => {
                    prop_assert_eq!(&other, &base);
                    prop_assert_eq!(l, new);
                }
                Err(e) => prop_assert!(matches!(e, SecAggError::Assignment(_))),
            }
        }
    }

    #[test]
    fn an_inconsistent_delta_is_refused() {
        let base = ids(5);
        let d = list_delta(&base, &ids(6)).unwrap();
        assert_eq!(d.added, ids(6)[5..]);
        assert!(d.removed.is_empty());
        // Adds a name the list holds.
        let mut bad = d.clone();
        bad.added.push(base[0].clone());
        assert!(apply_list_delta(&base, &bad).is_err());
        // Removes a name the list does not hold.
        let mut bad = d.clone();
        bad.removed.push("zzz".parse().unwrap());
        assert!(apply_list_delta(&base, &bad).is_err());
        // Names a name twice.
        let mut bad = d.clone();
        bad.added.push(bad.added[0].clone());
        assert!(apply_list_delta(&base, &bad).is_err());
        // Another base.
        assert!(apply_list_delta(&ids(4), &d).is_err());
        assert_eq!(apply_list_delta(&base, &d).unwrap(), ids(6));
    }
}
