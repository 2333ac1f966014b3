//! Verification material, recognised by allow-list.
//!
//! A manifest that is verification material of another image (a cosign
//! signature, an attestation, an SBOM attachment, a Sigstore bundle
//! referrer) is served under that image's verdict. Deciding that by the
//! *absence* of image layers let anything else through: a Helm chart, a Flux
//! artifact, or layers typed `application/octet-stream` (which Docker's
//! classic store runs) naming a signed image as `subject`. So material is
//! recognised by its exact shape, and everything else is judged by its own
//! rule, whatever its tag or `subject` say.
//!
//! The shape: an image manifest (never an index, except the referrers
//! fallback index at the bare `sha256-<hex>` tag), a config that is empty or
//! cosign's near-empty one, at least one layer, every layer of one material
//! media type (exact, case-sensitive), each within a size bound, and no
//! `urls` on any descriptor.

use super::manifest::{Descriptor, ManifestInfo};

/// The kinds of verification material Portcullis recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaterialKind {
    /// cosign's legacy `sha256-<hex>.sig` (simple-signing layers).
    LegacySignature,
    /// cosign's legacy `sha256-<hex>.att` (DSSE envelope layers).
    LegacyAttestation,
    /// cosign's legacy `sha256-<hex>.sbom` attachment.
    Sbom,
    /// A Sigstore bundle referrer (cosign v3's default).
    SigstoreBundle,
    /// An in-toto attestation referrer.
    InToto,
    /// The referrers fallback index at the `sha256-<hex>` tag: a list of
    /// referrers, each judged on its own when fetched.
    ReferrersIndex,
}

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const SIGSTORE_BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// SBOM media types `cosign attach sbom` writes.
const SBOM_TYPES: [&str; 6] = [
    "text/spdx",
    "text/spdx+json",
    "text/spdx+xml",
    "application/vnd.cyclonedx",
    "application/vnd.cyclonedx+json",
    "application/vnd.cyclonedx+xml",
];

/// Largest signature, attestation or bundle blob (also the discovery bound).
pub const MAX_MATERIAL_BYTES: u64 = 2 * 1024 * 1024;
/// Largest SBOM blob.
pub const MAX_SBOM_BYTES: u64 = 32 * 1024 * 1024;
/// Largest config blob of a material manifest (cosign's is a few hundred
/// bytes; the empty descriptor's is two).
const MAX_CONFIG_BYTES: u64 = 16 * 1024;

impl MaterialKind {
    fn of_layer(media_type: &str) -> Option<MaterialKind> {
        match media_type {
            SIMPLE_SIGNING => Some(MaterialKind::LegacySignature),
            DSSE_ENVELOPE => Some(MaterialKind::LegacyAttestation),
            IN_TOTO => Some(MaterialKind::InToto),
            t if SBOM_TYPES.contains(&t) => Some(MaterialKind::Sbom),
            t if t.starts_with(SIGSTORE_BUNDLE_PREFIX) => Some(MaterialKind::SigstoreBundle),
            _ => None,
        }
    }

    fn max_blob_bytes(self) -> u64 {
        match self {
            MaterialKind::Sbom => MAX_SBOM_BYTES,
            _ => MAX_MATERIAL_BYTES,
        }
    }
}

/// The material kind of `info` if it has a material shape, else `None`.
pub fn classify(info: &ManifestInfo) -> Option<MaterialKind> {
    if info.media_type.is_index() {
        return None;
    }
    if info.subject.as_ref().is_some_and(has_urls) {
        return None;
    }
    let config = info.config.as_ref()?;
    let config_ok = matches!(
        config.media_type.as_str(),
        OCI_EMPTY | OCI_IMAGE_CONFIG | DOCKER_IMAGE_CONFIG
    ) && config.size <= MAX_CONFIG_BYTES
        && !has_urls(config);
    if !config_ok {
        return None;
    }
    let layers = info.layers();
    let kind = MaterialKind::of_layer(&layers.first()?.media_type)?;
    let all_of_kind = layers.iter().all(|l| {
        MaterialKind::of_layer(&l.media_type) == Some(kind) && l.size <= kind.max_blob_bytes() && !has_urls(l)
    });
    all_of_kind.then_some(kind)
}

