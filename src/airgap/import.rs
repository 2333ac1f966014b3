//! `portcullis import`: stage an archive (every blob hashed while read),
//! then per image: all of it present and intact, the export signature if
//! the site requires one, and the **local** policy's verdict with local
//! trust only (`Proxy::assess` over the archive: no network). What passes
//! is written content first (blobs verified again into the store and
//! pinned, manifests admitted and stored), tags last, so a proxy on the
//! same data directory serves an image only once all of it is there.

use std::collections::{BTreeSet, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use super::layout::{self, Entry, Layout, LayoutError, LayoutSource, Staged};
use super::record::{ExportStation, SignatureError};
use super::{ImageName, is_material_tag};
use crate::config::Config;
use crate::oci::manifest::ManifestInfo;
use crate::oci::{Descriptor, Digest, RegistryHost, RepoName, Tag};
use crate::proxy::{self, Admitted, Judgement, Proxy, ProxyOptions, Target};
use crate::store::Store;
use crate::telemetry::Requester;
use crate::upstream::local::SharedSource;
use crate::verify::BlobVerifier;

/// How to import.
#[derive(Debug, Default)]
pub struct Options {
    /// The repository of entries named by a bare tag (`skopeo copy …
    /// oci-archive:FILE:TAG`).
    pub default_repository: Option<(RegistryHost, RepoName)>,
    /// Import nothing unless every image passes.
    pub all_or_nothing: bool,
    /// Require an export record signed by this station.
    pub export_station: Option<ExportStation>,
}

/// One image imported.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Imported {
    pub name: String,
    pub digest: Digest,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// One image refused, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

/// The outcome of an import.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub imported: Vec<Imported>,
    pub refused: Vec<Refused>,
    /// The archive could not be read to its end (what came before was used).
    pub archive_problem: Option<String>,
}

impl Report {
    /// 0: everything imported; 1: something was refused.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.refused.is_empty() || self.archive_problem.is_some())
    }
}

/// Why one image is refused (its `Display` is the report's reason).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadName(String),
    #[error("{0} is not an upstream of this site's configuration")]
    NotConfigured(RegistryHost),
    #[error(transparent)]
    ExportSignature(#[from] SignatureError),
    #[error("{what} {digest} in the archive does not match its digest ({why})")]
    Corrupt {
        what: &'static str,
        digest: Digest,
        why: String,
    },
    #[error("{what} {digest} is not in the archive{}", .broken.as_deref().map(|b| format!(" ({b})")).unwrap_or_default())]
    Missing {
        what: &'static str,
        digest: Digest,
        broken: Option<String>,
    },
    #[error("manifest {digest}: {source}")]
    BadManifest {
        digest: Digest,
        source: crate::oci::manifest::ManifestError,
    },
    #[error("reading {digest} from staging: {source}")]
    Staging { digest: Digest, source: std::io::Error },
    #[error("verification material of {subject}: {source}")]
    Material { subject: Digest, source: proxy::Error },
    #[error("cannot be judged: {0}")]
    Unjudged(proxy::Error),
    #[error("{judgement} by the local policy: {reasons}")]
    Policy { judgement: &'static str, reasons: String },
    #[error("not imported: --all-or-nothing and another image was refused")]
    AllOrNothing,
    #[error("blob {digest}: {source}")]
    Integrity {
        digest: Digest,
        source: crate::verify::IntegrityError,
    },
    #[error("admitting {digest}: {source}")]
    Admission { digest: Digest, source: proxy::Error },
    #[error("moving tag {tag}: {source}")]
    Tag { tag: Tag, source: proxy::Error },
    #[error("writing to the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("import task failed: {0}")]
    Task(String),
}

impl Refusal {
    fn of(self, name: impl std::fmt::Display) -> Refused {
        Refused {
            name: name.to_string(),
            reason: self.to_string(),
        }
    }
}

/// Why an import could not run at all (nothing was imported).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Start(#[from] proxy::StartError),
    #[error("staging: {0}")]
    Staging(String),
}

fn requester() -> Requester {
    Requester {
        client: "portcullis import".to_owned(),
        identity: "-".to_owned(),
    }
}

/// An image that passed every check, ready to be written.
struct Accepted {
    name: ImageName,
    target: Target,
    digest: Digest,
    tree: Tree,
}

