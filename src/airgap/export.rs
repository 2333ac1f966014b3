//! `portcullis export`: resolve each reference once, admit it (and its
//! children and verification material) through the proxy's gate, and
//! write one OCI image layout archive: `oci-layout`, `index.json`, the
//! export record, then each image's manifests and blobs.
//!
//! Blobs stream from the proxy (its store, else the upstream, verified as
//! for any client) through a bounded channel into a writer thread that
//! owns the tar (and zstd) encoder: memory stays flat whatever the size.
//! The archive is written under a temporary name and renamed when
//! complete, so a failed export leaves no archive behind.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::archive::{Item, write_tar};
use super::record::{self, ExportedImage};
use super::{IMAGE_NAME, ImageName, RECORD_BUNDLE_PATH, RECORD_PATH, REF_NAME};
use crate::oci::manifest::DEFAULT_ACCEPT;
use crate::oci::{Descriptor, Digest, Reference, Tag};
use crate::promote::record::{PromoterKey, RecordError};
use crate::proxy::{self, Admitted, Proxy, Target};
use crate::telemetry::Requester;

/// Chunks of one blob queued for the writer thread.
const CHUNK_QUEUE: usize = 16;

/// One image to export: where it is and the name it travels under.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    pub name: ImageName,
}

/// Which platforms of an index travel with it (the index itself always does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    All,
    /// `os/arch`
    Only {
        os: String,
        architecture: String,
    },
}

/// How to write the archive.
#[derive(Debug)]
pub struct Options {
    pub platforms: Platforms,
    pub zstd: bool,
    pub sign_key: Option<Arc<PromoterKey>>,
    /// Print a progress line (on a terminal only).
    pub progress: bool,
}

/// What was exported.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exported {
    pub images: Vec<ExportedImage>,
    pub blobs: usize,
    pub bytes: u64,
    pub signed: bool,
    pub warnings: Vec<String>,
}

/// Why an export did not complete (no archive was written).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{image}: denied by policy: {message}")]
    Denied { image: String, message: String },
    #[error("{image}: {source}")]
    Failed { image: String, source: proxy::Error },
    #[error("writing the archive: {0}")]
    Write(#[from] std::io::Error),
    #[error("export record: {0}")]
    Record(#[from] RecordError),
}

impl ExportError {
    /// 1: the policy denied an image; 2: anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExportError::Denied { .. } => 1,
            _ => 2,
        }
    }

    fn at(image: &ImageName, e: proxy::Error) -> ExportError {
        match e {
            proxy::Error::Denied { message } => ExportError::Denied {
                image: image.to_string(),
                message,
            },
            source => ExportError::Failed {
                image: image.to_string(),
                source,
            },
        }
    }
}

fn requester() -> Requester {
    Requester {
        client: "portcullis export".to_owned(),
        identity: "-".to_owned(),
    }
}

/// One image as admitted: itself, its children, its material.
struct Planned {
    request: Request,
    image: Admitted,
    children: Vec<Admitted>,
    /// Material manifests, with the tag each was found under (referrers: none).
    material: Vec<(Option<Tag>, Admitted)>,
}

impl Planned {
    fn manifests(&self) -> impl Iterator<Item = &Admitted> {
        std::iter::once(&self.image)
            .chain(self.children.iter())
            .chain(self.material.iter().map(|(_, m)| m))
    }

    fn record(&self) -> ExportedImage {
        ExportedImage {
            reference: self.request.name.to_string(),
            digest: self.image.digest().clone(),
            manifests: self.children.iter().map(|c| c.digest().clone()).collect(),
            material: self.material.iter().map(|(_, m)| m.digest().clone()).collect(),
        }
    }
}

