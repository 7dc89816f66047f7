//! Checked decoders of secure-aggregation messages: never panic, and
//! anything accepted re-encodes to exactly the input (canonical encoding).
#![no_main]

use fedmesh_crypto::secagg::{
    EncryptedShare, KeyAdvert, MaskedInput, UnmaskRequest, UnmaskResponse,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = KeyAdvert::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(m) = EncryptedShare::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(m) = MaskedInput::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(m) = UnmaskRequest::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(m) = UnmaskResponse::decode(data) {
        assert_eq!(m.encode(), data);
    }
});
