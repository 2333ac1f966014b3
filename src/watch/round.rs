//! One round over one watched repository: resolve each tag with `HEAD`,
//! compare with the last observation, judge what is new (or due for
//! re-verification) through the gate, and emit what changed.
//!
//! ```text
//! no observation      absent → record absent │ present → judge, record (baseline, no event;
//!                     for allTags after the repository's first round: tag.created)
//! was absent          present → tag.created (+ verdict)
//! was present         absent → tag.deleted
//!                     other digest → tag.moved (+ verdict); mutable: deny and
//!                                    the proxy serves another digest → tag.pinned
//!                     same digest, re-verification due → allowed before and
//!                                    denied now → signature.lost
//!                     same digest, undecided before (re-judged every round)
//!                                    and decided now → verdict.decided
//! cannot check        → watch.failed (once, until the tag can be checked again)
//! ```
//! Replicas watching one shared store agree on who reports a change: the
//! repository's observations are written conditionally (created if absent,
//! else replaced only at the version read), and only the watcher whose write
//! lands queues the events derived from (observations read → observations
//! written). A watcher whose write conflicts reads the winner's
//! observations and derives its events again against them, reusing the
//! digests it resolved: what the winner already reported now reads as
//! unchanged and yields nothing; only what this watcher saw beyond it (the
//! tag moved again) is reported. Events are therefore queued right after
//! the winning write: a crash between the two loses that change's events
//! (queuing first would have every replica report every change).
//! `watch.failed` stays each watcher's own (it says this watcher cannot
//! check a tag).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use http::HeaderValue;

use super::event::{About, WatchEvent};
use super::{WatchError, Watcher, blocking};
use crate::config::{RepoSelection, TagSelection, Upstream, WatchTarget};
use crate::oci::manifest::DEFAULT_ACCEPT;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::policy::Mutability;
use crate::policy::glob::Glob;
use crate::proxy::{Assessment, Judgement, Proxy, Target};
use crate::store::backend::Written;
use crate::store::{Observation, Observations, Recorded};
use crate::telemetry::watch_metrics::WatchEventKind;
use crate::upstream;

/// `HEAD` attempts when the upstream answers 429.
const RATE_LIMIT_ATTEMPTS: u32 = 3;
/// Longest `Retry-After` honoured within a round.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// One repository of a target, for this round.
pub(super) struct Watched {
    pub upstream: Arc<Upstream>,
    pub repository: RepoName,
    pub tags: TagSelection,
    /// The target's repository as configured (name or glob): metric label.
    pub label: String,
}

/// The repositories `t` watches this round: its one name, or the catalog's
/// matches of its glob.
pub(super) async fn expand(proxy: &Proxy, t: &WatchTarget, glob: Option<&Glob>) -> Result<Vec<Watched>, WatchError> {
    let watched = |repository: RepoName| Watched {
        upstream: t.upstream.clone(),
        repository,
        tags: t.tags.clone(),
        label: t.repository.label().to_owned(),
    };
    match (&t.repository, glob) {
        (RepoSelection::Name(name), _) => Ok(vec![watched(name.clone())]),
        (RepoSelection::Glob { max, .. }, Some(glob)) => {
            let registry = proxy
                .registries()
                .get(&t.upstream.host)
                .ok_or_else(|| WatchError::Internal(format!("no client for {}", t.upstream.host)))?;
            let repos = super::catalog::matching(registry, glob, *max).await?;
            Ok(repos.into_iter().map(watched).collect())
        }
        (RepoSelection::Glob { pattern, .. }, None) => {
            Err(WatchError::Internal(format!("glob `{pattern}` not compiled")))
        }
    }
}

/// What checking one repository did: tags checked, and failures (a tag,
/// or the tag list or observations, which fail the whole repository).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TargetStats {
    pub tags: usize,
    pub failed: usize,
}

impl TargetStats {
    fn failed() -> TargetStats {
        TargetStats { tags: 0, failed: 1 }
    }
}

/// Conditional writes of one repository's observations attempted in a
/// round before leaving it to the next (replicas writing it at once).
const WRITE_ATTEMPTS: usize = 4;

