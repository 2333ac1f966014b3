//! What can go wrong while serving a pull, as one cloneable enum (a failed
//! download is shared by every client following it).

use std::sync::Arc;

use crate::oci::{Digest, ManifestMediaType};
use crate::store::StoreError;
use crate::upstream;
use crate::verify::IntegrityError;

/// `Display` is what clients may read (error bodies, denial reasons, the
/// `Warning` header): an upstream failure shows only its class; the detail
/// stays in `source()` and in the upstream module's log line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{}", .0.class())]
    Upstream(#[from] upstream::Error),
    #[error("upstream content for {digest} failed verification: {source}")]
    Integrity { digest: Digest, source: IntegrityError },
    #[error("manifest has media type {media_type}, which the client does not accept")]
    NotAcceptable { media_type: ManifestMediaType },
    #[error("requested range not satisfiable (blob has {size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    #[error("upstream sent an invalid {what}: {message}")]
    BadListing { what: &'static str, message: String },
    #[error("{message}")]
    Denied { message: String },
    /// Every upstream download slot stayed busy (anonymous amplification bound).
    #[error(transparent)]
    Busy(#[from] crate::store::Busy),
    /// A bounded resource is exhausted (anonymous amplification limits);
    /// the client should retry.
    #[error("too many concurrent {what}; retry later")]
    Overloaded { what: &'static str },
    /// A peer replica asked this one for work another replica leads (their
    /// peer lists differ).
    #[error("this replica does not lead {what}; check that every replica has the same cluster.peers")]
    NotLeader { what: String },
    #[error("local store: {0}")]
    Store(Arc<StoreError>),
    /// The store could not take a blob before any byte of it was streamed
    /// (disk full, bucket refusing writes): requests following that
    /// download are served by a verified pass-through instead
    /// (`proxy::passthrough`); a client sees this only where none is
    /// possible.
    #[error("local store cannot cache this blob now: {0}")]
    Uncacheable(Arc<StoreError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The upstream could not be asked (as opposed to answering "no"): the
    /// cases where serving the last verified tag digest is better than failing.
    pub fn is_upstream_unavailable(&self) -> bool {
        match self {
            Error::Upstream(e) => matches!(
                e,
                upstream::Error::Connect { .. }
                    | upstream::Error::Timeout { .. }
                    | upstream::Error::Status { .. }
                    | upstream::Error::TooManyRequests { .. }
                    | upstream::Error::Body { .. }
            ),
            _ => false,
        }
    }
}
