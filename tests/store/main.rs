//! The store (issue 10, local backend): a size cap that evicts the least
//! recently served blobs and keeps serving (evicted content is fetched and
//! verified again), the `store stats|verify|gc` commands on the built
//! binary, and crash safety: `kill -9` of the real binary at many points
//! of downloads, commits and evictions never leaves wrong content behind;
//! a full disk (a small tmpfs) or a bucket refusing writes keeps pulls
//! working, verified and uncached, and caching resumes when space returns.
//!
//! Upstream: the real CNCF Distribution registry.

#[path = "../support/mod.rs"]
mod support;

mod backends;
mod cap;
mod cli;
mod crash;
mod full;
