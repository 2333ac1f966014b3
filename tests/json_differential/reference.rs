//! The differential behind `oci::json`: a reference reader with Go's
//! `encoding/json` semantics, written independently of `json::go_reading`,
//! a structure-aware document generator, and the properties both the test
//! (`tests/json_differential/main.rs`) and the fuzz targets
//! (`fuzz/src/lib.rs` includes this file) check:
//!
//! - on every document [`json::check`] accepts, the serde reading
//!   ([`json::exact_reading`]), `json::go_reading` and this module's Go
//!   reading ([`go_decode`]) are equal;
//! - when [`ManifestInfo::parse`] accepts an image document, what it reports
//!   (kind, media type, config, layers or children, subject, artifact type)
//!   is what a Go client reads from the same bytes;
//! - the same for cosign simple-signing payloads (`payload::simple_signing`)
//!   and in-toto statements (`payload::statement_for`: Go's subjects must
//!   name the image too).
//!
//! Go's rules modelled here (golang/go `src/encoding/json/decode.go`,
//! `fold.go`, `unicode/tables.go`):
//! - a member name selects the field with exactly that name, else the first
//!   field (declaration order) equal under simple case folding: ASCII case,
//!   plus U+017F (ſ) = `s` and U+212A (K) = `k`; U+0130 and U+0131 are
//!   self-orbits in `caseOrbit`, so `ı` does *not* match `i`;
//! - a repeated field decodes *into* the value already there: structs and
//!   slice elements merge, scalars are replaced (the last one wins);
//! - unknown members are skipped; objects of unknown structure decode into
//!   maps, where the last duplicate wins.

#![allow(dead_code)]

use portcullis::oci::json::{self, Node, Schema};
use portcullis::oci::{ManifestInfo, ManifestMediaType};
use serde_json::{Map, Value};

// ------------------------------------------------------------ Go reading

/// Go's `foldName` for one code point: the smallest member of its simple
/// case-folding orbit, compared here as a lower-case ASCII letter where the
/// orbit has one.
pub fn go_fold_char(c: char) -> char {
    match c {
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

pub fn go_names_match(key: &str, field: &str) -> bool {
    key.chars().map(go_fold_char).eq(field.chars().map(go_fold_char))
}

/// Decode `node` under `schema` as Go would, into `prev` (the value the
/// field already holds when a name repeats).
pub fn go_decode(node: &Node, schema: &Schema, prev: Option<Value>) -> Value {
    match (schema, node) {
        (Schema::Object(fields), Node::Object(members)) => {
            let mut out = match prev {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            for (key, value) in members {
                let field = fields
                    .iter()
                    .find(|f| f.name == key)
                    .or_else(|| fields.iter().find(|f| go_names_match(key, f.name)));
                if let Some(f) = field {
                    let old = out.remove(f.name);
                    out.insert(f.name.to_owned(), go_decode(value, f.schema, old));
                }
            }
            Value::Object(out)
        }
        (Schema::Array(inner), Node::Array(items)) => {
            let old = match prev {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| go_decode(item, inner, old.get(i).cloned()))
                    .collect(),
            )
        }
        (_, Node::Object(members)) => {
            let mut out = Map::new();
            for (key, value) in members {
                out.insert(key.clone(), go_decode(value, &Schema::Any, None));
            }
            Value::Object(out)
        }
        (_, Node::Array(items)) => Value::Array(items.iter().map(|i| go_decode(i, &Schema::Any, None)).collect()),
        (_, Node::Null) => Value::Null,
        (_, Node::Bool(b)) => Value::Bool(*b),
        (_, Node::Number(n)) => Value::Number(n.clone()),
        (_, Node::String(s)) => Value::String(s.clone()),
    }
}

/// Go's reading of `bytes` under `schema`, if they are JSON at all.
pub fn go_read(bytes: &[u8], schema: &Schema) -> Option<Value> {
    let node: Node = serde_json::from_slice(bytes).ok()?;
    Some(go_decode(&node, schema, None))
}

// ------------------------------------------------------------ properties

/// What one document showed; counted by the deterministic test to prove the
/// generator reaches every interesting case.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: bool,
    /// Go's reading differs from serde's (so `check` must have refused).
    pub readings_differ: bool,
    /// The typed parser accepted it (`ManifestInfo::parse` for at least one
    /// `Content-Type`, `simple_signing`, `statement_for`), and Go's reading
    /// agreed with what it returned.
    pub typed_accepted: bool,
}

/// The differential on one document: accepted ⇒ all three readings agree.
/// Panics (with the document) on a violation.
pub fn assert_one_reading(bytes: &[u8], schema: &Schema) -> Outcome {
    let Ok(node) = serde_json::from_slice::<Node>(bytes) else {
        assert!(json::check(bytes, schema).is_err(), "check accepted what is not JSON");
        return Outcome::default();
    };
    let exact = json::exact_reading(&node, schema);
    let go = go_decode(&node, schema, None);
    let readings_differ = exact != go;
    match json::check(bytes, schema) {
        Ok(checked) => {
            assert_eq!(checked, node, "check returned another tree");
            assert!(
                !readings_differ,
                "check accepted a document Go reads differently\n document: {}\n serde: {exact}\n go:    {go}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(
                json::go_reading(&node, schema),
                go,
                "json::go_reading and the reference disagree on an accepted document: {}",
                String::from_utf8_lossy(bytes)
            );
            Outcome {
                accepted: true,
                ..Outcome::default()
            }
        }
        Err(_) => Outcome {
            readings_differ,
            ..Outcome::default()
        },
    }
}

/// Content types a manifest is tried with.
pub const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/json"),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
];

