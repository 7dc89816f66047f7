//! Arbitrary bytes -> the node's `verify_global_model` (and the
//! coordinator's `decode_signed`): never panics, and never accepts a model:
//! forging a coordinator signature from random bytes is impossible.
#![no_main]

use std::sync::OnceLock;

use fedmesh_crypto::{CertVerifier, MeshCa};
use libfuzzer_sys::fuzz_target;

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_893_456_000).expect("fixed timestamp")
}

fn verifier() -> &'static CertVerifier {
    static V: OnceLock<CertVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let ca = MeshCa::generate("fuzz CA", now(), 30).expect("CA");
        CertVerifier::new(ca.cert_pem()).expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let r = fedmesh_node::agent::verify_global_model(data, verifier(), "acme", None, now());
    assert!(r.is_err(), "random bytes verified as a signed model");
    let _ = fedmesh_coordinator::federation::decode_signed(data);
});
