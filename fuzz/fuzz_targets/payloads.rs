//! Signed payloads: cosign simple-signing payloads, in-toto statements,
//! DSSE envelopes (through `verify_legacy`, which decodes the envelope, its
//! base64 payload and the statement) and Sigstore bundles
//! (`Bundle::from_json`, then `verify_bundle` with the authorities of
//! `fuzz/authorities/`: a key, and keyless over the public-good trusted root). Never panics; a
//! simple-signing payload or statement Portcullis accepts is read the same
//! way by a Go client.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use portcullis::oci::{Digest, json};
use portcullis::policy::Authority;
use portcullis::verify::signature::check::{self, LegacyLayer};
use portcullis_fuzz::reference::{self, ByteChoices};
use portcullis_fuzz::{IMAGE, split};

static IMAGE_DIGEST: LazyLock<Digest> = LazyLock::new(|| IMAGE.parse().expect("digest"));

static AUTHORITIES: LazyLock<Vec<Arc<Authority>>> = LazyLock::new(|| {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("authorities");
    let set = portcullis::policy::load_dir(&dir).expect("fuzz/authorities compiles");
    set.authorities.into_values().collect()
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
