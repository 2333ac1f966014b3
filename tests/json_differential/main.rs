//! The strict JSON reader against a reference reader with Go's semantics,
//! on every run of `cargo test`: thousands of generated documents (fixed
//! seeds) mixing known fields, case variants (`Layers`, `LAYERS`, `layerſ`,
//! `Digest`, `OS`), near misses, duplicates and nesting. On every document
//! `oci::json::check` accepts, the serde reading and the Go reading agree;
//! every document on which they differ was refused; manifests that
//! `ManifestInfo::parse` accepts, and simple-signing payloads and in-toto
//! statements the payload decoders accept, are read the same way by a Go
//! client.
//! The fuzz targets (`fuzz/`) check the same properties on mutated input.

mod reference;

use portcullis::oci::json::{self, Schema};
use reference::{Choose, Outcome};

const SCHEMAS: [(&str, &Schema); 5] = [
    ("image document", &json::IMAGE_DOCUMENT),
    ("simple signing", &json::SIMPLE_SIGNING),
    ("DSSE envelope", &json::DSSE_ENVELOPE),
    ("in-toto statement", &json::IN_TOTO_STATEMENT),
    ("Sigstore bundle", &json::SIGSTORE_BUNDLE),
];

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Debug, Default)]
struct Tally {
    documents: usize,
    accepted: usize,
    refused_with_differing_readings: usize,
    typed_accepted: usize,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        self.documents += 1;
        self.accepted += usize::from(o.accepted);
        self.refused_with_differing_readings += usize::from(o.readings_differ);
        self.typed_accepted += usize::from(o.typed_accepted);
    }
}

fn run(schema: &'static Schema, seed: u64, n: usize) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tally = Tally::default();
    for _ in 0..n {
        let doc = reference::document(&mut rng, schema);
        let mut outcome = reference::assert_one_reading(doc.as_bytes(), schema);
        if std::ptr::eq(schema, &json::IMAGE_DOCUMENT) {
            for ct in reference::CONTENT_TYPES {
                outcome.typed_accepted |= reference::assert_manifest_agrees(doc.as_bytes(), ct);
            }
        }
        if std::ptr::eq(schema, &json::SIMPLE_SIGNING) {
            outcome.typed_accepted |= reference::assert_simple_signing_agrees(doc.as_bytes());
        }
        if std::ptr::eq(schema, &json::IN_TOTO_STATEMENT) {
            let image = DIGEST.parse().expect("digest");
            outcome.typed_accepted |= reference::assert_statement_agrees(doc.as_bytes(), &image);
        }
        tally.add(outcome);
    }
    tally
}

#[test]
fn strict_reader_and_go_reading_agree_on_every_accepted_document() {
    for (i, (name, schema)) in SCHEMAS.iter().enumerate() {
        let tally = run(schema, 0x5EED_0000 + i as u64, 2000);
        eprintln!("{name}: {tally:?}");
        // The generator must reach both sides, or the property is vacuous.
        assert!(
            tally.accepted >= tally.documents / 5,
            "{name}: too few accepted: {tally:?}"
        );
        if !matches!(schema, Schema::Any) {
            assert!(
                tally.refused_with_differing_readings >= tally.documents / 20,
                "{name}: too few documents that Go reads differently: {tally:?}"
            );
        }
    }
}

#[test]
fn parsed_manifests_are_read_the_same_by_go() {
    let tally = run(&json::IMAGE_DOCUMENT, 0x0C1_0000, 3000);
    eprintln!("manifests: {tally:?}");
    assert!(
        tally.typed_accepted >= tally.documents / 20,
        "too few parseable manifests: {tally:?}"
    );
}

#[test]
fn simple_signing_payloads_are_read_the_same_by_go() {
    let tally = run(&json::SIMPLE_SIGNING, 0x515_0000, 2000);
    eprintln!("simple signing: {tally:?}");
    assert!(
        tally.typed_accepted >= tally.documents / 20,
        "too few accepted payloads: {tally:?}"
    );
}

#[test]
fn in_toto_statements_are_read_the_same_by_go() {
    let tally = run(&json::IN_TOTO_STATEMENT, 0x1_2070, 2000);
    eprintln!("statements: {tally:?}");
    assert!(
        tally.typed_accepted >= tally.documents / 20,
        "too few accepted statements: {tally:?}"
    );
}

