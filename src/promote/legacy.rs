//! Merging cosign's legacy `sha256-<hex>.sig`/`.att`/`.sbom` objects: cosign
//! keeps every signature of a digest as one layer of the image under that
//! tag and appends a layer when it signs again. A destination that already
//! holds its own object for the promoted digest gets the union — its layers
//! first, as they were, then the source's layers it lacks — so neither
//! side's signatures are dropped.
//!
//! The merged object's config is the empty image config cosign writes
//! (`rootfs.diff_ids` = the layers' digests: the layers are uncompressed),
//! not byte-identical to go-containerregistry's (field order): verifiers
//! read the layers and their annotations, not the config.

use serde_json::{Value, json};

use crate::oci::{Algorithm, Digest};
use crate::verify::VerifiedManifest;

/// Go's zero time, which cosign's empty image config carries.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Why two legacy objects could not be merged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot merge the legacy signature objects: {0}")]
pub struct MergeError(String);

/// The merged object: its config and manifest bytes, and the manifest's
/// media type (the destination's).
#[derive(Debug)]
pub struct Merged {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub media_type: String,
}

/// `dst` with the layers of `src` it lacks appended; `None` when it lacks
/// none (nothing to write).
pub fn merge(dst: &VerifiedManifest, src: &VerifiedManifest) -> Result<Option<Merged>, MergeError> {
    if dst.media_type().is_index() || src.media_type().is_index() {
        return Err(MergeError("an index is not a legacy signature object".into()));
    }
    let mut manifest = parse(dst.bytes())?;
    let theirs = layers(&parse(src.bytes())?)?;
    let mut ours = layers(&manifest)?;
    let before = ours.len();
    for layer in theirs {
        if !ours.iter().any(|l| l.get("digest") == layer.get("digest")) {
            ours.push(layer);
        }
    }
    if ours.len() == before {
        return Ok(None);
    }
    let config = empty_image_config(&ours)?;
    let config_media_type = manifest
        .pointer("/config/mediaType")
        .cloned()
        .unwrap_or_else(|| json!("application/vnd.oci.image.config.v1+json"));
    manifest["config"] = json!({
        "mediaType": config_media_type,
        "size": config.len(),
        "digest": Digest::of(Algorithm::Sha256, &config).to_string(),
    });
    manifest["layers"] = Value::Array(ours);
    let manifest = serde_json::to_vec(&manifest).map_err(|e| MergeError(e.to_string()))?;
    Ok(Some(Merged {
        config,
        manifest,
        media_type: dst.media_type().as_str().to_owned(),
    }))
}

fn parse(bytes: &[u8]) -> Result<Value, MergeError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| MergeError(e.to_string()))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(MergeError("a manifest is not a JSON object".into()))
    }
}

fn layers(manifest: &Value) -> Result<Vec<Value>, MergeError> {
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| MergeError("a manifest has no layers".into()))?;
    if layers.iter().any(|l| l.get("digest").and_then(Value::as_str).is_none()) {
        return Err(MergeError("a layer has no digest".into()));
    }
    Ok(layers.clone())
}

/// cosign's (go-containerregistry's) empty image config for `layers`.
fn empty_image_config(layers: &[Value]) -> Result<Vec<u8>, MergeError> {
    let diff_ids: Vec<&Value> = layers.iter().filter_map(|l| l.get("digest")).collect();
    let history: Vec<Value> = layers.iter().map(|_| json!({ "created": GO_ZERO_TIME })).collect();
    let config = json!({
        "architecture": "",
        "created": GO_ZERO_TIME,
        "history": history,
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {},
    });
    serde_json::to_vec(&config).map_err(|e| MergeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::OCI_MANIFEST;

    fn object(layers: &[char]) -> VerifiedManifest {
        let layers: Vec<Value> = layers
            .iter()
            .map(|c| {
                json!({
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "size": 10,
                    "digest": format!("sha256:{}", c.to_string().repeat(64)),
                    "annotations": { "dev.cosignproject.cosign/signature": format!("sig-{c}") },
                })
            })
            .collect();
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": 1, "digest": format!("sha256:{}", "0".repeat(64)) },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&m).expect("json");
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        let unverified = crate::verify::manifest::UnverifiedManifest {
            bytes: bytes.into(),
            content_type: Some(OCI_MANIFEST.to_owned()),
            claimed_digest: None,
        };
        crate::verify::manifest::check(unverified, &digest).expect("a manifest")
    }

    #[test]
    fn the_union_keeps_the_destinations_layers_first_and_rebuilds_the_config() {
        let merged = merge(&object(&['a', 'b']), &object(&['b', 'c']))
            .expect("merge")
            .expect("something added");
        let m: Value = serde_json::from_slice(&merged.manifest).expect("json");
        let digests: Vec<&str> = m["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .filter_map(|l| l["digest"].as_str())
            .collect();
        assert_eq!(digests.len(), 3);
        assert!(digests[0].ends_with('a') && digests[1].ends_with('b') && digests[2].ends_with('c'));
        assert_eq!(
            m["layers"][2]["annotations"]["dev.cosignproject.cosign/signature"],
            "sig-c"
        );
        let config: Value = serde_json::from_slice(&merged.config).expect("config");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            m["config"]["digest"],
            Digest::of(Algorithm::Sha256, &merged.config).to_string()
        );
        assert_eq!(m["config"]["size"], merged.config.len());
        assert_eq!(merged.media_type, OCI_MANIFEST);
        assert!(merge(&object(&['a', 'b']), &object(&['b'])).expect("merge").is_none());
    }
}