/// Import `archive` into `config`'s data directory under its policy.
pub async fn run(config: Config, archive: &Path, options: &Options) -> Result<Report, ImportError> {
    let staging = config
        .data_dir
        .join("tmp")
        .join(format!("import-{}-{}", std::process::id(), fastrand::u64(..)));
    let archive_path = archive.to_owned();
    let staged = tokio::task::spawn_blocking(move || layout::stage(&archive_path, staging))
        .await
        .map_err(|e| ImportError::Staging(e.to_string()))??;
    let layout = Arc::new(Layout::open(&staged, options.default_repository.as_ref())?);
    let mut sources: HashMap<RegistryHost, SharedSource> = HashMap::new();
    for u in &config.upstreams {
        sources.insert(
            u.host.clone(),
            Arc::new(LayoutSource::new(u.host.clone(), layout.clone())),
        );
    }
    let audit = proxy::command_audit_sink(&config)?;
    let proxy = Proxy::with_options(
        Arc::new(config),
        audit,
        ProxyOptions {
            // A server may share the data directory: its partial downloads stay.
            clean_tmp: false,
            sources,
            ..ProxyOptions::default()
        },
    )?;
    let mut report = Report {
        archive_problem: staged.broken.clone(),
        ..Report::default()
    };
    let mut accepted = Vec::new();
    for entry in layout.entries.iter() {
        match check_entry(&proxy, &layout, &staged, entry, options).await {
            Ok(Some(a)) => accepted.push(a),
            Ok(None) => {}
            Err(r) => report.refused.push(r),
        }
    }
    if options.all_or_nothing && !report.refused.is_empty() {
        for a in accepted {
            report.refused.push(Refusal::AllOrNothing.of(&a.name));
        }
        return Ok(report);
    }
    for a in accepted {
        match commit(&proxy, &layout, &a).await {
            Ok(done) => report.imported.push(done),
            Err(why) => report.refused.push(why.of(&a.name)),
        }
    }
    proxy.flush_usage().await;
    drop(staged);
    Ok(report)
}

/// All the checks of one `index.json` entry; `Ok(None)` for entries that
/// are not images (unnamed content, material tags that travel with theirs).
async fn check_entry(
    proxy: &Proxy,
    layout: &Layout,
    staged: &Staged,
    entry: &Entry,
    options: &Options,
) -> Result<Option<Accepted>, Refused> {
    let digest = entry.descriptor.digest.clone();
    let Some(name) = &entry.name else {
        return match &entry.problem {
            Some(p) => Err(Refusal::BadName(p.clone()).of(&digest)),
            None => Ok(None),
        };
    };
    if is_material_tag(&name.tag) {
        return Ok(None);
    }
    check_image(proxy, layout, staged, name, digest, options)
        .await
        .map(Some)
        .map_err(|why| why.of(name))
}

/// An image named in the archive: configured here, signed by the station
/// (if required), complete and intact, and allowed by the local policy.
async fn check_image(
    proxy: &Proxy,
    layout: &Layout,
    staged: &Staged,
    name: &ImageName,
    digest: Digest,
    options: &Options,
) -> Result<Accepted, Refusal> {
    let target = target(proxy, name).ok_or_else(|| Refusal::NotConfigured(name.host.clone()))?;
    if let Some(station) = &options.export_station {
        station.check(staged.bundle.as_deref(), &digest)?;
    }
    let mut tree = walk(layout, staged, &digest)?;
    let mut subjects = vec![digest.clone()];
    subjects.extend(tree.children.iter().cloned());
    for subject in subjects {
        let refs = proxy
            .material_refs(&target, &subject)
            .await
            .map_err(|source| Refusal::Material {
                subject: subject.clone(),
                source,
            })?;
        for r in refs.referrers {
            tree.add_material(None, walk(layout, staged, &r)?);
        }
        for (tag, d) in refs.tags {
            tree.add_material(Some(tag), walk(layout, staged, &d)?);
        }
    }
    let verdict = Box::pin(proxy.assess_for(&requester(), &target, &name.tag, &digest))
        .await
        .map_err(Refusal::Unjudged)?;
    if verdict.judgement == Judgement::Allowed {
        return Ok(Accepted {
            name: name.clone(),
            target,
            digest,
            tree,
        });
    }
    let mut reasons = verdict.reasons.join("; ");
    if !verdict.missing.is_empty() {
        reasons = format!("{reasons} (unsatisfied: {})", verdict.missing.join(", "));
    }
    Err(Refusal::Policy {
        judgement: verdict.judgement.as_str(),
        reasons,
    })
}

