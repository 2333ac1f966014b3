//! The air-gapped site gateway: carry images and every piece of their
//! verification material across a gap as one OCI image layout archive, and
//! verify them again on the far side against its own policy.
//!
//! ```text
//! connected side (export)                      disconnected side (import)
//! resolve each REF once ─► Proxy::manifest      read the tar (zstd or not): every blob
//!   (the gate: denied → not exported)             hashed while read into tmp/import-*
//! children, material (Proxy::material_refs)    per image: all of it present and intact?
//!   admitted the same way                        ─► Proxy::assess over the archive (local
//! index.json (ref names), export record           policy, local trust; no network)
//!   (signed with --sign-key), manifests,         ─► blobs into the store (verified, pinned)
//!   blobs streamed from the store/upstream       ─► Proxy::admit_digest (manifests stored)
//!                                                ─► tags last (Proxy::set_tag)
//! ```
//! The archive is read through [`layout::LayoutSource`], an
//! `upstream::local` source, so import admits with the proxy's own gate.
//!
//! Imports: `oci`, `config`, `upstream`, `verify`, `store`, `proxy`, `promote` (record signing).

mod archive;
pub mod export;
pub mod import;
pub mod layout;
pub mod record;

use std::fmt;
use std::str::FromStr;

use crate::oci::{RegistryHost, RepoName, Tag};

/// `index.json` annotation: the tag (OCI image layout's own name key).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `index.json` annotation: the full reference, as containerd writes and reads it.
pub const IMAGE_NAME: &str = "io.containerd.image.name";
/// The export record (an in-toto statement) inside the archive.
pub const RECORD_PATH: &str = "portcullis/export.intoto.json";
/// Its signature: a key-based Sigstore bundle over the same statement.
pub const RECORD_BUNDLE_PATH: &str = "portcullis/export.sigstore.json";

/// A full image name with its tag: `registry/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    pub host: RegistryHost,
    pub repo: RepoName,
    pub tag: Tag,
}

impl FromStr for ImageName {
    type Err = String;

    /// `host/repo:tag`; the host must look like one (a dot, a port or
    /// `localhost`), as clients read names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not registry/repository:tag");
        let (host, rest) = s.split_once('/').ok_or_else(bad)?;
        if !RegistryHost::looks_like_host(host) {
            return Err(bad());
        }
        let (repo, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
        Ok(ImageName {
            host: host.parse().map_err(|_| bad())?,
            repo: repo.parse().map_err(|_| bad())?,
            tag: tag.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.host, self.repo, self.tag)
    }
}

/// Whether `tag` is a tag of verification material rather than an image:
/// cosign's `sha256-<hex>.sig|.att|.sbom` and the `sha256-<hex>` referrers
/// fallback index. Such tags travel with the image they name.
pub fn is_material_tag(tag: &Tag) -> bool {
    let t = tag.as_str();
    let base = [".sig", ".att", ".sbom"]
        .iter()
        .find_map(|s| t.strip_suffix(s))
        .unwrap_or(t);
    let Some((alg, hex)) = base.split_once('-') else {
        return false;
    };
    matches!(alg, "sha256" | "sha512") && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        let n: ImageName = "127.0.0.1:5000/apps/web:v1".parse().expect("name");
        assert_eq!(n.host.as_str(), "127.0.0.1:5000");
        assert_eq!(n.repo.as_str(), "apps/web");
        assert_eq!(n.tag.as_str(), "v1");
        assert_eq!(n.to_string(), "127.0.0.1:5000/apps/web:v1");
        for bad in ["apps/web:v1", "web", "r.io/web", "r.io/Web:v1"] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn material_tags_are_recognised() {
        let hex = "a".repeat(64);
        for t in [
            format!("sha256-{hex}"),
            format!("sha256-{hex}.sig"),
            format!("sha256-{hex}.att"),
        ] {
            assert!(is_material_tag(&t.parse().expect("tag")), "{t}");
        }
        for t in ["v1", "latest", "sha256-", "sha256-xyz.sig", "md5-abc"] {
            assert!(!is_material_tag(&t.parse().expect("tag")), "{t}");
        }
    }
}
