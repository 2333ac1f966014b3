//! In-memory images: random layers, configs, OCI and Docker manifests,
//! indexes and manifest lists, with their exact bytes and digests.

use bytes::Bytes;
use portcullis::oci::{Algorithm, Digest};
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Content with its digest and media type.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Bytes,
    pub digest: Digest,
}

impl Blob {
    pub fn new(media_type: &str, bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        Blob {
            media_type: media_type.to_owned(),
            digest: Digest::of(Algorithm::Sha256, &bytes),
            bytes,
        }
    }

    pub fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.bytes.len() })
    }
}

/// `len` pseudo-random bytes from `seed` (deterministic, incompressible).
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v.into()
}

/// An image: manifest + config + layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// Config and layers: everything a pull fetches as blobs.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(self.layers.iter()).collect()
    }
}

fn image(
    manifest_type: &str,
    config_type: &str,
    layer_type: &str,
    layer_sizes: &[usize],
    seed: u64,
    arch: &str,
) -> Image {
    let layers: Vec<Blob> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, len)| Blob::new(layer_type, random_bytes(*len, seed * 1000 + i as u64)))
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = json!({
        "architecture": arch, "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": { "Labels": { "seed": seed.to_string() } }
    });
    let config = Blob::new(config_type, serde_json::to_vec(&config).expect("json"));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(manifest_type, serde_json::to_vec(&manifest).expect("json"));
    Image {
        manifest,
        config,
        layers,
    }
}

pub fn oci_image(layer_sizes: &[usize], seed: u64) -> Image {
    image(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, layer_sizes, seed, "amd64")
}

pub fn oci_image_for(arch: &str, layer_sizes: &[usize], seed: u64) -> Image {
    image(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, layer_sizes, seed, arch)
}

pub fn docker_image(layer_sizes: &[usize], seed: u64) -> Image {
    image(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, layer_sizes, seed, "amd64")
}

pub fn docker_image_for(arch: &str, layer_sizes: &[usize], seed: u64) -> Image {
    image(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, layer_sizes, seed, arch)
}

fn list(media_type: &str, children: &[(&Image, &str)]) -> Blob {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|(img, arch)| {
            let mut d = img.manifest.descriptor();
            d["platform"] = json!({ "architecture": arch, "os": "linux" });
            d
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
    Blob::new(media_type, serde_json::to_vec(&index).expect("json"))
}

/// An OCI image index over `(image, architecture)` pairs.
pub fn oci_index(children: &[(&Image, &str)]) -> Blob {
    list(OCI_INDEX, children)
}

/// A Docker manifest list over `(image, architecture)` pairs.
pub fn docker_list(children: &[(&Image, &str)]) -> Blob {
    list(DOCKER_LIST, children)
}

/// An OCI artifact manifest whose `subject` is `subject` (a referrer).
pub fn referrer(subject: &Blob, artifact_type: &str, payload: &Blob) -> (Blob, Blob) {
    let empty = Blob::new("application/vnd.oci.empty.v1+json", &b"{}"[..]);
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [payload.descriptor()],
        "subject": subject.descriptor(),
    });
    (Blob::new(OCI_MANIFEST, serde_json::to_vec(&m).expect("json")), empty)
}

/// sha256 of a file's contents, read in 1 MiB pieces.
pub fn sha256_file(path: &std::path::Path) -> Digest {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = portcullis::oci::DigestHasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            return h.finish();
        }
        h.update(&buf[..n]);
    }
}

/// The sha256 digest a file is named by (`hex`), checked against its contents.
pub fn checked_file_digest(path: &std::path::Path, hex: &str) -> Digest {
    let named: Digest = format!("sha256:{hex}")
        .parse()
        .unwrap_or_else(|e| panic!("`{hex}` is not a sha256 hex name: {e}"));
    assert_eq!(sha256_file(path), named, "{} does not hash to its name", path.display());
    named
}

/// A `dir:` copy written by skopeo: `manifest.json` is the top-level
/// manifest; other files are blobs named by hex, or `<hex>.manifest.json`
/// for a list's instances. The top-level digest and every file's digest.
pub fn read_dir_copy(dir: &std::path::Path) -> (Digest, std::collections::BTreeSet<Digest>) {
    let top = sha256_file(&dir.join("manifest.json"));
    let mut all = std::collections::BTreeSet::from([top.clone()]);
    for entry in std::fs::read_dir(dir).expect("dir copy") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        if name == "manifest.json" || name == "version" {
            continue;
        }
        let hex = name.strip_suffix(".manifest.json").unwrap_or(&name);
        all.insert(checked_file_digest(&path, hex));
    }
    (top, all)
}

// ------------------------------------------------------------- runnable layers

/// An uncompressed ustar archive of regular files.
pub fn tar(files: &[(&str, &[u8])]) -> Bytes {
    fn octal(field: &mut [u8], v: u64) {
        let s = format!("{v:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_700_000_000);
        h[148..156].fill(b' ');
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out.into()
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The gzip-compressed OCI layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// CRC-32 (IEEE, as gzip uses it).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid gzip member holding `data` in stored (uncompressed) deflate
/// blocks: what any gzip reader (Go's, pigz) decompresses, with no
/// compression library needed.
pub fn gzip_stored(data: &[u8]) -> Bytes {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.into()
}

/// An OCI image containers can run on this machine: each entry of `layers`
/// is the files of one `tar+gzip` layer; the config names this machine's
/// architecture and the uncompressed tars' digests as `diff_ids`, so
/// containerd unpacks it.
pub fn runnable_image(layers: &[&[(&str, &[u8])]], seed: u64) -> Image {
    let tars: Vec<Bytes> = layers.iter().map(|files| tar(files)).collect();
    let diff_ids: Vec<String> = tars
        .iter()
        .map(|t| Digest::of(Algorithm::Sha256, t).to_string())
        .collect();
    let layers: Vec<Blob> = tars.iter().map(|t| Blob::new(OCI_LAYER_GZIP, gzip_stored(t))).collect();
    let config = json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": { "Cmd": ["/bin/true"], "Labels": { "seed": seed.to_string() } }
    });
    image_from(&config, layers)
}

/// An OCI image manifest over `config` (JSON, stored as an OCI config blob)
/// and `layers`, in that order.
pub fn image_from(config: &serde_json::Value, layers: Vec<Blob>) -> Image {
    let config = Blob::new(OCI_CONFIG, serde_json::to_vec(config).expect("json"));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).expect("json"));
    Image {
        manifest,
        config,
        layers,
    }
}
