//! Turning bytes into proofs. No network, no disk.
//!
//! [`VerifiedManifest`] and [`DigestMatched`] can only be constructed in this
//! module: a grep for their constructors is the audit of what Portcullis
//! will serve or store.
//!
//! Imports: `oci`.

pub mod blob;
pub mod manifest;
pub mod signature;

pub use blob::{BlobVerifier, DigestMatched, IntegrityError};
pub use manifest::{UnverifiedManifest, VerifiedManifest};