/// `ManifestInfo::parse` accepted ⇒ a Go client reads the same manifest:
/// same kind and media type, same config, same layers or children (in
/// order, every descriptor field Portcullis keeps), same subject and
/// artifact type. Returns whether the parse succeeded.
pub fn assert_manifest_agrees(bytes: &[u8], content_type: Option<&str>) -> bool {
    let Ok(info) = ManifestInfo::parse(bytes, content_type) else {
        return false;
    };
    let doc = String::from_utf8_lossy(bytes);
    assert!(
        json::check(bytes, &json::IMAGE_DOCUMENT).is_ok(),
        "parse accepted what check refuses: {doc}"
    );
    let go = go_read(bytes, &json::IMAGE_DOCUMENT).expect("parsed, so JSON");
    let field = |name: &str| go.get(name).filter(|v| !v.is_null());
    // Kind and media type.
    assert_eq!(field("schemaVersion"), Some(&Value::from(2)), "schemaVersion: {doc}");
    match field("mediaType") {
        Some(Value::String(mt)) => assert_eq!(
            ManifestMediaType::parse(mt).ok(),
            Some(info.media_type),
            "Go reads mediaType {mt}, Portcullis {}: {doc}",
            info.media_type
        ),
        Some(other) => panic!("Go reads a non-string mediaType {other}, Portcullis accepted: {doc}"),
        None => assert_eq!(
            content_type.and_then(|ct| ManifestMediaType::parse(ct).ok()),
            Some(info.media_type),
            "no mediaType: the kind must come from Content-Type: {doc}"
        ),
    }
    let descriptors = |v: Option<&Value>| -> Vec<Value> {
        match v {
            Some(Value::Array(items)) => items.clone(),
            None => Vec::new(),
            Some(other) => panic!("Go reads a non-array list {other}: {doc}"),
        }
    };
    let mut go_refs = Vec::new();
    if info.media_type.is_index() {
        assert!(
            field("config").is_none() && field("layers").is_none(),
            "index with config/layers: {doc}"
        );
        go_refs.extend(descriptors(field("manifests")));
        assert!(info.config.is_none());
    } else {
        assert!(field("manifests").is_none(), "image manifest with manifests: {doc}");
        let config = field("config").unwrap_or_else(|| panic!("Go reads no config: {doc}"));
        assert_descriptor(
            config,
            info.config.as_ref().expect("image manifests have a config"),
            &doc,
        );
        go_refs.push(config.clone());
        go_refs.extend(descriptors(field("layers")));
        assert_eq!(info.layers().len(), go_refs.len() - 1, "layer count: {doc}");
    }
    assert_eq!(info.references.len(), go_refs.len(), "reference count: {doc}");
    for (go_d, ours) in go_refs.iter().zip(&info.references) {
        assert_descriptor(go_d, ours, &doc);
    }
    match (field("subject"), &info.subject) {
        (Some(g), Some(ours)) => assert_descriptor(g, ours, &doc),
        (None, None) => {}
        (g, ours) => panic!("subject: Go {g:?}, Portcullis {ours:?}: {doc}"),
    }
    assert_eq!(
        field("artifactType").and_then(Value::as_str),
        info.artifact_type.as_deref(),
        "artifactType: {doc}"
    );
    true
}