/// Export `requests` into `out`.
pub async fn run(proxy: &Proxy, requests: &[Request], options: &Options, out: &Path) -> Result<Exported, ExportError> {
    let mut planned = Vec::new();
    let mut warnings = Vec::new();
    for r in requests {
        planned.push(plan(proxy, r, &options.platforms, &mut warnings).await?);
    }
    let blobs = blob_list(&planned);
    let bytes: u64 = blobs.iter().map(|(_, d)| d.size).sum();
    let images: Vec<ExportedImage> = planned.iter().map(Planned::record).collect();
    let revision = proxy.gate().policy().map(|p| p.revision.clone());
    let time = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string();
    let statement = serde_json::to_vec(&record::statement(
        &images,
        revision.as_deref(),
        blobs.len(),
        bytes,
        &time,
    ))
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let signature = match &options.sign_key {
        Some(key) => Some(record::sign(key, &statement)?),
        None => None,
    };
    write_archive(proxy, &planned, &blobs, options, out, statement, signature.clone()).await?;
    Ok(Exported {
        images,
        blobs: blobs.len(),
        bytes,
        signed: signature.is_some(),
        warnings,
    })
}

/// Resolve once and admit: the image, its children, its material.
async fn plan(
    proxy: &Proxy,
    request: &Request,
    platforms: &Platforms,
    warnings: &mut Vec<String>,
) -> Result<Planned, ExportError> {
    let name = &request.name;
    let target = &request.target;
    let accept = http::HeaderValue::from_static(DEFAULT_ACCEPT);
    let reference = Reference::Tag(name.tag.clone());
    let served = Box::pin(proxy.manifest(target, &reference, Some(&accept), &requester()))
        .await
        .map_err(|e| ExportError::at(name, e))?;
    let image = served.manifest;
    let mut children = Vec::new();
    if image.media_type().is_index() {
        for child in wanted_children(image.bytes(), platforms) {
            let c = Box::pin(proxy.manifest(target, &Reference::Digest(child), None, &requester()))
                .await
                .map_err(|e| ExportError::at(name, e))?;
            children.push(c.manifest);
        }
    }
    let mut material = Vec::new();
    let subjects: Vec<Digest> = std::iter::once(image.digest().clone())
        .chain(children.iter().map(|c| c.digest().clone()))
        .collect();
    for subject in subjects {
        material.extend(material_of(proxy, target, name, &subject, warnings).await?);
    }
    Ok(Planned {
        request: request.clone(),
        image,
        children,
        material,
    })
}

/// An index's children (its verified bytes), all or those of one platform.
fn wanted_children(index: &[u8], platforms: &Platforms) -> Vec<Digest> {
    let parsed: Value = serde_json::from_slice(index).unwrap_or(Value::Null);
    let entries = parsed
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    entries
        .iter()
        .filter(|m| match platforms {
            Platforms::All => true,
            Platforms::Only { os, architecture } => {
                let p = m.get("platform");
                p.and_then(|p| p.get("os")).and_then(Value::as_str) == Some(os.as_str())
                    && p.and_then(|p| p.get("architecture")).and_then(Value::as_str) == Some(architecture.as_str())
            }
        })
        .filter_map(|m| m.get("digest")?.as_str()?.parse().ok())
        .collect()
}

/// Every piece of verification material of `subject`, admitted as
/// material (its subject's decision). Material the gate will not admit is
/// left out with a warning: it would not be served on the far side either.
async fn material_of(
    proxy: &Proxy,
    target: &Target,
    name: &ImageName,
    subject: &Digest,
    warnings: &mut Vec<String>,
) -> Result<Vec<(Option<Tag>, Admitted)>, ExportError> {
    let refs = proxy
        .material_refs(target, subject)
        .await
        .map_err(|e| ExportError::at(name, e))?;
    let mut out = Vec::new();
    let by_tag = refs
        .tags
        .iter()
        .map(|(t, _)| (Some(t.clone()), Reference::Tag(t.clone())));
    let by_digest = refs.referrers.iter().map(|d| (None, Reference::Digest(d.clone())));
    for (tag, reference) in by_digest.chain(by_tag) {
        match Box::pin(proxy.manifest(target, &reference, None, &requester())).await {
            Ok(m) => out.push((tag, m.manifest)),
            Err(proxy::Error::Denied { message }) => {
                warnings.push(format!(
                    "{name}: material {reference} not admitted, left out: {message}"
                ));
            }
            Err(e) => return Err(ExportError::at(name, e)),
        }
    }
    Ok(out)
}

