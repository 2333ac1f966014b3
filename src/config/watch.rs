//! The `watch:` section: which tags the watcher re-resolves, how often, and
//! where its events go. Validated here into [`WatchConfig`]; nothing past
//! `config` sees the raw strings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Upstream;
use super::raw::HumanDuration;
use super::secret::Secret;
use crate::oci::{RepoName, Tag};

/// Default time between rounds (with up to 10% jitter added).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// Default time after which an unmoved digest is verified again.
pub const DEFAULT_REVERIFY: Duration = Duration::from_secs(3600);
/// Default number of undelivered events per sink above which the queue is
/// reported (metric, log line, `/readyz`); events are never dropped.
pub const DEFAULT_QUEUE_LIMIT: usize = 10_000;
/// Default number of tag checks in flight in a round (across repositories).
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Most tags checked at once (each holds an upstream connection and, for a
/// new digest, a discovery slot of the gate, which has 32).
pub const MAX_CONCURRENCY: usize = 64;
/// Most tags one configuration may watch.
pub const MAX_WATCHED_TAGS: usize = 10_000;
/// Default bound of an `allTags` target.
pub const DEFAULT_MAX_TAGS: usize = 1_000;
/// Default bound of the repositories a glob target expands to.
pub const DEFAULT_MAX_REPOSITORIES: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWatch {
    pub interval: Option<HumanDuration>,
    /// Verify an unmoved digest again after this long (`0s`: every round).
    pub reverify: Option<HumanDuration>,
    pub queue_limit: Option<usize>,
    /// Tag checks in flight per round, across repositories (1: one after
    /// another).
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub targets: Vec<RawWatchTarget>,
    #[serde(default)]
    pub sinks: Vec<RawSink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWatchTarget {
    /// An allow-listed upstream host or alias.
    pub registry: String,
    /// A repository name, or a glob (`org/*`, `org/**`) expanded through the
    /// upstream's catalog (`/v2/_catalog`) every round.
    pub repository: String,
    /// For a repository glob: at most this many matching repositories.
    pub max_repositories: Option<usize>,
    /// Explicit tags; or `allTags: true`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Watch every tag the upstream lists (`tags/list`), at most `maxTags`.
    #[serde(default)]
    pub all_tags: bool,
    pub max_tags: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSink {
    pub webhook: RawWebhook,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWebhook {
    /// A metric label and the queue's directory name; defaults to `webhook-<n>`.
    pub name: Option<String>,
    pub url: String,
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub format: EventFormat,
}

/// How a webhook renders events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// CloudEvents 1.0, structured JSON mode.
    #[default]
    Cloudevents,
    /// OCSF 1.8.0 Detection Finding (class 2004).
    Ocsf,
}

impl EventFormat {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFormat::Cloudevents => "cloudevents",
            EventFormat::Ocsf => "ocsf",
        }
    }
}

/// The validated `watch:` section.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub interval: Duration,
    pub reverify: Duration,
    pub queue_limit: usize,
    /// Tag checks in flight per round; each repository's events stay in
    /// tag order.
    pub concurrency: usize,
    pub targets: Vec<WatchTarget>,
    pub sinks: Vec<WebhookSink>,
}

impl WatchConfig {
    /// One line for `config check` and the startup log (secrets elided).
    pub fn describe(&self) -> String {
        let tags: usize = self
            .targets
            .iter()
            .map(|t| t.tags.bound().saturating_mul(t.repository.bound()))
            .sum();
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|s| {
                let signed = if s.secret.is_some() { ", HMAC-signed" } else { "" };
                format!("{} ({}{signed}) -> {}", s.name, s.format.as_str(), s.url)
            })
            .collect();
        format!(
            "watch: up to {tags} tags in {} targets every {:?} (+ jitter), {} at once, re-verified every {:?}; sinks: {}",
            self.targets.len(),
            self.interval,
            self.concurrency,
            self.reverify,
            if sinks.is_empty() {
                "audit log only".to_owned()
            } else {
                sinks.join(", ")
            }
        )
    }
}

