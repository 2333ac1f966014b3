//! `ManifestInfo::parse` (with each Content-Type, and none) and
//! `material::classify`: never panic, and a manifest Portcullis accepts is
//! read the same way by a Go client (kind, media type, config, layers or
//! children, subject, artifact type).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oci::{ManifestInfo, json, material};
use portcullis_fuzz::reference::{self, ByteChoices};
use portcullis_fuzz::split;

fn one(bytes: &[u8], content_type: Option<&str>) {
    reference::assert_manifest_agrees(bytes, content_type);
    if let Ok(info) = ManifestInfo::parse(bytes, content_type) {
        let kind = material::classify(&info);
        if kind.is_some() {
            // Material is an image manifest with a config and layers, all
            // without `urls`.
            assert!(!info.media_type.is_index());
            assert!(!info.layers().is_empty());
            assert!(info.references.iter().all(|d| d.urls.is_empty()));
        }
        assert_eq!(info.config.is_some(), !info.media_type.is_index());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, input)) = split(data) else {
        return;
    };
    let ct = reference::CONTENT_TYPES[selector % reference::CONTENT_TYPES.len()];
    one(input, ct);
    let generated = reference::document(&mut ByteChoices::new(input), &json::IMAGE_DOCUMENT);
    one(generated.as_bytes(), ct);
});
