//! What this replica does for its peers (`cluster.peers`), and asks of them.
//! A blob or tag is led by one replica (rendezvous hashing in
//! [`crate::cluster`]): the others stream the blob from it while it
//! downloads, and take its upstream `HEAD` of the tag. The leader answers
//! only for what it leads, and never passes a peer's request on.

use http::HeaderValue;

use super::blob::{PeerRoute, serve_spool};
use super::{BlobServed, Error, Proxy, Target, blocking};
use crate::cluster::Leader;
use crate::oci::{Digest, Reference, RegistryHost, RepoName, Tag};
use crate::store::Spool;
use crate::telemetry::CacheOutcome;
use crate::upstream::{self, ManifestHead};

impl Proxy {
    /// The replicas this one knows, with `cluster.peers`.
    pub fn cluster(&self) -> Option<&std::sync::Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// `repo` as the upstream `host` names it (a peer sends the upstream's
    /// repository name, already mapped).
    fn peer_target(&self, host: &RegistryHost, repo: &RepoName) -> Result<Target, Error> {
        let (_, registry) = self.upstream(host.as_str()).ok_or_else(|| Error::Denied {
            message: format!("{host} is not an upstream of this replica"),
        })?;
        Ok(Target {
            registry,
            repo: repo.clone(),
            client_name: repo.to_string(),
        })
    }

    fn ensure_leader(&self, leader: Option<Leader<'_>>, what: impl FnOnce() -> String) -> Result<(), Error> {
        match leader {
            Some(Leader::Me) => Ok(()),
            Some(Leader::Peer(_)) | None => Err(Error::NotLeader { what: what() }),
        }
    }

    /// A peer's request for a blob this replica leads: from the store, or
    /// by following (or starting) this replica's download of it. The peer
    /// checked its client's grant; the bytes are hashed again there.
    pub async fn blob_for_peer(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobServed, Error> {
        self.ensure_leader(self.cluster.as_ref().map(|c| c.blob_leader(digest)), || {
            format!("blob {digest}")
        })?;
        let target = self.peer_target(host, repo)?;
        let store = self.store.clone();
        let d = digest.clone();
        if let Some((file, size, held)) = blocking(move || store.open_blob(&d, true)).await? {
            // Integrity-only: a blob cached for another repository is
            // relayed for this one only once the upstream confirms it, as
            // for a client of this replica.
            self.ensure_blob_present(&target, digest).await?;
            let spool = std::sync::Arc::new(Spool::completed(file, size));
            let mut served = serve_spool(&spool, size, CacheOutcome::Hit);
            if let Some(body) = served.body.as_mut() {
                body.hold(held);
            }
            return Ok(served);
        }
        let (spool, cache) = self.join_download(&target, digest, PeerRoute::Local).await?;
        if cache != CacheOutcome::Miss {
            // Following a download another repository started.
            self.ensure_blob_present(&target, digest).await?;
        }
        let size = super::blob::response_size(&spool).await?;
        Ok(serve_spool(&spool, size, cache))
    }

    /// A peer's resolution of a tag this replica leads: the shared upstream
    /// `HEAD` (its answer is only a digest, which the peer then fetches and
    /// verifies by digest, as it would the upstream's).
    pub async fn tag_for_peer(
        &self,
        host: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        accept: &HeaderValue,
    ) -> Result<ManifestHead, Error> {
        self.ensure_leader(self.cluster.as_ref().map(|c| c.tag_leader(host, repo, tag)), || {
            format!("tag {host}/{repo}:{tag}")
        })?;
        let target = self.peer_target(host, repo)?;
        Ok(self.head_tag(&target, tag, accept, PeerRoute::Local).await?)
    }

    /// The upstream `HEAD` of `tag`, shared by the requests resolving it at
    /// the same time on this replica, and across replicas through the one
    /// leading the tag. A leader that cannot answer leaves it to this one.
    pub(super) async fn head_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &HeaderValue,
        route: PeerRoute,
    ) -> Result<ManifestHead, upstream::Error> {
        let key = (
            target.registry.host().clone(),
            target.repo.clone(),
            tag.clone(),
            accept.as_bytes().to_vec(),
        );
        let leader = match (route, &self.cluster) {
            (PeerRoute::MayRelay, Some(c)) => match c.tag_leader(target.registry.host(), &target.repo, tag) {
                Leader::Peer(p) => Some((c.clone(), p.clone())),
                Leader::Me => None,
            },
            _ => None,
        };
        let (registry, repo, tag, accept) = (
            target.registry.clone(),
            target.repo.clone(),
            tag.clone(),
            accept.clone(),
        );
        let metrics = self.metrics.clone();
        self.tag_heads
            .run(key, move || async move {
                if let Some((cluster, peer)) = leader {
                    match cluster.client().tag(&peer, registry.host(), &repo, &tag, &accept).await {
                        Ok(head) => return Ok(head),
                        Err(e) => {
                            metrics.peer_fallback();
                            tracing::warn!(error = %e, "leading replica could not resolve the tag: asking the upstream here");
                        }
                    }
                }
                registry.head_manifest(&repo, &Reference::Tag(tag), &accept).await
            })
            .await
    }
}
