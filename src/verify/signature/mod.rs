//! Signature verification material and checks: keys, trust roots, and (as
//! they land) the cosign legacy, DSSE and Sigstore bundle verifiers.

pub mod authority;
mod bridge;
pub mod check;
pub mod keys;
pub mod payload;
pub mod signer;
pub mod trust;

pub use keys::{KeyError, KeyKind, PublicKey, SignatureHash};
pub use signer::SignerId;
pub use trust::{TrustError, TrustRoot};