/// The repository an image name points to on this site.
fn target(proxy: &Proxy, name: &ImageName) -> Option<Target> {
    proxy.target(name.host.as_str(), &name.repo)
}

/// The manifests and blobs under one top-level manifest, in the order they
/// are admitted (parents before children), all present and intact.
#[derive(Debug, Default)]
struct Tree {
    /// The top manifest, then the children of an index.
    manifests: Vec<Digest>,
    children: Vec<Digest>,
    /// Material manifests and the tags they were found under.
    material: Vec<(Option<Tag>, Digest)>,
    blobs: Vec<Descriptor>,
}

impl Tree {
    fn add_material(&mut self, tag: Option<Tag>, sub: Tree) {
        if let Some(top) = sub.manifests.first() {
            self.material.push((tag, top.clone()));
        }
        self.blobs.extend(sub.blobs);
    }
}

/// Why a digest is not usable from the archive.
fn absent(staged: &Staged, what: &'static str, digest: &Digest) -> Refusal {
    match staged.corrupt.get(digest) {
        Some(why) => Refusal::Corrupt {
            what,
            digest: digest.clone(),
            why: why.clone(),
        },
        None => Refusal::Missing {
            what,
            digest: digest.clone(),
            broken: staged.broken.clone(),
        },
    }
}

/// Walk `digest`'s tree in the staged layout. An index child absent from
/// the archive (exported for other platforms) is left out; anything else
/// missing or corrupt refuses the whole tree.
fn walk(layout: &Layout, staged: &Staged, digest: &Digest) -> Result<Tree, Refusal> {
    let mut tree = Tree::default();
    let info = read_manifest(layout, staged, digest)?;
    tree.manifests.push(digest.clone());
    if info.media_type.is_index() {
        for child in &info.references {
            if !layout.has_blob(&child.digest) && !staged.corrupt.contains_key(&child.digest) {
                tracing::info!(index = %digest, child = %child.digest, "index child not in the archive; left out");
                continue;
            }
            let sub = walk(layout, staged, &child.digest)?;
            tree.children.push(child.digest.clone());
            tree.manifests.extend(sub.manifests.into_iter().skip(1));
            tree.blobs.extend(sub.blobs);
        }
        return Ok(tree);
    }
    for d in &info.references {
        if !layout.has_blob(&d.digest) {
            return Err(absent(staged, "blob", &d.digest));
        }
        tree.blobs.push(d.clone());
    }
    Ok(tree)
}