/// The blobs to write, once each, in image order: (where from, what).
fn blob_list(planned: &[Planned]) -> Vec<(usize, Descriptor)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        for m in p.manifests() {
            if m.media_type().is_index() {
                continue;
            }
            for d in &m.info().references {
                if seen.insert(d.digest.clone()) {
                    out.push((i, d.clone()));
                }
            }
        }
    }
    out
}

/// The `index.json` of the archive: each image under its tag and full
/// name, each material tag likewise, referrers unnamed.
fn index_json(planned: &[Planned]) -> std::io::Result<Vec<u8>> {
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    for p in planned {
        let name = &p.request.name;
        entries.push(descriptor(&p.image, Some(name)));
        seen.insert(p.image.digest().clone());
        for (tag, m) in &p.material {
            let named = tag.as_ref().map(|t| ImageName {
                host: name.host.clone(),
                repo: name.repo.clone(),
                tag: t.clone(),
            });
            if seen.insert(m.digest().clone()) || named.is_some() {
                entries.push(descriptor(m, named.as_ref()));
            }
        }
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::manifest::OCI_INDEX,
        "manifests": entries,
    });
    serde_json::to_vec_pretty(&index).map_err(std::io::Error::other)
}

fn descriptor(m: &Admitted, name: Option<&ImageName>) -> Value {
    let mut d = json!({
        "mediaType": m.media_type().as_str(),
        "digest": m.digest().to_string(),
        "size": m.bytes().len(),
    });
    if let Some(n) = name {
        d["annotations"] = json!({ REF_NAME: n.tag.as_str(), IMAGE_NAME: n.to_string() });
    }
    d
}

async fn write_archive(
    proxy: &Proxy,
    planned: &[Planned],
    blobs: &[(usize, Descriptor)],
    options: &Options,
    out: &Path,
    statement: Vec<u8>,
    signature: Option<Vec<u8>>,
) -> Result<(), ExportError> {
    let partial = partial_path(out);
    let (tx, rx) = mpsc::channel::<Item>(1);
    let writer = {
        let (partial, zstd) = (partial.clone(), options.zstd);
        tokio::task::spawn_blocking(move || write_tar(&partial, zstd, rx))
    };
    let fed = feed(proxy, planned, blobs, options, &tx, statement, signature).await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| std::io::Error::other(format!("writer thread: {e}")))?;
    let result = fed.and(written.map_err(ExportError::from));
    match result {
        Ok(()) => {
            std::fs::rename(&partial, out)?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// Send the archive's entries in order: layout, index, record, then each
/// image's manifests and blobs (so a truncated archive still holds whole
/// images before the cut).
async fn feed(
    proxy: &Proxy,
    planned: &[Planned],
    blobs: &[(usize, Descriptor)],
    options: &Options,
    tx: &mpsc::Sender<Item>,
    statement: Vec<u8>,
    signature: Option<Vec<u8>>,
) -> Result<(), ExportError> {
    let closed = || ExportError::Write(std::io::Error::other("the archive writer stopped"));
    let file = |path: &str, bytes: Vec<u8>| Item::File {
        path: path.to_owned(),
        bytes: bytes.into(),
    };
    tx.send(file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()))
        .await
        .map_err(|_| closed())?;
    tx.send(file("index.json", index_json(planned)?))
        .await
        .map_err(|_| closed())?;
    tx.send(file(RECORD_PATH, statement)).await.map_err(|_| closed())?;
    if let Some(sig) = signature {
        tx.send(file(RECORD_BUNDLE_PATH, sig)).await.map_err(|_| closed())?;
    }
    let mut progress = Progress::new(options.progress);
    let mut written = BTreeSet::new();
    for (i, p) in planned.iter().enumerate() {
        progress.start(&p.request.name.to_string());
        for m in p.manifests() {
            if written.insert(m.digest().clone()) {
                tx.send(file(&blob_entry(m.digest()), m.bytes().to_vec()))
                    .await
                    .map_err(|_| closed())?;
                progress.item(m.bytes().len() as u64);
            }
        }
        for (_, d) in blobs.iter().filter(|(owner, _)| *owner == i) {
            stream_blob(proxy, &p.request, d, tx, &mut progress).await?;
        }
        progress.done();
    }
    Ok(())
}

fn blob_entry(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// One blob from the proxy (store or upstream, verified on the way) to the
/// writer thread, chunk by chunk.
async fn stream_blob(
    proxy: &Proxy,
    request: &Request,
    d: &Descriptor,
    tx: &mpsc::Sender<Item>,
    progress: &mut Progress,
) -> Result<(), ExportError> {
    let served = proxy
        .blob(&request.target, &d.digest, None, false)
        .await
        .map_err(|e| ExportError::at(&request.name, e))?;
    let Some(mut body) = served.body else {
        return Err(ExportError::Failed {
            image: request.name.to_string(),
            source: proxy::Error::Internal(format!("blob {} came without a body", d.digest)),
        });
    };
    let (chunk_tx, chunks) = mpsc::channel(CHUNK_QUEUE);
    tx.send(Item::Stream {
        path: blob_entry(&d.digest),
        size: served.size,
        chunks,
    })
    .await
    .map_err(|_| ExportError::Write(std::io::Error::other("the archive writer stopped")))?;
    loop {
        let next = match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue,
            },
            Some(Err(e)) => Err(format!("blob {}: {e}", d.digest)),
        };
        let failed = next.is_err();
        if let Ok(data) = &next {
            progress.bytes(data.len() as u64);
        }
        if chunk_tx.send(next).await.is_err() || failed {
            break;
        }
    }
    progress.item(0);
    Ok(())
}

