//! `portcullis store stats|verify|gc` on the built binary.

use std::process::Output;

use crate::cap::{LAYER, bytes_under, pull};
use crate::support::distribution::Distribution;
use crate::support::images::{Image, oci_image};
use crate::support::proxy::TestProxy;

fn store(args: &[&str], data: &std::path::Path, config: Option<&std::path::Path>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("store").args(args).arg("--data-dir").arg(data);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.output().expect("run portcullis store")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_verify_and_gc() {
    let registry = Distribution::start().await;
    let images: Vec<Image> = (0..3).map(|i| oci_image(&[LAYER], 1300 + i)).collect();
    let proxy = TestProxy::start(&Distribution::routing_config(&registry)).await;
    for (i, image) in images.iter().enumerate() {
        registry.push_image(&format!("test/s{i}"), "v1", image).await;
        pull(&proxy, &format!("test/s{i}"), image).await;
        for blob in image.blobs() {
            assert!(proxy.stores_blob(&blob.digest).await);
        }
    }
    pull(&proxy, "test/s0", &images[0]).await; // two hits
    let data = proxy.stop();
    let dir = data.path();
    // The server writes its access index as it shuts down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.join("index/usage.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no access index written at shutdown"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let out = store(&["stats"], dir, None);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("blobs: 6 ("), "{text}");
    assert!(
        text.contains("hit ratio: 25.0% (2 served from the store, 6 downloaded)"),
        "{text}"
    );
    assert!(text.contains("cap: none"), "{text}");

    let out = store(&["verify"], dir, None);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ok: every file hashes to its digest"));

    // One flipped byte in a stored layer: reported, quarantined, exit 1.
    let layer = &images[1].layers[0].digest;
    let hex = layer.hex();
    let path = dir.join("blobs/sha256").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&path).expect("stored layer");
    bytes[LAYER / 2] ^= 0x01;
    std::fs::write(&path, &bytes).expect("corrupt");
    let out = store(&["verify"], dir, None);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("MISMATCH"), "{}", stdout(&out));
    assert!(!path.exists(), "moved out of the store");
    assert_eq!(
        std::fs::read_dir(dir.join("quarantine")).expect("quarantine").count(),
        1
    );
    assert!(store(&["verify"], dir, None).status.success(), "clean afterwards");

    // gc down to a cap of one layer: the least recently served go.
    let config = dir.join("gc.yaml");
    std::fs::write(&config, format!("storage:\n  maxBytes: {}\n", LAYER + 2048)).expect("config");
    let out = store(&["gc"], dir, Some(&config));
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("evicted: "), "{}", stdout(&out));
    assert!(bytes_under(&dir.join("blobs")) <= (LAYER + 2048) as u64);
    assert!(
        dir.join("blobs/sha256")
            .join(&images[0].layers[0].digest.hex()[..2])
            .join(images[0].layers[0].digest.hex())
            .exists(),
        "s0's layer was served last: kept"
    );
}