/// One watched repository: its upstream (from the allow-list) and tags.
#[derive(Clone, Debug)]
pub struct WatchTarget {
    pub upstream: Arc<Upstream>,
    pub repository: RepoSelection,
    pub tags: TagSelection,
}

/// Which repositories a target watches.
#[derive(Clone, Debug)]
pub enum RepoSelection {
    /// One repository as configured (`library/` is added for Docker Hub
    /// when the request is made).
    Name(RepoName),
    /// The catalog's repositories matching `pattern` (policy glob syntax,
    /// compiled by the watcher), the first `max` in catalog order.
    Glob { pattern: String, max: usize },
}

impl RepoSelection {
    /// The name or pattern as configured (a metric label).
    pub fn label(&self) -> &str {
        match self {
            RepoSelection::Name(n) => n.as_str(),
            RepoSelection::Glob { pattern, .. } => pattern,
        }
    }

    /// The most repositories this selection watches.
    pub fn bound(&self) -> usize {
        match self {
            RepoSelection::Name(_) => 1,
            RepoSelection::Glob { max, .. } => *max,
        }
    }
}

/// Which tags of a repository are watched.
#[derive(Clone, Debug)]
pub enum TagSelection {
    Listed(Vec<Tag>),
    /// Every tag the upstream lists, the first `max` in lexical order.
    All {
        max: usize,
    },
}

impl TagSelection {
    /// The most tags this selection watches.
    pub fn bound(&self) -> usize {
        match self {
            TagSelection::Listed(t) => t.len(),
            TagSelection::All { max } => *max,
        }
    }
}

/// A webhook receiving events.
#[derive(Clone, Debug)]
pub struct WebhookSink {
    /// Bounded by the configuration: a metric label and a directory name.
    pub name: String,
    pub url: http::Uri,
    /// Key of the HMAC-SHA256 signature header (`None`: unsigned).
    pub secret: Option<Secret>,
    pub format: EventFormat,
}

/// Validate `raw` against the allow-list: `(path, message)` on failure.
pub fn validate(
    raw: RawWatch,
    upstream: impl Fn(&str) -> Option<Arc<Upstream>>,
    base: Option<&Path>,
) -> Result<WatchConfig, (String, String)> {
    let mut targets = Vec::new();
    let mut watched = 0usize;
    for (i, t) in raw.targets.into_iter().enumerate() {
        let at = format!("watch.targets[{i}]");
        let target = target(t, &upstream).map_err(|(f, m)| (format!("{at}.{f}"), m))?;
        watched += target.tags.bound().saturating_mul(target.repository.bound());
        if watched > MAX_WATCHED_TAGS {
            return Err((at, format!("more than {MAX_WATCHED_TAGS} watched tags")));
        }
        targets.push(target);
    }
    let mut sinks: Vec<WebhookSink> = Vec::new();
    for (i, s) in raw.sinks.into_iter().enumerate() {
        let at = format!("watch.sinks[{i}].webhook");
        let sink = webhook(s.webhook, i, base).map_err(|(f, m)| (format!("{at}.{f}"), m))?;
        if sinks.iter().any(|o| o.name == sink.name) {
            return Err((format!("{at}.name"), format!("sink name `{}` is used twice", sink.name)));
        }
        sinks.push(sink);
    }
    Ok(WatchConfig {
        interval: raw.interval.map_or(DEFAULT_INTERVAL, |d| d.0),
        reverify: raw.reverify.map_or(DEFAULT_REVERIFY, |d| d.0),
        queue_limit: raw.queue_limit.unwrap_or(DEFAULT_QUEUE_LIMIT).max(1),
        concurrency: concurrency(raw.concurrency)?,
        targets,
        sinks,
    })
    .and_then(|w| {
        if w.interval.is_zero() {
            Err(("watch.interval".to_owned(), "must be more than 0".to_owned()))
        } else {
            Ok(w)
        }
    })
}

