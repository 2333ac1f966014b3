//! The store (issue 10, local backend): a size cap that evicts the least
//! recently served blobs and keeps serving (evicted content is fetched and
//! verified again), the `store stats|verify|gc` commands on the built
//! binary, crash safety: `kill -9` of the real binary at many points of
//! downloads, commits and evictions never leaves wrong content behind (on
//! the data directory and on an S3 bucket), the access index replicas on
//! one bucket share (`shared`), and a full disk (a small tmpfs) or a
//! bucket refusing writes keeps pulls working, verified and uncached, and
//! caching resumes when space returns (`full`).
//!
//! Upstream: the real CNCF Distribution registry.

#[path = "../support/mod.rs"]
mod support;

mod backends;
mod cap;
mod cli;
mod crash;
mod full;
mod shared;