/// A per-image progress line on a terminal (stderr), quiet otherwise.
struct Progress {
    on: bool,
    image: String,
    items: u64,
    bytes: u64,
    last: std::time::Instant,
}

impl Progress {
    fn new(wanted: bool) -> Progress {
        Progress {
            on: wanted && std::io::stderr().is_terminal(),
            image: String::new(),
            items: 0,
            bytes: 0,
            last: std::time::Instant::now(),
        }
    }

    fn start(&mut self, image: &str) {
        self.image = image.to_owned();
        self.items = 0;
        self.bytes = 0;
        self.show(true);
    }

    fn item(&mut self, bytes: u64) {
        self.items += 1;
        self.bytes += bytes;
        self.show(false);
    }

    fn bytes(&mut self, n: u64) {
        self.bytes += n;
        self.show(false);
    }

    fn done(&mut self) {
        self.show(true);
        if self.on {
            eprintln!();
        }
    }

    fn show(&mut self, now: bool) {
        if !self.on || (!now && self.last.elapsed() < std::time::Duration::from_millis(200)) {
            return;
        }
        self.last = std::time::Instant::now();
        eprint!(
            "\r{}: {} items, {}   ",
            self.image,
            self.items,
            bytesize::ByteSize(self.bytes).display().iec()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_chosen_by_platform() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = json!({
            "schemaVersion": 2,
            "manifests": [
                { "digest": d('a'), "platform": { "os": "linux", "architecture": "amd64" } },
                { "digest": d('b'), "platform": { "os": "linux", "architecture": "arm64" } },
                { "digest": d('c') },
            ]
        });
        let bytes = serde_json::to_vec(&index).expect("json");
        assert_eq!(wanted_children(&bytes, &Platforms::All).len(), 3);
        let arm = Platforms::Only {
            os: "linux".into(),
            architecture: "arm64".into(),
        };
        let chosen: Vec<String> = wanted_children(&bytes, &arm).iter().map(ToString::to_string).collect();
        assert_eq!(chosen, vec![d('b')]);
    }
}
