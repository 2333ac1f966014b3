//! The referrers fallback index at a destination without the referrers API
//! (OCI distribution spec 1.1, "referrers tag schema"): an OCI index under
//! the tag `sha256-<hex>` of the subject, listing its referrer manifests.
//!
//! One writer for everything a promotion attaches (copied referrers, the
//! promotion record): read the index, add the entries it lacks, write it
//! back. Existing entries are kept as they are, so material only the
//! destination holds is never dropped; nothing is written when every entry
//! is there already.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::oci::manifest::{MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::oci::{Algorithm, Digest, Reference, Tag};
use crate::proxy::Target;
use crate::upstream;

/// Why the fallback index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("the destination's referrers fallback index {tag} is unusable: {message}")]
    Unusable { tag: String, message: String },
    #[error("{0} has no fallback tag form")]
    NoTagForm(Digest),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
}

/// What [`extend`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extended {
    /// Every entry was listed already: nothing written.
    Unchanged,
    /// The index did not exist and was created.
    Created(Digest),
    /// The existing index was rewritten with `added` more entries.
    Merged { digest: Digest, added: usize },
}

/// Whether the destination lists referrers of `subject` through the API.
/// Distribution 2.x answers 404: the fallback index is the only way its
/// clients discover referrers.
pub async fn api_available(dst: &Target, subject: &Digest) -> Result<bool, upstream::Error> {
    Ok(dst.registry.referrers(&dst.repo, subject).await?.is_some())
}

/// The fallback tag of `subject` (`sha256-<hex>`).
pub fn tag_of(subject: &Digest) -> Result<Tag, FallbackError> {
    subject
        .tag_form()
        .parse()
        .map_err(|_| FallbackError::NoTagForm(subject.clone()))
}

/// The index entry for a referrer manifest, as the spec asks: its media
/// type, size and digest, `artifactType` from the manifest (else its
/// config's media type), and its annotations.
pub fn descriptor(media_type: &str, digest: &Digest, bytes: &[u8]) -> Value {
    let parsed: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let mut d = json!({
        "mediaType": media_type,
        "size": bytes.len(),
        "digest": digest.to_string(),
    });
    let artifact_type = parsed
        .get("artifactType")
        .or_else(|| parsed.get("config").and_then(|c| c.get("mediaType")));
    if let Some(t) = artifact_type.filter(|t| t.is_string()) {
        d["artifactType"] = t.clone();
    }
    if let Some(a) = parsed.get("annotations").filter(|a| a.is_object()) {
        d["annotations"] = a.clone();
    }
    d
}

/// Add `entries` to the fallback index of `subject` at `dst`: created when
/// absent, merged by digest (existing entries kept) when present.
pub async fn extend(dst: &Target, subject: &Digest, entries: &[Value]) -> Result<Extended, FallbackError> {
    if entries.is_empty() {
        // Nothing to list: no empty index is created.
        return Ok(Extended::Unchanged);
    }
    let tag = tag_of(subject)?;
    let current = current_index(dst, &tag).await?;
    let existed = current.is_some();
    let mut index = current.unwrap_or_else(|| json!({ "schemaVersion": 2, "mediaType": OCI_INDEX }));
    let added = merge_entries(&mut index, entries).map_err(|message| FallbackError::Unusable {
        tag: tag.to_string(),
        message,
    })?;
    if added == 0 && existed {
        return Ok(Extended::Unchanged);
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| FallbackError::Unusable {
        tag: tag.to_string(),
        message: e.to_string(),
    })?;
    let digest = Digest::of(Algorithm::Sha256, &bytes);
    dst.registry
        .put_manifest(&dst.repo, &Reference::Tag(tag), &digest, OCI_INDEX, Bytes::from(bytes))
        .await?;
    Ok(if existed {
        Extended::Merged { digest, added }
    } else {
        Extended::Created(digest)
    })
}

