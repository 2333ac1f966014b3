//! One reading of every JSON document.
//!
//! Portcullis parses with serde (exact, case-sensitive member names; unknown
//! members ignored). Every Go client that consumes what Portcullis serves or
//! admits (containerd, containers/image, Docker, Distribution, cosign) reads
//! with `encoding/json` v1: a member name matches a field exactly *or under
//! Unicode simple case folding*, and a repeated member replaces the earlier
//! one. A document on which the two readings can differ is therefore an
//! attack on the gate (a decoy `"layers"` followed by the real `"Layers"`),
//! so [`check`] refuses, before any typed parse:
//!
//! - a repeated member name, at any depth (RFC 7493 §2.3, which the image
//!   spec requires of all `+json` content);
//! - a member name that is not exactly a field of the schema at that place
//!   but folds to one (`Layers`, `LAYERS`, `layerſ`, `Digest`, `OS`).
//!
//! Members that fold to no known field stay allowed: the image spec requires
//! unknown properties to be ignored. On a document [`check`] accepts, the
//! serde reading ([`exact_reading`]) and the Go reading ([`go_reading`])
//! agree; tests and the fuzz targets check exactly that.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Where a member name is known, and what its value looks like.
#[derive(Debug)]
pub enum Schema {
    /// Any JSON value: no field names are known below, but repeated member
    /// names are still refused.
    Any,
    /// An object with these known fields; other members are unknown.
    Object(&'static [Field]),
    /// An array whose elements follow the inner schema.
    Array(&'static Schema),
}

/// A known member name and the schema of its value.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub schema: &'static Schema,
}

const fn field(name: &'static str, schema: &'static Schema) -> Field {
    Field { name, schema }
}

/// Why a document has more than one reading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguity {
    #[error("not valid JSON: {0}")]
    Syntax(String),
    #[error("duplicate key `{key}` at {path}")]
    DuplicateKey { path: String, key: String },
    #[error(
        "key `{key}` at {path} matches the field `{field}` case-insensitively (Go clients would read it as `{field}`)"
    )]
    CaseVariant {
        path: String,
        key: String,
        field: &'static str,
    },
}

/// A JSON value that keeps every member of an object, in document order,
/// including repeated names (which `serde_json::Value` silently merges).
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// Parse `bytes` and refuse any document that a Go client could read
/// differently from serde under `schema`. Returns the parsed tree.
pub fn check(bytes: &[u8], schema: &Schema) -> Result<Node, Ambiguity> {
    let node: Node = serde_json::from_slice(bytes).map_err(|e| Ambiguity::Syntax(e.to_string()))?;
    let mut path = Vec::new();
    check_node(&node, schema, &mut path)?;
    Ok(node)
}

/// [`check`], then the typed serde reading of the same bytes.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], schema: &Schema) -> Result<T, StrictError> {
    check(bytes, schema)?;
    serde_json::from_slice(bytes).map_err(|e| StrictError::Shape(e.to_string()))
}

/// Why a document was refused by [`parse`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    #[error("ambiguous JSON: {0}")]
    Ambiguous(#[from] Ambiguity),
    #[error("{0}")]
    Shape(String),
}

