//! Signed payloads: cosign simple-signing payloads, in-toto statements,
//! DSSE envelopes (through `verify_legacy`, which decodes the envelope, its
//! base64 payload and the statement) and Sigstore bundles
//! (`Bundle::from_json`, then `verify_bundle` with a key authority and a
//! keyless one over the public-good trusted root). Never panics; a
//! simple-signing payload or statement Portcullis accepts is read the same
//! way by a Go client.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use portcullis::oci::{Digest, json};
use portcullis::policy::{Authority, AuthorityKind, Identity, Matcher, Sct, Tlog};
use portcullis::verify::signature::check::{self, LegacyLayer};
use portcullis::verify::signature::{PublicKey, SignatureHash, TrustRoot};
use portcullis_fuzz::reference::{self, ByteChoices};
use portcullis_fuzz::{IMAGE, split};

static IMAGE_DIGEST: LazyLock<Digest> = LazyLock::new(|| IMAGE.parse().expect("digest"));

static AUTHORITIES: LazyLock<[Authority; 2]> = LazyLock::new(|| {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sigstore");
    let pem = std::fs::read(fixtures.join("legacy-tag/keys/cosign.pub")).expect("key");
    let key = PublicKey::from_pem(&pem, SignatureHash::Sha256).expect("key");
    let root = TrustRoot::load(
        "public-good",
        &fixtures.join("trusted_root/public-good.trusted_root.json"),
        None,
    )
    .expect("trusted root");
    let any = || Matcher::anchored(".*").expect("regex");
    [
        Authority {
            name: "key".into(),
            kind: AuthorityKind::Key {
                keys: vec![("cosign".into(), Arc::new(key))],
            },
            tlog: Tlog::Ignore,
            sct: Sct::Ignore,
            trust_root: None,
        },
        Authority {
            name: "keyless".into(),
            kind: AuthorityKind::Keyless {
                identities: vec![Identity {
                    issuer: any(),
                    subject: any(),
                    claims: Vec::new(),
                }],
            },
            tlog: Tlog::Required,
            sct: Sct::Required,
            trust_root: Some(Arc::new(root)),
        },
    ]
});

fn legacy(media_type: &str, blob: &[u8], signature: Option<&str>) {
    let mut annotations = BTreeMap::new();
    if let Some(sig) = signature {
        annotations.insert(check::SIGNATURE_ANNOTATION.to_owned(), sig.to_owned());
    }
    let layer = LegacyLayer {
        media_type,
        blob,
        annotations: &annotations,
    };
    for authority in &*AUTHORITIES {
        let _ = check::verify_legacy(&layer, &IMAGE_DIGEST, authority);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, input)) = split(data) else {
        return;
    };
    let mut choices = ByteChoices::new(input);
    match selector % 4 {
        0 => {
            reference::assert_simple_signing_agrees(input);
            let generated = reference::document(&mut choices, &json::SIMPLE_SIGNING);
            reference::assert_simple_signing_agrees(generated.as_bytes());
            legacy(check::SIMPLE_SIGNING_MEDIA_TYPE, input, Some("MEUCIQ=="));
        }
        1 => {
            reference::assert_statement_agrees(input, &IMAGE_DIGEST);
            let generated = reference::document(&mut choices, &json::IN_TOTO_STATEMENT);
            reference::assert_statement_agrees(generated.as_bytes(), &IMAGE_DIGEST);
        }
        2 => {
            legacy(check::DSSE_MEDIA_TYPE, input, None);
            // A generated statement inside a well-formed envelope, so the
            // decoding reaches the statement and the signature check.
            let statement = reference::document(&mut choices, &json::IN_TOTO_STATEMENT);
            let envelope = serde_json::json!({
                "payloadType": "application/vnd.in-toto+json",
                "payload": base64::engine::general_purpose::STANDARD.encode(statement.as_bytes()),
                "signatures": [{"keyid": "", "sig": "MEUCIQ=="}],
            });
            legacy(check::DSSE_MEDIA_TYPE, envelope.to_string().as_bytes(), None);
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(input) {
                let _ = sigstore_types::Bundle::from_json(text);
            }
            for authority in &*AUTHORITIES {
                let _ = check::verify_bundle(input, &IMAGE_DIGEST, authority);
            }
        }
    }
});