/// The attack of issue 9, and its relatives at depth: the readings differ,
/// and `check` refuses.
#[test]
fn known_second_readings_are_refused() {
    let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let docs = [
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{d}","size":1}}],"Layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":1}}]}}"#
        ),
        format!(r#"{{"schemaVersion":2,"manifests":[],"layer\u017f":[{{"digest":"{d}"}}]}}"#),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","Digest":"sha256:00"}}]}}"#),
        r#"{"schemaVersion":2,"manifests":[{"platform":{"os":"linux","OS":"windows"}}]}"#.to_owned(),
        r#"{"schemaVersion":2,"subject":{"size":1},"SUBJECT":{"size":2}}"#.to_owned(),
    ];
    for doc in &docs {
        let node: json::Node = serde_json::from_str(doc).expect("JSON");
        let go = reference::go_decode(&node, &json::IMAGE_DOCUMENT, None);
        assert_ne!(json::exact_reading(&node, &json::IMAGE_DOCUMENT), go, "{doc}");
        assert!(json::check(doc.as_bytes(), &json::IMAGE_DOCUMENT).is_err(), "{doc}");
        let outcome = reference::assert_one_reading(doc.as_bytes(), &json::IMAGE_DOCUMENT);
        assert!(outcome.readings_differ && !outcome.accepted);
    }
    // Refused although both readings agree (the last one wins for both):
    // RFC 7493, which the image spec requires, forbids repeated names.
    for doc in [
        r#"{"schemaVersion":2,"schemaVersion":1}"#,
        r#"{"annotations":{"a":"1","a":"2"}}"#,
    ] {
        let outcome = reference::assert_one_reading(doc.as_bytes(), &json::IMAGE_DOCUMENT);
        assert!(!outcome.readings_differ && !outcome.accepted, "{doc}");
    }
}

/// Go merges a repeated struct member into the first (decode.go decodes into
/// the value already there); the reference models it, and such documents
/// are refused anyway.
#[test]
fn reference_merges_repeated_structs_like_go() {
    let doc = r#"{"config":{"digest":"a","size":1},"Config":{"digest":"b"}}"#;
    let node: json::Node = serde_json::from_str(doc).expect("JSON");
    let go = reference::go_decode(&node, &json::IMAGE_DOCUMENT, None);
    assert_eq!(go["config"], serde_json::json!({"digest": "b", "size": 1}));
    assert!(json::check(doc.as_bytes(), &json::IMAGE_DOCUMENT).is_err());
}

/// The fold table both readers rely on, derived from Rust's Unicode tables:
/// the non-ASCII code points whose single-character case mapping is an
/// ASCII letter are U+0131 (ı → I), U+017F (ſ → S) and U+212A (K → k). Go's
/// `unicode.SimpleFold` keeps U+0131 in an orbit of its own (`caseOrbit`
/// lists `{0x0131, 0x0131}`: its mapping to I is Turkic only), so exactly
/// ſ and K match ASCII field names, in `json::folds_equal` as in the
/// reference.
#[test]
fn fold_table_matches_unicode() {
    let single_ascii = |it: &mut dyn Iterator<Item = char>| -> Option<char> {
        let first = it.next()?;
        (it.next().is_none() && first.is_ascii_alphabetic()).then_some(first.to_ascii_lowercase())
    };
    let mut mapped = Vec::new();
    for c in (0x80..=0x10FFFF).filter_map(char::from_u32) {
        let lower = single_ascii(&mut c.to_lowercase());
        let upper = single_ascii(&mut c.to_uppercase());
        if let Some(a) = lower.or(upper) {
            mapped.push((c, a));
        }
    }
    assert_eq!(mapped, [('\u{0131}', 'i'), ('\u{017F}', 's'), ('\u{212A}', 'k')]);
    let mut buf = [0u8; 4];
    for c in (0x80..=0x10FFFF).filter_map(char::from_u32) {
        let cs = c.encode_utf8(&mut buf);
        for a in ['s', 'k', 'i'] {
            let go = matches!((c, a), ('\u{017F}', 's') | ('\u{212A}', 'k'));
            assert_eq!(json::folds_equal(cs, a.encode_utf8(&mut [0u8; 4])), go, "{c:?} vs {a}");
            assert_eq!(
                reference::go_names_match(cs, a.encode_utf8(&mut [0u8; 4])),
                go,
                "{c:?} vs {a}"
            );
        }
    }
}

/// The byte-driven generator the fuzz targets use yields documents too.
#[test]
fn byte_choices_generate_documents() {
    let mut c = reference::ByteChoices::new(&[7, 200, 3, 99, 1, 0, 42, 250, 17, 5, 5, 5, 80, 33]);
    let doc = reference::document(&mut c, &json::IMAGE_DOCUMENT);
    assert!(serde_json::from_str::<serde_json::Value>(&doc).is_ok(), "{doc}");
    assert!(c.below(10) < 10);
}