/// The kind a legacy cosign tag (`sha256-<hex>[.sig|.att|.sbom]`) holds,
/// and the digest it names, if `tag` is one.
pub fn legacy_tag(tag: &str) -> Option<(super::Digest, LegacyTag)> {
    let (base, kind) = match tag.rsplit_once('.') {
        Some((base, "sig")) => (base, LegacyTag::Signature),
        Some((base, "att")) => (base, LegacyTag::Attestation),
        Some((base, "sbom")) => (base, LegacyTag::Sbom),
        _ => (tag, LegacyTag::Referrers),
    };
    let (alg, hex) = base.split_once('-')?;
    let digest = format!("{alg}:{hex}").parse().ok()?;
    Some((digest, kind))
}

/// What a legacy tag holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyTag {
    Signature,
    Attestation,
    Sbom,
    /// The bare `sha256-<hex>` tag: the referrers fallback index.
    Referrers,
}

impl LegacyTag {
    /// Whether a manifest of `kind` (or an index, `None`) belongs at this tag.
    pub fn holds(self, kind: Option<MaterialKind>, is_index: bool) -> bool {
        match self {
            LegacyTag::Signature => kind == Some(MaterialKind::LegacySignature),
            LegacyTag::Attestation => kind == Some(MaterialKind::LegacyAttestation),
            LegacyTag::Sbom => kind == Some(MaterialKind::Sbom),
            LegacyTag::Referrers => is_index,
        }
    }
}

fn has_urls(d: &Descriptor) -> bool {
    !d.urls.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::OCI_MANIFEST;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(config_type: &str, layers: &[(&str, u64, bool)], subject: bool) -> ManifestInfo {
        let layers: Vec<String> = layers
            .iter()
            .map(|(t, size, urls)| {
                let urls = if *urls {
                    r#","urls":["http://127.0.0.1:1/x"]"#
                } else {
                    ""
                };
                format!(r#"{{"mediaType":"{t}","digest":"{D}","size":{size}{urls}}}"#)
            })
            .collect();
        let subject = if subject {
            format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}"#)
        } else {
            String::new()
        };
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{config_type}","digest":"{D}","size":2}},"layers":[{}]{subject}}}"#,
            layers.join(",")
        );
        ManifestInfo::parse(text.as_bytes(), None).expect("valid manifest")
    }

    #[test]
    fn recognises_exact_material_shapes() {
        let cases = [
            (SIMPLE_SIGNING, MaterialKind::LegacySignature),
            (DSSE_ENVELOPE, MaterialKind::LegacyAttestation),
            (
                "application/vnd.dev.sigstore.bundle.v0.3+json",
                MaterialKind::SigstoreBundle,
            ),
            (IN_TOTO, MaterialKind::InToto),
            ("text/spdx+json", MaterialKind::Sbom),
        ];
        for (t, kind) in cases {
            assert_eq!(
                classify(&manifest(OCI_EMPTY, &[(t, 100, false)], true)),
                Some(kind),
                "{t}"
            );
        }
    }

    #[test]
    fn anything_else_is_not_material() {
        let not_material = [
            manifest(OCI_EMPTY, &[("application/octet-stream", 100, false)], true),
            manifest(OCI_EMPTY, &[("", 100, false)], true),
            manifest(
                OCI_EMPTY,
                &[("Application/Vnd.Dev.Cosign.Simplesigning.V1+json", 100, false)],
                true,
            ),
            manifest(
                "application/vnd.cncf.helm.config.v1+json",
                &[("application/vnd.cncf.helm.chart.content.v1.tar+gzip", 100, false)],
                true,
            ),
            manifest(
                OCI_EMPTY,
                &[
                    (SIMPLE_SIGNING, 100, false),
                    ("application/vnd.oci.image.layer.v1.tar+gzip", 100, false),
                ],
                true,
            ),
            manifest(OCI_EMPTY, &[(SIMPLE_SIGNING, 100, true)], true),
            manifest(OCI_EMPTY, &[(SIMPLE_SIGNING, MAX_MATERIAL_BYTES + 1, false)], true),
            manifest(OCI_EMPTY, &[], true),
        ];
        for m in &not_material {
            assert_eq!(classify(m), None, "{m:?}");
        }
    }

    #[test]
    fn legacy_tags_name_their_digest_and_kind() {
        let hex = &D["sha256:".len()..];
        let (d, kind) = legacy_tag(&format!("sha256-{hex}.sig")).expect("sig tag");
        assert_eq!(d.to_string(), D);
        assert_eq!(kind, LegacyTag::Signature);
        assert_eq!(
            legacy_tag(&format!("sha256-{hex}")).map(|x| x.1),
            Some(LegacyTag::Referrers)
        );
        assert_eq!(legacy_tag("latest"), None);
        assert_eq!(legacy_tag("sha256-nothex.sig"), None);
    }
}
