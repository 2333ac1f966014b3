//! `/_portcullis/cluster/v1/{blob,tag}`: another replica asks this one for
//! what it leads (`cluster.peers`). Only replicas holding the cluster key
//! may ask: the blob endpoint serves by digest without a client's grant
//! (the asking replica checked its client's), so it must not be open.

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};

use super::body::{ResponseBody, full};
use super::error::ApiError;
use super::route::PeerRequest;
use crate::cluster::TagAnswer;
use crate::proxy::Proxy;
use crate::telemetry::AccessRecord;

pub async fn serve(
    proxy: &Proxy,
    req: &Request<()>,
    request: PeerRequest,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    let cluster = proxy
        .cluster()
        .ok_or_else(|| ApiError::not_found_route(req.uri().path()))?;
    if !cluster.authorized(req.headers().get(AUTHORIZATION)) {
        return Err(ApiError::peer_unauthorized());
    }
    record.identity = "peer".to_owned();
    match request {
        PeerRequest::Blob { upstream, repo, digest } => {
            record.upstream = Some(upstream.to_string());
            record.digest = Some(digest.clone());
            let served = proxy.blob_for_peer(&upstream, &repo, &digest).await?;
            record.cache = served.cache;
            super::blobs::respond(&digest, served)
        }
        PeerRequest::Tag { upstream, repo, tag } => {
            record.upstream = Some(upstream.to_string());
            let accept = req
                .headers()
                .get(ACCEPT)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("*/*"));
            let head = proxy.tag_for_peer(&upstream, &repo, &tag, &accept).await?;
            let body = serde_json::to_vec(&TagAnswer::from(&head)).map_err(|e| ApiError::internal(e.to_string()))?;
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(full(body))
                .map_err(|e| ApiError::internal(e.to_string()))
        }
    }
}