/// What checking one tag produced.
struct Checked {
    observation: Observation,
    events: Vec<(WatchEventKind, WatchEvent)>,
}

/// One pass over a repository's tags against one reading of its
/// observations: what to write and, if the write lands, what to report.
struct Pass {
    observations: Observations,
    events: Vec<(WatchEventKind, WatchEvent)>,
    stats: TargetStats,
}

/// What each tag resolved to this round (`None`: absent), so a pass
/// repeated after a conflicting write asks the upstream nothing again.
type Resolved = std::collections::HashMap<Tag, Option<Digest>>;

impl Watcher {
    /// Check every tag of `t`, each holding one of the round's `permits`
    /// while it is checked, and record (and report, if this watcher's write
    /// wins) what changed.
    pub(super) async fn check_target(&self, t: &Watched, permits: &tokio::sync::Semaphore) -> TargetStats {
        let host = t.upstream.host.clone();
        let Some(target) = self.proxy.target(host.as_str(), &t.repository) else {
            return TargetStats::failed();
        };
        let Some(listed) = self.listed_tags(t, &target).await else {
            return TargetStats::failed();
        };
        let mut resolved = Resolved::new();
        for _ in 0..WRITE_ATTEMPTS {
            let store = self.proxy.store().clone();
            let (h, r) = (host.clone(), t.repository.clone());
            let read = match blocking(move || store.watch.read_observations(&h, &r)).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(registry = %host, repository = %t.repository, error = %e, "cannot read watch observations");
                    return TargetStats::failed();
                }
            };
            let mut pass = self
                .check_tags(t, &target, &listed, &read.observations, &mut resolved, permits)
                .await;
            if !self.proxy.store().shared() {
                return self.queue_then_record(t, read, pass).await;
            }
            match self.record(t, read, &pass).await {
                Ok(true) => {
                    pass.stats.failed += self.emit_all(t, pass.events).await.len();
                    return pass.stats;
                }
                Ok(false) => {
                    tracing::debug!(registry = %host, repository = %t.repository,
                        "another watcher recorded this repository first; comparing with its observations");
                }
                Err(e) => {
                    tracing::error!(registry = %host, repository = %t.repository, error = %e, "cannot write watch observations");
                    pass.stats.failed += 1;
                    return pass.stats;
                }
            }
        }
        tracing::warn!(registry = %host, repository = %t.repository, attempts = WRITE_ATTEMPTS,
            "watch observations contended by other watchers; checked again next round");
        TargetStats::failed()
    }

    /// The tags named by the configuration or listed by the upstream
    /// (`None`, reported, when the listing fails).
    async fn listed_tags(&self, t: &Watched, target: &Target) -> Option<Vec<Tag>> {
        let max = match &t.tags {
            TagSelection::Listed(tags) => return Some(tags.clone()),
            TagSelection::All { max } => *max,
        };
        let registry = t.upstream.host.to_string();
        match super::list::all_tags(target, max).await {
            Ok(tags) => {
                self.lock_failing().remove(&format!("{registry}/{}:*", t.repository));
                Some(tags)
            }
            Err(e) => {
                let repository = t.repository.to_string();
                self.failed(&registry, &repository, &t.label, "*", e).await;
                None
            }
        }
    }

    /// Check the tags against `previous` observations: what to record and
    /// report. Tags already in `resolved` are not resolved again.
    async fn check_tags(
        &self,
        t: &Watched,
        target: &Target,
        listed: &[Tag],
        previous: &Observations,
        resolved: &mut Resolved,
        permits: &tokio::sync::Semaphore,
    ) -> Pass {
        // For `allTags`, a tag first seen after the repository's first
        // round was created; for listed tags, absence is recorded instead.
        let all = matches!(t.tags, TagSelection::All { .. });
        let announce_new = all && !previous.is_empty();
        let tags = if all {
            with_last_present(listed, previous)
        } else {
            listed.to_vec()
        };
        let (registry, repository) = (t.upstream.host.to_string(), t.repository.to_string());
        // Up to `concurrency` tags are checked at once; `buffered` yields
        // the results in tag order, so events keep a serial round's order.
        let known: &Resolved = resolved;
        let checks = tags.into_iter().map(|tag| {
            let (registry, repository) = (&registry, &repository);
            let last = previous.get(tag.as_str()).cloned();
            let known = known.get(&tag).cloned();
            async move {
                // Never closed, so a permit is always granted eventually.
                let _permit = permits.acquire().await.ok();
                let about = About {
                    registry,
                    repository,
                    tag: tag.as_str(),
                };
                let checked = match known {
                    Some(now) => Ok(now),
                    None => resolve(target, &tag).await,
                };
                let checked = match checked {
                    Ok(now) => self
                        .check_tag(about, target, &tag, announce_new, last.as_ref(), now.clone())
                        .await
                        .map(|c| (now, c)),
                    Err(e) => Err(e),
                };
                (tag, checked)
            }
        });
        let results: Vec<_> = futures_util::stream::iter(checks)
            .buffered(self.config.concurrency)
            .collect()
            .await;
        let mut pass = Pass {
            observations: previous.clone(),
            events: Vec::new(),
            stats: TargetStats::default(),
        };
        for (tag, checked) in results {
            pass.stats.tags += 1;
            let key = format!("{registry}/{repository}:{tag}");
            match checked {
                Ok((now, checked)) => {
                    pass.observations.insert(tag.as_str().to_owned(), checked.observation);
                    pass.events.extend(checked.events);
                    self.lock_failing().remove(&key);
                    resolved.insert(tag, now);
                }
                Err(e) => {
                    self.failed(&registry, &repository, &t.label, tag.as_str(), e).await;
                    pass.stats.failed += 1;
                }
            }
        }
        if all {
            // Deleted tags were reported; unlisted, they need no record.
            pass.observations.retain(|_, o| o.digest.is_some());
        }
        pass
    }

    /// Write the pass's observations if the record is still the one read:
    /// `true` when written (or nothing changed), `false` when another
    /// watcher wrote first.
    async fn record(&self, t: &Watched, read: Recorded, pass: &Pass) -> Result<bool, WatchError> {
        if pass.observations == read.observations && pass.events.is_empty() {
            // Nothing changed: no write (an unchanged round costs no PUT).
            return Ok(true);
        }
        let store = self.proxy.store().clone();
        let (h, r, obs) = (t.upstream.host.clone(), t.repository.clone(), pass.observations.clone());
        let written = blocking(move || store.watch.update_observations(&h, &r, &read, &obs)).await?;
        Ok(written == Written::Done)
    }

    /// Alone on the store (no replicas share it): queue the events first,
    /// then record, so a crash in between repeats an event rather than
    /// losing one. A tag whose events could not be queued keeps its old
    /// observation and is checked again next round.
    async fn queue_then_record(&self, t: &Watched, read: Recorded, mut pass: Pass) -> TargetStats {
        let unqueued = self.emit_all(t, std::mem::take(&mut pass.events)).await;
        for tag in &unqueued {
            match read.observations.get(tag) {
                Some(old) => pass.observations.insert(tag.clone(), old.clone()),
                None => pass.observations.remove(tag),
            };
        }
        pass.stats.failed += unqueued.len();
        match self.record(t, read, &pass).await {
            Ok(true) => {}
            // Only another process on the same data directory could have
            // written: not supported (one watcher per data directory); the
            // events are queued, the next round compares with its record.
            Ok(false) => tracing::warn!(registry = %t.upstream.host, repository = %t.repository,
                "watch observations changed by another process on this data directory"),
            Err(e) => {
                tracing::error!(registry = %t.upstream.host, repository = %t.repository, error = %e,
                    "cannot write watch observations; changes are reported again next round");
                pass.stats.failed += 1;
            }
        }
        pass.stats
    }

    /// Queue events in order; the tags whose events could not be queued
    /// (logged). After a won write on a shared store those are lost: the
    /// observation is recorded.
    async fn emit_all(&self, t: &Watched, events: Vec<(WatchEventKind, WatchEvent)>) -> BTreeSet<String> {
        let mut failed = BTreeSet::new();
        for (kind, event) in events {
            if failed.contains(&event.tag) {
                continue;
            }
            if let Err(e) = self.emit(kind, &event).await {
                tracing::error!(registry = %t.upstream.host, repository = %t.repository, event = kind.as_str(),
                    subject = %event.subject(), error = %e, "cannot queue a watch event");
                failed.insert(event.tag.clone());
            }
        }
        failed
    }

    /// Count a failed check of `tag` (`*`: the tag list) and send
    /// `watch.failed` once per outage.
    /// `label` is the target's configured repository (the metric label).
    pub(super) async fn failed(&self, registry: &str, repository: &str, label: &str, tag: &str, e: WatchError) {
        let key = format!("{registry}/{repository}:{tag}");
        tracing::warn!(tag = %key, error = %e, "watch check failed");
        self.proxy.metrics().watch.failure(registry, label);
        if self.lock_failing().insert(key) {
            let about = About {
                registry,
                repository,
                tag,
            };
            let event = WatchEvent::failed(about, e.to_string());
            if let Err(e) = self.emit(WatchEventKind::WatchFailed, &event).await {
                tracing::error!(error = %e, "cannot queue a watch.failed event");
            }
        }
    }

    async fn check_tag(
        &self,
        about: About<'_>,
        target: &Target,
        tag: &Tag,
        announce_new: bool,
        previous: Option<&Observation>,
        now: Option<Digest>,
    ) -> Result<Checked, WatchError> {
        let was = previous.map(|p| p.digest.as_ref());
        match (was, now) {
            (_, None) => Ok(self.absent(about, previous)),
            (Some(Some(old)), Some(new)) if *old == new => self.unmoved(about, target, tag, previous, new).await,
            (None, Some(new)) if announce_new => self.changed(about, target, tag, None, new).await,
            (None, Some(new)) => {
                let a = self.proxy.assess(target, tag, &new).await?;
                Ok(Checked {
                    observation: observed(Some(new), &a),
                    events: Vec::new(),
                })
            }
            (Some(old), Some(new)) => self.changed(about, target, tag, old, new).await,
        }
    }

    /// The tag does not exist (now): `tag.deleted` if it did.
    fn absent(&self, about: About<'_>, previous: Option<&Observation>) -> Checked {
        let old = match previous {
            // Still absent: the record stays as it is (nothing to write).
            Some(p) if p.digest.is_none() => {
                return Checked {
                    observation: p.clone(),
                    events: Vec::new(),
                };
            }
            Some(p) => p.digest.as_ref(),
            None => None,
        };
        let events = old
            .map(|old| {
                let event = WatchEvent::new(WatchEventKind::TagDeleted, about, Some(old), None, None);
                (WatchEventKind::TagDeleted, event)
            })
            .into_iter()
            .collect();
        Checked {
            observation: Observation {
                digest: None,
                verdict: None,
                verified_at: unix_now(),
            },
            events,
        }
    }

    /// Created (`old` is `None`) or moved: judge the new digest.
    async fn changed(
        &self,
        about: About<'_>,
        target: &Target,
        tag: &Tag,
        old: Option<&Digest>,
        new: Digest,
    ) -> Result<Checked, WatchError> {
        let a = self.proxy.assess(target, tag, &new).await?;
        let kind = match old {
            Some(_) => WatchEventKind::TagMoved,
            None => WatchEventKind::TagCreated,
        };
        let mut events = vec![(kind, WatchEvent::new(kind, about, old, Some(&new), Some(&a)))];
        if a.mutability == Mutability::Deny
            && let Some(pinned) = self.proxy.served_digest(target, tag).await?
            && pinned != new
        {
            let event = WatchEvent::new(WatchEventKind::TagPinned, about, Some(&pinned), Some(&new), Some(&a));
            events.push((WatchEventKind::TagPinned, event));
        }
        Ok(Checked {
            observation: observed(Some(new), &a),
            events,
        })
    }

    /// Same digest: re-verify when due (every round while undecided); a
    /// digest allowed before and denied now lost its signature (or its key,
    /// or the policy changed).
    async fn unmoved(
        &self,
        about: About<'_>,
        target: &Target,
        tag: &Tag,
        previous: Option<&Observation>,
        digest: Digest,
    ) -> Result<Checked, WatchError> {
        let Some(previous) = previous else {
            return Err(WatchError::Internal("unmoved tag without an observation".into()));
        };
        // An undecided verdict is no verdict: judged again every round.
        let undecided = previous.verdict.as_deref() == Some(Judgement::Undecided.as_str());
        let due = undecided || unix_now().saturating_sub(previous.verified_at) >= self.config.reverify.as_secs();
        if !due {
            return Ok(Checked {
                observation: previous.clone(),
                events: Vec::new(),
            });
        }
        let a = self.proxy.assess(target, tag, &digest).await?;
        if a.judgement == Judgement::Undecided {
            // Not a verdict: keep the last one and try again next round.
            return Ok(Checked {
                observation: previous.clone(),
                events: Vec::new(),
            });
        }
        let mut events = Vec::new();
        let kind = if undecided {
            // The follow-up of the event (or first observation) that said
            // `undecided`: the verdict is known now.
            Some(WatchEventKind::VerdictDecided)
        } else if previous.verdict.as_deref() == Some(Judgement::Allowed.as_str()) && a.judgement == Judgement::Denied {
            Some(WatchEventKind::SignatureLost)
        } else {
            None
        };
        if let Some(kind) = kind {
            events.push((
                kind,
                WatchEvent::new(kind, about, Some(&digest), Some(&digest), Some(&a)),
            ));
        }
        Ok(Checked {
            observation: observed(Some(digest), &a),
            events,
        })
    }
}