fn assert_descriptor(go: &Value, ours: &portcullis::oci::Descriptor, doc: &str) {
    let s = |name: &str| go.get(name).and_then(Value::as_str).unwrap_or("");
    assert_eq!(s("mediaType"), ours.media_type, "descriptor mediaType: {doc}");
    assert_eq!(s("digest"), ours.digest.to_string(), "descriptor digest: {doc}");
    assert_eq!(
        go.get("size").and_then(Value::as_u64),
        Some(ours.size),
        "descriptor size: {doc}"
    );
    assert_eq!(
        go.get("artifactType").and_then(Value::as_str),
        ours.artifact_type.as_deref(),
        "descriptor artifactType: {doc}"
    );
    let urls: Vec<&str> = match go.get("urls") {
        Some(Value::Array(u)) => u.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    assert_eq!(urls, ours.urls, "descriptor urls: {doc}");
    let annotations: Vec<(&str, &str)> = match go.get("annotations") {
        Some(Value::Object(m)) => m.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect(),
        _ => Vec::new(),
    };
    let ours_annotations: Vec<(&str, &str)> = ours.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(annotations, ours_annotations, "descriptor annotations: {doc}");
}

/// `payload::simple_signing` accepted ⇒ Go (cosign, containers/image) reads
/// the same identity, digest and type.
pub fn assert_simple_signing_agrees(bytes: &[u8]) -> bool {
    let Ok(ours) = portcullis::verify::signature::payload::simple_signing(bytes) else {
        return false;
    };
    let doc = String::from_utf8_lossy(bytes);
    let go = go_read(bytes, &json::SIMPLE_SIGNING).expect("accepted, so JSON");
    let at = |p: &str| go.pointer(p).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(
        at("/critical/identity/docker-reference").as_deref(),
        Some(ours.critical.identity.docker_reference.as_str()),
        "docker-reference: {doc}"
    );
    assert_eq!(
        at("/critical/image/docker-manifest-digest"),
        Some(ours.critical.image.docker_manifest_digest.to_string()),
        "docker-manifest-digest: {doc}"
    );
    assert_eq!(
        at("/critical/type").as_deref(),
        Some(ours.critical.kind.as_str()),
        "type: {doc}"
    );
    true
}

/// `payload::statement_for` accepted for `image` ⇒ Go (cosign, in-toto-golang)
/// reads a statement of the same type and predicate type whose subjects
/// name `image` too.
pub fn assert_statement_agrees(bytes: &[u8], image: &portcullis::oci::Digest) -> bool {
    let Ok((ours, _)) = portcullis::verify::signature::payload::statement_for(bytes, image) else {
        return false;
    };
    let doc = String::from_utf8_lossy(bytes);
    let go = go_read(bytes, &json::IN_TOTO_STATEMENT).expect("accepted, so JSON");
    assert_eq!(
        go.get("_type").and_then(Value::as_str),
        Some(ours.statement_type.as_str()),
        "_type: {doc}"
    );
    assert_eq!(
        go.get("predicateType").and_then(Value::as_str),
        Some(ours.predicate_type.as_str()),
        "predicateType: {doc}"
    );
    let hex = image.hex();
    let go_names_image = go
        .get("subject")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("digest")?.get(image.algorithm().as_str())?.as_str())
        .any(|v| v.eq_ignore_ascii_case(&hex));
    assert!(go_names_image, "Go reads subjects that do not name {image}: {doc}");
    true
}

// ------------------------------------------------------------ generator

/// A source of choices: a seeded PRNG in tests, the fuzzer's bytes in the
/// fuzz targets (so libFuzzer mutates documents structurally).
pub trait Choose {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize;

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

impl Choose for fastrand::Rng {
    fn below(&mut self, n: usize) -> usize {
        self.usize(..n)
    }
}

/// Choices read from fuzzer input; zeros once it runs out.
pub struct ByteChoices<'a> {
    data: &'a [u8],
}

impl<'a> ByteChoices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        ByteChoices { data }
    }
}

impl Choose for ByteChoices<'_> {
    fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let (&b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        usize::from(b) % n
    }
}

const DIGESTS: [&str; 4] = [
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00",
    "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "sha256:not-a-digest",
];

const MEDIA_TYPES: [&str; 14] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.empty.v1+json",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.in-toto+json",
    "application/octet-stream",
    "",
    "application/vnd.docker.distribution.manifest.v1+json",
];

const UNKNOWN_KEYS: [&str; 8] = [
    "x-vendor",
    "layersExtra",
    "laye\u{0155}s",
    "conf\u{0131}g",
    "d\u{0130}gest",
    "fsLayers",
    "\u{212A}ind",
    "",
];

