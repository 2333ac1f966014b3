//! Manifest media types and the structure Portcullis needs from a manifest:
//! its kind and the descriptors it references. Bytes are never rewritten;
//! this parse only reads them.

use std::collections::BTreeMap;
use std::fmt;

use super::digest::Digest;
use super::json::{self, Ambiguity};

/// Largest manifest accepted (containerd's `MaxManifestSize` is 4*1048*1048).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The manifest media types Portcullis serves. Schema 1 is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManifestMediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What the proxy sends upstream when a client expresses no preference:
/// every supported type, never schema 1.
pub const DEFAULT_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

impl ManifestMediaType {
    pub const ALL: [ManifestMediaType; 4] = [
        ManifestMediaType::OciIndex,
        ManifestMediaType::OciManifest,
        ManifestMediaType::DockerManifestList,
        ManifestMediaType::DockerManifest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ManifestMediaType::OciManifest => OCI_MANIFEST,
            ManifestMediaType::OciIndex => OCI_INDEX,
            ManifestMediaType::DockerManifest => DOCKER_MANIFEST,
            ManifestMediaType::DockerManifestList => DOCKER_MANIFEST_LIST,
        }
    }

    /// Parse a `Content-Type` or `mediaType` value; parameters are ignored.
    pub fn parse(value: &str) -> Result<Self, ManifestError> {
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence {
            OCI_MANIFEST => Ok(ManifestMediaType::OciManifest),
            OCI_INDEX => Ok(ManifestMediaType::OciIndex),
            DOCKER_MANIFEST => Ok(ManifestMediaType::DockerManifest),
            DOCKER_MANIFEST_LIST => Ok(ManifestMediaType::DockerManifestList),
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(ManifestError::Schema1),
            other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
        }
    }

    pub fn is_index(self) -> bool {
        matches!(
            self,
            ManifestMediaType::OciIndex | ManifestMediaType::DockerManifestList
        )
    }
}

impl fmt::Display for ManifestMediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why manifest bytes are not a manifest Portcullis will serve.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("Docker schema 1 manifests are not supported")]
    Schema1,
    #[error("unsupported manifest media type `{0}`")]
    UnsupportedMediaType(String),
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// Go clients would read the document differently (see [`json`]).
    #[error("ambiguous manifest: {0}")]
    Ambiguous(Ambiguity),
    #[error("manifest is both an image manifest and an index (it has `manifests` and `layers` or `config`)")]
    Hybrid,
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest mediaType `{field}` does not match Content-Type `{header}`")]
    MediaTypeMismatch { field: String, header: String },
    #[error("manifest has neither a mediaType field nor a usable Content-Type")]
    NoMediaType,
    #[error("manifest structure does not match its media type {0}")]
    Shape(ManifestMediaType),
}

/// A content descriptor as referenced by a manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Where else the content may be downloaded from (clients such as
    /// containerd fetch these before the registry).
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The fields of a manifest that the proxy reasons about.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
}

/// A parsed manifest: its media type and what it references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestInfo {
    pub media_type: ManifestMediaType,
    /// Image manifests: config then layers. Indexes: the child manifests.
    pub references: Vec<Descriptor>,
    /// Image manifests: the config descriptor (also `references[0]`).
    pub config: Option<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
}

