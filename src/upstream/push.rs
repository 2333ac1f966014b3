//! Registry writes: the push side of the distribution spec, one
//! implementation for every command that writes (today `portcullis
//! promote`). Token scopes are `pull,push` on the repository written, plus
//! `pull` on a cross-repository mount source.
//!
//! ```text
//! blob:      HEAD (exists? skip) → POST ?mount=&from= (201 mounted │ 202 → upload)
//!            upload: POST → PATCH (Content-Range) … → PUT ?digest= [last bytes]
//!            the caller sends the final PUT only after its hash matched, else DELETE
//! manifest:  PUT /v2/<name>/manifests/<ref> with the exact bytes and media type
//! tag:       HEAD /v2/<name>/manifests/<tag> → its current digest (404 → none)
//! ```
//! Writes are not retried (a POST or PATCH is not idempotent); `HEAD`s are.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use hyper::body::Incoming;

use super::fetch::{header_string, log_failure};
use super::{Error, Registry};
use crate::oci::manifest::DEFAULT_ACCEPT;
use crate::oci::{Digest, Reference, RepoName, Tag};

/// An upload session the registry opened: where to send the next request
/// (the registry may change it after every chunk) and how many bytes it holds.
#[derive(Debug)]
pub struct Upload {
    repo: RepoName,
    /// Path and query on this registry (`/v2/<name>/blobs/uploads/<id>?...`).
    location: String,
    offset: u64,
}

impl Upload {
    /// Bytes the registry has received in this session.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// What a cross-repository mount request achieved.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob into the repository (201).
    Mounted,
    /// The registry opened an upload instead (202): the bytes must be sent.
    Upload(Upload),
}

fn push_scope(repo: &RepoName) -> String {
    format!("repository:{repo}:pull,push")
}

fn octet_stream() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h
}

impl Registry {
    /// One write: authenticated, not retried, failures logged once.
    async fn write(
        &self,
        method: Method,
        path_and_query: &str,
        scope: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        let result = Box::pin(self.request_once(&method, path_and_query, scope, &headers, &body)).await;
        if let Err(e) = &result {
            log_failure(e, path_and_query);
        }
        result
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol {
            host: self.host().to_string(),
            message,
        }
    }

