//! Reading an OCI image layout archive (tar, or tar.zst): every blob is
//! hashed while it is read and kept in a staging directory only if it
//! matches its name; the staged layout is then a read-only
//! [`LocalSource`] (tags from `index.json`, referrers from the manifests'
//! `subject`), so the proxy's own gate admits from it.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{IMAGE_NAME, ImageName, RECORD_BUNDLE_PATH, RECORD_PATH, REF_NAME};
use crate::oci::manifest::{MAX_MANIFEST_BYTES, ManifestInfo, OCI_INDEX};
use crate::oci::{Descriptor, Digest, RegistryHost, RepoName, Tag};
use crate::upstream::local::{LocalBlob, LocalManifest, LocalSource};
use crate::verify::BlobVerifier;

/// The zstd frame magic number (RFC 8878 §3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Largest `index.json`, `oci-layout` or export record accepted.
const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Why an archive could not be staged at all.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read the archive {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("staging directory {path}: {source}")]
    Staging { path: PathBuf, source: std::io::Error },
    #[error("the archive has no index.json (not an OCI image layout{})", .0.as_deref().map(|b| format!("; {b}")).unwrap_or_default())]
    NoIndex(Option<String>),
    #[error("index.json: {0}")]
    BadIndex(String),
    #[error("oci-layout: {0}")]
    BadLayoutFile(String),
}

/// An archive read into a staging directory (removed when dropped).
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    pub index: Option<Bytes>,
    /// The `oci-layout` file's bytes.
    pub layout_file: Option<Bytes>,
    pub record: Option<Bytes>,
    pub bundle: Option<Bytes>,
    /// Blobs whose bytes did not match their name, and why (not staged).
    pub corrupt: BTreeMap<Digest, String>,
    /// Set when the archive could not be read to its end (truncated,
    /// damaged): what was staged before stays usable.
    pub broken: Option<String>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the import's staging directory");
        }
    }
}

impl Staged {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.dir, digest)
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join(digest.algorithm().as_str()).join(digest.hex())
}

