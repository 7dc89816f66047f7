//! Shared fixtures for unit tests.

use time::OffsetDateTime;

use crate::MeshCa;
use crate::identity::{Identity, NodeId, TenantId};

/// A fixed "now": 2030-01-01T00:00:00Z.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
}

pub fn ca() -> MeshCa {
    MeshCa::generate("fedmesh test CA", now(), 365).unwrap()
}

pub fn tenant(s: &str) -> TenantId {
    s.parse().unwrap()
}

pub fn node(s: &str) -> NodeId {
    s.parse().unwrap()
}

pub fn node_identity(t: &str, n: &str) -> Identity {
    Identity::Node {
        tenant: tenant(t),
        node: node(n),
    }
}

pub fn der(pem: &str) -> Vec<u8> {
    crate::pem::single_cert_der(pem).unwrap().to_vec()
}
