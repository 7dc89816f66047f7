//! Arbitrary bytes -> `RevocationList::from_der` and `from_pem` (the mesh
//! CA's CRL, read by coordinator and nodes): never panics, and never
//! accepts a list: forging the CA's signature from random bytes is
//! impossible. A few bit flips of a real list, seeded by the input, must
//! either be refused or decode to the very same list.
#![no_main]

use std::sync::OnceLock;

use fedmesh_crypto::{MeshCa, RevocationList, RevokedCert};
use libfuzzer_sys::fuzz_target;

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_893_456_000).expect("fixed timestamp")
}

struct Fixture {
    ca_pem: String,
    good: RevocationList,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca = MeshCa::generate("fuzz CA", now(), 30).expect("CA");
        let pem = ca
            .issue_crl(
                &[RevokedCert {
                    serial: vec![0x41; 20],
                    revoked_at: now(),
                }],
                5,
                now(),
            )
            .expect("CRL");
        let good = RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()).expect("own CRL");
        Fixture {
            ca_pem: ca.cert_pem().to_owned(),
            good,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    assert!(RevocationList::from_der(data, &f.ca_pem).is_err());
    assert!(RevocationList::from_pem(data, &f.ca_pem).is_err());
    let mut der = f.good.der().to_vec();
    for pair in data.chunks_exact(2).take(4) {
        let i = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % der.len();
        der[i] ^= 1 << (pair[1] % 8);
    }
    if let Ok(list) = RevocationList::from_der(&der, &f.ca_pem) {
        assert_eq!(list.serials(), f.good.serials());
        assert_eq!(list.number(), f.good.number());
    }
});
