//! The node's TLS files: the input's parts (split at `PART_SEPARATOR`) written as the server
//! certificate chain, its private key, the client CA bundle and a CRL, and loaded with
//! `ServerTls::load` (PEM and DER parsing, the key against the certificate, the verifier).
//! Every certificate in the parts (PEM blocks, or a part read as DER) also goes through
//! `peer_identity`, which reads the bidder's identity from a peer's certificate.
//!
//! Refusals are `TlsError`s naming a file's content (never a read error: the files exist
//! and are small); identities are `IdentityError`s.
#![no_main]

use gavel_fuzz::{empty_dir, parts};
use gavel_transport::tls::{ServerTls, TlsError, TlsPaths, peer_identity};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

fuzz_target!(|data: &[u8]| {
    let parts = parts(data, 4);
    let dir = empty_dir("tls");
    let file = |name: &str, at: usize| {
        let path = dir.join(name);
        std::fs::write(&path, parts.get(at).copied().unwrap_or_default()).expect("write");
        path
    };
    let paths = TlsPaths {
        cert: file("cert.pem", 0),
        key: file("key.pem", 1),
        client_ca: file("ca.pem", 2),
        crl: (parts.len() > 3).then(|| file("crl.pem", 3)),
    };
    match ServerTls::load(paths, parts.len() % 2 == 0) {
        Ok(_) => {}
        Err(error @ (TlsError::Read { .. } | TlsError::TooLarge { .. })) => {
            panic!("a small file that exists could not be read: {error}")
        }
        Err(_) => {}
    }
    for part in &parts {
        let _ = peer_identity(&[CertificateDer::from(part.to_vec())]);
        for cert in CertificateDer::pem_slice_iter(part).flatten() {
            let _ = peer_identity(&[cert]);
        }
    }
});