fn concurrency(raw: Option<usize>) -> Result<usize, (String, String)> {
    match raw {
        None => Ok(DEFAULT_CONCURRENCY),
        Some(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
        Some(n) => Err((
            "watch.concurrency".to_owned(),
            format!("{n} is not between 1 and {MAX_CONCURRENCY}"),
        )),
    }
}

fn target(
    t: RawWatchTarget,
    upstream: &impl Fn(&str) -> Option<Arc<Upstream>>,
) -> Result<WatchTarget, (&'static str, String)> {
    let up = upstream(&t.registry).ok_or_else(|| {
        (
            "registry",
            format!("`{}` is not a configured upstream host or alias", t.registry),
        )
    })?;
    let repository = repository(&t.repository, t.max_repositories)?;
    let tags = match (t.all_tags, t.tags.is_empty(), t.max_tags) {
        (true, true, max) => TagSelection::All {
            max: max.unwrap_or(DEFAULT_MAX_TAGS).clamp(1, MAX_WATCHED_TAGS),
        },
        (true, false, _) => return Err(("tags", "give `tags` or `allTags: true`, not both".to_owned())),
        (false, _, Some(_)) => return Err(("maxTags", "applies to `allTags: true` only".to_owned())),
        (false, true, None) => return Err(("tags", "name at least one tag, or set `allTags: true`".to_owned())),
        (false, false, None) => TagSelection::Listed(
            t.tags
                .iter()
                .map(|s| s.parse().map_err(|_| ("tags", format!("`{s}` is not a tag"))))
                .collect::<Result<Vec<Tag>, _>>()?,
        ),
    };
    Ok(WatchTarget {
        upstream: up,
        repository,
        tags,
    })
}

fn repository(text: &str, max: Option<usize>) -> Result<RepoSelection, (&'static str, String)> {
    if !text.contains('*') {
        if max.is_some() {
            return Err(("maxRepositories", "applies to a repository glob only".to_owned()));
        }
        return text
            .parse()
            .map(RepoSelection::Name)
            .map_err(|_| ("repository", format!("`{text}` is not a repository name")));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c);
    if text.is_empty() || !text.chars().all(allowed) {
        return Err(("repository", format!("`{text}` is not a repository name or glob")));
    }
    Ok(RepoSelection::Glob {
        pattern: text.to_owned(),
        max: max.unwrap_or(DEFAULT_MAX_REPOSITORIES).clamp(1, MAX_WATCHED_TAGS),
    })
}

fn webhook(w: RawWebhook, index: usize, base: Option<&Path>) -> Result<WebhookSink, (&'static str, String)> {
    let url: http::Uri = w
        .url
        .parse()
        .map_err(|_| ("url", format!("`{}` is not a URL", w.url)))?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err(("url", format!("`{}` must be an http:// or https:// URL", w.url)));
    }
    let name = w.name.unwrap_or_else(|| format!("webhook-{index}"));
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(("name", format!("`{name}` must be 1-64 of [A-Za-z0-9_-]")));
    }
    let secret = w
        .secret_file
        .map(|p| {
            let path = match base {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p,
            };
            std::fs::read_to_string(&path)
                .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
                .map_err(|e| ("secretFile", format!("cannot read {}: {e}", path.display())))
        })
        .transpose()?;
    if secret.as_ref().is_some_and(|s| s.expose_secret().is_empty()) {
        return Err(("secretFile", "the secret file is empty".to_owned()));
    }
    Ok(WebhookSink {
        name,
        url,
        secret,
        format: w.format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(host: &str) -> Option<Arc<Upstream>> {
        (host == "r.test").then(|| {
            Arc::new(Upstream {
                host: "r.test".parse().expect("host"),
                url: "https://r.test".parse().expect("url"),
                offline: false,
                credentials: None,
                ca_file: None,
                token_realms: Vec::new(),
                insecure_allow_private_addresses: false,
            })
        })
    }

    fn parse(yaml: &str) -> Result<WatchConfig, (String, String)> {
        let raw: RawWatch = yaml_serde::from_str(yaml).expect("yaml");
        validate(raw, upstream, None)
    }

    #[test]
    fn defaults_and_targets() {
        let w = parse("targets:\n  - { registry: r.test, repository: app, tags: [stable, '1.2'] }\n").expect("valid");
        assert_eq!(w.interval, DEFAULT_INTERVAL);
        assert_eq!(w.reverify, DEFAULT_REVERIFY);
        assert!(matches!(&w.targets[0].tags, TagSelection::Listed(t) if t.len() == 2));
        assert_eq!(
            w.describe(),
            "watch: up to 2 tags in 1 targets every 300s (+ jitter), 16 at once, re-verified every 3600s; sinks: audit log only"
        );
        assert_eq!(w.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(parse("concurrency: 1\n").expect("valid").concurrency, 1);
        let w =
            parse("targets:\n  - { registry: r.test, repository: app, allTags: true, maxTags: 50 }\n").expect("valid");
        assert!(matches!(w.targets[0].tags, TagSelection::All { max: 50 }));
        let w = parse("targets:\n  - { registry: r.test, repository: 'org/**', maxRepositories: 5, tags: [a] }\n")
            .expect("valid");
        assert!(matches!(&w.targets[0].repository, RepoSelection::Glob { pattern, max: 5 } if pattern == "org/**"));
        assert!(w.sinks.is_empty());
    }

    #[test]
    fn refusals_name_the_path() {
        let cases = [
            (
                "targets:\n  - { registry: other.test, repository: app, tags: [a] }\n",
                "watch.targets[0].registry",
            ),
            (
                "targets:\n  - { registry: r.test, repository: App, tags: [a] }\n",
                "watch.targets[0].repository",
            ),
            (
                "targets:\n  - { registry: r.test, repository: app, tags: ['-x'] }\n",
                "watch.targets[0].tags",
            ),
            (
                "targets:\n  - { registry: r.test, repository: app, tags: [] }\n",
                "watch.targets[0].tags",
            ),
            (
                "sinks:\n  - webhook: { url: 'ftp://x' }\n",
                "watch.sinks[0].webhook.url",
            ),
            (
                "sinks:\n  - webhook: { url: 'http://x', name: 'a b' }\n",
                "watch.sinks[0].webhook.name",
            ),
            (
                "sinks:\n  - webhook: { url: 'http://x', secretFile: /nonexistent/s }\n",
                "watch.sinks[0].webhook.secretFile",
            ),
            ("interval: 0s\n", "watch.interval"),
            ("concurrency: 0\n", "watch.concurrency"),
            ("concurrency: 65\n", "watch.concurrency"),
            (
                "targets:\n  - { registry: r.test, repository: 'Org/*', tags: [a] }\n",
                "watch.targets[0].repository",
            ),
            (
                "targets:\n  - { registry: r.test, repository: app, maxRepositories: 2, tags: [a] }\n",
                "watch.targets[0].maxRepositories",
            ),
            (
                "targets:\n  - { registry: r.test, repository: 'o/*', maxRepositories: 1000, allTags: true, maxTags: 11 }\n",
                "watch.targets[0]",
            ),
            (
                "targets:\n  - { registry: r.test, repository: app, tags: [a], allTags: true }\n",
                "watch.targets[0].tags",
            ),
            (
                "targets:\n  - { registry: r.test, repository: app, tags: [a], maxTags: 3 }\n",
                "watch.targets[0].maxTags",
            ),
        ];
        for (yaml, at) in cases {
            let (path, _) = parse(yaml).expect_err(yaml);
            assert_eq!(path, at, "{yaml}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = yaml_serde::from_str::<RawWatch>("targets: []\nintervall: 5m\n").expect_err("typo");
        assert!(err.to_string().contains("intervall"), "{err}");
        let err = yaml_serde::from_str::<RawWatch>("sinks:\n  - webhook: { url: 'http://x', formt: ocsf }\n")
            .expect_err("typo");
        assert!(err.to_string().contains("formt"), "{err}");
    }
}
