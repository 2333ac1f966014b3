//! OCI terms: digests, names, references, manifests. Pure: no I/O.
//!
//! Imports: std, serde, sha2 only. Everything else in the crate builds on
//! these types, and request text is parsed into them exactly once.

pub mod digest;
pub mod glob;
pub mod json;
pub mod manifest;
pub mod material;
pub mod name;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use glob::{Glob, GlobError};
pub use manifest::{Descriptor, ManifestError, ManifestInfo, ManifestMediaType};
pub use name::{NameError, RegistryHost, RepoName, Tag};
pub use reference::{Reference, ReferenceError};
