//! An export streams: a blob much larger than the exporter's memory use
//! goes through it (peak resident memory measured from /proc while it
//! runs), and the far side imports it intact.

use super::common::*;

/// The layer: large beside the exporter's own footprint.
const LAYER: usize = 192 * 1024 * 1024;
/// How much more resident memory the large export may take than a tiny one
/// (buffers in flight: the spool window, the chunk queue, zstd's window).
const GROWTH_LIMIT_KIB: u64 = 64 * 1024;

fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run `portcullis export NAME -o archive` and sample its peak resident
/// memory until it exits.
async fn export_peak(c: &Connected, name: &str, archive: &Path) -> u64 {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["export", &format!("{HOST}/{name}"), "-o"])
        .arg(archive)
        .arg("--config")
        .arg(c.work.path().join("connected.yaml"))
        .arg("--policies")
        .arg(c.policies.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run portcullis export");
    let pid = child.id().expect("pid");
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_kib(pid) {
            peak = peak.max(kib);
        }
        match tokio::time::timeout(Duration::from_millis(20), child.wait()).await {
            Ok(status) => break status.expect("export status"),
            Err(_) => continue,
        }
    };
    assert!(status.success(), "export of {name} failed: {status}");
    assert!(peak > 0, "no memory sample taken");
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_is_exported_in_flat_memory_and_imported_intact() {
    let c = Connected::start().await;
    let small = oci_image(&[64 * 1024], 2002);
    push_signed(&c.upstream, "apps/small", "v1", &small, &[&c.a]).await;
    let image = oci_image(&[LAYER], 2001);
    push_signed(&c.upstream, "apps/large", "v1", &image, &[&c.a]).await;
    let baseline = export_peak(&c, "apps/small:v1", &c.work.path().join("small.tar.zst")).await;
    let archive = c.work.path().join("large.tar.zst");
    let peak = export_peak(&c, "apps/large:v1", &archive).await;
    eprintln!(
        "export peak resident memory: {} MiB for a 64 KiB layer, {} MiB for a {} MiB layer",
        baseline >> 10,
        peak >> 10,
        LAYER >> 20
    );
    assert!(
        peak < baseline + GROWTH_LIMIT_KIB,
        "the export of a {LAYER}-byte layer grew {} KiB over the baseline",
        peak.saturating_sub(baseline)
    );

    let site = Site::new(&c.a).await;
    let (code, report) = site.import(&archive, &[]).await;
    assert_eq!(code, 0, "{report}");
    let server = site.serve().await;
    let r = get(
        &server.listen,
        &format!("/v2/apps/large/blobs/{}", image.layers[0].digest),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.bytes(), image.layers[0].bytes, "the large layer, intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_export_reads_the_store_of_the_data_dir() {
    let c = Connected::start().await;
    let image = oci_image(&[300 * 1024], 2003);
    push_signed(&c.upstream, "apps/web", "v1", &image, &[&c.a]).await;
    let layer_gets = || {
        let needle = format!("GET /v2/apps/web/blobs/{}", image.layers[0].digest);
        c.upstream.log().matches(&needle).count()
    };
    for (i, name) in ["one.tar", "two.tar"].iter().enumerate() {
        let (code, stdout, stderr) = c.export(&["apps/web:v1"], &c.work.path().join(name), &[]).await;
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert_eq!(layer_gets(), 1, "export {}: the layer is downloaded once", i + 1);
    }
    // Both archives carry the same content.
    let one = std::fs::read(c.work.path().join("one.tar")).expect("one");
    let two = std::fs::read(c.work.path().join("two.tar")).expect("two");
    let layer = entry(&image.layers[0].digest);
    let layer_bytes = |archive: &[u8]| {
        use std::io::Read as _;
        let mut a = tar::Archive::new(archive);
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            if e.path().expect("path").to_string_lossy() == layer {
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).expect("read");
                return bytes;
            }
        }
        panic!("no layer in the archive");
    };
    assert_eq!(layer_bytes(&one), image.layers[0].bytes.to_vec());
    assert_eq!(layer_bytes(&two), image.layers[0].bytes.to_vec());
}