impl ManifestInfo {
    /// Parse manifest `bytes` served with `content_type` (if any). The
    /// `mediaType` field, when present, must agree with the header.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        // One reading: refuse what a Go client could read differently
        // before serde reads it.
        json::check(bytes, &json::IMAGE_DOCUMENT).map_err(|e| match e {
            Ambiguity::Syntax(s) => ManifestError::Json(s),
            other => ManifestError::Ambiguous(other),
        })?;
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.manifests.is_some() && (raw.layers.is_some() || raw.config.is_some()) {
            return Err(ManifestError::Hybrid);
        }
        if raw.schema_version == Some(1) {
            return Err(ManifestError::Schema1);
        }
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let media_type = Self::media_type(&raw, content_type)?;
        let (references, config) = match (media_type.is_index(), raw.manifests, raw.config, raw.layers) {
            (true, Some(children), None, None) => (children, None),
            (false, None, Some(config), layers) => {
                let mut refs = vec![config.clone()];
                refs.extend(layers.unwrap_or_default());
                (refs, Some(config))
            }
            _ => return Err(ManifestError::Shape(media_type)),
        };
        Ok(ManifestInfo {
            media_type,
            references,
            config,
            subject: raw.subject,
            artifact_type: raw.artifact_type,
        })
    }

    /// Image manifests: the layers (everything referenced after the config).
    pub fn layers(&self) -> &[Descriptor] {
        match self.config {
            Some(_) => self.references.get(1..).unwrap_or_default(),
            None => &[],
        }
    }

    fn media_type(raw: &RawManifest, content_type: Option<&str>) -> Result<ManifestMediaType, ManifestError> {
        let from_header = content_type.map(ManifestMediaType::parse);
        match (&raw.media_type, from_header) {
            (Some(field), Some(Ok(header))) => {
                let field_type = ManifestMediaType::parse(field)?;
                if field_type == header {
                    Ok(field_type)
                } else {
                    Err(ManifestError::MediaTypeMismatch {
                        field: field.clone(),
                        header: header.as_str().to_owned(),
                    })
                }
            }
            // The field is authoritative when the header is absent or generic
            // (some registries answer `application/json`).
            (Some(field), _) => ManifestMediaType::parse(field),
            (None, Some(Ok(header))) => Ok(header),
            (None, Some(Err(e))) => Err(e),
            (None, None) => Err(ManifestError::NoMediaType),
        }
    }
}

/// Whether an `Accept` header list admits `media_type`. An empty list, `*/*`
/// and `application/*` admit everything; `q=0` excludes.
pub fn accepts<'a>(accept_values: impl IntoIterator<Item = &'a str>, media_type: &str) -> bool {
    let mut any = false;
    for entry in accept_values.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = entry.split(';');
        let range = parts.next().unwrap_or("").trim();
        if range.is_empty() {
            continue;
        }
        any = true;
        let excluded = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        let matches = range == "*/*"
            || range == media_type
            || range
                .strip_suffix("/*")
                .is_some_and(|ty| media_type.split('/').next() == Some(ty));
        if matches && !excluded {
            return true;
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(media_type: Option<&str>) -> String {
        let mt = media_type
            .map(|m| format!("\"mediaType\":\"{m}\","))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}}]}}"#
        )
    }

    #[test]
    fn parses_image_and_lists_references() {
        let info = ManifestInfo::parse(image(Some(OCI_MANIFEST)).as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        assert_eq!(info.media_type, ManifestMediaType::OciManifest);
        assert_eq!(info.references.len(), 2);
    }

    #[test]
    fn media_type_from_header_when_field_absent() {
        let info = ManifestInfo::parse(image(None).as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        assert_eq!(info.media_type, ManifestMediaType::OciManifest);
        assert_eq!(
            ManifestInfo::parse(image(None).as_bytes(), None),
            Err(ManifestError::NoMediaType)
        );
    }

    #[test]
    fn rejects_mismatch_schema1_and_shape() {
        assert!(matches!(
            ManifestInfo::parse(image(Some(OCI_MANIFEST)).as_bytes(), Some(DOCKER_MANIFEST)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert_eq!(
            ManifestInfo::parse(br#"{"schemaVersion":1,"name":"x"}"#, None),
            Err(ManifestError::Schema1)
        );
        assert_eq!(
            ManifestInfo::parse(image(Some(OCI_INDEX)).as_bytes(), None),
            Err(ManifestError::Shape(ManifestMediaType::OciIndex))
        );
        assert!(matches!(ManifestInfo::parse(b"{", None), Err(ManifestError::Json(_))));
    }

    #[test]
    fn accept_matching() {
        assert!(accepts([], OCI_MANIFEST));
        assert!(accepts(["*/*"], OCI_MANIFEST));
        assert!(accepts(["application/*"], OCI_MANIFEST));
        assert!(accepts([DEFAULT_ACCEPT], DOCKER_MANIFEST));
        assert!(!accepts([DOCKER_MANIFEST], OCI_MANIFEST));
        assert!(!accepts([&format!("{OCI_MANIFEST};q=0")[..]], OCI_MANIFEST));
    }
}