    /// `HEAD /v2/<name>/blobs/<digest>` with push scope: does the
    /// destination already hold the blob?
    pub async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, Error> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .request(Method::HEAD, &path, &push_scope(repo), HeaderMap::new())
            .await?;
        match self.expect_success(resp, "blob") {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>`: link a
    /// blob from another repository of this registry; a 202 (not mounted)
    /// opens an upload for the caller to fill.
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: &RepoName) -> Result<Mount, Error> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from.as_str())
            .finish();
        let path = format!("/v2/{repo}/blobs/uploads/?{query}");
        let scope = format!("{} repository:{from}:pull", push_scope(repo));
        let resp = self
            .write(Method::POST, &path, &scope, HeaderMap::new(), Bytes::new())
            .await?;
        let resp = self.expect_success(resp, "repository")?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.upload_at(repo, resp.headers(), 0)?)),
            other => Err(self.protocol(format!("mount answered {other}"))),
        }
    }

    /// `POST /v2/<name>/blobs/uploads/`: open an upload session.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<Upload, Error> {
        let path = format!("/v2/{repo}/blobs/uploads/");
        let resp = self
            .write(Method::POST, &path, &push_scope(repo), HeaderMap::new(), Bytes::new())
            .await?;
        let resp = self.expect_success(resp, "repository")?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.protocol(format!("upload POST answered {} instead of 202", resp.status())));
        }
        self.upload_at(repo, resp.headers(), 0)
    }

    /// `PATCH <location>` with `Content-Range: <start>-<end>`: append one
    /// chunk. The registry must confirm with 202 and the next location.
    pub async fn upload_chunk(&self, upload: &mut Upload, chunk: Bytes) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        let len = chunk.len() as u64;
        let end = upload.offset + len - 1;
        let mut headers = octet_stream();
        let range = HeaderValue::from_str(&format!("{}-{end}", upload.offset))
            .map_err(|_| self.protocol("unusable Content-Range".into()))?;
        headers.insert(CONTENT_RANGE, range);
        let scope = push_scope(&upload.repo);
        let resp = self
            .write(Method::PATCH, &upload.location, &scope, headers, chunk)
            .await?;
        let resp = self.expect_success(resp, "upload")?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.protocol(format!("chunk PATCH answered {} instead of 202", resp.status())));
        }
        *upload = self.upload_at(&upload.repo, resp.headers(), upload.offset + len)?;
        Ok(())
    }

    /// `PUT <location>?digest=<digest>` with the last bytes (all of them for
    /// a monolithic upload): the registry commits the blob under `digest`
    /// (it checks the digest itself too). Call only once the bytes sent
    /// hashed to `digest`.
    pub async fn finish_upload(&self, upload: Upload, digest: &Digest, last: Bytes) -> Result<(), Error> {
        let sep = if upload.location.contains('?') { '&' } else { '?' };
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("digest", &digest.to_string())
            .finish();
        let path = format!("{}{sep}{query}", upload.location);
        let scope = push_scope(&upload.repo);
        let resp = self.write(Method::PUT, &path, &scope, octet_stream(), last).await?;
        let resp = self.expect_success(resp, "upload")?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.protocol(format!("upload PUT answered {} instead of 201", resp.status())));
        }
        Ok(())
    }

    /// `DELETE <location>`: abandon an upload (a digest mismatch at the
    /// source). Best effort: registries also expire abandoned uploads.
    pub async fn abort_upload(&self, upload: Upload) -> Result<(), Error> {
        let scope = push_scope(&upload.repo);
        let resp = self
            .write(Method::DELETE, &upload.location, &scope, HeaderMap::new(), Bytes::new())
            .await?;
        self.expect_success(resp, "upload").map(|_| ())
    }

    /// `PUT /v2/<name>/manifests/<reference>` with the exact bytes and
    /// media type. A `Docker-Content-Digest` in the answer must be `digest`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), Error> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_str(media_type)
            .map_err(|_| self.protocol(format!("unusable media type `{media_type}`")))?;
        headers.insert(CONTENT_TYPE, content_type);
        let resp = self
            .write(Method::PUT, &path, &push_scope(repo), headers, bytes)
            .await?;
        let resp = self.expect_success(resp, "repository")?;
        match self.claimed_digest(resp.headers())? {
            Some(claimed) if &claimed != digest => {
                Err(self.protocol(format!("manifest PUT stored {claimed}, not the {digest} that was sent")))
            }
            _ => Ok(()),
        }
    }

    /// `HEAD /v2/<name>/manifests/<tag>` with push scope: the digest the tag
    /// names now, or `None` when the tag does not exist.
    pub async fn tag_digest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, Error> {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(DEFAULT_ACCEPT));
        let resp = self.request(Method::HEAD, &path, &push_scope(repo), headers).await?;
        match self.expect_success(resp, "manifest") {
            Ok(resp) => self
                .claimed_digest(resp.headers())?
                .map(Some)
                .ok_or_else(|| self.protocol(format!("HEAD of tag {tag} without Docker-Content-Digest"))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The upload session a response's `Location` names. An absolute
    /// location must be on this registry (scheme and authority): pushes
    /// never follow a registry to another host.
    fn upload_at(&self, repo: &RepoName, headers: &HeaderMap, offset: u64) -> Result<Upload, Error> {
        let location =
            header_string(headers, LOCATION).ok_or_else(|| self.protocol("upload answer without a Location".into()))?;
        Ok(Upload {
            repo: repo.clone(),
            location: self.same_origin_path(&location)?,
            offset,
        })
    }

    fn same_origin_path(&self, location: &str) -> Result<String, Error> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(location.to_owned());
        }
        let uri: Uri = location
            .parse()
            .map_err(|_| self.protocol(format!("unusable upload Location `{location}`")))?;
        let base = self.uri("/")?;
        let same = uri.scheme() == base.scheme() && uri.authority() == base.authority();
        match (same, uri.path_and_query()) {
            (true, Some(pq)) => Ok(pq.as_str().to_owned()),
            _ => Err(Error::RefusedDestination {
                host: self.host().to_string(),
                message: "an upload Location on another origin".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let yaml =
            "upstreams:\n  - host: 127.0.0.1:5000\n    url: http://127.0.0.1:5000\n    insecurePlainHttp: true\n";
        let config = crate::config::Config::from_yaml(yaml, "t.yaml", &Default::default()).expect("config");
        Registry::new(config.upstreams[0].clone(), config.upstream_policy, Default::default()).expect("registry")
    }

    #[test]
    fn upload_locations_stay_on_the_registry() {
        let reg = registry();
        let ok = reg.same_origin_path("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x");
        assert_eq!(ok.ok().as_deref(), Some("/v2/a/blobs/uploads/u?_state=x"));
        assert_eq!(
            reg.same_origin_path("/v2/a/blobs/uploads/u").ok().as_deref(),
            Some("/v2/a/blobs/uploads/u")
        );
        for other in [
            "http://evil.example/v2/a/blobs/uploads/u",
            "https://127.0.0.1:5000/v2/a/blobs/uploads/u",
            "//evil.example/v2/x",
        ] {
            assert!(
                matches!(reg.same_origin_path(other), Err(Error::RefusedDestination { .. })),
                "{other}"
            );
        }
    }
}