fn read_manifest(layout: &Layout, staged: &Staged, digest: &Digest) -> Result<ManifestInfo, Refusal> {
    let staging = |source| Refusal::Staging {
        digest: digest.clone(),
        source,
    };
    let Some((mut file, _)) = layout.open_blob(digest).map_err(staging)? else {
        return Err(absent(staged, "manifest", digest));
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(staging)?;
    ManifestInfo::parse(&bytes, None)
        .or_else(|_| ManifestInfo::parse(&bytes, Some(crate::oci::manifest::OCI_MANIFEST)))
        .map_err(|source| Refusal::BadManifest {
            digest: digest.clone(),
            source,
        })
}

/// Write one accepted image: blobs, then manifests (admitted by the gate),
/// then the records an offline proxy reads, then the tags.
async fn commit(proxy: &Proxy, layout: &Arc<Layout>, a: &Accepted) -> Result<Imported, Refusal> {
    let store = proxy.store().clone();
    let (blobs, bytes) = {
        let (layout, store, list) = (layout.clone(), store.clone(), a.tree.blobs.clone());
        let reason = format!("imported {}", a.name);
        tokio::task::spawn_blocking(move || store_blobs(&store, &layout, &list, &reason))
            .await
            .map_err(|e| Refusal::Task(e.to_string()))??
    };
    let who = requester();
    let admit = |digest: Digest, tag: Option<Tag>| {
        let target = &a.target;
        let who = &who;
        async move {
            Box::pin(proxy.admit_digest(target, &digest, tag.as_ref(), who))
                .await
                .map_err(|source| Refusal::Admission {
                    digest: digest.clone(),
                    source,
                })
        }
    };
    let image = admit(a.digest.clone(), Some(a.name.tag.clone())).await?;
    let mut admitted = vec![image.digest().clone()];
    for child in &a.tree.children {
        admitted.push(admit(child.clone(), None).await?.digest().clone());
    }
    let mut material_tags: Vec<(Tag, Admitted)> = Vec::new();
    for (tag, d) in &a.tree.material {
        let m = admit(d.clone(), tag.clone()).await?;
        admitted.push(m.digest().clone());
        if let Some(t) = tag {
            material_tags.push((t.clone(), m));
        }
    }
    record_presence(proxy, layout, a, &admitted).await?;
    // Last: the names. Until here nothing of the image resolves by tag.
    let tag_error = |tag: &Tag| {
        let tag = tag.clone();
        move |source| Refusal::Tag { tag, source }
    };
    for (tag, m) in &material_tags {
        proxy.set_tag(&a.target, tag, m).await.map_err(tag_error(tag))?;
    }
    proxy
        .set_tag(&a.target, &a.name.tag, &image)
        .await
        .map_err(tag_error(&a.name.tag))?;
    tracing::info!(image = %a.name, digest = %a.digest, blobs, bytes, "imported");
    Ok(Imported {
        name: a.name.to_string(),
        digest: a.digest.clone(),
        manifests: admitted.len(),
        blobs,
        bytes,
    })
}

/// Presence of every manifest in the repository, and the referrers
/// listings of the image and its children, for an offline proxy.
async fn record_presence(
    proxy: &Proxy,
    layout: &Arc<Layout>,
    a: &Accepted,
    manifests: &[Digest],
) -> Result<(), Refusal> {
    let imports = proxy.store().imports.clone();
    let host = a.target.registry.host().clone();
    let repo = a.target.repo.clone();
    let mut subjects: BTreeSet<Digest> = a.tree.children.iter().cloned().collect();
    subjects.insert(a.digest.clone());
    let (layout, manifests) = (layout.clone(), manifests.to_vec());
    tokio::task::spawn_blocking(move || {
        for d in &manifests {
            imports.put_present(&host, &repo, d)?;
        }
        for s in &subjects {
            if let Some(listing) = layout.referrers_listing(s) {
                imports.put_referrers(&host, &repo, s, &listing)?;
            }
        }
        Ok::<_, crate::store::StoreError>(())
    })
    .await
    .map_err(|e| Refusal::Task(e.to_string()))?
    .map_err(Refusal::from)
}

/// Copy blobs from staging into the store, hashed again on the way (the
/// store commits only with the proof), and pin them: content that cannot
/// be fetched again is never evicted. Returns (count, bytes).
fn store_blobs(store: &Store, layout: &Layout, blobs: &[Descriptor], reason: &str) -> Result<(usize, u64), Refusal> {
    let mut done = BTreeSet::new();
    let mut bytes = 0;
    for d in blobs {
        if !done.insert(d.digest.clone()) {
            continue;
        }
        if store.blobs.open(&d.digest)?.is_none() {
            bytes += store_blob(store, layout, d)?;
        }
        store.usage.pin(&d.digest, reason)?;
    }
    Ok((done.len(), bytes))
}

/// One staged blob into the store, verified on the way; its length.
fn store_blob(store: &Store, layout: &Layout, d: &Descriptor) -> Result<u64, Refusal> {
    let staging = |source| Refusal::Staging {
        digest: d.digest.clone(),
        source,
    };
    let integrity = |source| Refusal::Integrity {
        digest: d.digest.clone(),
        source,
    };
    let Some((mut file, len)) = layout.open_blob(&d.digest).map_err(staging)? else {
        return Err(staging(std::io::ErrorKind::NotFound.into()));
    };
    let mut writer = store.blobs.writer(&d.digest)?;
    let mut verifier = BlobVerifier::new(d.digest.clone(), Some(d.size));
    loop {
        let mut chunk = bytes::BytesMut::zeroed(256 * 1024);
        let n = file.read(&mut chunk).map_err(staging)?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        let chunk = chunk.freeze();
        verifier.update(&chunk).map_err(integrity)?;
        writer.write(&chunk)?;
    }
    let proof = verifier.finish().map_err(integrity)?;
    let added = writer.commit(proof)?;
    store.record_commit(&d.digest, len, added)?;
    Ok(len)
}