/// A generated JSON value; serialised by hand so that repeated and
/// case-variant member names survive.
#[derive(Debug, Clone)]
pub enum Gen {
    Raw(String),
    Arr(Vec<Gen>),
    Obj(Vec<(String, Gen)>),
}

impl Gen {
    pub fn write(&self, out: &mut String) {
        match self {
            Gen::Raw(s) => out.push_str(s),
            Gen::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Gen::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

fn string(s: &str) -> Gen {
    Gen::Raw(Value::String(s.to_owned()).to_string())
}

/// A spelling of `name` that Go matches to it but serde does not.
pub fn case_variant(c: &mut impl Choose, name: &str) -> String {
    let variant: String = match c.below(5) {
        0 => name.to_ascii_uppercase(),
        1 => {
            let mut chars = name.chars();
            chars
                .next()
                .map(|f| f.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
        2 => name.replace('s', "\u{017F}").replace('k', "\u{212A}"),
        3 => name
            .replace('S', "\u{017F}")
            .replace('K', "\u{212A}")
            .to_ascii_uppercase(),
        _ => name
            .chars()
            .map(|ch| if c.chance(50) { ch.to_ascii_uppercase() } else { ch })
            .collect(),
    };
    if variant == name {
        // Nothing varied (no `s`/`k`, or the coin kept every letter).
        name.to_ascii_uppercase()
    } else {
        variant
    }
}

/// How noisy a generated document is.
#[derive(Clone, Copy)]
struct Noise {
    /// Percent chance, per object, of each kind of noise member.
    rate: usize,
}

/// Generate a document for `schema`: realistic values for known fields (so
/// that manifests parse), and, at the chosen noise level, case variants,
/// duplicates, near-miss and unknown members, at every depth.
pub fn document(c: &mut impl Choose, schema: &'static Schema) -> String {
    let noise = Noise {
        rate: c.pick(&[0, 0, 5, 15, 40]),
    };
    value(c, schema, "", 0, noise).to_json()
}

fn value(c: &mut impl Choose, schema: &'static Schema, name: &str, depth: usize, noise: Noise) -> Gen {
    match schema {
        Schema::Object(fields) => object(c, fields, name, depth, noise),
        Schema::Array(inner) => {
            let n = c.below(if depth > 3 { 2 } else { 4 });
            Gen::Arr((0..n).map(|_| value(c, inner, name, depth + 1, noise)).collect())
        }
        Schema::Any => scalar_for(c, name, depth, noise),
    }
}

fn object(c: &mut impl Choose, fields: &'static [json::Field], name: &str, depth: usize, noise: Noise) -> Gen {
    let top = name.is_empty();
    // At the top of an image document, decide the kind first so that most
    // clean documents are parseable manifests or indexes.
    let index = c.chance(35);
    let mut members: Vec<(String, Gen)> = Vec::new();
    for f in fields {
        let keep = match (top, f.name) {
            (true, "schemaVersion") => 95,
            (true, "mediaType") => 70,
            (true, "config") => {
                if index {
                    3
                } else {
                    95
                }
            }
            (true, "layers") => {
                if index {
                    3
                } else {
                    85
                }
            }
            (true, "manifests") => {
                if index {
                    95
                } else {
                    3
                }
            }
            (_, "mediaType" | "digest" | "size") => 98,
            (_, "critical" | "identity" | "image" | "type" | "docker-reference" | "docker-manifest-digest") => 95,
            (_, "_type" | "predicateType" | "payloadType" | "payload" | "signatures" | "sig") => 95,
            _ => 30,
        };
        if c.chance(keep) {
            // An in-toto subject (the object with a `uri`) holds a digest set.
            let in_toto = f.name == "digest" && fields.iter().any(|g| g.name == "uri");
            let v = value(
                c,
                f.schema,
                if in_toto { "digest-set" } else { f.name },
                depth + 1,
                noise,
            );
            members.push((f.name.to_owned(), v));
        }
    }
    if top && !index && members.iter().any(|(k, _)| k == "mediaType") && c.chance(80) {
        let mt = c.pick(&[MEDIA_TYPES[0], MEDIA_TYPES[2]]);
        set(&mut members, "mediaType", string(mt));
    } else if top && index && c.chance(80) {
        let mt = c.pick(&[MEDIA_TYPES[1], MEDIA_TYPES[3]]);
        set(&mut members, "mediaType", string(mt));
    }
    if noise.rate > 0 && !fields.is_empty() {
        // A case variant of a known field, with its own (usually different) value.
        if c.chance(noise.rate) {
            let f = &fields[c.below(fields.len())];
            let v = value(c, f.schema, f.name, depth + 1, noise);
            members.push((case_variant(c, f.name), v));
        }
        // A repeated member.
        if c.chance(noise.rate) && !members.is_empty() {
            let (k, _) = members[c.below(members.len())].clone();
            let f = fields.iter().find(|f| f.name == k);
            let v = match f {
                Some(f) => value(c, f.schema, f.name, depth + 1, noise),
                None => scalar_for(c, &k, depth + 1, noise),
            };
            members.push((k, v));
        }
        // An unknown member (some look like fields but fold to none).
        if c.chance(noise.rate) {
            let k = c.pick(&UNKNOWN_KEYS).to_string();
            let v = scalar_for(c, "", depth + 1, noise);
            members.push((k, v));
        }
    }
    // Shuffle, so that the variant comes before or after the original.
    for i in (1..members.len()).rev() {
        let j = c.below(i + 1);
        members.swap(i, j);
    }
    Gen::Obj(members)
}

fn set(members: &mut [(String, Gen)], key: &str, v: Gen) {
    if let Some(m) = members.iter_mut().find(|(k, _)| k == key) {
        m.1 = v;
    }
}

/// A value for a member of unknown structure (`Schema::Any`), shaped by
/// the field it is for.
fn scalar_for(c: &mut impl Choose, name: &str, depth: usize, noise: Noise) -> Gen {
    let fitting = match name {
        "schemaVersion" => Gen::Raw(c.pick(&["2", "2", "2", "2", "2", "2", "1", "3", "\"2\""]).to_string()),
        "mediaType" | "artifactType" | "payloadType" => string(c.pick(&MEDIA_TYPES)),
        // In-toto subjects hold a digest set, descriptors a digest string.
        "digest-set" => Gen::Obj(vec![("sha256".into(), string(&DIGESTS[c.below(2)][7..]))]),
        "digest" | "docker-manifest-digest" => string(DIGESTS[c.pick(&[0, 1, 2, 0, 1, 2, 0, 1, 0, 3])]),
        "size" => Gen::Raw(
            c.pick(&[
                "0",
                "2",
                "100",
                "2",
                "100",
                "7",
                "18446744073709551615",
                "1234",
                "-1",
                "1.5",
            ])
            .to_string(),
        ),
        "annotations" | "optional" => {
            let n = c.below(3);
            let mut members: Vec<(String, Gen)> = (0..n)
                .map(|i| (format!("org.example.{i}"), string(c.pick(&["a", "b", ""]))))
                .collect();
            if noise.rate > 0 && c.chance(noise.rate) && !members.is_empty() {
                // A repeated annotation: a map, so last wins for both, but
                // still refused (RFC 7493).
                members.push((members[0].0.clone(), string("z")));
            }
            Gen::Obj(members)
        }
        "urls" | "features" | "os.features" => Gen::Raw(c.pick(&["\"http://127.0.0.1:1/x\"", "\"\""]).to_string()),
        "os" => string(c.pick(&["linux", "windows"])),
        "architecture" => string(c.pick(&["amd64", "arm64"])),
        "type" => string(c.pick(&["cosign container image signature", "other"])),
        "docker-reference" => string("registry.example/app"),
        "_type" => string(c.pick(&["https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"])),
        "predicateType" => string("https://slsa.dev/provenance/v1"),
        "subject" if depth > 0 => Gen::Obj(Vec::new()),
        _ => Gen::Raw(String::new()),
    };
    if !matches!(&fitting, Gen::Raw(s) if s.is_empty()) && c.chance(96) {
        return fitting;
    }
    match c.below(if depth > 4 { 4 } else { 6 }) {
        0 => Gen::Raw("null".into()),
        1 => Gen::Raw(c.pick(&["true", "0", "-7", "1e3"]).to_string()),
        2 | 3 => string(c.pick(&["", "x", "\u{017F}", "linux"])),
        4 => Gen::Arr((0..c.below(3)).map(|_| scalar_for(c, "", depth + 1, noise)).collect()),
        _ => {
            // An object of unknown structure: Go decodes it into a map; its
            // member names are never folded, repeats are still refused.
            let mut members: Vec<(String, Gen)> = (0..c.below(3))
                .map(|_| {
                    let k = c.pick(&["layers", "Layers", "k", "digest"]).to_string();
                    (k, scalar_for(c, "", depth + 1, noise))
                })
                .collect();
            if noise.rate == 0 {
                let mut seen = std::collections::HashSet::new();
                members.retain(|(k, _)| seen.insert(k.clone()));
            }
            Gen::Obj(members)
        }
    }
}