/// Read `archive` into `dir` (created; must not exist), verifying each blob
/// against its name as it streams.
pub fn stage(archive: &Path, dir: PathBuf) -> Result<Staged, LayoutError> {
    let open_err = |source| LayoutError::Open {
        path: archive.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(archive).map_err(open_err)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(open_err)?;
    file.rewind().map_err(open_err)?;
    let reader: Box<dyn Read> = if n == 4 && magic == ZSTD_MAGIC {
        Box::new(zstd::Decoder::new(file).map_err(open_err)?)
    } else {
        Box::new(file)
    };
    std::fs::create_dir_all(&dir).map_err(|source| LayoutError::Staging {
        path: dir.clone(),
        source,
    })?;
    let mut staged = Staged {
        dir,
        index: None,
        layout_file: None,
        record: None,
        bundle: None,
        corrupt: BTreeMap::new(),
        broken: None,
    };
    let mut tar = tar::Archive::new(reader);
    let entries = match tar.entries() {
        Ok(entries) => entries,
        Err(e) => {
            staged.broken = Some(format!("not a tar archive: {e}"));
            return Ok(staged);
        }
    };
    for entry in entries {
        let result = entry.and_then(|mut e| stage_entry(&mut staged, &mut e));
        if let Err(e) = result {
            staged.broken = Some(format!("the archive could not be read to its end: {e}"));
            break;
        }
        if staged.broken.is_some() {
            break;
        }
    }
    Ok(staged)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One tar entry: a blob (hashed into staging), a known document, or
/// something else (ignored).
fn stage_entry(staged: &mut Staged, entry: &mut tar::Entry<'_, Box<dyn Read>>) -> std::io::Result<()> {
    if !entry.header().entry_type().is_file() {
        return Ok(());
    }
    let path = entry.path()?.to_string_lossy().into_owned();
    let path = path.trim_start_matches("./");
    let size = entry.header().size()?;
    match path {
        "index.json" => staged.index = Some(read_document(entry, size)?),
        "oci-layout" => staged.layout_file = Some(read_document(entry, size)?),
        RECORD_PATH => staged.record = Some(read_document(entry, size)?),
        RECORD_BUNDLE_PATH => staged.bundle = Some(read_document(entry, size)?),
        _ => {
            if let Some(digest) = blob_name(path) {
                stage_blob(staged, entry, &digest, size)?;
            }
        }
    }
    Ok(())
}

fn read_document(entry: &mut impl Read, size: u64) -> std::io::Result<Bytes> {
    if size > MAX_DOCUMENT_BYTES {
        return Err(std::io::Error::other(format!("a document of {size} bytes")));
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.take(size).read_to_end(&mut buf)?;
    Ok(buf.into())
}

/// `blobs/<alg>/<hex>` → the digest it names.
fn blob_name(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

/// Hash a blob while copying it to a temp file; keep it only if it matches.
fn stage_blob(staged: &mut Staged, entry: &mut impl Read, digest: &Digest, size: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let final_path = staged.blob_path(digest);
    let dir = final_path.parent().unwrap_or(&staged.dir).to_owned();
    std::fs::create_dir_all(&dir)?;
    let part = dir.join(format!("{}.part", digest.hex()));
    let mut out = std::fs::File::create(&part)?;
    let mut verifier = BlobVerifier::new(digest.clone(), Some(size));
    let mut buf = vec![0u8; 256 * 1024];
    let mut mismatch = None;
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if mismatch.is_none()
            && let Err(e) = verifier.update(&buf[..n])
        {
            mismatch = Some(e.to_string());
        }
        if mismatch.is_none() {
            out.write_all(&buf[..n])?;
        }
    }
    if verifier.seen() < size && mismatch.is_none() {
        let _ = std::fs::remove_file(&part);
        staged.broken = Some(format!("the archive ends inside blob {digest} (truncated?)"));
        return Ok(());
    }
    let outcome = match mismatch {
        Some(m) => Err(m),
        None => verifier.finish().map(|_| ()).map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(()) => {
            out.sync_all()?;
            std::fs::rename(&part, &final_path)?;
        }
        Err(why) => {
            let _ = std::fs::remove_file(&part);
            tracing::warn!(%digest, %why, "archive blob does not match its digest; not staged");
            staged.corrupt.insert(digest.clone(), why);
        }
    }
    Ok(())
}

/// One top-level entry of `index.json`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub descriptor: Descriptor,
    /// The name it is served under; `None` for unnamed content (referrers).
    pub name: Option<ImageName>,
    /// Why it has no usable name, if it has one that cannot be used.
    pub problem: Option<String>,
}

/// A staged layout as a content source.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    names: HashMap<(RegistryHost, RepoName, Tag), Digest>,
    media_types: HashMap<Digest, String>,
    referrers: HashMap<Digest, Vec<Value>>,
    pub entries: Vec<Entry>,
}

impl Layout {
    /// The layout of `staged`; entries named by a bare tag (as `skopeo copy
    /// … oci-archive:FILE:TAG` writes) take the repository `default`.
    pub fn open(staged: &Staged, default: Option<&(RegistryHost, RepoName)>) -> Result<Layout, LayoutError> {
        let Some(index) = &staged.index else {
            return Err(LayoutError::NoIndex(staged.broken.clone()));
        };
        if let Some(file) = &staged.layout_file {
            check_layout_version(file)?;
        }
        let info = ManifestInfo::parse(index, Some(OCI_INDEX)).map_err(|e| LayoutError::BadIndex(e.to_string()))?;
        let mut layout = Layout {
            dir: staged.dir.clone(),
            names: HashMap::new(),
            media_types: HashMap::new(),
            referrers: HashMap::new(),
            entries: Vec::new(),
        };
        for d in info.references {
            let (name, problem) = entry_name(&d, default);
            if let Some(n) = &name {
                layout
                    .names
                    .insert((n.host.clone(), n.repo.clone(), n.tag.clone()), d.digest.clone());
            }
            layout.media_types.insert(d.digest.clone(), d.media_type.clone());
            layout.entries.push(Entry {
                descriptor: d,
                name,
                problem,
            });
        }
        layout.scan_manifests();
        Ok(layout)
    }

    /// Read every staged blob small enough to be a manifest: note the media
    /// types of index children, and list referrers by their `subject`.
    fn scan_manifests(&mut self) {
        for path in walk_files(&self.dir.join("blobs")) {
            let Some(digest) = path
                .strip_prefix(self.dir.join("blobs"))
                .ok()
                .and_then(|p| blob_name(&format!("blobs/{}", p.to_string_lossy())))
            else {
                continue;
            };
            let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_MANIFEST_BYTES as u64);
            let Some(bytes) = small.then(|| std::fs::read(&path).ok()).flatten() else {
                continue;
            };
            let hint = self.media_types.get(&digest).cloned();
            let Ok(info) = ManifestInfo::parse(&bytes, hint.as_deref()) else {
                continue;
            };
            if info.media_type.is_index() {
                for child in &info.references {
                    self.media_types
                        .entry(child.digest.clone())
                        .or_insert_with(|| child.media_type.clone());
                }
            }
            if let Some(subject) = &info.subject {
                let annotations = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("annotations").cloned());
                let artifact_type = info
                    .artifact_type
                    .clone()
                    .or_else(|| info.config.as_ref().map(|c| c.media_type.clone()));
                let mut d = json!({
                    "mediaType": info.media_type.as_str(),
                    "digest": digest.to_string(),
                    "size": bytes.len(),
                });
                if let Some(t) = artifact_type {
                    d["artifactType"] = json!(t);
                }
                if let Some(a) = annotations {
                    d["annotations"] = a;
                }
                self.referrers.entry(subject.digest.clone()).or_default().push(d);
            }
        }
        for list in self.referrers.values_mut() {
            list.sort_by_key(|d| d.get("digest").and_then(Value::as_str).unwrap_or_default().to_owned());
        }
    }

    /// Whether the blob was staged (present and matching its digest).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        blob_path(&self.dir, digest).is_file()
    }

    /// The staged file of a blob.
    pub fn open_blob(&self, digest: &Digest) -> std::io::Result<Option<(std::fs::File, u64)>> {
        match std::fs::File::open(blob_path(&self.dir, digest)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The referrers of `subject` the archive carries, as an OCI image
    /// index, or `None` if it carries none.
    pub fn referrers_listing(&self, subject: &Digest) -> Option<Vec<u8>> {
        let list = self.referrers.get(subject).filter(|l| !l.is_empty())?;
        serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list })).ok()
    }

    /// Hosts the named entries belong to.
    pub fn hosts(&self) -> Vec<RegistryHost> {
        let mut hosts: Vec<_> = self.names.keys().map(|(h, _, _)| h.clone()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// `oci-layout` must name the one image layout version there is (1.0.0):
/// another version may lay out blobs differently.
fn check_layout_version(file: &[u8]) -> Result<(), LayoutError> {
    let v: Value = serde_json::from_slice(file).map_err(|e| LayoutError::BadLayoutFile(e.to_string()))?;
    match v.get("imageLayoutVersion").and_then(Value::as_str) {
        Some("1.0.0") => Ok(()),
        Some(other) => Err(LayoutError::BadLayoutFile(format!(
            "imageLayoutVersion {other} is not supported (1.0.0 is)"
        ))),
        None => Err(LayoutError::BadLayoutFile("no imageLayoutVersion".into())),
    }
}

/// The name of an index entry: `io.containerd.image.name` (a full
/// reference), else `org.opencontainers.image.ref.name` as a full
/// reference, else as a tag of `default`.
fn entry_name(d: &Descriptor, default: Option<&(RegistryHost, RepoName)>) -> (Option<ImageName>, Option<String>) {
    if let Some(full) = d.annotations.get(IMAGE_NAME) {
        return match full.parse() {
            Ok(n) => (Some(n), None),
            Err(e) => (None, Some(format!("{IMAGE_NAME}: {e}"))),
        };
    }
    let Some(name) = d.annotations.get(REF_NAME) else {
        return (None, None);
    };
    if let Ok(n) = name.parse::<ImageName>() {
        return (Some(n), None);
    }
    match (name.parse::<Tag>(), default) {
        (Ok(tag), Some((host, repo))) => (
            Some(ImageName {
                host: host.clone(),
                repo: repo.clone(),
                tag,
            }),
            None,
        ),
        (Ok(_), None) => (
            None,
            Some(format!(
                "`{name}` names a tag but no repository: give --repository REGISTRY/REPOSITORY"
            )),
        ),
        (Err(_), _) => (
            None,
            Some(format!("{REF_NAME} `{name}` is neither a tag nor a full reference")),
        ),
    }
}

/// Every regular file under `dir` (staged blobs; `.part` files excluded).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() && p.extension().is_none() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

/// The staged layout as the content of one registry host.
#[derive(Debug)]
pub struct LayoutSource {
    host: RegistryHost,
    layout: Arc<Layout>,
}

impl LayoutSource {
    pub fn new(host: RegistryHost, layout: Arc<Layout>) -> LayoutSource {
        LayoutSource { host, layout }
    }
}

impl LocalSource for LayoutSource {
    fn resolve(&self, repo: &RepoName, tag: &Tag) -> std::io::Result<Option<Digest>> {
        Ok(self
            .layout
            .names
            .get(&(self.host.clone(), repo.clone(), tag.clone()))
            .cloned())
    }

    fn manifest(&self, _repo: &RepoName, digest: &Digest) -> std::io::Result<Option<LocalManifest>> {
        let Some((mut file, len)) = self.layout.open_blob(digest)? else {
            return Ok(None);
        };
        if len > MAX_MANIFEST_BYTES as u64 {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut bytes)?;
        Ok(Some(LocalManifest {
            bytes: bytes.into(),
            media_type: self.layout.media_types.get(digest).cloned(),
        }))
    }

    fn blob(&self, _repo: &RepoName, digest: &Digest) -> std::io::Result<Option<(LocalBlob, u64)>> {
        let opened = self.layout.open_blob(digest)?;
        Ok(opened.map(|(file, len)| (Arc::new(file) as LocalBlob, len)))
    }

    /// The layout holds every referrer it carries: the listing is complete
    /// (never a fallback to the tag schema).
    fn referrers(&self, _repo: &RepoName, subject: &Digest) -> std::io::Result<Option<Bytes>> {
        let list = self.layout.referrers.get(subject).cloned().unwrap_or_default();
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list });
        serde_json::to_vec(&index)
            .map(|b| Some(b.into()))
            .map_err(std::io::Error::other)
    }

    fn tags(&self, repo: &RepoName) -> std::io::Result<Vec<Tag>> {
        Ok(self
            .layout
            .names
            .keys()
            .filter(|(h, r, _)| h == &self.host && r == repo)
            .map(|(_, _, t)| t.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *bytes).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn entry_name(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    #[test]
    fn blobs_are_staged_only_when_they_match_their_name() {
        let good = b"good blob".as_slice();
        let good_d = Digest::of(Algorithm::Sha256, good);
        let bad_d = Digest::of(Algorithm::Sha256, b"what the name says");
        let archive = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
            (&entry_name(&good_d), good),
            (&entry_name(&bad_d), b"something else"),
            ("blobs/sha256/not-a-digest", b"ignored"),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.tar");
        std::fs::write(&file, &archive).expect("write");
        let staged = stage(&file, dir.path().join("stage")).expect("stage");
        assert!(staged.broken.is_none(), "{:?}", staged.broken);
        assert!(staged.blob_path(&good_d).is_file());
        assert!(!staged.blob_path(&bad_d).exists());
        assert!(staged.corrupt.get(&bad_d).is_some_and(|why| why.contains("mismatch")));
        let layout = Layout::open(&staged, None).expect("layout");
        assert!(layout.has_blob(&good_d) && !layout.has_blob(&bad_d));
        let stage_dir = staged.dir.clone();
        drop(staged);
        assert!(!stage_dir.exists(), "staging is removed with the import");
    }

    #[test]
    fn a_truncated_or_zstd_archive_is_read_as_far_as_it_goes() {
        let blob = vec![7u8; 64 * 1024];
        let d = Digest::of(Algorithm::Sha256, &blob);
        let small = b"small".as_slice();
        let small_d = Digest::of(Algorithm::Sha256, small);
        let archive = tar_of(&[
            ("index.json", br#"{"schemaVersion":2,"manifests":[]}"#),
            (&entry_name(&small_d), small),
            (&entry_name(&d), &blob),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cut = dir.path().join("cut.tar");
        std::fs::write(&cut, &archive[..archive.len() - 40 * 1024]).expect("write");
        let staged = stage(&cut, dir.path().join("s1")).expect("stage");
        assert!(
            staged.broken.as_deref().is_some_and(|b| b.contains("truncated")),
            "{:?}",
            staged.broken
        );
        assert!(staged.blob_path(&small_d).is_file(), "what came before the cut stays");
        assert!(!staged.blob_path(&d).exists());
        assert!(staged.corrupt.is_empty(), "a cut blob is missing, not corrupt");

        let zst = dir.path().join("a.tar.zst");
        std::fs::write(&zst, zstd::encode_all(&archive[..], 3).expect("zstd")).expect("write");
        let staged = stage(&zst, dir.path().join("s2")).expect("stage");
        assert!(staged.broken.is_none(), "{:?}", staged.broken);
        assert!(staged.blob_path(&d).is_file() && staged.index.is_some());
    }

    #[test]
    fn entries_are_named_by_full_reference_or_by_tag_in_a_given_repository() {
        let d = Digest::of(Algorithm::Sha256, b"m");
        let descriptor = |annotations: &[(&str, &str)]| Descriptor {
            media_type: OCI_INDEX.into(),
            digest: d.clone(),
            size: 1,
            artifact_type: None,
            urls: Vec::new(),
            annotations: annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        };
        let full = entry_name_of(&descriptor(&[(IMAGE_NAME, "r.io/apps/web:v1"), (REF_NAME, "v1")]), None);
        assert_eq!(full.0.map(|n| n.to_string()).as_deref(), Some("r.io/apps/web:v1"));
        let default = ("r.io".parse().expect("host"), "vendor/x".parse().expect("repo"));
        let tagged = entry_name_of(&descriptor(&[(REF_NAME, "v2")]), Some(&default));
        assert_eq!(tagged.0.map(|n| n.to_string()).as_deref(), Some("r.io/vendor/x:v2"));
        let orphan = entry_name_of(&descriptor(&[(REF_NAME, "v2")]), None);
        assert!(orphan.0.is_none() && orphan.1.is_some_and(|p| p.contains("--repository")));
        assert_eq!(entry_name_of(&descriptor(&[]), None), (None, None));
    }

    use super::entry_name as entry_name_of;

    #[test]
    fn only_layout_version_1_0_0_is_read() {
        assert!(check_layout_version(br#"{"imageLayoutVersion":"1.0.0"}"#).is_ok());
        for bad in [&br#"{"imageLayoutVersion":"2.0.0"}"#[..], br#"{}"#, b"not json"] {
            assert!(check_layout_version(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