/// The upstream's listing plus every tag last seen present (so deletions
/// are noticed).
fn with_last_present(listed: &[Tag], previous: &Observations) -> Vec<Tag> {
    let mut tags = listed.to_vec();
    for (name, o) in previous {
        if o.digest.is_some()
            && let Ok(tag) = name.parse::<Tag>()
            && !tags.contains(&tag)
        {
            tags.push(tag);
        }
    }
    tags
}

fn observed(digest: Option<Digest>, a: &Assessment) -> Observation {
    Observation {
        digest,
        verdict: Some(a.judgement.as_str().to_owned()),
        verified_at: unix_now(),
    }
}

pub(super) fn unix_now() -> u64 {
    jiff::Timestamp::now().as_second().try_into().unwrap_or(0)
}

/// The tag's digest by `HEAD` through the proxy's upstream client (which
/// retries transient failures itself); `None` when the upstream says it does
/// not exist. A 429 is retried after its `Retry-After` (bounded).
pub(super) async fn resolve(target: &Target, tag: &Tag) -> Result<Option<Digest>, WatchError> {
    let accept = HeaderValue::from_static(DEFAULT_ACCEPT);
    let reference = Reference::Tag(tag.clone());
    let mut attempt = 1;
    loop {
        match target.registry.head_manifest(&target.repo, &reference, &accept).await {
            Ok(upstream::ManifestHead { digest: Some(d), .. }) => return Ok(Some(d)),
            Ok(_) => return Err(WatchError::NoDigest),
            Err(upstream::Error::NotFound { .. }) => return Ok(None),
            Err(upstream::Error::TooManyRequests { retry_after, .. }) if attempt < RATE_LIMIT_ATTEMPTS => {
                let wait = retry_after_delay(retry_after.as_ref(), attempt);
                tracing::info!(repo = %target.repo, %tag, wait_ms = wait.as_millis() as u64, "upstream rate-limits (429); waiting");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(WatchError::Upstream(e)),
        }
    }
}

/// `Retry-After` in seconds (an HTTP date or garbage falls back to an
/// exponential delay), capped at [`MAX_RETRY_AFTER`].
fn retry_after_delay(value: Option<&HeaderValue>, attempt: u32) -> Duration {
    let fallback = Duration::from_secs(2u64.saturating_pow(attempt));
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(fallback, Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(retry_after_delay(Some(&v("3")), 1), Duration::from_secs(3));
        assert_eq!(retry_after_delay(Some(&v("86400")), 1), MAX_RETRY_AFTER);
        assert_eq!(
            retry_after_delay(Some(&v("Wed, 21 Oct 2015 07:28:00 GMT")), 2),
            Duration::from_secs(4)
        );
        assert_eq!(retry_after_delay(None, 1), Duration::from_secs(2));
    }
}