/// Append to `index.manifests` each entry whose digest it does not list
/// (existing entries untouched, in their order). Returns how many were added.
fn merge_entries(index: &mut Value, entries: &[Value]) -> Result<usize, String> {
    let obj = index.as_object_mut().ok_or("not a JSON object")?;
    let manifests = obj
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("`manifests` is not an array")?;
    let mut added = 0;
    for entry in entries {
        let digest = entry.get("digest").and_then(Value::as_str);
        let listed = manifests
            .iter()
            .any(|m| m.get("digest").and_then(Value::as_str) == digest);
        if digest.is_some() && !listed {
            manifests.push(entry.clone());
            added += 1;
        }
    }
    Ok(added)
}

/// The destination's fallback index as JSON (`None`: absent), verified
/// against the digest its bytes hash to and required to be an index.
async fn current_index(dst: &Target, tag: &Tag) -> Result<Option<Value>, FallbackError> {
    let unusable = |message: String| FallbackError::Unusable {
        tag: tag.to_string(),
        message,
    };
    let accept = http::HeaderValue::from_static(OCI_INDEX);
    let reference = Reference::Tag(tag.clone());
    let m = match dst
        .registry
        .get_manifest(&dst.repo, &reference, &accept, MAX_MANIFEST_BYTES)
        .await
    {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let index = crate::verify::manifest::check_computed(m).map_err(|e| unusable(e.to_string()))?;
    if !index.media_type().is_index() {
        return Err(unusable("not an index".into()));
    }
    let parsed: Value = serde_json::from_slice(index.bytes()).map_err(|e| unusable(e.to_string()))?;
    Ok(Some(parsed))
}

/// The entries listed by a fallback index's bytes (for merging a source's
/// index into the destination's).
pub fn entries_of(index_bytes: &[u8]) -> Vec<Value> {
    serde_json::from_slice::<Value>(index_bytes)
        .ok()
        .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: char) -> Value {
        json!({ "mediaType": "m", "size": 1, "digest": format!("sha256:{}", d.to_string().repeat(64)) })
    }

    #[test]
    fn merging_keeps_existing_entries_and_adds_only_new_digests() {
        let mut index = json!({ "schemaVersion": 2, "manifests": [entry('a'), entry('b')] });
        let mut theirs = entry('b');
        theirs["size"] = json!(99);
        let added = merge_entries(&mut index, &[theirs, entry('c')]).expect("merge");
        assert_eq!(added, 1);
        let listed = index["manifests"].as_array().expect("array");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[1]["size"], 1, "the existing entry is kept as it was");
        assert_eq!(listed[2], entry('c'));
        assert_eq!(merge_entries(&mut index, &[entry('a')]), Ok(0));
        let mut fresh = json!({ "schemaVersion": 2 });
        assert_eq!(merge_entries(&mut fresh, &[entry('a')]), Ok(1));
        assert!(merge_entries(&mut json!({ "manifests": 1 }), &[entry('a')]).is_err());
        assert!(merge_entries(&mut json!([]), &[]).is_err());
    }

    #[test]
    fn a_descriptor_names_the_artifact_type_and_annotations() {
        let with_type = br#"{"artifactType":"x/y","config":{"mediaType":"c"},"annotations":{"k":"v"}}"#;
        let digest = Digest::of(Algorithm::Sha256, with_type);
        let d = descriptor("application/vnd.oci.image.manifest.v1+json", &digest, with_type);
        assert_eq!(d["artifactType"], "x/y");
        assert_eq!(d["annotations"]["k"], "v");
        assert_eq!(d["size"], with_type.len());
        assert_eq!(d["digest"], digest.to_string());
        let config_only = descriptor("m", &digest, br#"{"config":{"mediaType":"c"}}"#);
        assert_eq!(config_only["artifactType"], "c");
        assert!(config_only.get("annotations").is_none());
        assert!(descriptor("m", &digest, b"not json").get("artifactType").is_none());
        assert_eq!(entries_of(br#"{"manifests":[{"digest":"d"}]}"#).len(), 1);
        assert!(entries_of(b"{}").is_empty());
    }
}
