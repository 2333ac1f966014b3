//! Verification material by allow-list (issue 9 §2): only documents of
//! material's exact shape are admitted under their subject's verdict; a
//! document that merely names a signed image as `subject` (or sits at its
//! `sha256-<hex>.<suffix>` tag) is judged by its own rule. Material grants
//! only blobs it can hold, and one bad referrer does not get a signed image
//! refused.

use crate::common::*;

/// A manifest with `subject` → `subject` (when given), `config` and `layers`
/// as JSON text.
fn with_subject(config: String, layers: String, subject: Option<&Blob>) -> Blob {
    let subject = subject.map_or(String::new(), |s| format!(r#","subject":{}"#, desc_of(s)));
    doc(
        OCI_MANIFEST,
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":{layers}{subject}}}"#),
    )
}

/// Issue 9 §2: each of these names the signed image S as `subject` (or sits
/// at its `.sbom` tag) but is not verification material, so it is judged by
/// its own rule and, unsigned, denied 403 `DENIED`: skopeo cannot copy it,
/// ctr cannot fetch the octet-stream one, and its blobs are not served.
/// Control: S's real material (the `.sig` manifest and its payload, the
/// bundle referrer and its bundle) is served and S pulls with skopeo and ctr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alikes_of_material_are_judged_by_their_own_rule() {
    let mut f = Findings::new("material_allow_list");
    let scene = Scene::start(ENFORCE).await;
    let containerd = Containerd::start().await;
    let signed = benign(30);
    scene.signed(REPO, "v1", &signed).await;
    let referrer = push_bundle_signature(&scene.registry, REPO, &signed.manifest, &scene.key).await;
    // Each look-alike carries its own payload, so no case's blobs can be
    // granted by another case.
    let evil: Vec<Image> = (0..6).map(|i| payload(31 + i)).collect();
    for e in &evil {
        scene.blobs(REPO, e).await;
    }
    let cfg = |e: &Image| desc_of(&e.config);
    let layers_as = |e: &Image, t: &str| array(e.layers.iter().map(|l| desc(t, l)));
    let s = Some(&signed.manifest);
    let helm_config = Blob::new(
        "application/vnd.cncf.helm.config.v1+json",
        &br#"{"name":"evil","version":"0.1.0","apiVersion":"v2"}"#[..],
    );
    let helm_chart = Blob::new(
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        gzip_stored(&tar(&[(
            "evil/Chart.yaml",
            b"apiVersion: v2\nname: evil\nversion: 0.1.0\n",
        )])),
    );
    let sig_payload = Blob::new(
        SIMPLE_SIGNING_MEDIA_TYPE,
        simple_signing_payload(&docker_reference(&scene.registry, REPO), &signed.manifest.digest),
    );
    let empty_config = empty_image_config(std::slice::from_ref(&sig_payload.digest));
    for b in [&helm_config, &helm_chart, &sig_payload, &empty_config] {
        scene.registry.push_blob(REPO, b).await;
    }
    let cases: Vec<(&str, Blob, Vec<&Blob>)> = vec![
        (
            "layers typed application/octet-stream",
            with_subject(cfg(&evil[0]), layers_as(&evil[0], "application/octet-stream"), s),
            evil[0].blobs(),
        ),
        (
            "layers typed \"\"",
            with_subject(cfg(&evil[1]), layers_as(&evil[1], ""), s),
            evil[1].blobs(),
        ),
        (
            "layers typed in other letter case",
            with_subject(
                cfg(&evil[2]),
                layers_as(&evil[2], "Application/Vnd.Oci.Image.Layer.V1.Tar+Gzip"),
                s,
            ),
            evil[2].blobs(),
        ),
        (
            "a Helm chart",
            with_subject(desc_of(&helm_config), array([desc_of(&helm_chart)]), s),
            vec![&helm_config, &helm_chart],
        ),
        (
            "one simple-signing layer and one image layer",
            with_subject(
                desc_of(&empty_config),
                array([desc_of(&sig_payload), desc_of(&evil[3].layers[0])]),
                s,
            ),
            vec![&evil[3].layers[0]],
        ),
        (
            "a material-typed layer with `urls`",
            with_subject(
                desc_of(&empty_config),
                format!(
                    r#"[{{"mediaType":"{SIMPLE_SIGNING_MEDIA_TYPE}","digest":"{}","size":{},"urls":["http://127.0.0.1:1/x"]}}]"#,
                    evil[4].layers[1].digest,
                    evil[4].layers[1].bytes.len()
                ),
                s,
            ),
            vec![&evil[4].layers[1]],
        ),
    ];
    for (name, m, _) in &cases {
        if name.contains("urls") {
            scene.registry.plant_manifest(REPO, m).await;
        } else {
            scene.push_doc(REPO, None, m).await;
        }
    }
    // Not at a `subject` but at S's `.sbom` tag: the tag does not make it material.
    let sbom_tag = format!("{}.sbom", signed.manifest.digest.tag_form());
    let at_tag = with_subject(cfg(&evil[5]), layers_as(&evil[5], "application/octet-stream"), None);
    scene.push_doc(REPO, Some(&sbom_tag), &at_tag).await;
    let p = &scene.proxy;
    for (name, m, blobs) in &cases {
        f.denied(&get_manifest(p, REPO, &m.digest.to_string()).await, name);
        for b in blobs {
            f.denied(
                &get_blob(p, REPO, &b.digest).await,
                &format!("{name}: GET blob {}", b.digest),
            );
        }
        f.skopeo_fails(p, &format!("{REPO}@{}", m.digest), FORBIDDEN).await;
    }
    f.denied(
        &get_manifest(p, REPO, &sbom_tag).await,
        "octet-stream layers at the `.sbom` tag",
    );
    for b in evil[5].blobs() {
        f.denied(
            &get_blob(p, REPO, &b.digest).await,
            &format!("`.sbom` tag: GET blob {}", b.digest),
        );
    }
    f.skopeo_fails(p, &format!("{REPO}:{sbom_tag}"), FORBIDDEN).await;
    f.client_fails(
        ctr_fetch(&containerd, p, &format!("{REPO}@{}", cases[0].1.digest)).await,
        FORBIDDEN,
        "ctr content fetch of the octet-stream look-alike",
    );

    // Control: S's real material is served, and S pulls.
    let sig = get_manifest(p, REPO, &sig_tag(&signed.manifest.digest)).await;
    f.check(
        sig.status == StatusCode::OK,
        format!("control: GET S's .sig manifest: {}", sig.status),
    );
    if sig.status == StatusCode::OK {
        let v: serde_json::Value = serde_json::from_slice(&sig.bytes()).expect("json");
        for l in v["layers"].as_array().into_iter().flatten() {
            let d: Digest = l["digest"].as_str().expect("digest").parse().expect("digest");
            let r = get_blob(p, REPO, &d).await;
            f.check(
                r.status == StatusCode::OK,
                format!("control: GET S's signature payload {d}: {}", r.status),
            );
        }
    }
    f.serves(
        &get_manifest(p, REPO, &referrer.manifest.digest.to_string()).await,
        &referrer.manifest,
        "control: GET S's bundle referrer",
    );
    f.serves(
        &get_blob(p, REPO, &referrer.bundle.digest).await,
        &referrer.bundle,
        "control: GET S's bundle",
    );
    f.skopeo_copies(p, &format!("{REPO}:v1"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.client_succeeds(
        ctr_pull(&containerd, p, &format!("{REPO}:v1")).await,
        "control: ctr images pull test/app:v1",
    );
    f.finish();
}

/// Issue 9 §2: material cannot unlock another image's blobs. U is unsigned
/// with a layer larger than the 2 MiB verification-material bound; the
/// attacker pushes a material-shaped manifest (subject S, empty config,
/// simple-signing-typed descriptors whose digests and sizes are U's layers).
/// The manifest itself may be served as S's material, but U's large layer
/// is not (403), U's manifest is denied, and skopeo cannot copy U's layer
/// through the manifest. Control: S pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_cannot_unlock_another_images_blobs() {
    let mut f = Findings::new("material_unlocks_blobs");
    let scene = Scene::start(ENFORCE).await;
    let signed = benign(40);
    scene.signed(REPO, "v1", &signed).await;
    let unsigned = oci_image(&[2 * 1024 * 1024 + 4096, 1000], 41);
    scene.registry.push_image(REPO, "u", &unsigned).await;
    let big = &unsigned.layers[0];
    let empty = Blob::new(OCI_EMPTY, &b"{}"[..]);
    scene.registry.push_blob(REPO, &empty).await;
    let m = with_subject(
        desc_of(&empty),
        array([desc(SIMPLE_SIGNING_MEDIA_TYPE, big)]),
        Some(&signed.manifest),
    );
    scene.push_doc(REPO, Some("unlock"), &m).await;
    let p = &scene.proxy;
    // Whatever happens to the manifest, the large layer must stay locked.
    let served = get_manifest(p, REPO, &m.digest.to_string()).await;
    eprintln!("material-shaped manifest naming U's layer: {}", served.status);
    f.denied(
        &get_blob(p, REPO, &big.digest).await,
        "GET U's >2 MiB layer after the material manifest",
    );
    f.check(!p.has_blob(&big.digest), "U's large layer was fetched into the store");
    f.skopeo_fails(p, &format!("{REPO}:unlock"), FORBIDDEN).await;
    f.denied(&get_manifest(p, REPO, "u").await, "GET U's manifest");
    f.denied(
        &get_blob(p, REPO, &big.digest).await,
        "GET U's large layer after its manifest",
    );
    f.skopeo_copies(p, &format!("{REPO}:v1"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.finish();
}

/// Issue 9 §2 ("a material manifest can never unlock blobs of another
/// image"), beyond the size bound: the same attack with U's small layers
/// (real tar+gzip, well under 2 MiB) behind simple-signing-typed
/// descriptors. A size bound alone lets them through; they must stay locked
/// (403) unless the blob really is material. Control: S pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_cannot_unlock_small_blobs_of_another_image() {
    let mut f = Findings::new("material_unlocks_small_blobs");
    let scene = Scene::start(ENFORCE).await;
    let signed = benign(42);
    scene.signed(REPO, "v1", &signed).await;
    let unsigned = payload(43);
    scene.registry.push_image(REPO, "u", &unsigned).await;
    let empty = Blob::new(OCI_EMPTY, &b"{}"[..]);
    scene.registry.push_blob(REPO, &empty).await;
    let m = with_subject(
        desc_of(&empty),
        array(unsigned.layers.iter().map(|l| desc(SIMPLE_SIGNING_MEDIA_TYPE, l))),
        Some(&signed.manifest),
    );
    scene.push_doc(REPO, Some("unlock"), &m).await;
    let p = &scene.proxy;
    let served = get_manifest(p, REPO, &m.digest.to_string()).await;
    eprintln!("material-shaped manifest naming U's small layers: {}", served.status);
    for l in &unsigned.layers {
        f.denied(
            &get_blob(p, REPO, &l.digest).await,
            &format!("GET U's small layer {} after the material manifest", l.digest),
        );
    }
    f.skopeo_fails(p, &format!("{REPO}:unlock"), FORBIDDEN).await;
    f.denied(&get_manifest(p, REPO, "u").await, "GET U's manifest");
    f.skopeo_copies(p, &format!("{REPO}:v1"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.finish();
}

/// A referrer as pushed by [`push_referrer`], from a hand-written manifest.
fn raw_referrer(manifest: Blob, bundle: Blob) -> Referrer {
    Referrer {
        manifest,
        config: Blob::new(OCI_EMPTY, &b"{}"[..]),
        bundle,
        predicate_type: COSIGN_SIGN_PREDICATE.to_owned(),
    }
}

/// Issue 9 §1: one bad referrer does not get a signed image refused. S is
/// signed with a bundle referrer; the attacker adds referrers of S that are
/// ambiguous (case-folded `Layers`; duplicate `layers`) and one whose
/// bundle blob is not JSON. Each is discarded; S still pulls with skopeo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_referrers_beside_a_signature_do_not_get_the_image_refused() {
    let mut f = Findings::new("bad_referrers");
    let scene = Scene::start(ENFORCE).await;
    let signed = benign(50);
    scene.registry.push_image(REPO, "v1", &signed).await;
    let good = push_bundle_signature(&scene.registry, REPO, &signed.manifest, &scene.key).await;
    let other = Blob::new(BUNDLE_V03_MEDIA_TYPE, random_bytes(300, 51));
    scene.registry.push_blob(REPO, &other).await;
    let empty = desc(OCI_EMPTY, &good.config);
    let subject = desc_of(&signed.manifest);
    let referrer = |layers_part: String| {
        doc(
            OCI_MANIFEST,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{BUNDLE_V03_MEDIA_TYPE}","config":{empty},{layers_part},"subject":{subject}}}"#
            ),
        )
    };
    let good_layer = desc_of(&good.bundle);
    let case_fold = referrer(format!(r#""layers":[{good_layer}],"Layers":[{}]"#, desc_of(&other)));
    let duplicate = referrer(format!(r#""layers":[{good_layer}],"layers":[{}]"#, desc_of(&other)));
    let not_json = Blob::new(BUNDLE_V03_MEDIA_TYPE, &b"this is not a bundle {"[..]);
    let malformed = referrer(format!(r#""layers":[{}]"#, desc_of(&not_json)));
    push_referrer(&scene.registry, REPO, &raw_referrer(case_fold, good.bundle.clone())).await;
    push_referrer(&scene.registry, REPO, &raw_referrer(duplicate, good.bundle.clone())).await;
    push_referrer(&scene.registry, REPO, &raw_referrer(malformed, not_json)).await;
    let p = &scene.proxy;
    f.serves(
        &get_manifest(p, REPO, "v1").await,
        &signed.manifest,
        "GET S beside the bad referrers",
    );
    f.skopeo_copies(p, &format!("{REPO}:v1"), &signed.manifest.digest, &image_blobs(&signed))
        .await;
    f.finish();
}
