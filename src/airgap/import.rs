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
use super::record::ExportStation;
use super::{ImageName, is_material_tag};
use crate::config::Config;
use crate::oci::manifest::ManifestInfo;
use crate::oci::{Descriptor, Digest, RegistryHost, RepoName, Tag};
use crate::proxy::{self, Admitted, Judgement, Proxy, ProxyOptions, Target};
use crate::store::Store;
use crate::store::imports::Imports;
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
            report.refused.push(Refused {
                name: a.name.to_string(),
                reason: "not imported: --all-or-nothing and another image was refused".into(),
            });
        }
        return Ok(report);
    }
    for a in accepted {
        match commit(&proxy, &layout, &a).await {
            Ok(done) => report.imported.push(done),
            Err(reason) => report.refused.push(Refused {
                name: a.name.to_string(),
                reason,
            }),
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
            Some(p) => Err(Refused {
                name: digest.to_string(),
                reason: p.clone(),
            }),
            None => Ok(None),
        };
    };
    if is_material_tag(&name.tag) {
        return Ok(None);
    }
    let refuse = |reason: String| Refused {
        name: name.to_string(),
        reason,
    };
    let target = target(proxy, name)
        .ok_or_else(|| refuse(format!("{} is not an upstream of this site's configuration", name.host)))?;
    if let Some(station) = &options.export_station {
        station
            .check(staged.bundle.as_deref(), &digest)
            .map_err(|e| refuse(e.to_string()))?;
    }
    let mut tree = walk(layout, staged, &digest).map_err(&refuse)?;
    let mut subjects = vec![digest.clone()];
    subjects.extend(tree.children.iter().cloned());
    for subject in subjects {
        let refs = proxy
            .material_refs(&target, &subject)
            .await
            .map_err(|e| refuse(format!("verification material of {subject}: {e}")))?;
        for r in refs.referrers {
            tree.add_material(None, walk(layout, staged, &r).map_err(&refuse)?);
        }
        for (tag, d) in refs.tags {
            tree.add_material(Some(tag), walk(layout, staged, &d).map_err(&refuse)?);
        }
    }
    let verdict = Box::pin(proxy.assess_for(&requester(), &target, &name.tag, &digest))
        .await
        .map_err(|e| refuse(format!("cannot be judged: {e}")))?;
    match verdict.judgement {
        Judgement::Allowed => Ok(Some(Accepted {
            name: name.clone(),
            target,
            digest,
            tree,
        })),
        j => {
            let mut why = verdict.reasons.join("; ");
            if !verdict.missing.is_empty() {
                why = format!("{why} (unsatisfied: {})", verdict.missing.join(", "));
            }
            Err(refuse(format!("{} by the local policy: {why}", j.as_str())))
        }
    }
}

/// The repository an image name points to on this site.
fn target(proxy: &Proxy, name: &ImageName) -> Option<Target> {
    let upstream = proxy.config().upstream_by_host(name.host.as_str())?.clone();
    let registry = proxy.registries().get(&upstream.host)?.clone();
    Some(Target {
        registry,
        repo: upstream.upstream_repo(&name.repo),
        client_name: name.repo.to_string(),
    })
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
fn absent(staged: &Staged, what: &str, digest: &Digest) -> String {
    match (staged.corrupt.get(digest), &staged.broken) {
        (Some(why), _) => format!("{what} {digest} in the archive does not match its digest ({why})"),
        (None, Some(broken)) => format!("{what} {digest} is not in the archive ({broken})"),
        (None, None) => format!("{what} {digest} is not in the archive"),
    }
}

/// Walk `digest`'s tree in the staged layout. An index child absent from
/// the archive (exported for other platforms) is left out; anything else
/// missing or corrupt refuses the whole tree.
fn walk(layout: &Layout, staged: &Staged, digest: &Digest) -> Result<Tree, String> {
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

fn read_manifest(layout: &Layout, staged: &Staged, digest: &Digest) -> Result<ManifestInfo, String> {
    let Some((mut file, _)) = layout.open_blob(digest).map_err(|e| format!("reading {digest}: {e}"))? else {
        return Err(absent(staged, "manifest", digest));
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("reading {digest}: {e}"))?;
    ManifestInfo::parse(&bytes, None)
        .or_else(|_| ManifestInfo::parse(&bytes, Some(crate::oci::manifest::OCI_MANIFEST)))
        .map_err(|e| format!("manifest {digest}: {e}"))
}

/// Write one accepted image: blobs, then manifests (admitted by the gate),
/// then the records an offline proxy reads, then the tags.
async fn commit(proxy: &Proxy, layout: &Arc<Layout>, a: &Accepted) -> Result<Imported, String> {
    let store = proxy.store().clone();
    let (blobs, bytes) = {
        let (layout, store, list) = (layout.clone(), store.clone(), a.tree.blobs.clone());
        let reason = format!("imported {}", a.name);
        tokio::task::spawn_blocking(move || store_blobs(&store, &layout, &list, &reason))
            .await
            .map_err(|e| e.to_string())??
    };
    let who = requester();
    let admit = |digest: Digest, tag: Option<Tag>| {
        let target = &a.target;
        let who = &who;
        async move {
            Box::pin(proxy.admit_digest(target, &digest, tag.as_ref(), who))
                .await
                .map_err(|e| format!("admitting {digest}: {e}"))
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
    for (tag, m) in &material_tags {
        proxy.set_tag(&a.target, tag, m).await.map_err(|e| e.to_string())?;
    }
    proxy
        .set_tag(&a.target, &a.name.tag, &image)
        .await
        .map_err(|e| e.to_string())?;
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
) -> Result<(), String> {
    let imports = Imports::open(&proxy.config().data_dir);
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
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Copy blobs from staging into the store, hashed again on the way (the
/// store commits only with the proof), and pin them: content that cannot
/// be fetched again is never evicted. Returns (count, bytes).
fn store_blobs(store: &Store, layout: &Layout, blobs: &[Descriptor], reason: &str) -> Result<(usize, u64), String> {
    use std::io::Read as _;
    let mut done = BTreeSet::new();
    let mut bytes = 0;
    for d in blobs {
        if !done.insert(d.digest.clone()) {
            continue;
        }
        let present = store.blobs.open(&d.digest).map_err(|e| e.to_string())?.is_some();
        if !present {
            let Some((mut file, len)) = layout.open_blob(&d.digest).map_err(|e| e.to_string())? else {
                return Err(format!("blob {} vanished from staging", d.digest));
            };
            let mut writer = store.blobs.writer(&d.digest).map_err(|e| e.to_string())?;
            let mut verifier = BlobVerifier::new(d.digest.clone(), Some(d.size));
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                verifier
                    .update(&buf[..n])
                    .map_err(|e| format!("blob {}: {e}", d.digest))?;
                writer.write(&buf[..n]).map_err(|e| e.to_string())?;
            }
            let proof = verifier.finish().map_err(|e| format!("blob {}: {e}", d.digest))?;
            let added = writer.commit(proof).map_err(|e| e.to_string())?;
            store.record_commit(&d.digest, len, added).map_err(|e| e.to_string())?;
            bytes += len;
        }
        store.usage.pin(&d.digest, reason).map_err(|e| e.to_string())?;
    }
    Ok((done.len(), bytes))
}
