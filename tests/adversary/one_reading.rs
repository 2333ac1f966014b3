//! One reading of every document (issue 9 §1): a document that a Go client
//! reads differently from Portcullis (key case folding, duplicate keys) or
//! that is two kinds at once is refused with 502 and nothing of it is
//! stored; signed images and unknown keys that fold to no field still pass.

use crate::common::*;

/// The headline attack's document: `subject` → the signed image, a decoy
/// `layers` list typed as cosign simple-signing payloads whose descriptors
/// point at the payload's real layers, then `real_key` (`Layers`, `layerſ`,
/// or `layers` again) listing the same blobs as image layers. Portcullis
/// (serde: exact keys) reads the decoy: verification material of a signed
/// image. Go reads the last matching key: a runnable image.
fn decoy_manifest(subject: &Blob, payload: &Image, real_key: &str) -> Blob {
    let decoy = array(payload.layers.iter().map(|l| desc(SIMPLE_SIGNING_MEDIA_TYPE, l)));
    let real = array(payload.layers.iter().map(|l| desc(OCI_LAYER_GZIP, l)));
    doc(
        OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":{decoy},"{real_key}":{real},"subject":{}}}"#,
            desc_of(&payload.config),
            desc_of(subject),
        ),
    )
}

/// Issue 9, the headline: the case-fold decoy. Through Portcullis the
/// document is refused (502 `ambiguous`) by digest and by tag, skopeo and
/// ctr cannot pull it, its payload's blobs are not served and nothing of it
/// is stored; the same with a subject signed by a bundle referrer. Control:
/// the signed images still pull (skopeo; ctr for the `.sig`-signed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_fold_decoy_is_refused_and_the_signed_image_still_pulls() {
    let mut f = Findings::new("case_fold_decoy");
    let scene = Scene::start(ENFORCE).await;
    let containerd = Containerd::start().await;
    let signed = benign(1);
    scene.signed(REPO, "v1", &signed).await;
    let evil = payload(2);
    scene.blobs(REPO, &evil).await;
    let m = decoy_manifest(&signed.manifest, &evil, "Layers");
    scene.push_doc(REPO, Some("evil"), &m).await;
    let p = &scene.proxy;

    f.ambiguous(&get_manifest(p, REPO, &m.digest.to_string()).await, "GET M by digest");
    f.ambiguous(&get_manifest(p, REPO, "evil").await, "GET M by tag");
    for b in evil.blobs() {
        f.denied(
            &get_blob(p, REPO, &b.digest).await,
            &format!("GET payload blob {}", b.digest),
        );
    }
    f.skopeo_fails(p, &format!("{REPO}:evil"), BAD_GATEWAY).await;
    f.skopeo_fails(p, &format!("{REPO}@{}", m.digest), BAD_GATEWAY).await;
    f.client_fails(
        ctr_pull(&containerd, p, &format!("{REPO}:evil")).await,
        BAD_GATEWAY,
        "ctr images pull test/app:evil",
    );
    f.nothing_stored(p, &m.digest, "M");
    for b in evil.layers.iter() {
        f.nothing_stored(p, &b.digest, "payload layer");
    }

    // The same decoy beside an image signed the cosign v3 way (a Sigstore
    // bundle referrer behind the referrers fallback index).
    let bundled = benign(3);
    scene.registry.push_image("test/bundled", "v1", &bundled).await;
    push_bundle_signature(&scene.registry, "test/bundled", &bundled.manifest, &scene.key).await;
    let evil2 = payload(4);
    scene.blobs("test/bundled", &evil2).await;
    let m2 = decoy_manifest(&bundled.manifest, &evil2, "Layers");
    scene.push_doc("test/bundled", Some("evil"), &m2).await;
    f.ambiguous(
        &get_manifest(p, "test/bundled", &m2.digest.to_string()).await,
        "GET M2 (subject signed by a bundle) by digest",
    );
    f.skopeo_fails(p, "test/bundled:evil", BAD_GATEWAY).await;
    f.nothing_stored(p, &m2.digest, "M2");

    // Control: the signed images still pull.
    f.skopeo_copies(p, &format!("{REPO}:v1"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.skopeo_copies(p, "test/bundled:v1", &bundled.manifest.digest, &image_blobs(&bundled))
        .await;
    f.client_succeeds(
        ctr_pull(&containerd, p, &format!("{REPO}:v1")).await,
        "control: ctr images pull test/app:v1",
    );
    f.finish();
}

/// One attack document of a family, and what it is.
struct Variant {
    name: &'static str,
    doc: Blob,
}

/// The other spellings Go folds onto a known field, at every depth, and a
/// duplicate key. Each is refused with 502 `ambiguous` (by digest; skopeo
/// cannot copy it; nothing stored). Control: a signed image whose manifest
/// carries unknown keys that fold to no known field (`x-vendor`,
/// `layersExtra`, `annotationz`) is accepted and pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ambiguous_spelling_is_refused_and_unknown_keys_are_not() {
    let mut f = Findings::new("ambiguous_spellings");
    let scene = Scene::start(ENFORCE).await;
    let signed = benign(10);
    scene.signed(REPO, "v1", &signed).await;
    let evil = payload(11);
    scene.registry.push_image(REPO, "", &evil).await;
    // Two small blobs of equal size, so one descriptor can name either.
    let a = Blob::new(SIMPLE_SIGNING_MEDIA_TYPE, random_bytes(400, 12));
    let b = Blob::new(SIMPLE_SIGNING_MEDIA_TYPE, random_bytes(400, 13));
    let empty = Blob::new(OCI_EMPTY, &b"{}"[..]);
    for blob in [&a, &b, &empty] {
        scene.registry.push_blob(REPO, blob).await;
    }
    let s = desc_of(&signed.manifest);
    let cfg = desc_of(&evil.config);
    let material = |layers: String, config: String, subject: String| {
        doc(
            OCI_MANIFEST,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":{layers},"subject":{subject}}}"#
            ),
        )
    };
    let arch = host_arch();
    let platform_entry = |m: &Blob, platform: &str| {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{platform}}}"#,
            m.digest,
            m.bytes.len()
        )
    };
    let variants = vec![
        Variant {
            name: "duplicate `layers` keys",
            doc: decoy_manifest(&signed.manifest, &evil, "layers"),
        },
        Variant {
            name: "`layerſ` (U+017F folds to `s`)",
            doc: decoy_manifest(&signed.manifest, &evil, "layer\u{17f}"),
        },
        Variant {
            name: "`LAYERS`",
            doc: decoy_manifest(&signed.manifest, &evil, "LAYERS"),
        },
        Variant {
            name: "descriptor `Digest` beside `digest`",
            doc: material(
                format!(
                    r#"[{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","digest":"{}","size":400,"Digest":"{}"}}]"#,
                    a.digest, b.digest
                ),
                desc_of(&empty),
                s.clone(),
            ),
        },
        Variant {
            name: "descriptor `MediaType` making a signature an image layer",
            doc: material(
                format!(
                    r#"[{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","digest":"{}","size":{},"MediaType":"{OCI_LAYER_GZIP}"}}]"#,
                    evil.layers[0].digest,
                    evil.layers[0].bytes.len()
                ),
                cfg.clone(),
                s.clone(),
            ),
        },
        Variant {
            name: "config `MediaType`",
            doc: material(
                array([desc_of(&a)]),
                format!(
                    r#"{{"mediaType":"{OCI_EMPTY}","digest":"{}","size":{},"MediaType":"{OCI_CONFIG}"}}"#,
                    evil.config.digest,
                    evil.config.bytes.len()
                ),
                s.clone(),
            ),
        },
        Variant {
            name: "subject `Digest`",
            doc: material(
                array([desc_of(&a)]),
                desc_of(&empty),
                format!(
                    r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"Digest":"{}"}}"#,
                    signed.manifest.digest,
                    signed.manifest.bytes.len(),
                    evil.manifest.digest
                ),
            ),
        },
    ];
    // Indexes: signed, so that only the reading can refuse them.
    let index_variants = vec![
        Variant {
            name: "index entry platform `OS`",
            doc: doc(
                OCI_INDEX,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                    platform_entry(
                        &signed.manifest,
                        &format!(r#"{{"architecture":"{arch}","os":"plan9","OS":"linux"}}"#)
                    )
                ),
            ),
        },
        Variant {
            name: "index `Manifests` after `manifests`",
            doc: doc(
                OCI_INDEX,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}],"Manifests":[{}]}}"#,
                    platform_entry(
                        &signed.manifest,
                        &format!(r#"{{"architecture":"{arch}","os":"linux"}}"#)
                    ),
                    platform_entry(&evil.manifest, &format!(r#"{{"architecture":"{arch}","os":"linux"}}"#)),
                ),
            ),
        },
    ];
    for v in &variants {
        scene.push_doc(REPO, None, &v.doc).await;
    }
    for v in &index_variants {
        scene.push_doc(REPO, None, &v.doc).await;
        push_legacy_signature(&scene.registry, REPO, &v.doc, &[&scene.key]).await;
    }
    let p = &scene.proxy;
    for v in variants.iter().chain(&index_variants) {
        let reference = v.doc.digest.to_string();
        f.ambiguous(&get_manifest(p, REPO, &reference).await, v.name);
        f.skopeo_fails(p, &format!("{REPO}@{reference}"), BAD_GATEWAY).await;
        f.nothing_stored(p, &v.doc.digest, v.name);
    }

    // Control: unknown keys that fold to no known field are ignored, as the
    // image spec requires; a signed image carrying them pulls.
    let plain = benign(14);
    let extra = doc(
        OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","x-vendor":1,"config":{},"layersExtra":[{}],"layers":{},"annotationz":{{"a":"b"}}}}"#,
            desc_of(&plain.config),
            desc_of(&a),
            array(plain.layers.iter().map(desc_of)),
        ),
    );
    scene.blobs(REPO, &plain).await;
    scene.push_doc(REPO, Some("extra"), &extra).await;
    push_legacy_signature(&scene.registry, REPO, &extra, &[&scene.key]).await;
    let got = get_manifest(p, REPO, "extra").await;
    f.serves(&got, &extra, "control: GET a signed manifest with unknown keys");
    f.skopeo_copies(p, &format!("{REPO}:extra"), &extra.digest, &image_blobs(&plain))
        .await;
    f.skopeo_copies(p, &format!("{REPO}:v1"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.finish();
}

/// CVE-2021-41190's shape and its relatives, which Distribution refuses at
/// push, so a lying upstream serves them: a manifest that also has
/// `manifests`, an index that also has `layers` or `config`, a `mediaType`
/// that disagrees with `Content-Type`, and one that disagrees with the
/// shape. Each is signed (only the reading may refuse it) and each is
/// refused with 502; skopeo cannot copy it; nothing is stored. Control: a
/// signed image from the same upstream pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_and_mislabelled_documents_are_refused() {
    let mut f = Findings::new("hybrid_documents");
    let fake = FakeRegistry::start().await;
    let key = SigningKey::generate_p256();
    let policies = policy_dir(&[("a", &key)], ENFORCE);
    let proxy = TestProxy::with_policies(&fake.url(), policies.path()).await;
    let reference = format!("{}/{REPO}", fake.host());
    let sign = |m: &Blob| {
        let object = legacy_manifest(vec![signature_layer(&key, &reference, &m.digest)]);
        for l in &object.layers {
            fake.put_blob(REPO, &l.blob);
        }
        fake.put_blob(REPO, &object.config);
        fake.tag(REPO, &sig_tag(&m.digest), &object.manifest);
    };
    let signed = benign(20);
    fake.put_image(REPO, "v1", &signed);
    sign(&signed.manifest);
    let evil = payload(21);
    fake.put_image(REPO, "", &evil);
    let cfg = desc_of(&evil.config);
    let layers = array(evil.layers.iter().map(desc_of));
    let child = desc_of(&signed.manifest);
    let docs = [
        (
            "manifest with `manifests`",
            doc(
                OCI_MANIFEST,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":{layers},"manifests":[{child}]}}"#
                ),
            ),
        ),
        (
            "index with `layers`",
            doc(
                OCI_INDEX,
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{child}],"layers":{layers}}}"#),
            ),
        ),
        (
            "index with `config`",
            doc(
                OCI_INDEX,
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{child}],"config":{cfg}}}"#),
            ),
        ),
        (
            "no `mediaType`, both `manifests` and `layers`, served as a manifest",
            doc(
                OCI_MANIFEST,
                format!(r#"{{"schemaVersion":2,"config":{cfg},"layers":{layers},"manifests":[{child}]}}"#),
            ),
        ),
        (
            "`mediaType` OCI manifest served as a Docker manifest",
            doc(
                DOCKER_MANIFEST,
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":{layers}}}"#),
            ),
        ),
        (
            "`mediaType` index on a manifest's shape",
            doc(
                OCI_INDEX,
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":{cfg},"layers":{layers}}}"#),
            ),
        ),
    ];
    for (i, (_, d)) in docs.iter().enumerate() {
        fake.tag(REPO, &format!("hybrid-{i}"), d);
        sign(d);
    }
    for (i, (name, d)) in docs.iter().enumerate() {
        f.bad_gateway(&get_manifest(&proxy, REPO, &d.digest.to_string()).await, name);
        f.bad_gateway(&get_manifest(&proxy, REPO, &format!("hybrid-{i}")).await, name);
        f.skopeo_fails(&proxy, &format!("{REPO}:hybrid-{i}"), BAD_GATEWAY).await;
        f.nothing_stored(&proxy, &d.digest, name);
    }
    f.skopeo_copies(
        &proxy,
        &format!("{REPO}:v1"),
        &signed.manifest.digest,
        &image_blobs(&signed),
    )
    .await;
    f.finish();
}