fn check_node(node: &Node, schema: &Schema, path: &mut Vec<String>) -> Result<(), Ambiguity> {
    match node {
        Node::Object(members) => check_object(members, schema, path),
        Node::Array(items) => {
            let inner = match schema {
                Schema::Array(inner) => inner,
                _ => &Schema::Any,
            };
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                check_node(item, inner, path)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_object(members: &[(String, Node)], schema: &Schema, path: &mut Vec<String>) -> Result<(), Ambiguity> {
    let fields: &[Field] = match schema {
        Schema::Object(fields) => fields,
        _ => &[],
    };
    let mut seen = HashSet::with_capacity(members.len());
    for (key, value) in members {
        if !seen.insert(key.as_str()) {
            return Err(Ambiguity::DuplicateKey {
                path: pointer(path),
                key: key.clone(),
            });
        }
        let value_schema = match fields.iter().find(|f| f.name == key) {
            Some(f) => f.schema,
            None => {
                if let Some(f) = fields.iter().find(|f| folds_equal(key, f.name)) {
                    return Err(Ambiguity::CaseVariant {
                        path: pointer(path),
                        key: key.clone(),
                        field: f.name,
                    });
                }
                &Schema::Any
            }
        };
        path.push(key.clone());
        check_node(value, value_schema, path)?;
        path.pop();
    }
    Ok(())
}

/// A JSON pointer (RFC 6901) for error messages.
fn pointer(path: &[String]) -> String {
    if path.is_empty() {
        return "the top level".to_owned();
    }
    path.iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Go's `encoding/json` name match: `bytes.EqualFold`, i.e. equal under
/// Unicode simple case folding. Known field names are ASCII, and the only
/// non-ASCII code points whose simple fold orbit contains an ASCII letter are
/// U+017F LATIN SMALL LETTER LONG S (→ `s`) and U+212A KELVIN SIGN (→ `k`)
/// (Unicode `CaseFolding.txt`, status C), so folding each code point to its
/// ASCII upper case (or leaving it) decides the match exactly.
pub fn folds_equal(key: &str, field: &str) -> bool {
    key.chars().map(fold).eq(field.chars().map(fold))
}

fn fold(c: char) -> char {
    match c {
        '\u{017F}' => 'S',
        '\u{212A}' => 'K',
        c => c.to_ascii_uppercase(),
    }
}

/// The serde reading of `node` under `schema`: at known objects, exactly
/// named fields (the last, were names repeated); other members dropped.
/// Subtrees under [`Schema::Any`] are kept whole.
pub fn exact_reading(node: &Node, schema: &Schema) -> serde_json::Value {
    reading(node, schema, |key, f| key == f.name)
}

/// The Go `encoding/json` reading of `node` under `schema`: members are
/// matched to fields exactly or case-insensitively, the exact match
/// preferred, and a later member replaces an earlier one.
pub fn go_reading(node: &Node, schema: &Schema) -> serde_json::Value {
    reading(node, schema, |key, f| folds_equal(key, f.name))
}

fn reading(node: &Node, schema: &Schema, matches: fn(&str, &Field) -> bool) -> serde_json::Value {
    use serde_json::Value;
    match (node, schema) {
        (Node::Object(members), Schema::Object(fields)) => {
            let mut out = serde_json::Map::new();
            for (key, value) in members {
                let exact = fields.iter().find(|f| f.name == key);
                let Some(f) = exact.or_else(|| fields.iter().find(|f| matches(key, f))) else {
                    continue;
                };
                out.insert(f.name.to_owned(), reading(value, f.schema, matches));
            }
            Value::Object(out)
        }
        (Node::Array(items), Schema::Array(inner)) => {
            Value::Array(items.iter().map(|i| reading(i, inner, matches)).collect())
        }
        (Node::Array(items), _) => Value::Array(items.iter().map(|i| reading(i, &Schema::Any, matches)).collect()),
        (Node::Object(members), _) => {
            // Unknown structure: a map reading, where the last member wins
            // for both decoders.
            let mut out = serde_json::Map::new();
            for (key, value) in members {
                out.insert(key.clone(), reading(value, &Schema::Any, matches));
            }
            Value::Object(out)
        }
        (Node::Null, _) => Value::Null,
        (Node::Bool(b), _) => Value::Bool(*b),
        (Node::Number(n), _) => Value::Number(n.clone()),
        (Node::String(s), _) => Value::String(s.clone()),
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Node>()? {
            members.push((key, value));
        }
        Ok(Node::Object(members))
    }
}

// ---------------------------------------------------------------- schemas
//
// The fields Go clients know at each place (image-spec and Docker schema 2,
// plus cosign's and in-toto's payloads), not only the ones Portcullis reads:
// a case variant of any of them is a second reading.

static ANY: Schema = Schema::Any;
static STRINGS: Schema = Schema::Array(&Schema::Any);

pub static PLATFORM: Schema = Schema::Object(&[
    field("architecture", &ANY),
    field("os", &ANY),
    field("os.version", &ANY),
    field("os.features", &STRINGS),
    field("variant", &ANY),
    field("features", &STRINGS),
]);

pub static DESCRIPTOR: Schema = Schema::Object(&[
    field("mediaType", &ANY),
    field("digest", &ANY),
    field("size", &ANY),
    field("urls", &STRINGS),
    field("annotations", &ANY),
    field("data", &ANY),
    field("artifactType", &ANY),
    field("platform", &PLATFORM),
]);

static DESCRIPTORS: Schema = Schema::Array(&DESCRIPTOR);

/// Image manifests and indexes, OCI and Docker schema 2, and referrers
/// listings: one schema, since the kind is only known after parsing (and a
/// document that is both is refused later, by shape).
pub static IMAGE_DOCUMENT: Schema = Schema::Object(&[
    field("schemaVersion", &ANY),
    field("mediaType", &ANY),
    field("artifactType", &ANY),
    field("config", &DESCRIPTOR),
    field("layers", &DESCRIPTORS),
    field("manifests", &DESCRIPTORS),
    field("subject", &DESCRIPTOR),
    field("annotations", &ANY),
]);

/// cosign's simple-signing payload (containers/image `signature` and
/// sigstore `payload.SimpleContainerImage`).
pub static SIMPLE_SIGNING: Schema = Schema::Object(&[
    field(
        "critical",
        &Schema::Object(&[
            field("identity", &Schema::Object(&[field("docker-reference", &ANY)])),
            field("image", &Schema::Object(&[field("docker-manifest-digest", &ANY)])),
            field("type", &ANY),
        ]),
    ),
    field("optional", &ANY),
]);

/// A DSSE envelope (secure-systems-lab `dsse.Envelope`).
pub static DSSE_ENVELOPE: Schema = Schema::Object(&[
    field("payloadType", &ANY),
    field("payload", &ANY),
    field(
        "signatures",
        &Schema::Array(&Schema::Object(&[field("keyid", &ANY), field("sig", &ANY)])),
    ),
]);

/// An in-toto statement, v0.1 or v1. The predicate's structure is the
/// predicate type's business; repeated names inside it are still refused.
pub static IN_TOTO_STATEMENT: Schema = Schema::Object(&[
    field("_type", &ANY),
    field(
        "subject",
        &Schema::Array(&Schema::Object(&[
            field("name", &ANY),
            field("digest", &ANY),
            field("uri", &ANY),
            field("content", &ANY),
            field("downloadLocation", &ANY),
            field("mediaType", &ANY),
            field("annotations", &ANY),
        ])),
    ),
    field("predicateType", &ANY),
    field("predicate", &ANY),
]);

/// A Sigstore bundle. Its decoder (protobuf JSON) matches names exactly, so
/// only repeated names are a second reading.
pub static SIGSTORE_BUNDLE: Schema = Schema::Any;

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_check(text: &str) -> Result<Node, Ambiguity> {
        check(text.as_bytes(), &IMAGE_DOCUMENT)
    }

    #[test]
    fn refuses_case_variants_of_known_fields() {
        for key in ["Layers", "LAYERS", "layerſ", "lAyErS"] {
            let text = format!(r#"{{"schemaVersion":2,"layers":[],"{key}":[]}}"#);
            assert!(
                matches!(doc_check(&text), Err(Ambiguity::CaseVariant { field: "layers", .. })),
                "{key}"
            );
        }
        // At depth: descriptor, platform, subject.
        let deep = [
            r#"{"config":{"digest":"a","Digest":"b"}}"#,
            r#"{"manifests":[{"platform":{"OS":"linux"}}]}"#,
            r#"{"subject":{"mediaType":"x","MediaType":"y"}}"#,
            r#"{"manifests":[{"platform":{"OS.version":"1"}}]}"#,
        ];
        for text in deep {
            assert!(matches!(doc_check(text), Err(Ambiguity::CaseVariant { .. })), "{text}");
        }
        // U+212A KELVIN SIGN folds to `k` (no manifest field has a k, the
        // in-toto statement's `_type` does not either; use a synthetic one).
        assert!(folds_equal("\u{212A}ey", "key"));
        assert!(!folds_equal("keys", "key"));
        assert!(!folds_equal("laye\u{0155}s", "layers"));
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        let cases = [
            r#"{"layers":[],"layers":[]}"#,
            r#"{"annotations":{"a":"1","a":"2"}}"#,
            r#"{"x-vendor":{"deep":[{"k":1,"k":2}]}}"#,
        ];
        for text in cases {
            assert!(matches!(doc_check(text), Err(Ambiguity::DuplicateKey { .. })), "{text}");
        }
    }

    #[test]
    fn allows_unknown_members_that_fold_to_no_field() {
        let node = doc_check(r#"{"schemaVersion":2,"layers":[],"layersExtra":1,"x-vendor":{"Layers":1}}"#)
            .expect("unknown members are allowed");
        assert_eq!(
            exact_reading(&node, &IMAGE_DOCUMENT),
            go_reading(&node, &IMAGE_DOCUMENT)
        );
    }

    #[test]
    fn readings_differ_exactly_on_what_is_refused() {
        let text = r#"{"layers":[{"mediaType":"decoy"}],"Layers":[{"mediaType":"real"}]}"#;
        let node: Node = serde_json::from_str(text).expect("json");
        let ours = exact_reading(&node, &IMAGE_DOCUMENT);
        let go = go_reading(&node, &IMAGE_DOCUMENT);
        assert_eq!(ours["layers"][0]["mediaType"], "decoy");
        assert_eq!(go["layers"][0]["mediaType"], "real");
        assert!(doc_check(text).is_err());
    }

    #[test]
    fn error_names_the_place() {
        let err = doc_check(r#"{"manifests":[{},{"platform":{"os":"a","os":"b"}}]}"#).expect_err("dup");
        assert_eq!(err.to_string(), "duplicate key `os` at /manifests/1/platform");
    }

    #[test]
    fn payload_schemas_catch_case_variants() {
        let st = br#"{"_type":"x","subject":[{"digest":{"sha256":"a"},"Digest":{"sha256":"b"}}]}"#;
        assert!(check(st, &IN_TOTO_STATEMENT).is_err());
        let ss = br#"{"critical":{"image":{"docker-manifest-digest":"a","Docker-Manifest-Digest":"b"}}}"#;
        assert!(check(ss, &SIMPLE_SIGNING).is_err());
        let env = br#"{"payloadType":"a","PayloadType":"b"}"#;
        assert!(check(env, &DSSE_ENVELOPE).is_err());
    }
}
