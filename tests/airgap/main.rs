//! The air-gapped site gateway end to end: a connected Portcullis (the
//! built binary) in front of a real CNCF Distribution exports signed
//! images with all their verification material; a second Portcullis with
//! no reachable upstream, its own policy and data directory, imports the
//! archive and serves it to skopeo and ctr with the original digests.
//! Every refusal is checked for its reason and for nothing of it served.

#[path = "../support/mod.rs"]
mod support;

mod common;
mod end_to_end;
mod offline;
mod refusals;
mod streaming;
